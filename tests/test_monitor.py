"""The fleet monitor: its pure view of topics, and `monitor --json` against a live agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge import __version__
from edge.broker import Mosquitto
from edge.clock import FakeClock
from edge.harness import start_agent, start_pulse, write_agent_config
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import encode
from edge.monitor import FleetView
from edge.signing import Keyring, SigningKey, keygen
from edge.status import BeatReview, StatusBuilder, StatusConfig
from edge.testing.profiles import MOCK_LED, rule
from edge.topics import Topics
from edge.trust import sign_message


def _review(
    beat: int,
    sync: str = "locked",
    isolated: tuple[str, ...] = (),
    frames_rejected: dict[str, int] | None = None,
    inbox_dropped: int = 0,
    alerts: tuple[str, ...] = (),
    source_conflict_ms: float | None = None,
) -> BeatReview:
    return BeatReview(
        beat_index=beat,
        state="reviewing",
        sync_state=sync,
        error_bound_ms=0.42,
        late_ms_p50=0.021,
        late_ms_max=0.3,
        fired=3,
        missed=0,
        shed={},
        dropped_by_limit=0,
        frames_rejected=frames_rejected or {},
        guard_level="full",
        guard_reason="ok",
        recommended_tempo=120.0,
        cpu_percent=12.5,
        memory_mb=31.0,
        temperature_c=51.2,
        backlog=4,
        outbox_dropped=0,
        isolated=isolated,
        inbox_dropped=inbox_dropped,
        alerts=alerts,
        source_conflict_ms=source_conflict_ms,
    )


def _claim_bytes(
    agent: str,
    beat: int,
    sync: str = "locked",
    isolated: tuple[str, ...] = (),
    frames_rejected: dict[str, int] | None = None,
    inbox_dropped: int = 0,
    alerts: tuple[str, ...] = (),
    source_conflict_ms: float | None = None,
    seq: int = 1,
) -> bytes:
    builder = StatusBuilder(
        agent,
        StatusConfig(),
        HybridLogicalClock(FakeClock(), 7),
        __version__,
        "abc123",
        start_seq=seq - 1,
    )
    review = _review(
        beat, sync, isolated, frames_rejected, inbox_dropped, alerts, source_conflict_ms
    )
    claim = builder.build(review)
    assert claim is not None
    return encode(claim)


def test_rows_follow_claims_and_availability() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    view.feed("backbeat/bench/agents/bench:pi-01/availability", b"online", 1.0)
    view.feed("backbeat/bench/status/bench:pi-01", _claim_bytes("bench:pi-01", 41), 1.1)
    view.feed("backbeat/bench/status/bench:pi-02", _claim_bytes("bench:pi-02", 40, "lost"), 1.2)
    view.feed("backbeat/bench/agents/bench:pi-02/availability", b"offline", 1.3)
    view.feed("backbeat/other/status/x", _claim_bytes("x", 1), 1.4)  # another cluster: ignored
    table = view.table()
    row1 = next(line for line in table.splitlines() if line.startswith("bench:pi-01"))
    assert "online" in row1 and "41" in row1 and "locked" in row1 and "0.42" in row1
    assert "0.021/0.300" in row1 and "51.2" in row1 and "full" in row1 and row1.endswith("4")
    row2 = next(line for line in table.splitlines() if line.startswith("bench:pi-02"))
    assert "offline" in row2 and "lost" in row2
    assert len(table.splitlines()) == 4  # header, rule, two agents: the other cluster is not shown
    view.feed(
        "backbeat/bench/status/bench:pi-01",
        _claim_bytes("bench:pi-01", 42, isolated=("fan", "relay"), seq=2),
        1.5,
    )
    row1 = next(line for line in view.table().splitlines() if line.startswith("bench:pi-01"))
    assert row1.endswith("4  isolated: fan, relay"), row1


def test_a_source_conflict_alert_is_shown_with_its_spread() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    payload = _claim_bytes(
        "bench:pi-01", 41, alerts=("beat_source_conflict",), source_conflict_ms=140.04
    )
    view.feed("backbeat/bench/status/bench:pi-01", payload, 1.0)
    row = next(line for line in view.table().splitlines() if line.startswith("bench:pi-01"))
    assert row.endswith("alerts: beat_source_conflict (sources 140.0 ms apart)"), row


def test_rejected_input_is_shown_under_its_columns() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    payload = _claim_bytes(
        "bench:pi-01", 41, frames_rejected={"malformed": 4932, "stale": 2}, inbox_dropped=18597
    )
    view.feed("backbeat/bench/status/bench:pi-01", payload, 1.0)
    header, _, row = view.table().splitlines()[:3]
    cols = header.index("malformed"), header.index("in drop"), header.index("backlog")
    assert cols[0] < cols[1] < cols[2]
    assert row.split()[-3:] == ["4932", "18597", "4"], row
    view.feed("backbeat/bench/status/bench:pi-02", _claim_bytes("bench:pi-02", 41), 1.1)
    quiet = next(line for line in view.table().splitlines() if line.startswith("bench:pi-02"))
    assert quiet.split()[-3:] == ["0", "0", "4"], quiet


def test_a_malformed_claim_is_counted_and_shown() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    assert view.feed("backbeat/bench/status/bench:pi-01", b"\xff\x00garbage", 1.0) is None
    assert view.bad == 1
    assert "1 malformed claim" in view.table() and "bench:pi-01" in view.last_error


# ------------------------------------------------ which claim is an agent's state (attack trial)

PI01 = "backbeat/bench/status/bench:pi-01"


class Agent:
    """One agent process as the runner builds its claims: one incarnation, one HLC, seqs
    counting up (``seq=`` says where, as ``seq.hw`` would), each claim signed with ``key``."""

    def __init__(
        self,
        clock: FakeClock,
        key: SigningKey | None,
        incarnation: str = "00000000000000a1",
        agent: str = "bench:pi-01",
    ) -> None:
        self.clock, self.key, self.agent, self.incarnation = clock, key, agent, incarnation
        self.hlc = HybridLogicalClock(clock, node_id(agent))

    def claim(self, seq: int, beat: int, key: SigningKey | None = None) -> bytes:
        self.clock.advance(0.5)
        builder = StatusBuilder(
            self.agent,
            StatusConfig(),
            self.hlc,
            __version__,
            "abc123",
            start_seq=seq - 1,
            incarnation=self.incarnation,
        )
        claim = builder.emit(_review(beat))
        signer = key or self.key
        return encode(sign_message(claim, signer) if signer else claim)


@pytest.fixture
def ring(tmp_path: Path) -> tuple[Keyring, SigningKey, SigningKey]:
    """``monitor --keys DIR`` with pi-01's and pi-02's public keys, and their private keys."""
    keys = tmp_path / "keys"
    keys.mkdir()
    pi01, _, _ = keygen(keys / "pi-01")
    pi02, _, _ = keygen(keys / "pi-02")
    return Keyring.from_directory(keys), SigningKey.load(pi01), SigningKey.load(pi02)


def _beat(view: FleetView, agent: str = "bench:pi-01") -> int | None:
    claim = view.rows[agent].claim
    return claim.beat_index if claim is not None else None


def test_a_claim_signed_with_another_key_of_the_ring_is_forged(
    ring: tuple[Keyring, SigningKey, SigningKey],
) -> None:
    keyring, pi01, pi02 = ring
    view = FleetView(Topics("backbeat", "bench"), keyring=keyring)
    agent = Agent(FakeClock(), pi01)
    assert view.feed(PI01, agent.claim(1, 41), 1.0) is not None
    # pi-02's key is in the ring, but bench:pi-01 signs with pi-01's
    assert view.feed(PI01, agent.claim(2, 42, key=pi02), 2.0) is not None
    assert view.last_verdict == "forged" and _beat(view) == 41
    row = view.rows["bench:pi-01"]
    assert (row.signature, row.forged, row.refused) == ("forged", 1, {"other_key": 1})
    assert "forged claims: 1 (1 by another key)" in view.table()
    assert "forged 1 (1 by another key)" in view.render(100)
    view.feed(PI01, agent.claim(3, 43), 3.0)
    assert _beat(view) == 43 and view.rows["bench:pi-01"].signature == "signed"


def test_an_unsigned_claim_does_not_replace_the_state_of_an_agent_that_signs(
    ring: tuple[Keyring, SigningKey, SigningKey],
) -> None:
    keyring, pi01, _ = ring
    view = FleetView(Topics("backbeat", "bench"), keyring=keyring)
    clock = FakeClock()
    view.feed(PI01, Agent(clock, pi01).claim(1, 41), 1.0)
    assert view.feed(PI01, Agent(clock, None).claim(2, 42), 2.0) is None
    row = view.rows["bench:pi-01"]
    assert _beat(view) == 41 and row.refused == {"unsigned": 1}
    assert "refused claims: 1 unsigned" in view.table()
    # An agent that never signed, and has no key of its name in the ring, is shown
    # unsigned, as before; one whose key is there (pi-02.pub.pem) is expected to sign.
    mute = Agent(clock, None, agent="bench:pi-03")
    view.feed("backbeat/bench/status/bench:pi-03", mute.claim(1, 41), 3.0)
    view.feed("backbeat/bench/status/bench:pi-03", mute.claim(2, 42), 4.0)
    assert _beat(view, "bench:pi-03") == 42 and view.rows["bench:pi-03"].signature == "unsigned"
    named = Agent(clock, None, agent="bench:pi-02")
    assert view.feed("backbeat/bench/status/bench:pi-02", named.claim(1, 41), 5.0) is None
    assert view.rows["bench:pi-02"].refused == {"unsigned": 1}


def test_a_key_named_like_the_agent_is_its_key_whatever_signs_first(
    ring: tuple[Keyring, SigningKey, SigningKey],
) -> None:
    # A retained claim signed with pi-02's key, seen before any of pi-01's own: with keys
    # taken on first sight it would pin pi-01 to pi-02's key, and every genuine claim after
    # would be forged. pi-01.pub.pem names pi-01's key from the start.
    keyring, pi01, pi02 = ring
    assert keyring.kid_for("bench:pi-01") == pi01.kid and keyring.kid_for("x:pi-03") is None
    view = FleetView(Topics("backbeat", "bench"), keyring=keyring)
    agent = Agent(FakeClock(), pi01)
    assert view.feed(PI01, agent.claim(1010, 41, key=pi02), 1.0) is not None
    assert view.last_verdict == "forged" and _beat(view) is None
    view.feed(PI01, agent.claim(2, 42), 2.0)
    row = view.rows["bench:pi-01"]
    assert _beat(view) == 42 and row.signature == "signed" and row.kid == pi01.kid


def test_an_old_genuine_claim_sent_again_is_stale_but_a_restart_may_start_seq_again(
    ring: tuple[Keyring, SigningKey, SigningKey],
) -> None:
    keyring, pi01, _ = ring
    view = FleetView(Topics("backbeat", "bench"), keyring=keyring)
    clock = FakeClock()
    agent = Agent(clock, pi01)
    old = agent.claim(3, 3)
    view.feed(PI01, old, 1.0)
    view.feed(PI01, agent.claim(1017, 1017), 2.0)
    assert view.feed(PI01, old, 3.0) is None  # retained, or played again by anyone
    assert _beat(view) == 1017 and view.rows["bench:pi-01"].refused == {"stale": 1}
    assert "refused claims: 1 stale" in view.table()
    unseen = agent.claim(1018, 1018)  # kept by an attacker, never delivered
    # A restart whose seq.hw was not writable starts at seq 1: a new incarnation, later HLC.
    clock.advance(30.0)
    again = Agent(clock, pi01, incarnation="00000000000000b2")
    view.feed(PI01, again.claim(1, 1030), 4.0)
    assert _beat(view) == 1030
    # The last process's claims, though their seq is higher, are from before the restart.
    assert view.feed(PI01, unseen, 5.0) is None
    assert _beat(view) == 1030 and view.rows["bench:pi-01"].refused == {"stale": 2}
    # Without keys the same holds.
    plain = FleetView(Topics("backbeat", "bench"))
    plain.feed(PI01, agent.claim(1019, 1019), 6.0)
    assert plain.feed(PI01, old, 7.0) is None and _beat(plain) == 1019


def test_a_claim_naming_another_agent_is_refused_on_this_agents_topic(
    ring: tuple[Keyring, SigningKey, SigningKey],
) -> None:
    keyring, pi01, _ = ring
    clock = FakeClock()
    for view in (
        FleetView(Topics("backbeat", "bench"), keyring=keyring),
        FleetView(Topics("backbeat", "bench")),
    ):
        view.feed(PI01, Agent(clock, pi01).claim(1, 41), 1.0)
        other = Agent(clock, pi01, agent="bench:pi-99").claim(9, 99)  # even with pi-01's key
        assert view.feed(PI01, other, 2.0) is None
        assert _beat(view) == 41 and view.rows["bench:pi-01"].refused == {"wrong_agent": 1}
        assert list(view.rows) == ["bench:pi-01"]
        assert "refused claims: 1 wrong agent_id" in view.table()
        assert "refused 1 wrong agent_id" in view.render(100)


@pytest.mark.broker
@pytest.mark.slow
def test_monitor_json_prints_a_line_per_claim(tmp_path: Path, mosquitto: Mosquitto) -> None:
    profile = MOCK_LED + rule("led", "toggle", essential=True)
    config = write_agent_config(tmp_path, mosquitto.url, profile)
    agent = start_agent(config, None, tmp_path / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        time.sleep(1.0)
        monitor = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "monitor",
                "--broker",
                mosquitto.url,
                "--cluster",
                "bench",
                "--json",
                "--duration",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        pulse.stop()
        agent.stop()
    assert monitor.returncode == 0, monitor.stderr
    lines = [json.loads(x) for x in monitor.stdout.splitlines()]
    assert len(lines) >= 8
    assert all(
        x["type"] == "backbeat.statusclaim.v1" and x["agent_id"] == "bench:pi-01" for x in lines
    )
    beats = [x["beat_index"] for x in lines]
    assert beats == sorted(beats)
