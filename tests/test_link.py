"""The hardened MQTT link (issue 7): TLS and mTLS, password from a credential, MQTT 5
properties, availability with a delayed will, resubscribe after a broker restart.

Process tests run a real Mosquitto (``edge.broker``) and the real agent process
(``edge.harness``); certificates are made with ``openssl`` in ``tmp_path``. Observers are
paho clients speaking MQTT 5 where properties matter. No assertion bounds a duration from
above except as a generous "it happened at all" timeout; speed is ``scripts/bench_link.py``.

Already elsewhere: outage/SIGKILL/outbox/wrong password/wrong CA in
``test_status_faults.py``, MQTT 3.1.1 in ``test_nats_interop.py``.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto, free_port, start_mosquitto
from edge.config import BrokerConfig
from edge.errors import LinkError
from edge.harness import (
    Proc,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.messages import decode_status_claim
from edge.mqtt_link import MqttLink, QuietWake, backoff_delay, read_password
from edge.testing.profiles import LED_TOGGLE
from edge.topics import Topics

PROFILE = LED_TOGGLE
AGENT_ID = "bench:pi-01"
STATUS = f"backbeat/bench/status/{AGENT_ID}"
AVAILABILITY = f"backbeat/bench/agents/{AGENT_ID}/availability"


# ---------------------------------------------------------------------------- unit: backoff


class _Ceiling(random.Random):
    """An rng whose uniform(a, b) is b: the backoff without jitter (paho's own policy)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_stays_within_zero_and_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(0, 40):
        ceiling = min(2.0, 0.25 * 2**attempt)
        for _ in range(50):
            delay = backoff_delay(attempt, 0.25, 2.0, rng)
            assert 0.0 <= delay <= ceiling, (attempt, delay)


def test_backoff_ceiling_doubles_then_is_capped() -> None:
    delays = [backoff_delay(a, 0.25, 2.0, _Ceiling()) for a in range(7)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    # A link down for days must not overflow the exponent.
    assert backoff_delay(10_000, 0.25, 30.0, _Ceiling()) == 30.0


def test_backoff_is_full_jitter_across_the_whole_range() -> None:
    rng = random.Random(42)
    samples = sorted(backoff_delay(6, 0.25, 2.0, rng) for _ in range(4000))
    # Full jitter: uniform over [0, cap], not "cap +/- a little" and not "cap/2 .. cap".
    assert samples[0] < 0.05 * 2.0
    assert samples[-1] > 0.95 * 2.0
    mean = sum(samples) / len(samples)
    assert abs(mean - 1.0) < 0.05
    quartiles = [samples[len(samples) * q // 4] for q in (1, 2, 3)]
    for got, want in zip(quartiles, (0.5, 1.0, 1.5), strict=True):
        assert abs(got - want) < 0.1, quartiles
    # Two links (different seeds) do not wait the same.
    one, two = random.Random(1), random.Random(2)
    a = [backoff_delay(3, 0.25, 2.0, one) for _ in range(5)]
    b = [backoff_delay(3, 0.25, 2.0, two) for _ in range(5)]
    assert all(x != y for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------- unit: password


def test_password_relative_name_is_found_in_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credentials: Path
) -> None:
    (credentials / "broker-password").write_text("from-systemd\n")
    monkeypatch.chdir(tmp_path)
    assert read_password(Path("broker-password")) == "from-systemd"


def test_password_credential_wins_over_the_file_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credentials: Path
) -> None:
    # The unit's LoadCredential= source usually sits beside the config (and is root-only);
    # config.py has made the name absolute, yet the credential must still come first.
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "broker-password").write_text("root-only-original\n")
    (credentials / "broker-password").write_text("the-credential\n")
    assert read_password(etc / "broker-password") == "the-credential"
    # Without systemd the configured file itself is read.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert read_password(etc / "broker-password") == "root-only-original"


def test_password_falls_back_to_the_path_when_no_credential_has_that_name(
    tmp_path: Path, credentials: Path
) -> None:
    (tmp_path / "pw").write_text("by-hand")
    assert read_password(tmp_path / "pw") == "by-hand"


def test_password_missing_file_error_names_the_file_not_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    missing = tmp_path / "nowhere" / "broker-password"
    with pytest.raises(LinkError) as info:
        read_password(missing)
    assert str(missing) in str(info.value)
    assert "password_file" in str(info.value)


def test_password_unreadable_is_a_link_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(LinkError, match="a-directory"):
        read_password(directory)


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw", "pw"),
        ("pw\n\n", "pw\n"),  # only one newline is the file's; the rest is the password's
        (" pw \n", " pw "),
        ("", ""),
    ],
)
def test_password_strips_exactly_one_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, password: str
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "pw"
    path.write_bytes(text.encode())
    assert read_password(path) == password


