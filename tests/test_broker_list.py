"""Several brokers per agent (issue 18 part 1): ``broker.url`` as a list, checked entry by
entry; the link skipping what it cannot reach, retrying a round with backoff, and moving to
the next broker when its own dies, with claims, subscriptions and availability following.

The failover test runs two real Mosquittos, B bridged to A (as one fleet's two brokers):
the pulse and the claim collector are on B, the agent starts on A; A is killed by its pid.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge.broker import Mosquitto, free_port, start_mosquitto
from edge.config import BrokerConfig, parse_broker
from edge.errors import ConfigProblems
from edge.harness import (
    ClaimRecorder,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.mqtt_link import MqttLink
from edge.testing.profiles import LED_TOGGLE

PROFILE = LED_TOGGLE


def _parse(url: object) -> tuple[BrokerConfig, list[str]]:
    problems = ConfigProblems()
    return parse_broker({"url": url}, problems, Path(".")), problems.items


# ---------------------------------------------------------------------------- config


def test_a_single_url_is_as_before() -> None:
    broker, problems = _parse("mqtt://10.0.0.5:1884")
    assert problems == []
    assert (broker.url, broker.host, broker.port, broker.tls) == (
        "mqtt://10.0.0.5:1884",
        "10.0.0.5",
        1884,
        False,
    )
    assert broker.endpoints == () and broker.brokers() == (("10.0.0.5", 1884),)


def test_a_list_names_every_broker_in_order() -> None:
    broker, problems = _parse(["mqtts://n1:8883", "mqtts://n2", "mqtts://n3:9000"])
    assert problems == []
    assert broker.brokers() == (("n1", 8883), ("n2", 8883), ("n3", 9000))
    assert broker.tls and (broker.host, broker.port) == ("n1", 8883)
    assert broker.url == "mqtts://n1:8883, mqtts://n2, mqtts://n3:9000"


def test_a_comma_separated_string_is_a_list_as_the_command_lines_give_it() -> None:
    broker, problems = _parse("mqtt://a:1,mqtt://b:2")
    assert problems == [] and broker.brokers() == (("a", 1), ("b", 2))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ([], "broker.url: is an empty list"),
        (["mqtt://a:1", "http://b"], "broker.url[1]: scheme must be mqtt:// or mqtts://"),
        (["mqtt://a:1", 7], "broker.url[1]: must be a string"),
        (["mqtt://a:1", "mqtt://u:pw@b"], "broker.url[1]: a password in the URL"),
        # Parts MQTT has no use for are refused, not dropped in silence.
        (["mqtt://bob@b:1"], "broker.url[0]: a user name in the URL is not used"),
        (["mqtt://b:1/path"], "broker.url[0]: an MQTT broker URL has no path, query or"),
        (["mqtt://b:1?x=1"], "broker.url[0]: an MQTT broker URL has no path, query or"),
        (["mqtt://b:1#frag"], "broker.url[0]: an MQTT broker URL has no path, query or"),
        (["mqtt:// b:1"], "broker.url[0]: the host may not contain spaces"),
        (["mqtt://b:1\n"], "broker.url[0]: a broker URL may not contain control characters"),
        (["mqtt://b\x00:1"], "broker.url[0]: a broker URL may not contain control characters"),
        (
            ["mqtt://a:1", "mqtt://a:1"],
            "broker.url[1]: names the same broker (a:1) as broker.url[0]",
        ),
        (["mqtt://a", "mqtt://a:1883"], "broker.url[1]: names the same broker (a:1883"),
        (["mqtt://a:99999"], "broker.url[0]: the port must be a number from 1 to 65535"),
        (["mqtt://a:1", "mqtts://b:2"], "broker.url[1]: mixes mqtt:// and mqtts://"),
        (3, "broker.url: must be a string like mqtt://host:1883 or a list"),
        (["mqtt://h:1"] * 1 + [f"mqtt://h:{p}" for p in range(2, 70)], "more than the 64"),
    ],
)
def test_every_bad_entry_is_named_by_its_index(url: object, expected: str) -> None:
    _, problems = _parse(url)
    assert any(expected in p for p in problems), problems


def test_check_reports_every_bad_url_of_the_list_at_once(tmp_path: Path) -> None:
    from edge.config import load_config
    from edge.errors import ConfigError

    write_agent_config(tmp_path, "x", PROFILE)
    path = tmp_path / "agent.toml"
    text = path.read_text().replace('url = "x"', 'url = ["ftp://a", "mqtt://ok:1", "mqtt://"]')
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "broker.url[0]" in message and "broker.url[2]" in message
    assert "broker.url[1]" not in message


# ---------------------------------------------------------------------------- link, no broker


def test_all_unreachable_retries_every_broker_with_backoff_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = [free_port(), free_port()]
    config = BrokerConfig(
        url="(two dead ports)",
        endpoints=tuple(("127.0.0.1", p) for p in dead),
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
    )
    link = MqttLink(config, "test-all-dead", rng=random.Random(1))
    with caplog.at_level(logging.WARNING, logger="edge.mqtt_link"):
        link.start()
        try:
            assert wait_until(lambda: link.unreachable >= 6, 10)
        finally:
            link.stop(timeout=1.0)
    assert not link.connected and link.current_broker is None
    text = caplog.text
    assert f"127.0.0.1:{dead[0]}" in text and "skipping to the next broker" in text
    assert "all 2 brokers unreachable" in text and "retrying with backoff" in text
    # Said once per outage, not once per round.
    assert text.count("all 2 brokers unreachable") == 1


# ---------------------------------------------------------------------------- real brokers


@pytest.mark.broker
@pytest.mark.slow
def test_an_unreachable_first_broker_is_skipped_and_counted(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    dead = free_port()
    config = write_agent_config(tmp_path, f"mqtt://127.0.0.1:{dead}, {mosquitto.url}", PROFILE)
    recorder = ClaimRecorder(mosquitto.port)
    agent = start_agent(config, None, tmp_path / "agent.log")
    # The pulse takes the same list (comma-separated on its command line).
    both = f"mqtt://127.0.0.1:{dead},{mosquitto.url}"
    pulse = start_pulse(both, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(recorder.claims) >= 3, 20), agent.log() + pulse.log()
    finally:
        pulse.stop()
        assert agent.stop() == 0, agent.log()
        recorder.stop()
    md = dict(recorder.claims[-1].metadata or {})
    assert md["broker"] == f"127.0.0.1:{mosquitto.port}"
    assert md["broker_unreachable"] >= 1
    assert f"cannot reach broker 127.0.0.1:{dead}" in agent.log()
    assert "skipping to the next broker" in agent.log()


class _Availability:
    """Every message on one topic of a broker, with its arrival time."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: list[tuple[float, bytes]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = lambda c, u, m: self.seen.append(
            (time.monotonic(), bytes(m.payload))
        )
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _bridged_pair() -> tuple[Mosquitto, Mosquitto]:
    """A, and B bridged to A for the cluster's topics both ways."""
    a = start_mosquitto()
    try:
        b = start_mosquitto(
            extra_conf=(
                "connection to_a\n"
                f"address 127.0.0.1:{a.port}\n"
                "topic backbeat/# both 1\n"
                "cleansession true\n"
                "restart_timeout 1\n"
            )
        )
    except BaseException:
        a.close()
        raise
    return a, b


