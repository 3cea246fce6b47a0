"""End to end, unsigned: a real Mosquitto, the real pulse (JSON frames, no key) and the real
agent (no ``[security]``), with an attacker on the same broker publishing on the beat topic.

Once the agent has locked, the attacker sends, each a single frame: ``tempo_bpm = 1000``
and ``0.1`` (copies of a real frame's next frame, 30 ms early), a lone ``downbeat = true``
on a non-downbeat, and another cluster's frame whose HLC is 9 hours ahead; then, for the
rest of the run, a copy of every real frame's next frame sent early, 140 ms more every 4
beats (35 ms a beat, up to most of a beat). Without signatures the agent cannot tell the
copies from the pulse, but none of it may move an action: the time the agent's timeline
gives every actuation stays within 2 ms of where the pulse's own trace puts it, each beat
gets its action once, the downbeat action fires on every true downbeat, the claims' HLC
never jumps ahead, the claims count the refusals, and while the early copies arrive they
carry the alert ``beat_source_conflict`` with the spread in ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge import hlc
from edge.broker import Mosquitto
from edge.harness import (
    SPOOF_PROFILE,
    BeatSpoofer,
    ClaimRecorder,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.messages import StatusClaim

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BPM = 240.0
BEAT = 60.0 / BPM
NINE_HOURS = 9 * 3600
LONE_BEATS = 10  # real frames seen while the lone spoofs go out, before the early copies
EARLY_STEP_S = 0.035  # 140 ms more every 4 beats
EARLY_MAX_S = 0.8 * BEAT


def _next_frame(data: dict[str, Any]) -> dict[str, Any]:
    """The frame the pulse will send one beat after ``data``, predicted from it (the new
    bar's window_id cannot be known; the old one stays)."""
    deadline = datetime.fromisoformat(str(data["deadline_at"]).replace("Z", "+00:00"))
    following = dict(data, beat_index=int(data["beat_index"]) + 1)
    following["downbeat"] = following["beat_index"] % 4 == 0
    following["deadline_at"] = (
        (deadline + timedelta(seconds=BEAT)).isoformat().replace("+00:00", "Z")
    )
    return following


class Attacker(BeatSpoofer):
    """Watches the real beat, sends the spoofs."""

    def __init__(self, port: int) -> None:
        self._seen = 0  # real frames seen since armed
        super().__init__(port)

    def on_frame(self, data: dict[str, Any]) -> None:
        n = self._seen
        self._seen += 1
        following = _next_frame(data)
        if n == 0:
            self.send("tempo_1000", dict(following, tempo_bpm=1000), BEAT - 0.03)
        elif n == 2:
            self.send("tempo_0.1", dict(following, tempo_bpm=0.1), BEAT - 0.03)
        elif n == 4:
            # the next non-downbeat, called a downbeat
            lone = following if following["beat_index"] % 4 else _next_frame(following)
            extra = 0.0 if lone is following else BEAT
            self.send("lone_downbeat", dict(lone, downbeat=True), extra + BEAT - 0.02)
        elif n == 6:
            wall, logical, node = hlc.parse(str(data["hlc"]))
            ahead = f"{(wall + NINE_HOURS) & 0xFFFF:04x}:{logical:04x}:{node:04x}"
            self.send("other_cluster", dict(following, cluster_id="other", hlc=ahead), 0.05)
        elif n >= LONE_BEATS:
            k = n - LONE_BEATS
            early = min(EARLY_STEP_S * (k + 1), EARLY_MAX_S)
            self.send("early_copy", following, BEAT - early)


def _alerts(claim: StatusClaim) -> list[Any] | tuple[Any, ...]:
    alerts = (claim.metadata or {}).get("alerts") or ()
    assert isinstance(alerts, list | tuple), alerts
    return alerts


def test_unsigned_spoofs_move_nothing_and_early_copies_raise_the_conflict(
    tmp_path: Path,
    mosquitto: Mosquitto,
    actuations_sit_on_the_pulse: Callable[[Path, Path, float, float, int], None],
) -> None:
    config = write_agent_config(tmp_path, mosquitto.url, SPOOF_PROFILE)
    agent_trace, pulse_trace = tmp_path / "agent.jsonl", tmp_path / "pulse.jsonl"
    agent = start_agent(config, agent_trace, tmp_path / "agent.log")
    recorder = ClaimRecorder(mosquitto.port)
    stamped: list[tuple[float, StatusClaim]] = []  # (monotonic arrival, claim)
    attacker = Attacker(mosquitto.port)
    pulse = start_pulse(mosquitto.url, "bench", BPM, pulse_trace, tmp_path / "pulse.log")

    def note_claims() -> None:
        got = recorder.claims
        now = time.monotonic()
        stamped.extend((now, c) for c in got[len(stamped) :])

    def wait_noting(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            note_claims()
            time.sleep(0.05)

    try:
        # locked, and settled: the follower learns the clock rate and the path delay from
        # a few seconds of frames (as test_signing_e2e.py and scripts/bench_agent.py do)
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 12, 25), agent.log()
        wait_noting(6.0)
        attack_from = time.monotonic()
        attacker.armed.set()
        wait_noting(LONE_BEATS * BEAT)
        # the first early copy goes out about LONE_BEATS + 1 beats in; a loaded box is later
        give_up = time.monotonic() + 10.0
        while "early_copy" not in attacker.first_sent and time.monotonic() < give_up:
            wait_noting(0.05)
        assert "early_copy" in attacker.first_sent, attacker.sent
        early_from = attacker.first_sent["early_copy"]
        wait_noting(28 * BEAT)
        early_until = time.monotonic()
    finally:
        attacker.stop()
        pulse.stop()
        code = agent.stop()
        note_claims()
        recorder.stop()
    assert code == 0, agent.log()
    for kind in ("tempo_1000", "tempo_0.1", "lone_downbeat", "other_cluster"):
        assert attacker.sent.get(kind) == 1, attacker.sent
    assert attacker.sent.get("early_copy", 0) >= 20, attacker.sent

    # Every actuation sits where the pulse's own beats put it (within 2 ms by the agent's
    # timeline), each beat gets its action once, the downbeat action every true downbeat.
    actuations_sit_on_the_pulse(pulse_trace, agent_trace, attack_from, BEAT, 40)

    # The claims' HLC never jumps ahead: each claim's wall second is at most a few
    # seconds past the latest before it (a merged 9-hours-ahead stamp would show here).
    claims = [c for _, c in stamped if c.agent_id == "bench:pi-01"]
    assert len(claims) >= 20, len(claims)
    latest = hlc.parse(claims[0].hlc)[0]
    for claim in claims[1:]:
        wall = hlc.parse(claim.hlc)[0]
        step = ((wall - latest + 0x8000) & 0xFFFF) - 0x8000  # serial arithmetic, +/- 9.1 h
        assert step <= 5, (claim.hlc, latest, step)
        latest = max(latest, latest + step)

    # The claims count the refusals, with the reasons the runner and the follower give.
    rejected = (claims[-1].metadata or {}).get("frames_rejected")
    assert isinstance(rejected, Mapping), claims[-1].metadata
    assert rejected.get("hlc_ahead", 0) + rejected.get("wrong_cluster", 0) >= 1, rejected
    assert rejected.get("tempo_unconfirmed", 0) >= 2, rejected
    assert rejected.get("bar_unconfirmed", 0) >= 1, rejected

    # While the early copies arrive the claims raise the conflict and say how far apart
    # the two sources arrive. It needs a few frames of evidence to raise: judged from 8
    # beats into the phase to its end.
    during = [
        c
        for at, c in stamped
        if c.agent_id == "bench:pi-01" and early_from + 8 * BEAT <= at <= early_until
    ]
    assert len(during) >= 5, len(during)
    for claim in during:
        md = claim.metadata or {}
        assert "beat_source_conflict" in _alerts(claim), md
        spread = md.get("source_conflict_ms")
        assert isinstance(spread, int | float) and spread > 0, md
    before = [c for at, c in stamped if c.agent_id == "bench:pi-01" and at < attack_from]
    assert before and not any("beat_source_conflict" in _alerts(c) for c in before)
