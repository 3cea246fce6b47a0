"""The shipped broker ACL (systemd/mosquitto): the pulse alone drives the beat, each agent
speaks only for itself, a monitor reads, and nothing anonymous gets in.

A real Mosquitto runs with the shipped settings and the shipped ACL, rendered and fed with
users exactly as the comments there tell an operator (sed for the cluster, ``broker-user``
for each password); the real pulse and agent log in with their own users. Other clients
then try what an attacker with a valid agent login would: publish beat frames, another
agent's claims and availability, a tempo change, and take over the agent's client id.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.broker import Mosquitto, free_port, start_mosquitto
from edge.harness import Proc, read_trace, start_agent, start_pulse, wait_until, write_agent_config
from edge.messages import BeatFrame, StatusClaim, decode_status_claim, encode
from edge.testing.profiles import MOCK_LED, rule

SHIPPED = Path(__file__).resolve().parents[1] / "systemd" / "mosquitto"
CLUSTER = "bench"
AGENT_ID = f"{CLUSTER}:pi-01"  # logs in as pi-01: the id without the "{cluster}:" prefix
AGENT_CLIENT_ID = "backbeat-edge-bench-pi-01"  # what the agent asks for (agent.client_id_for)
USERS = ("pulse-bench", "monitor-bench", "pi-01", "pi-02", "pi-03")
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87

PROFILE = MOCK_LED + rule("led", "toggle", every=1, phase="execute", offset=0.0, essential=True)


def _broker_conf(port: int, passwd: Path, acl: Path) -> str:
    """The shipped backbeat.conf with its listener and file paths made the test's own."""
    kept: list[str] = []
    replaced = set()
    for line in (SHIPPED / "backbeat.conf").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or words[0] == "listener":
            continue
        paths = {"password_file": passwd, "acl_file": acl}
        if words[0] in paths:
            replaced.add(words[0])
            line = f"{words[0]} {paths[words[0]]}"
        kept.append(line)
    assert replaced == {"password_file", "acl_file"}, kept
    assert "allow_anonymous false" in kept and "use_username_as_clientid true" in kept
    # Connection lines (which client id a login got) are information, not notice.
    return f"listener {port} 127.0.0.1\n" + "\n".join(kept) + "\nlog_type information\n"


#: The broker and, per user, the file holding its password.
AclBroker = tuple[Mosquitto, dict[str, Path]]


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    tmp = tmp_path_factory.mktemp("acl")
    acl = tmp / "backbeat.acl"
    with acl.open("wb") as out:  # as the ACL's header says, with this cluster
        subprocess.run(
            ["sed", "-e", f"s/@CLUSTER@/{CLUSTER}/g", str(SHIPPED / "backbeat.acl")],
            stdout=out,
            check=True,
            timeout=10,
        )
    assert "@CLUSTER@" not in acl.read_text()
    passwd = tmp / "backbeat.passwd"
    secrets: dict[str, Path] = {}
    for user in USERS:
        secrets[user] = tmp / f"{user}.secret"
        subprocess.run(
            [str(SHIPPED / "broker-user"), str(passwd), user, str(secrets[user])],
            check=True,
            capture_output=True,
            timeout=20,
        )
        assert secrets[user].stat().st_mode & 0o077 == 0  # the secret is its owner's alone
    hashed = passwd.read_text()  # hashes only: no password in the broker's file
    assert all(_password(secrets, user) not in hashed for user in USERS)
    port = free_port()
    broker = start_mosquitto(port=port, listener_conf=_broker_conf(port, passwd, acl))
    try:
        yield broker, secrets
    finally:
        broker.close()


def _password(secrets: dict[str, Path], user: str) -> str:
    return secrets[user].read_text().strip()