@pytest.mark.broker
@pytest.mark.slow
def test_list_failover_keeps_the_beat_and_loses_no_claim(tmp_path: Path) -> None:
    a, b = _bridged_pair()
    try:
        config = write_agent_config(tmp_path, "x", PROFILE)
        config.write_text(config.read_text().replace('"x"', f'["{a.url}", "{b.url}"]'))
        recorder = ClaimRecorder(b.port)
        availability = _Availability(b.port, "backbeat/bench/agents/bench:pi-01/availability")
        trace = tmp_path / "agent.jsonl"
        agent = start_agent(config, trace, tmp_path / "agent.log")
        pulse = start_pulse(b.url, "bench", 240, tmp_path / "pulse.jsonl", tmp_path / "pulse.log")
        try:

            def locked_on(broker: Mosquitto) -> bool:
                claims = recorder.claims
                if not claims:
                    return False
                md = dict(claims[-1].metadata or {})
                sync = md.get("sync")
                state = sync.get("state") if isinstance(sync, Mapping) else None
                return md.get("broker") == f"127.0.0.1:{broker.port}" and state == "locked"

            assert wait_until(lambda: locked_on(a), 20), agent.log()
            # Kill A between two claims (each goes out at its beat's end, 250 ms apart), so
            # none is in A's hands only, not yet bridged: a lone broker cannot keep that.
            seen = len(recorder.claims)
            assert wait_until(lambda: len(recorder.claims) > seen, 3)
            time.sleep(0.08)
            killed_at = time.monotonic()
            a.kill()
            assert wait_until(lambda: locked_on(b), 15), agent.log()
            moved_after = time.monotonic() - killed_at
            seen = len(recorder.claims)
            assert wait_until(lambda: len(recorder.claims) >= seen + 8, 10)
        finally:
            pulse.stop()
            assert agent.stop() == 0, agent.log()
            recorder.stop()
            availability.stop()
    finally:
        a.close()
        b.close()
    claims = recorder.claims
    seqs = sorted({int(dict(c.metadata or {})["seq"]) for c in claims})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"claims lost: {seqs}"
    brokers = [dict(c.metadata or {}).get("broker") for c in claims]
    assert f"127.0.0.1:{a.port}" in brokers and brokers[-1] == f"127.0.0.1:{b.port}"
    assert moved_after < 10, moved_after
    assert "moved to broker" in agent.log()
    # Its retained "online" followed it: published on B after A died (A cannot bridge it).
    assert any(at > killed_at and payload == b"online" for at, payload in availability.seen)
    # It kept firing on its own clock through the move: no beat without its toggle.
    fired = sorted(
        {int(r["beat_index"]) for r in read_trace(trace) if r["fired_mono"]}  # type: ignore[call-overload]
    )
    assert fired == list(range(fired[0], fired[-1] + 1)), fired
    during = [
        r
        for r in read_trace(trace)
        if r["fired_mono"] and killed_at <= float(r["fired_mono"]) <= killed_at + moved_after  # type: ignore[arg-type]
    ]
    assert during, "nothing fired between the kill and the move"


