"""End to end, signed: a real Mosquitto, the real pulse (``--signing-key``), the real agent
(``[security] beat_keys`` and ``signing_key``) and the real monitor (``--keys``), with an
attacker on the same broker publishing unsigned and badly signed frames on the beat topic.

The attacker sends, while the agent is locked: a copy of every real frame's *next* frame
140 ms early (unsigned, and again with the real frame's signature pasted on), a lone
``tempo_bpm = 1000`` and a lone ``0.1`` frame 30 ms early, a lone ``downbeat = true`` on a
non-downbeat, and an index-jump pair (+100000). None may move an action: the time the
agent's timeline gives every actuation stays within 2 ms of where the pulse's own trace
says it belongs (and it fires close to it), each beat gets its action once, the downbeat
action fires on every downbeat. The claims count the attacker's frames
as ``unsigned`` and ``bad_signature``; the monitor marks the agent ``signed`` and a claim
the attacker tampered with ``forged``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.beatmark import BeatMark
from edge.broker import Mosquitto
from edge.harness import (
    SPOOF_PROFILE,
    BeatSpoofer,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.messages import decode_status_claim_with_map
from edge.outbox_seq import boot_id
from edge.signing import keygen

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BPM = 240.0  # the attack spans beats, not seconds: the faster, the sooner it is over
BEAT = 60.0 / BPM
MONITOR = ("--cluster", "bench", "--json", "--duration", "60")


class Attacker(BeatSpoofer):
    """Watches the real beat and claims, sends spoofs."""

    def __init__(self, port: int) -> None:
        self.forge_claim = threading.Event()
        self.forged = 0
        self._lone_done = False
        super().__init__(port, topics=(("backbeat/bench/status/+", 1),))

    def on_frame(self, data: dict[str, Any]) -> None:
        metadata = data.get("metadata") or {}
        if "sig_kid" not in metadata:
            return  # not the pulse's (a spoof has no kid)
        sig = metadata["sig"]
        unsigned = {k: v for k, v in data.items() if k != "metadata"}
        following = dict(unsigned, beat_index=data["beat_index"] + 1)
        following["downbeat"] = following["beat_index"] % 4 == 0
        # Early copies: the next frame, 140 ms before it is due; unsigned, then with a
        # real signature pasted on.
        self.send("early_copy", following, BEAT - 0.14)
        self.send("pasted_sig", dict(following, metadata={"sig": sig}), BEAT - 0.13)
        if not self._lone_done:
            self._lone_done = True
            self.send("tempo_1000", dict(following, tempo_bpm=1000), BEAT - 0.03)
            later = dict(unsigned, beat_index=data["beat_index"] + 2)
            self.send("tempo_0.1", dict(later, tempo_bpm=0.1), 2 * BEAT - 0.03)
            lone = dict(unsigned, beat_index=data["beat_index"] + 3, downbeat=True)
            if lone["beat_index"] % 4 != 0:
                self.send("lone_downbeat", lone, 3 * BEAT - 0.02)
            jump = data["beat_index"] + 100_000
            self.send("index_jump", dict(unsigned, beat_index=jump), 4 * BEAT - 0.05)
            self.send("index_jump", dict(unsigned, beat_index=jump + 1), 5 * BEAT - 0.05)

    def on_other(self, topic: str, payload: bytes) -> None:
        # a claim: the first signed one after forge_claim is set goes out again, altered
        if not self.forge_claim.is_set() or self.forged:
            return
        try:
            _, data = decode_status_claim_with_map(payload)
        except ValueError:
            return
        if "sig" not in (data.get("metadata") or {}):
            return
        self.forged += 1
        data["state"] = "completed"  # the signature stays, the payload changes
        self.publish(topic, json.dumps(data).encode(), qos=1)


def test_only_the_signed_pulse_moves_the_hardware(
    tmp_path: Path,
    mosquitto: Mosquitto,
    actuations_sit_on_the_pulse: Callable[[Path, Path, float, float, int], None],
) -> None:
    pulse_key, _, _ = keygen(tmp_path / "pulse")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys / "agent")  # the monitor reads keys/*.pub.pem; agent.pem is the agent's
    config = write_agent_config(
        tmp_path,
        mosquitto.url,
        SPOOF_PROFILE,
        extra=f'[security]\nbeat_keys = ["pulse.pub.pem"]\nsigning_key = "{keys / "agent.pem"}"\n',
    )
    monitor_out = tmp_path / "monitor.jsonl"
    with monitor_out.open("wb") as out:
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "monitor",
                "--broker",
                mosquitto.url,
                *MONITOR,
                "--keys",
                str(keys),
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    agent_trace, pulse_trace = tmp_path / "agent.jsonl", tmp_path / "pulse.jsonl"
    agent = start_agent(config, agent_trace, tmp_path / "agent.log")
    attacker = Attacker(mosquitto.port)
    pulse = start_pulse(
        mosquitto.url,
        "bench",
        BPM,
        pulse_trace,
        tmp_path / "pulse.log",
        signing_key=pulse_key,
    )
    try:
        # locked, and settled: the follower learns the clock rate and the path delay from
        # a few seconds of frames (scripts/bench_agent.py warms up as long)
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 12, 25), agent.log()
        time.sleep(6.0)
        attack_from = time.monotonic()
        attacker.armed.set()
        time.sleep(18 * BEAT)
        attacker.forge_claim.set()
        assert wait_until(lambda: attacker.forged == 1, 5)
        time.sleep(4 * BEAT)
    finally:
        attacker.stop()
        pulse.stop()
        code = agent.stop()
        monitor.terminate()
        monitor.wait(timeout=10)
    assert code == 0, agent.log()
    # The newest signed beat it followed is kept for its next start (edge.beatmark).
    mark = BeatMark(tmp_path / "outbox", "").load()
    assert mark is not None, agent.log()
    assert abs(mark.deadline.timestamp() - time.time()) < 30.0  # the last beats' (one clock)
    assert mark.boot == boot_id().hex()
    assert "refused as replays" not in agent.log()  # nothing was kept at its start
    for kind in ("early_copy", "pasted_sig", "tempo_1000", "tempo_0.1", "index_jump"):
        assert attacker.sent.get(kind, 0) >= 1, attacker.sent

    # Every actuation sits where the pulse's own beats put it (within 2 ms by the agent's
    # timeline), each beat gets its action once, the downbeat action every downbeat.
    actuations_sit_on_the_pulse(pulse_trace, agent_trace, attack_from, BEAT, 20)

    # The claims count the attacker's frames; the monitor verified them.
    lines = [json.loads(line) for line in monitor_out.read_text().splitlines() if line]
    own = [line for line in lines if line["signature"] == "signed"]
    assert own and all(line["agent_id"] == "bench:pi-01" for line in lines)
    rejected = own[-1]["metadata"]["frames_rejected"]
    assert rejected.get("unsigned", 0) >= attacker.sent["early_copy"] - 2, rejected
    assert rejected.get("bad_signature", 0) >= attacker.sent["pasted_sig"] - 2, rejected
    forged = [line for line in lines if line["signature"] == "forged"]
    assert len(forged) == 1 and forged[0]["state"] == "completed"
    assert not [line for line in lines if line["signature"] == "unsigned"]
    assert "rejected beat frame" in agent.log()


def test_the_demo_runs_signed(demo_run: subprocess.CompletedProcess[str]) -> None:
    result = demo_run  # demo --duration 10 --plain --bpm 120, as test_cli.py reads it too
    assert result.returncode == 0, result.stderr
    assert "beat frames are checked against key(s)" in result.stderr
    assert "unsigned frames are rejected" in result.stderr
    assert "rejected beat frame" not in result.stderr  # the pulse's frames verify
    assert "sync locked" in result.stdout