class Client:
    """A paho client logged in as one user, recording what the broker says to it."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        client_id: str = "",
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5.0), "no CONNACK"

    def _on_connect(
        self, c: object, u: object, flags: object, reason: ReasonCode, p: object
    ) -> None:
        self.connack = reason
        self.connected.set()

    def _on_publish(self, c: object, u: object, mid: int, reason: ReasonCode, p: object) -> None:
        with self._lock:
            self.pubacks[mid] = reason

    def _on_message(self, c: object, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Publish and, at QoS 1, wait for the PUBACK; returns its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return 0
        assert wait_until(lambda: info.mid in self.pubacks, 5.0), f"no PUBACK on {topic}"
        with self._lock:
            return int(self.pubacks[info.mid].value)

    def got(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _claims(monitor: Client, agent_id: str) -> list[StatusClaim]:
    status = f"backbeat/{CLUSTER}/status/{agent_id}"
    return [decode_status_claim(p) for t, p, _ in monitor.got() if t == status]


def _spoof_frame(beat_index: int) -> bytes:
    """A well-formed frame that would jump the timeline and run it at 1000 BPM."""
    frame = BeatFrame(
        cluster_id=CLUSTER,
        beat_index=beat_index,
        downbeat=True,
        phase="plan",
        hlc="0001:0000:0001",
        deadline_at=datetime.now(UTC) + timedelta(milliseconds=20),
        tempo_bpm=1000.0,
        window_id="f" * 32,
    )
    return encode(frame, "json")


@pytest.mark.broker
@pytest.mark.slow
def test_anonymous_and_bad_logins_are_refused_at_connect(acl_broker: AclBroker) -> None:
    broker, secrets = acl_broker
    anonymous = Client(broker.port, None, None)
    try:
        assert anonymous.connack is not None and anonymous.connack.value == NOT_AUTHORIZED
    finally:
        anonymous.close()
    # Mosquitto answers a wrong password with "not authorised" too (not 0x86).
    wrong = Client(broker.port, "pi-01", "not-its-password")
    try:
        assert wrong.connack is not None and wrong.connack.value == NOT_AUTHORIZED
    finally:
        wrong.close()
    legacy = Client(broker.port, None, None, protocol=MQTTProtocolVersion.MQTTv311)
    try:  # MQTT 3.1.1 CONNACK return code 5 (not authorised), as paho reports it
        assert legacy.connack is not None and legacy.connack.value == NOT_AUTHORIZED
    finally:
        legacy.close()
    ok = Client(broker.port, "pi-01", _password(secrets, "pi-01"))
    try:
        assert ok.connack is not None and not ok.connack.is_failure
    finally:
        ok.close()


@pytest.mark.broker
@pytest.mark.slow
def test_only_the_pulse_drives_the_agent_and_each_agent_speaks_for_itself(
    acl_broker: AclBroker, tmp_path: Path
) -> None:
    broker, secrets = acl_broker
    monitor = Client(broker.port, "monitor-bench", _password(secrets, "monitor-bench"))
    monitor.client.subscribe(f"backbeat/{CLUSTER}/status/+", qos=1)
    monitor.client.subscribe(f"backbeat/{CLUSTER}/agents/+/availability", qos=1)
    config = write_agent_config(
        tmp_path,
        broker.url,
        PROFILE,
        cluster=CLUSTER,
        agent_id=AGENT_ID,
        broker_extra=f'username = "pi-01"\npassword_file = "{secrets["pi-01"]}"\n',
    )
    agent_trace, pulse_trace = tmp_path / "agent.jsonl", tmp_path / "pulse.jsonl"
    agent = start_agent(config, agent_trace, tmp_path / "agent.log")
    pulse = start_pulse(
        broker.url,
        CLUSTER,
        120,
        pulse_trace,
        tmp_path / "pulse.log",
        username="pulse-bench",
        password_file=secrets["pulse-bench"],
    )
    attackers: list[Client] = []
    try:
        # The agent follows the pulse, and its claims and availability reach the monitor.
        assert wait_until(
            lambda: len([r for r in read_trace(agent_trace) if r["fired_mono"]]) >= 4, 25
        ), agent.log() + pulse.log() + broker.log()
        assert wait_until(lambda: _claims(monitor, AGENT_ID), 10), monitor.got()
        availability = f"backbeat/{CLUSTER}/agents/{AGENT_ID}/availability"
        assert (availability, b"online", False) in monitor.got() or (
            availability,
            b"online",
            True,
        ) in monitor.got()

        # Another agent's valid login, asking for this agent's client id.
        other = Client(broker.port, "pi-02", _password(secrets, "pi-02"), AGENT_CLIENT_ID)
        attackers.append(other)
        assert other.connack is not None and not other.connack.is_failure
        beat = f"backbeat/{CLUSTER}/beat"
        assert other.publish(beat, _spoof_frame(100_000)) == NOT_AUTHORIZED
        forged = encode(
            StatusClaim(agent_id=AGENT_ID, beat_index=99_999, state="failed", hlc="0001:0000:0001"),
            "cbor",
        )
        assert other.publish(f"backbeat/{CLUSTER}/status/{AGENT_ID}", forged) == NOT_AUTHORIZED
        assert other.publish(availability, b"offline", retain=True) == NOT_AUTHORIZED
        tempo = f"backbeat/{CLUSTER}/pulse/tempo"
        assert other.publish(tempo, b"1000 force") == NOT_AUTHORIZED
        # ... while its own topics are open to it: the refusals above are the ACL's.
        own = encode(
            StatusClaim(
                agent_id=f"{CLUSTER}:pi-02", beat_index=1, state="idle", hlc="0001:0000:0001"
            ),
            "cbor",
        )
        assert other.publish(f"backbeat/{CLUSTER}/status/{CLUSTER}:pi-02", own) == 0
        assert wait_until(lambda: _claims(monitor, f"{CLUSTER}:pi-02"), 5), monitor.got()

        # An agent whose id is its username (no cluster prefix) has its own topics too.
        bare = Client(broker.port, "pi-03", _password(secrets, "pi-03"))
        attackers.append(bare)
        assert bare.publish(f"backbeat/{CLUSTER}/status/pi-03", own) == 0
        assert bare.publish(f"backbeat/{CLUSTER}/agents/pi-03/availability", b"online") == 0
        assert bare.publish(f"backbeat/{CLUSTER}/status/{AGENT_ID}", forged) == NOT_AUTHORIZED

        bare.close()  # one connection per user: the next login as pi-03 would take it over
        attackers.remove(bare)

        # MQTT 3.1.1 has no reason code: the broker drops the frames unseen.
        legacy = Client(
            broker.port, "pi-03", _password(secrets, "pi-03"), protocol=MQTTProtocolVersion.MQTTv311
        )
        attackers.append(legacy)
        for k in range(5):
            legacy.publish(beat, _spoof_frame(200_000 + k), qos=0)
            time.sleep(0.1)
        # A monitor reads and writes nothing.
        assert monitor.publish(beat, _spoof_frame(300_000)) == NOT_AUTHORIZED
        seen_from = len(monitor.got())
        time.sleep(2.0)  # four beats at 120 BPM for a spoof that got through to show
    finally:
        for client in attackers:
            client.close()
        pulse.stop()
        code = agent.stop()
    try:  # its own availability is open to it: the goodbye "offline" arrives
        assert wait_until(
            lambda: (availability, b"offline", False) in monitor.got()[seen_from:], 5
        ), monitor.got()[seen_from:]
    finally:
        monitor.close()
    assert code == 0, agent.log()

    rows = read_trace(agent_trace)
    sent = {int(r["beat_index"]) for r in read_trace(pulse_trace)}  # type: ignore[call-overload]
    fired = [int(r["beat_index"]) for r in rows if r["fired_mono"]]  # type: ignore[call-overload]
    # No spoofed beat reached the agent: it fired only on the pulse's beats, one each.
    assert fired and all(b < 100_000 for b in fired), fired
    assert set(fired) <= sent | {max(sent) + 1, max(sent) + 2}, (fired, sorted(sent))
    assert fired == list(range(fired[0], fired[-1] + 1)), fired
    claims = _claims(monitor, AGENT_ID)
    # Its claims show nothing from the attacker: no forged claim, no rejected frame (a
    # spoof that arrived would have been followed or counted), no beat from the spoofs.
    assert all(c.beat_index < 99_999 for c in claims), [c.beat_index for c in claims]
    assert all(not (c.metadata or {}).get("frames_rejected") for c in claims), claims[-1]
    assert len(claims) > 4
    # Its availability was never "offline" while it ran (the forged retained one was denied).
    during = [p for t, p, _ in monitor.got()[:seen_from] if t == availability]
    assert b"offline" not in during, during
    # The pulse kept its tempo: the tempo request was denied.
    assert {float(r["tempo_bpm"]) for r in read_trace(pulse_trace)} == {120.0}  # type: ignore[arg-type]
    # The login asking for the agent's client id got its username as client id instead,
    # so the agent was never taken over (nor its session handed to another user).
    log = broker.log()
    assert "as pi-02 (" in log and "as pi-01 (" in log, log[-3000:]
    assert f"as {AGENT_CLIENT_ID}" not in log, log[-3000:]
    assert "Client pi-01 already connected" not in log, log[-3000:]


def _pulse_exit(proc: Proc) -> tuple[int, str]:
    try:
        return proc.process.wait(timeout=20), proc.log()
    finally:
        proc.kill()


@pytest.mark.broker
@pytest.mark.slow
def test_a_pulse_with_a_wrong_password_says_the_broker_refused_it(
    acl_broker: AclBroker, tmp_path: Path
) -> None:
    broker, _ = acl_broker
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-its-password\n")
    proc = start_pulse(
        broker.url,
        CLUSTER,
        60,
        None,
        tmp_path / "pulse.log",
        username="pulse-bench",
        password_file=wrong,
    )
    code, log = _pulse_exit(proc)
    assert code == 1, log
    assert "broker refused the connection" in log and "no beat sent" in log, log


def test_pulse_credentials_are_checked_before_connecting(tmp_path: Path) -> None:
    # Port 9 (discard) is never dialled: both mistakes are found first.
    url = "mqtt://127.0.0.1:9"
    missing = tmp_path / "absent.secret"
    proc = start_pulse(
        url, CLUSTER, 60, None, tmp_path / "a.log", username="pulse-bench", password_file=missing
    )
    code, log = _pulse_exit(proc)
    assert code == 2, log
    assert (
        str(missing) in log
        and "does not exist" in log
        and "--password-file" in log
        and "Traceback" not in log
    ), log
    secret = tmp_path / "pulse.secret"
    secret.write_text("x\n")
    proc = start_pulse(url, CLUSTER, 60, None, tmp_path / "b.log", password_file=secret)
    code, log = _pulse_exit(proc)
    assert code == 2, log
    assert "--password-file" in log and "--username" in log, log


@pytest.mark.broker
@pytest.mark.slow
def test_time_exchange_topics_are_each_agents_own(acl_broker: AclBroker) -> None:
    """An agent asks on its own request topic only; only the pulse answers, so no other
    login can feed an agent a forged time."""
    broker, secrets = acl_broker
    other = Client(broker.port, "pi-02", _password(secrets, "pi-02"))
    pulse = Client(broker.port, "pulse-bench", _password(secrets, "pulse-bench"))
    try:
        requests = f"backbeat/{CLUSTER}/time/req/+"
        result, _ = pulse.client.subscribe(requests, qos=1)
        assert result == 0
        own_req = f"backbeat/{CLUSTER}/time/req/{CLUSTER}:pi-02"
        # The subscription is in place once a first request comes through.
        assert wait_until(
            lambda: (
                other.publish(own_req, b"\xa2avbid\x01") == 0
                and any(t == own_req for t, _, _ in pulse.got())
            ),
            5,
        ), pulse.got()
        assert other.publish(f"backbeat/{CLUSTER}/time/req/{AGENT_ID}", b"x") == NOT_AUTHORIZED
        forged = f"backbeat/{CLUSTER}/time/resp/{AGENT_ID}"
        assert other.publish(forged, b"x") == NOT_AUTHORIZED
        assert other.publish(f"backbeat/{CLUSTER}/time/resp/{CLUSTER}:pi-02", b"x") == (
            NOT_AUTHORIZED
        )
        # Authorized: accepted (0), or 16 "no matching subscribers" (the agent is not up).
        assert pulse.publish(forged, b"x") in (0, 16)
    finally:
        other.close()
        pulse.close()