@pytest.mark.broker
@pytest.mark.slow
def test_health_gate_takes_a_list_and_skips_a_dead_broker(mosquitto: Mosquitto) -> None:
    import subprocess
    import sys

    from test_fleet_rollout import HEALTH, FakeAgents

    fake = FakeAgents(mosquitto)
    try:
        fake.add("bench:pi-01")
        fake.start()
        dead = f"mqtt://127.0.0.1:{free_port()}"
        args = [sys.executable, str(HEALTH), "--cluster", "bench", "--agent-id", "bench:pi-01"]
        got = subprocess.run(
            [*args, "--broker", f"{dead},{mosquitto.url}", "--claims", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stdout + got.stderr
        assert f"skipped {dead}" in got.stderr
        got = subprocess.run(
            [*args, "--broker", f"{dead},{dead}x", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 2 and "entry 1" in got.stderr, got.stderr
        got = subprocess.run(
            [*args, "--broker", f"{dead},mqtt://127.0.0.1:{free_port()}", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 3 and got.stdout.startswith("unreachable:"), got.stdout
    finally:
        fake.close()


@pytest.mark.broker
def test_monitor_takes_a_list_and_says_which_broker_it_uses(mosquitto: Mosquitto) -> None:
    import io

    from edge.monitor import run_monitor

    out = io.StringIO()
    dead = f"mqtt://127.0.0.1:{free_port()}"
    code = run_monitor(f"{dead},{mosquitto.url}", "bench", duration_s=2.0, out=out)
    assert code == 0
    assert f"(using 127.0.0.1:{mosquitto.port})" in out.getvalue()


def test_a_broker_that_closes_before_its_connack_is_said_so_not_an_old_error() -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(256)  # the CONNECT
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    dead = free_port()
    config = BrokerConfig(
        url="(one dead, one rude)",
        endpoints=(("127.0.0.1", dead), ("127.0.0.1", port)),
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
    )
    link = MqttLink(config, "test-rude", rng=random.Random(2))
    link.start()
    try:
        assert wait_until(
            lambda: link.last_error is not None and f":{port} closed" in link.last_error, 10
        ), link.last_error
    finally:
        link.stop(timeout=1.0)
        server.close()
    assert link.last_error == f"broker 127.0.0.1:{port} closed the connection before its CONNACK"
