"""Bad input and stalls, as the real agent process reports them in its claims.

A real Mosquitto, the real pulse and the real agent (``edge.harness``), default config:
a flood of malformed frames is counted in the next claims (under ``malformed``, with what
the link had to shed in ``inbox_dropped``) and logged at a bounded rate; a stall (SIGSTOP
for 5 s, then SIGCONT) reports its misses in the claims of the beats they belong to.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto
from edge.harness import (
    ClaimRecorder,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.messages import StatusClaim
from edge.testing.profiles import LED_TOGGLE, rule

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROFILE = LED_TOGGLE + rule("led", "toggle", phase="review", every=1, essential=True)
FLOOD = 5000


def _meta(claim: StatusClaim) -> Mapping[str, object]:
    return dict(claim.metadata or {})


def _malformed(claim: StatusClaim) -> int:
    rejected = _meta(claim)["frames_rejected"]
    assert isinstance(rejected, Mapping)
    # beat frames and bar reports, each counted under its own name
    return int(rejected.get("malformed", 0)) + int(rejected.get("malformed_bar_report", 0))


def _dropped(claim: StatusClaim) -> int:
    dropped = _meta(claim)["inbox_dropped"]
    assert isinstance(dropped, int)
    return dropped


def test_a_flood_of_malformed_frames_is_counted_in_the_claims_and_logged_briefly(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    claims = ClaimRecorder(mosquitto.port)
    config = write_agent_config(tmp_path, mosquitto.url, PROFILE)
    agent = start_agent(config, None, tmp_path / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    flooder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-flooder")
    try:
        assert wait_until(lambda: len(claims.claims) >= 4, 30), agent.log()
        assert all(_malformed(c) == 0 and _dropped(c) == 0 for c in claims.claims)
        flooder.connect("127.0.0.1", mosquitto.port)
        flooder.loop_start()
        kinds = (b"\xff" * 40, b'{"type": "backbeat.beatframe.v1"')  # garbage, truncated
        started = time.monotonic()
        for i in range(FLOOD):
            topic = "backbeat/bench/bar" if i % 10 == 9 else "backbeat/bench/beat"
            flooder.publish(topic, kinds[i % 2], qos=0)
            if i % 500 == 499:  # spread over about a second
                time.sleep(max(0.0, started + (i + 1) / FLOOD - time.monotonic()))
        flood_s = time.monotonic() - started

        def counted() -> bool:
            last = claims.claims[-1]
            return _malformed(last) + _dropped(last) >= FLOOD

        assert wait_until(counted, 15), [(_malformed(c), _dropped(c)) for c in claims.claims[-3:]]
        # past the quiet period, so the counts of the suppressed lines are in the log: said
        # by the running agent for each kind (beat, bar), not only by its flush at shutdown
        assert wait_until(lambda: agent.log().count(" more malformed ") >= 2, 15), agent.log()
    finally:
        flooder.loop_stop()
        flooder.disconnect()
        pulse.stop()
        assert agent.stop() == 0, agent.log()
        claims.stop()
    last = claims.claims[-1]
    malformed, dropped = _malformed(last), _dropped(last)
    # what did not decode is counted, what the link shed is counted (with any beat frames
    # shed in the same moment): nothing of the flood went uncounted
    assert malformed > 0 and malformed + dropped >= FLOOD and malformed <= FLOOD
    assert flood_s < 3.0, f"the flood took {flood_s:.1f} s to send"
    lines = [
        line for line in agent.log().splitlines() if "edge.runner" in line and "malformed" in line
    ]
    # two kinds (beat, bar): the first of each, then its count after the quiet period
    assert 2 <= len(lines) <= 4, lines
    assert any(" more malformed " in line for line in lines), lines
    # and the beat was followed through it: claims kept coming after the flood
    beats = [c.beat_index for c in claims.claims]
    assert beats[-1] - beats[0] >= 20


def test_a_stall_reports_its_misses_in_the_claims_of_their_beats(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    claims = ClaimRecorder(mosquitto.port)
    config = write_agent_config(tmp_path, mosquitto.url, PROFILE)
    trace = tmp_path / "agent.jsonl"
    agent = start_agent(config, trace, tmp_path / "agent.log")
    # 240 BPM: a 2.5 s stall spans the 10 beats that 5 s did at 120
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(claims.claims) >= 6, 30), agent.log()
        agent.signal(signal.SIGSTOP)
        time.sleep(2.5)
        agent.signal(signal.SIGCONT)
        time.sleep(4.0)  # catching up takes time, not beats: as long as at 120 BPM
    finally:
        pulse.stop()
        assert agent.stop() == 0, agent.log()
        claims.stop()
    missed: dict[int, int] = {}
    for row in read_trace(trace):
        if row["dropped"] == "deadline_passed":
            beat = int(row["beat_index"])  # type: ignore[call-overload]
            missed[beat] = missed.get(beat, 0) + 1
    assert missed, "the stall made no action miss its deadline"
    reported: dict[int, int] = {}
    seen: set[int] = set()
    for claim in claims.claims:
        meta = _meta(claim)
        seq = int(meta["seq"])  # type: ignore[call-overload]
        if seq in seen or meta.get("final"):
            continue  # a repeat, or the shutdown claim (the last review again)
        seen.add(seq)
        actions = meta["actions"]
        assert isinstance(actions, Mapping)
        misses = int(actions["deadline_misses"])
        reported[claim.beat_index] = reported.get(claim.beat_index, 0) + misses
    for beat, count in sorted(missed.items()):
        assert reported.get(beat) == count, (beat, count, missed, reported)
    assert sum(reported.values()) == sum(missed.values()), (missed, reported)
