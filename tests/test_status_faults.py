"""Status that is never lost: fault tests with a real Mosquitto and the real agent process.

A subscriber with a persistent session (QoS 1) records every claim; the broker keeps
sessions across its restart, so what the agent publishes after a restart reaches the
subscriber even before the subscriber is back.
"""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto, free_port, start_mosquitto
from edge.harness import read_trace, start_agent, start_pulse, wait_until, write_agent_config
from edge.messages import StatusClaim, decode_status_claim
from edge.testing.profiles import MOCK_GPIO, TOGGLE_EVERY_BEAT, device

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Through a 15 s broker outage (no beat) the LED keeps toggling on the free-running model;
# by default it would go to its safe state once the beat is lost (10 s).
PROFILE = MOCK_GPIO + device("led", "led", 17, keep_running_when_lost=True) + TOGGLE_EVERY_BEAT
TOPIC = "backbeat/bench/status/bench:pi-01"


class Subscriber:
    """Records every claim on the agent's status topic, decoded (decoding validates)."""

    def __init__(self, port: int) -> None:
        self.claims: list[StatusClaim] = []
        self.availability: list[str] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="test-subscriber",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # floats work
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe([(TOPIC, 1), ("backbeat/bench/agents/+/availability", 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic == TOPIC:
                self.claims.append(decode_status_claim(bytes(msg.payload)))
            else:
                self.availability.append(msg.payload.decode())

    def seqs(self) -> list[int]:
        with self.lock:
            return [int(dict(c.metadata or {})["seq"]) for c in self.claims]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def assert_complete_and_ordered(sub: Subscriber, beat_gaps: int = 0) -> list[StatusClaim]:
    """Every seq from the first to the last arrived; first arrivals are in order; beats
    follow one another except for at most ``beat_gaps`` gaps (an agent that was dead)."""
    first: dict[int, StatusClaim] = {}
    order = []
    for claim, seq in zip(sub.claims, sub.seqs(), strict=True):
        if seq not in first:
            first[seq] = claim
            order.append(seq)
    assert order == sorted(order), f"claims out of order: {order}"
    missing = sorted(set(range(order[0], order[-1] + 1)) - set(first))
    assert not missing, f"claims missing: seq {missing}"
    beats = [first[s].beat_index for s in order]
    # one claim per beat, none skipped (the final shutdown claim may repeat the last beat)
    steps = [b2 - b1 for b1, b2 in itertools.pairwise(beats)]
    assert all(step >= 0 for step in steps), beats
    assert sum(1 for step in steps if step > 1) <= beat_gaps, beats
    return [first[s] for s in order]


def _connected_times(log: str) -> list[float]:
    times = []
    for m in re.finditer(r"^(\S+ \S+) INFO \S+: broker connected", log, re.M):
        times.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def test_broker_outage_loses_no_claim(tmp_path: Path, durable_mosquitto: Mosquitto) -> None:
    broker = durable_mosquitto
    sub = Subscriber(broker.port)
    config = write_agent_config(tmp_path, broker.url, PROFILE)
    agent = start_agent(config, tmp_path / "agent.jsonl", tmp_path / "agent.log")
    # 240 BPM: a 15 s outage holds the 60 beats that 30 s at 120 BPM did, and is still
    # past the 10 s after which the beat counts as lost.
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(sub.claims) >= 6, 30), agent.log()
        broker.stop()
        down_at = time.monotonic()
        time.sleep(15.0)
        fired_during = [
            r
            for r in read_trace(tmp_path / "agent.jsonl")
            if r["fired_mono"] and float(r["fired_mono"]) > down_at + 1  # type: ignore[arg-type]
        ]
        broker.restart()
        back_at = time.time()
        assert wait_until(lambda: len(_connected_times(agent.log())) >= 2, 15), agent.log()
        reconnect_s = _connected_times(agent.log())[-1] - back_at
        time.sleep(2.0)  # live claims after the backlog (8 beats)
    finally:
        pulse.stop()
        assert agent.stop() == 0, agent.log()
        time.sleep(0.5)
        sub.close()
    assert len(fired_during) >= 40, "the agent must keep firing on its free-running clock"
    assert reconnect_s < 3.0, f"reconnected {reconnect_s:.2f} s after the broker returned"
    claims = assert_complete_and_ordered(sub)
    assert len(claims) >= 60  # 15 s at 4 beats/s were all reported, late but complete
    assert sub.availability[-1] == "offline"


def test_sigkill_during_outage_loses_no_claim(tmp_path: Path, durable_mosquitto: Mosquitto) -> None:
    broker = durable_mosquitto
    sub = Subscriber(broker.port)
    config = write_agent_config(tmp_path, broker.url, PROFILE)
    agent = start_agent(config, tmp_path / "agent.jsonl", tmp_path / "agent.log")
    # 240 BPM: as many claims pile up in half the time they took at 120
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(sub.claims) >= 4, 30), agent.log()
        broker.stop()
        time.sleep(2.5)  # claims pile up in the outbox (~10)
        agent.kill()  # SIGKILL: no goodbye, whatever was in flight
        agent = start_agent(config, tmp_path / "agent2.jsonl", tmp_path / "agent2.log")
        time.sleep(2.0)
        broker.restart()
        assert wait_until(lambda: len(_connected_times(agent.log())) >= 1, 15), agent.log()
        time.sleep(3.0)  # the backlog, then live claims (~12)
    finally:
        pulse.stop()
        agent.stop()
        time.sleep(0.5)
        sub.close()
    # The agent was dead between the SIGKILL and its restart: those beats have no claim,
    # but every claim it made (seq) arrived, the backlog first.
    claims = assert_complete_and_ordered(sub, beat_gaps=1)
    assert len(claims) >= 20


def test_outbox_limit_drops_oldest_and_says_so(
    tmp_path: Path, durable_mosquitto: Mosquitto
) -> None:
    broker = durable_mosquitto
    sub = Subscriber(broker.port)
    config = write_agent_config(
        tmp_path, broker.url, PROFILE, extra="max_count = 5\n"
    )  # into [outbox], the last section
    agent = start_agent(config, None, tmp_path / "agent.log")
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(sub.claims) >= 4, 30), agent.log()
        broker.stop()
        time.sleep(5.0)  # ~20 beats, room for 5
        broker.restart()
        assert wait_until(
            lambda: any(
                int(dict(dict(c.metadata or {}).get("outbox", {})).get("dropped", 0)) > 0
                for c in sub.claims
            ),
            20,
        ), agent.log()
    finally:
        pulse.stop()
        assert agent.stop() == 0  # no crash
        sub.close()
    dropped = max(
        int(dict(dict(c.metadata or {}).get("outbox", {})).get("dropped", 0)) for c in sub.claims
    )
    assert dropped >= 10