def test_password_none_means_no_password() -> None:
    assert read_password(None) is None


# ---------------------------------------------------------------------------- unit: topics


def test_topics_follow_the_contract() -> None:
    t = Topics("backbeat", "c1")
    assert t.beat == "backbeat/c1/beat"
    assert t.bar == "backbeat/c1/bar"
    assert t.status("relay:pi-07") == "backbeat/c1/status/relay:pi-07"
    assert t.all_status == "backbeat/c1/status/+"
    assert t.availability("relay:pi-07") == "backbeat/c1/agents/relay:pi-07/availability"
    assert t.all_availability == "backbeat/c1/agents/+/availability"
    assert t.pulse_control == "backbeat/c1/pulse/tempo"
    other = Topics("site/a", "bench")
    assert other.beat == "site/a/bench/beat"


# ---------------------------------------------------------------------------- process helpers


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    expiry: int | None
    at: float  # monotonic, on arrival


class Watcher:
    """An MQTT 5 observer recording everything on its topics, with properties."""

    def __init__(self, port: int, topics: tuple[str, ...], client_id: str = "test-watcher") -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.topics = topics
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        item = Seen(
            msg.topic,
            bytes(msg.payload),
            bool(msg.retain),
            getattr(props, "ContentType", None),
            getattr(props, "MessageExpiryInterval", None),
            time.monotonic(),
        )
        with self.lock:
            self.seen.append(item)

    def on(self, topic: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [s.payload for s in self.on(topic)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic: str, timeout: float = 3.0) -> bytes | None:
    """The retained message on ``topic`` as a fresh subscriber sees it (None: nothing)."""
    watcher = Watcher(port, (topic,), client_id=f"test-retained-{secrets.token_hex(4)}")
    try:
        wait_until(lambda: any(s.retain for s in watcher.on(topic)), timeout)
        found = [s.payload for s in watcher.on(topic) if s.retain]
        return found[0] if found else None
    finally:
        watcher.close()


def connected_count(agent: Proc) -> int:
    return agent.log().count("broker connected")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class Pki:
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A private CA, a server certificate for IP 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    _openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "2",
        "-subj",
        "/CN=backbeat test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )

    def issue(name: str, extension: str) -> tuple[Path, Path]:
        key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext_file = directory / f"{name}.ext"
        ext_file.write_text(extension + "\n")
        _openssl("req", "-new", *ec, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext_file),
            "-out",
            str(crt),
        )
        return crt, key

    server_crt, server_key = issue("server", "subjectAltName=IP:127.0.0.1")
    client_crt, client_key = issue("pi-01", "extendedKeyUsage=clientAuth")
    return Pki(ca, server_crt, server_key, client_crt, client_key)


# ---------------------------------------------------------------------------- mTLS + credential


