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
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto
from edge.harness import read_trace, start_agent, start_pulse, wait_until, write_agent_config
from edge.messages import decode_beat_frame_with_map, decode_status_claim_with_map
from edge.signing import keygen

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROFILE = """
[gpio]
pin_factory = "mock"

[devices.led]
kind = "led"
pin = 17

[devices.relay]
kind = "relay"
pin = 27
safe_state = 0

[[score]]
device = "led"
do = "toggle"
every = 1
phase = "execute"
offset = 0.0
essential = true

[[score]]
essential = true
device = "relay"
do = "on"
downbeat = true
phase = "execute"
offset = 0.5
"""
BPM = 150.0
BEAT = 60.0 / BPM
PLACE = {0: (1, 0.0), 1: (1, 0.5)}  # rule -> (phase number, offset in the phase)
TOLERANCE_S = 0.002
MONITOR = ("--cluster", "bench", "--json", "--duration", "60")


class Attacker:
    """A paho client on the same broker: watches the real beat and claims, sends spoofs."""

    def __init__(self, port: int) -> None:
        self.sent: dict[str, int] = {}
        self.armed = threading.Event()
        self.forge_claim = threading.Event()
        self.forged = 0
        self._lone_done = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe("backbeat/bench/beat")
        self._client.subscribe("backbeat/bench/status/+", qos=1)
        self._client.loop_start()

    def _send(self, kind: str, data: dict[str, Any], delay: float = 0.0) -> None:
        payload = json.dumps(data).encode()

        def go() -> None:
            self._client.publish("backbeat/bench/beat", payload)
            self.sent[kind] = self.sent.get(kind, 0) + 1

        if delay <= 0:
            go()
        else:
            threading.Timer(delay, go).start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if "/status/" in msg.topic:
            self._on_claim(msg.topic, bytes(msg.payload))
            return
        try:
            _, data = decode_beat_frame_with_map(bytes(msg.payload))
        except ValueError:
            return
        metadata = data.get("metadata") or {}
        if "sig_kid" not in metadata or not self.armed.is_set():
            return  # our own spoofs (none has a kid), or not yet
        sig = metadata["sig"]
        unsigned = {k: v for k, v in data.items() if k != "metadata"}
        following = dict(unsigned, beat_index=data["beat_index"] + 1)
        following["downbeat"] = following["beat_index"] % 4 == 0
        # Early copies: the next frame, 140 ms before it is due; unsigned, then with a
        # real signature pasted on.
        self._send("early_copy", following, BEAT - 0.14)
        self._send("pasted_sig", dict(following, metadata={"sig": sig}), BEAT - 0.13)
        if not self._lone_done:
            self._lone_done = True
            self._send("tempo_1000", dict(following, tempo_bpm=1000), BEAT - 0.03)
            later = dict(unsigned, beat_index=data["beat_index"] + 2)
            self._send("tempo_0.1", dict(later, tempo_bpm=0.1), 2 * BEAT - 0.03)
            lone = dict(unsigned, beat_index=data["beat_index"] + 3, downbeat=True)
            if lone["beat_index"] % 4 != 0:
                self._send("lone_downbeat", lone, 3 * BEAT - 0.02)
            jump = data["beat_index"] + 100_000
            self._send("index_jump", dict(unsigned, beat_index=jump), 4 * BEAT - 0.05)
            self._send("index_jump", dict(unsigned, beat_index=jump + 1), 5 * BEAT - 0.05)

    def _on_claim(self, topic: str, payload: bytes) -> None:
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
        self._client.publish(topic, json.dumps(data).encode(), qos=1)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_only_the_signed_pulse_moves_the_hardware(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pulse_key, _, _ = keygen(tmp_path / "pulse")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys / "agent")  # the monitor reads keys/*.pub.pem; agent.pem is the agent's
    config = write_agent_config(
        tmp_path,
        mosquitto.url,
        PROFILE,
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
    for kind in ("early_copy", "pasted_sig", "tempo_1000", "tempo_0.1", "index_jump"):
        assert attacker.sent.get(kind, 0) >= 1, attacker.sent

    # Every actuation sits where the pulse's own beats put it.
    starts = {
        int(r["beat_index"]): float(r["intended_mono"])  # type: ignore[arg-type,call-overload]
        for r in read_trace(pulse_trace)
        if r["phase"] == "plan"
    }
    last_sent = max(starts)  # after it the agent free-ran: no truth to compare with
    rows = [
        r
        for r in read_trace(agent_trace)
        if r["fired_mono"] is not None and int(r["beat_index"]) <= last_sent  # type: ignore[call-overload]
    ]
    attacked = [r for r in rows if float(r["fired_mono"]) >= attack_from]  # type: ignore[arg-type]
    assert len(attacked) >= 20
    errors = []
    for r in attacked:
        beat = int(r["beat_index"])  # type: ignore[call-overload]
        assert beat in starts, f"an action of beat {beat}, which the pulse never sent: {r}"
        phase, offset = PLACE[int(r["rule"])]  # type: ignore[call-overload]
        truth = starts[beat] + (phase + offset) * BEAT / 3
        # Where the agent's timeline put the action (what an attacker would move) is
        # within 2 ms of the truth, every time; when it actually fired adds the wake-up,
        # which on a loaded 2-core box spikes now and then: a generous window for that.
        errors.append(abs(float(r["intended_mono"]) - truth))  # type: ignore[arg-type]
        assert errors[-1] < TOLERANCE_S, (r, truth, sorted(errors)[-5:])
        assert abs(float(r["fired_mono"]) - truth) < 0.03, (r, truth)  # type: ignore[arg-type]
    print(f"worst timeline error under attack: {max(errors) * 1000:.3f} ms of {len(errors)}")
    toggles = [int(r["beat_index"]) for r in rows if r["rule"] == 0]  # type: ignore[call-overload]
    assert toggles == list(range(toggles[0], toggles[-1] + 1)), toggles  # once each, in order
    # the downbeat action on every downbeat of the attack (a lone spoofed downbeat on beat
    # 4k+3 would silence it for two bars)
    first = min(int(r["beat_index"]) for r in attacked)  # type: ignore[call-overload]
    downbeats = sorted(int(r["beat_index"]) for r in attacked if r["rule"] == 1)  # type: ignore[call-overload]
    assert downbeats == [b for b in range(first, last_sent + 1) if b % 4 == 0], downbeats

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


def test_the_demo_runs_signed() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--duration", "6", "--plain", "--bpm", "120"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert "beat frames are checked against key(s)" in result.stderr
    assert "unsigned frames are rejected" in result.stderr
    assert "rejected beat frame" not in result.stderr  # the pulse's frames verify
    assert "sync locked" in result.stdout