def test_wrong_password_is_a_clear_error_and_retried(tmp_path: Path) -> None:
    port = free_port()
    import subprocess

    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "pi-01", "the-right-one"],
        check=True,
        capture_output=True,
    )
    listener = f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
    with start_mosquitto(port=port, listener_conf=listener) as broker:
        wrong = "not-the-right-one-" + secrets.token_hex(8)
        (tmp_path / "pw").write_text(wrong + "\n")
        config = write_agent_config(
            tmp_path, broker.url, PROFILE, broker_extra='username = "pi-01"\npassword_file = "pw"\n'
        )
        agent = start_agent(config, None, tmp_path / "agent.log")
        try:
            assert wait_until(lambda: "refused" in agent.log(), 15), agent.log()
            time.sleep(3.0)
            assert agent.process.poll() is None  # still retrying
        finally:
            assert agent.stop() == 0
    log = agent.log()
    assert wrong not in log  # the password never reaches the log
    assert "not authorized" in log.lower() or "bad user name or password" in log.lower(), log


def test_wrong_ca_is_a_clear_error_and_retried(tmp_path: Path) -> None:
    pytest.importorskip("ssl")
    import subprocess

    def make_ca(name: str) -> tuple[Path, Path]:
        key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                f"/CN={name}",
                "-keyout",
                str(key),
                "-out",
                str(crt),
            ],
            check=True,
            capture_output=True,
        )
        return key, crt

    server_key, server_crt = make_ca("127.0.0.1")
    _, other_ca = make_ca("some-other-ca")
    port = free_port()
    listener = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"certfile {server_crt}\nkeyfile {server_key}\n"
    )
    with start_mosquitto(port=port, listener_conf=listener):
        config = write_agent_config(
            tmp_path, f"mqtts://127.0.0.1:{port}", PROFILE, broker_extra=f'ca_file = "{other_ca}"\n'
        )
        agent = start_agent(config, None, tmp_path / "agent.log")
        try:
            assert wait_until(lambda: "certificate did not verify" in agent.log(), 15), agent.log()
            time.sleep(2.0)
            assert agent.process.poll() is None
        finally:
            agent.signal(signal.SIGTERM)
            assert agent.process.wait(timeout=10) == 0