@pytest.mark.broker
@pytest.mark.slow
def test_mtls_with_password_credential_delivers_claims_and_never_shows_the_password(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    password = "pw-" + secrets.token_hex(12)
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "pi-01", password],
        check=True,
        capture_output=True,
    )
    secure_port, plain_port = free_port(), free_port()
    # The agent alone comes in over mTLS + password; pulse and observer use a plain
    # loopback listener (per_listener_settings keeps the two apart).
    listeners = (
        "per_listener_settings true\n"
        f"listener {secure_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"cafile {pki.ca}\ncertfile {pki.server_crt}\nkeyfile {pki.server_key}\n"
        "require_certificate true\n"
        f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    )
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "broker-password").write_text(password + "\n")
    # A stale copy beside the config must lose to the credential.
    (tmp_path / "broker-password").write_text("stale-wrong-password\n")
    with start_mosquitto(port=secure_port, listener_conf=listeners) as broker:
        watcher = Watcher(plain_port, (STATUS, AVAILABILITY))
        config = write_agent_config(
            tmp_path,
            f"mqtts://127.0.0.1:{secure_port}",
            PROFILE,
            broker_extra=(
                f'ca_file = "{pki.ca}"\ncert_file = "{pki.client_crt}"\n'
                f'key_file = "{pki.client_key}"\nusername = "pi-01"\n'
                'password_file = "broker-password"\n'
            ),
        )
        agent = start_agent(
            config, None, tmp_path / "agent.log", env={"CREDENTIALS_DIRECTORY": str(creds)}
        )
        pulse = start_pulse(
            f"mqtt://127.0.0.1:{plain_port}", "bench", 240, None, tmp_path / "pulse.log"
        )
        try:
            cmdline = Path(f"/proc/{agent.process.pid}/cmdline").read_bytes()
            arrived = wait_until(lambda: len(watcher.on(STATUS)) >= 3, 30)
        finally:
            pulse.stop()
            code = agent.stop()
            watcher.close()
        log = agent.log()
        assert arrived, f"no claims over mTLS:\n{log}\n{broker.log()}"
        assert code == 0, log
    claims = [decode_status_claim(s.payload) for s in watcher.on(STATUS)]
    assert all(c.agent_id == AGENT_ID for c in claims)
    assert b"online" in watcher.payloads(AVAILABILITY)
    assert password.encode() not in cmdline
    assert password not in log
    assert "stale-wrong-password" not in log
    # The claims carry MQTT 5 properties: CBOR (the default) and the default expiry.
    for seen in watcher.on(STATUS):
        assert seen.content_type == "application/cbor"
        assert seen.expiry is not None and 0 < seen.expiry <= 60


@pytest.mark.broker
def test_mtls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    """The broker above really demands the client certificate: the test is not vacuous."""
    pki = make_pki(tmp_path)
    port = free_port()
    listener = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {pki.ca}\n"
        f"certfile {pki.server_crt}\nkeyfile {pki.server_key}\n"
        "require_certificate true\n"
    )
    with start_mosquitto(port=port, listener_conf=listener):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="no-cert", protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(pki.ca))
        with pytest.raises(OSError):  # the handshake fails (or the socket is reset)
            client.connect("127.0.0.1", port, keepalive=5)
            for _ in range(20):  # TLS 1.3 reports a missing client cert after the handshake
                if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionResetError("broker closed the connection")
        client.disconnect()


# ---------------------------------------------------------------------------- MQTT 5 properties


