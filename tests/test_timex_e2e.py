"""End to end: the time exchange between the real agent and the real pulse (and the
timekeeper), over a real Mosquitto, with the agent's wall clock 3 h off (the test seam
edge.testing.wallshift; monotonic untouched).

Without a responder the agent can only follow arrival times, so it runs late by the
one-way delay and says ``time_ref = "envelope"``; with one it maps ``deadline_at``
through the exchange and says ``exchange``. These are correctness windows with margins
for a loaded 2-core box; scripts/bench_agent.py measures the precision.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from edge.broker import Mosquitto
from edge.harness import (
    ClaimRecorder,
    pulse_beats,
    read_trace,
    start_agent,
    start_pulse,
    start_timekeeper,
    wait_until,
    write_agent_config,
)
from edge.messages import StatusClaim
from edge.testing.profiles import MOCK_GPIO, device, rule

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROFILE = (
    MOCK_GPIO
    + device("led", "output", 17)
    + rule("led", "toggle", phase="execute", offset=0.0, essential=True)
)
BPM = 120.0


def _lateness_ms(
    agent_rows: list[dict[str, object]], pulse_rows: list[dict[str, object]]
) -> list[float]:
    """Each fired action against the pulse's own execute start, from beat 8 on."""
    starts = {k: start for k, (start, _) in pulse_beats(pulse_rows).items()}
    first = min(starts)
    out = []
    for r in agent_rows:
        beat = int(r["beat_index"])  # type: ignore[call-overload]
        if r["fired_mono"] is None or beat < first + 8 or beat not in starts:
            continue
        intended = starts[beat] + 20.0 / BPM
        out.append((float(r["fired_mono"]) - intended) * 1000.0)  # type: ignore[arg-type]
    return out


def _run(
    tmp: Path,
    mosquitto: Mosquitto,
    answer: bool,
    timekeeper: bool = False,
    wall_offset_s: float | None = 3 * 3600.0,
) -> tuple[list[float], list[StatusClaim], str]:
    config = write_agent_config(tmp, mosquitto.url, PROFILE)
    agent_trace, pulse_trace = tmp / "agent.jsonl", tmp / "pulse.jsonl"
    recorder = ClaimRecorder(mosquitto.port)
    agent = start_agent(config, agent_trace, tmp / "agent.log", wall_offset_s=wall_offset_s)
    keeper = start_timekeeper(mosquitto.url, "bench", tmp / "keeper.log") if timekeeper else None
    pulse = start_pulse(
        mosquitto.url, "bench", BPM, pulse_trace, tmp / "pulse.log", time_exchange=answer
    )
    try:
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 20, 35), agent.log()
    finally:
        pulse.stop()
        if keeper is not None:
            keeper.stop()
        code = agent.stop()
        recorder.stop()
    assert code == 0, agent.log()
    late = _lateness_ms(read_trace(agent_trace), read_trace(pulse_trace))
    return late, recorder.claims, agent.log()


def _last_locked(claims: list[StatusClaim]) -> StatusClaim:
    locked = [c for c in claims if (c.metadata or {}).get("sync", {}).get("state") == "locked"]
    assert locked, claims
    return locked[-1]


def test_without_a_responder_the_claims_say_envelope(tmp_path: Path, mosquitto: Mosquitto) -> None:
    late, claims, log = _run(tmp_path, mosquitto, answer=False)
    assert len(late) >= 10, log
    meta = _last_locked(claims).metadata or {}
    assert meta["time_ref"] == "envelope"
    assert "time_error_ms" not in meta
    # Every request went unanswered: counted, at a bounded pace.
    assert meta["time_rejected"]["lost"] >= 1
    # Late by about the one-way delay, never early by more than a wake-up.
    assert statistics.median(late) > -0.2, late


@pytest.mark.parametrize("timekeeper", [False, True], ids=["pulse-answers", "timekeeper"])
def test_with_a_responder_actions_land_on_the_pulse_beat(
    tmp_path: Path, mosquitto: Mosquitto, timekeeper: bool
) -> None:
    late, claims, log = _run(tmp_path, mosquitto, answer=not timekeeper, timekeeper=timekeeper)
    assert len(late) >= 10, log
    meta = _last_locked(claims).metadata or {}
    assert meta["time_ref"] == "exchange", meta
    assert 0 < meta["time_error_ms"] < 2.0, meta
    # Within a few ms of the pulse's beat times once the fixed delay is learnt from the
    # exchange (wall_trust_frames after the lock); wide: a loaded box; the bench measures.
    settled = sorted(abs(x) for x in late[4:])
    assert settled[int(0.9 * (len(settled) - 1))] < 1.5, late
    assert settled[-1] < 10.0, late
    assert abs(statistics.median(late[4:])) < 0.5, late


def test_a_right_wall_clock_is_kept_with_a_responder(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """On the pulse's own host the local wall clock agrees with the exchange: it is kept
    (it is exact here), and the claims say ``wall``."""
    late, claims, log = _run(tmp_path, mosquitto, answer=True, wall_offset_s=None)
    assert len(late) >= 10, log
    meta = _last_locked(claims).metadata or {}
    assert meta["time_ref"] == "wall", meta
    assert 0 < meta["time_error_ms"] < 2.0, meta


def test_a_wall_clock_hours_behind_follows_the_beat_through_the_exchange(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A Pi without an RTC boots hours behind: every frame's HLC is then far "ahead" of its
    own clock (``hlc_ahead``). With a responder the HLC reads the pulse's clock as the
    exchange maps it, so the frames are followed and the actions land on the beat."""
    late, claims, log = _run(tmp_path, mosquitto, answer=True, wall_offset_s=-3 * 3600.0)
    assert len(late) >= 10, log
    meta = _last_locked(claims).metadata or {}
    assert meta["time_ref"] == "exchange", meta
    settled = sorted(abs(x) for x in late[4:])
    assert settled[int(0.9 * (len(settled) - 1))] < 1.5, late