@pytest.mark.broker
@pytest.mark.slow
def test_json_claims_say_so_in_the_content_type_and_expire(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = Watcher(mosquitto.port, (STATUS,))
    config = write_agent_config(
        tmp_path, mosquitto.url, PROFILE, extra='[status]\nformat = "json"\nexpiry_s = 30\n'
    )
    agent = start_agent(config, None, tmp_path / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(watcher.on(STATUS)) >= 2, 30), agent.log()
    finally:
        pulse.stop()
        agent.stop()
        watcher.close()
    for seen in watcher.on(STATUS):
        assert seen.content_type == "application/json"
        assert seen.payload.startswith(b"{")
        assert seen.expiry is not None and 0 < seen.expiry <= 30
        decode_status_claim(seen.payload)


# ---------------------------------------------------------------------------- availability


@pytest.mark.broker
@pytest.mark.slow
def test_online_on_connect_and_offline_one_will_delay_after_sigkill(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = mosquitto.port
    watcher = Watcher(port, (AVAILABILITY,))
    config = write_agent_config(tmp_path, mosquitto.url, PROFILE, broker_extra="will_delay_s = 1\n")
    agent = start_agent(config, None, tmp_path / "agent.log")
    try:
        assert wait_until(lambda: watcher.payloads(AVAILABILITY) == [b"online"], 20), agent.log()
        assert retained(port, AVAILABILITY) == b"online"
        agent.kill()  # SIGKILL: no goodbye, only the will
        killed_at = time.monotonic()
        assert wait_until(lambda: b"offline" in watcher.payloads(AVAILABILITY), 15)
    finally:
        agent.kill()
        watcher.close()
    offline = [s for s in watcher.on(AVAILABILITY) if s.payload == b"offline"]
    assert len(offline) == 1
    # The broker held the will for its delay (a lower bound: noise only makes it later).
    assert offline[0].at - killed_at >= 0.5
    assert retained(port, AVAILABILITY) == b"offline"


@pytest.mark.broker
@pytest.mark.slow
def test_fast_reboot_within_the_will_delay_never_shows_offline(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The new process reconnects with the same (stable) client id and clean_start=False:
    # the broker takes the session over and drops the pending will. With a client id that
    # changed per start, the old will would go out once its delay ran out.
    delay = 6
    port = mosquitto.port
    watcher = Watcher(port, (AVAILABILITY,))
    config = write_agent_config(
        tmp_path, mosquitto.url, PROFILE, broker_extra=f"will_delay_s = {delay}\n"
    )
    agent = start_agent(config, None, tmp_path / "agent.log")
    second: Proc | None = None
    try:
        assert wait_until(lambda: b"online" in watcher.payloads(AVAILABILITY), 20), agent.log()
        agent.kill()
        killed_at = time.monotonic()
        second = start_agent(config, None, tmp_path / "agent2.log")
        assert wait_until(lambda: connected_count(second) >= 1, 20), second.log()
        back_after = time.monotonic() - killed_at
        assert back_after < delay, f"restart took {back_after:.1f} s, longer than the delay"
        # Wait past the moment the old will would have been published.
        time.sleep(max(0.0, killed_at + delay + 2.0 - time.monotonic()))
        assert retained(port, AVAILABILITY) == b"online"
    finally:
        agent.kill()
        if second is not None:
            second.kill()
        watcher.close()
    assert b"offline" not in watcher.payloads(AVAILABILITY), watcher.payloads(AVAILABILITY)
    assert watcher.payloads(AVAILABILITY).count(b"online") == 2


@pytest.mark.broker
@pytest.mark.slow
def test_clean_sigterm_leaves_retained_offline_at_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = mosquitto.port
    # A will delay far longer than the test: an 'offline' now can only be the goodbye.
    config = write_agent_config(
        tmp_path, mosquitto.url, PROFILE, broker_extra="will_delay_s = 600\n"
    )
    agent = start_agent(config, None, tmp_path / "agent.log")
    try:
        assert wait_until(lambda: retained(port, AVAILABILITY, 0.5) == b"online", 20), agent.log()
    finally:
        agent.signal(signal.SIGTERM)
        code = agent.process.wait(timeout=15)
    assert code == 0, agent.log()
    assert retained(port, AVAILABILITY) == b"offline"


# ---------------------------------------------------------------------------- resubscribe


@pytest.mark.broker
@pytest.mark.slow
def test_resubscribes_after_a_broker_restart_that_forgot_every_session(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    broker = mosquitto  # no persistence: the restarted broker knows no subscription
    trace = tmp_path / "agent.jsonl"
    config = write_agent_config(tmp_path, broker.url, PROFILE)
    agent = start_agent(config, trace, tmp_path / "agent.log")
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(read_trace(trace)) >= 4, 30), agent.log()
        pulse.stop()
        broker.stop()
        time.sleep(0.5)
        broker.restart()
        assert wait_until(lambda: connected_count(agent) >= 2, 20), agent.log()
        # Beats numbered from 1000 exist only after the restart: an action on one of them
        # proves the agent is subscribed again.
        pulse = start_pulse(
            broker.url, "bench", 240, None, tmp_path / "pulse2.log", start_beat=1000
        )
        resumed = wait_until(
            lambda: any(
                int(str(r["beat_index"])) >= 1000 and r["fired_mono"] for r in read_trace(trace)
            ),
            30,
        )
    finally:
        pulse.stop()
        code = agent.stop()
    assert resumed, agent.log()
    assert code == 0


def _connected_link(mosquitto: Mosquitto) -> MqttLink:
    link = MqttLink(
        BrokerConfig(url=mosquitto.url, host="127.0.0.1", port=mosquitto.port),
        "test-final-messages",
    )
    link.start()
    deadline = time.monotonic() + 10
    while not link.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.connected
    return link


def test_stop_hands_back_final_messages_a_stalled_broker_never_acknowledged(
    mosquitto: Mosquitto,
) -> None:
    link = _connected_link(mosquitto)
    final = [("backbeat/bench/status/pi", b"last claim", False)]
    os.kill(mosquitto.process.pid, signal.SIGSTOP)
    try:
        assert link.stop(final=final, timeout=0.5) == final
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)


def test_stop_hands_back_final_messages_when_the_broker_is_gone(mosquitto: Mosquitto) -> None:
    link = _connected_link(mosquitto)
    mosquitto.kill()
    final = [
        ("backbeat/bench/status/pi", b"last claim", False),
        ("x/availability", b"offline", True),
    ]
    # Connected or not when stop runs (paho may not have noticed yet), nothing is lost
    # silently and nothing raises.
    assert link.stop(final=final, timeout=0.5) == final


def test_stop_returns_nothing_once_the_broker_acknowledged(mosquitto: Mosquitto) -> None:
    link = _connected_link(mosquitto)
    assert link.stop(final=[("backbeat/bench/status/pi", b"last claim", False)]) == []


def _acks(link: MqttLink, mids: set[int], timeout: float = 10.0) -> set[int]:
    """The acks among ``mids`` the link handed over within ``timeout``."""
    got: set[int] = set()
    deadline = time.monotonic() + timeout
    while got != mids and time.monotonic() < deadline:
        try:
            item = link.inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        if item.kind == "ack" and item.mid in mids:
            got.add(item.mid)
    return got


@pytest.mark.broker
def test_a_publish_written_at_once_wakes_no_loop(mosquitto: Mosquitto) -> None:
    link = _connected_link(mosquitto)
    try:
        wake = link._client._sockpairW
        assert isinstance(wake, QuietWake)  # the network thread put it in place
        before = wake.wakes
        mids = {link.publish("backbeat/bench/status/pi", b"claim %d" % i) for i in range(20)}
        assert _acks(link, mids) == mids  # every one went out, written by this thread
        assert wake.wakes == before  # and paho's loop was never woken for it
    finally:
        link.stop()


@pytest.mark.broker
def test_a_publish_left_queued_wakes_the_loop_to_write_it(mosquitto: Mosquitto) -> None:
    link = _connected_link(mosquitto)
    seen = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda client, userdata, message: seen.set()
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("backbeat/bench/status/pi", qos=1)
    watcher.loop_start()
    try:
        time.sleep(0.3)  # the watcher's subscription is in place
        wake = link._client._sockpairW
        assert isinstance(wake, QuietWake)
        before = wake.wakes
        # As if paho's thread were in a callback: publish() leaves the packet queued.
        with link._client._in_callback_mutex:
            mid = link.publish("backbeat/bench/status/pi", b"claim")
            assert wake.wakes == before + 1  # so the loop was woken to write it
            assert seen.wait(10)  # and it did, while the "callback" still runs
        assert _acks(link, {mid}) == {mid}
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        link.stop()


def test_stop_says_final_messages_were_not_sent_when_no_broker_was_ever_reached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    link = MqttLink(BrokerConfig(url=f"mqtt://127.0.0.1:{port}", host="127.0.0.1", port=port), "t")
    link.start()
    final = [("x/availability", b"offline", True)]
    with caplog.at_level(logging.WARNING, logger="edge.mqtt_link"):
        assert link.stop(final=final, timeout=0.5) == final
    assert "final message to x/availability not sent: no broker connected" in caplog.text
    assert "not acknowledged" not in caplog.text
