"""Start the real pulse and agent as processes, for end-to-end tests and benchmarks.

Like ``edge.broker`` this is tooling, not part of the agent: it writes an agent config
next to a profile, launches ``backbeat-edge run`` / ``backbeat-edge pulse`` with the
interpreter running the caller, reads back their JSON-lines traces, and records the claims
an agent publishes, and plays the attacker that the spoofing tests put on the broker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.messages import StatusClaim, decode_beat_frame_with_map, decode_status_claim
from edge.testing.profiles import MOCK_LED, device, rule


def write_agent_config(
    workdir: Path,
    broker_url: str,
    profile_toml: str,
    cluster: str = "bench",
    agent_id: str = "bench:pi-01",
    extra: str = "",
    broker_extra: str = "",
    default_outbox: bool = False,
) -> Path:
    """Write ``profile.toml`` and an ``agent.toml`` naming it; returns the config path.

    ``broker_extra`` lines go into ``[broker]``; ``extra`` is appended (more sections).
    The outbox goes to ``workdir/outbox``, or with ``default_outbox`` to the agent's
    default place (no ``directory`` key: point ``XDG_STATE_HOME`` somewhere).
    """
    outbox = "" if default_outbox else f'directory = "{workdir / "outbox"}"\n'
    (workdir / "profile.toml").write_text(profile_toml, encoding="utf-8")
    path = workdir / "agent.toml"
    path.write_text(
        f'[agent]\nid = "{agent_id}"\ncluster = "{cluster}"\nprofile = "profile.toml"\n'
        f'[broker]\nurl = "{broker_url}"\n{broker_extra}'
        f"[outbox]\n{outbox}" + extra,
        encoding="utf-8",
    )
    return path


@dataclass
class Proc:
    """A child process with its stderr in a file (so a full pipe never blocks it)."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, module: str = "edge.cli"
) -> Proc:
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=log, stderr=log, env=full_env
        )
    return Proc(process, log_path)


def start_agent(
    config: Path,
    trace: Path | None,
    log_path: Path,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    wall_offset_s: float | None = None,
) -> Proc:
    """``wall_offset_s`` runs the agent with its wall clock that far off (monotonic
    untouched), through :mod:`edge.testing.wallshift`."""
    args = ["run", "--config", str(config), *extra_args]
    if trace is not None:
        args += ["--trace", str(trace)]
    env = {"GPIOZERO_PIN_FACTORY": "mock", **(env or {})}
    if wall_offset_s is None:
        return _spawn(args, log_path, env)
    from edge.testing.wallshift import ENV

    env[ENV] = repr(wall_offset_s)
    return _spawn(args, log_path, env, module="edge.testing.wallshift")


def start_pulse(
    broker_url: str,
    cluster: str,
    bpm: float,
    trace: Path | None,
    log_path: Path,
    bar: int = 4,
    fmt: str = "json",
    start_beat: int = 0,
    per_phase: bool = False,
    signing_key: Path | None = None,
    username: str | None = None,
    password_file: Path | None = None,
    protocol: str = "5",
    prefix: str | None = None,
    time_exchange: bool = True,
) -> Proc:
    """``broker_url`` may list several, comma-separated; ``protocol`` "3.1.1" for NATS."""
    args = [
        "pulse",
        "--protocol",
        protocol,
        "--broker",
        broker_url,
        "--cluster",
        cluster,
        "--bpm",
        str(bpm),
        "--bar",
        str(bar),
        "--format",
        fmt,
        "--start-beat",
        str(start_beat),
    ]
    if per_phase:
        args.append("--per-phase")
    if signing_key is not None:
        args += ["--signing-key", str(signing_key)]
    if username is not None:
        args += ["--username", username]
    if password_file is not None:
        args += ["--password-file", str(password_file)]
    if prefix is not None:
        args += ["--prefix", prefix]
    if not time_exchange:
        args.append("--no-time-exchange")
    if trace is not None:
        args += ["--trace", str(trace)]
    return _spawn(args, log_path)


def start_timekeeper(
    broker_url: str,
    cluster: str,
    log_path: Path,
    prefix: str = "backbeat",
    signing_key: Path | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    args = ["timekeeper", "--broker", broker_url, "--cluster", cluster, "--prefix", prefix]
    if signing_key is not None:
        args += ["--signing-key", str(signing_key)]
    return _spawn(args, log_path, env)


_SAFE_LINE = re.compile(
    r"outputs in their safe state \(beat lost\) at monotonic ([0-9.]+): (\{.*\})\s*$"
)


def safe_states(log: str) -> list[tuple[float, dict[str, object]]]:
    """Every lost-beat safe state an agent's log reports, as (local monotonic time, the
    outputs' values read back from the pins then), in order. The monotonic clock is the
    host's, so it compares with the pulse's and the agent's trace times."""
    found = []
    for line in log.splitlines():
        match = _SAFE_LINE.search(line)
        if match is not None:
            found.append((float(match.group(1)), json.loads(match.group(2))))
    return found


def pulse_beats(rows: list[dict[str, object]]) -> dict[int, tuple[float, float]]:
    """The pulse's own beats from its trace rows: beat index -> (local monotonic start,
    tempo), what every end-to-end test and benchmark measures actuations against."""
    return {
        int(r["beat_index"]): (float(r["intended_mono"]), float(r["tempo_bpm"]))  # type: ignore[call-overload,arg-type]
        for r in rows
        if r["phase"] == "plan"
    }


def read_trace(path: Path) -> list[dict[str, object]]:
    """Every complete JSON line of a trace (a torn last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class ClaimRecorder:
    """Every claim published on a cluster's status topics, decoded, in arrival order.

    Subscribes (QoS 1) on the broker at ``127.0.0.1:port`` when made; :meth:`stop` ends it.
    A payload that does not decode raises in the test that reads :attr:`claims`, not in
    paho's thread: it is kept as the exception.
    """

    def __init__(self, port: int, cluster: str = "bench", prefix: str = "backbeat") -> None:
        self._lock = threading.Lock()
        self._claims: list[StatusClaim | Exception] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{prefix}/{cluster}/status/+", qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            claim: StatusClaim | Exception = decode_status_claim(bytes(msg.payload))
        except Exception as exc:  # re-raised by .claims
            claim = exc
        with self._lock:
            self._claims.append(claim)

    @property
    def claims(self) -> list[StatusClaim]:
        with self._lock:
            got = list(self._claims)
        for item in got:
            if isinstance(item, Exception):
                raise item
        return got  # type: ignore[return-value]

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def wait_until(predicate: Callable[[], object], timeout: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; whether it became
    true. The one wait the process tests share (they watch traces, logs and claims)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


# The score of the spoofing tests (tests/test_spoof_unsigned_e2e.py, tests/test_signing_e2e.py):
# the LED toggles at the start of every beat's execute phase, the relay goes on halfway
# through the execute phase of every downbeat. Both rules are essential.
SPOOF_PROFILE = (
    MOCK_LED
    + device("relay", "relay", 27, safe_state=0)
    + rule("led", "toggle", every=1, phase="execute", offset=0.0, essential=True)
    + rule("relay", "on", essential=True, downbeat=True, phase="execute", offset=0.5)
)
#: Rule of SPOOF_PROFILE -> (its phase's number in the beat, its offset in the phase).
SPOOF_PLACE = {0: (1, 0.0), 1: (1, 0.5)}


class BeatSpoofer:
    """A paho client on the broker at ``127.0.0.1:port`` that watches a cluster's real beat
    frames and publishes frames of its own on the same topic.

    A subclass says what to send in :meth:`on_frame`, called (on paho's thread) with every
    real frame that decodes once :attr:`armed` is set; its own frames coming back are not
    passed on. :meth:`send` counts each kind sent in :attr:`sent` and notes the monotonic
    time the first of a kind went out in :attr:`first_sent`. Messages on the other
    ``topics`` (pairs of topic and QoS) go to :meth:`on_other`.
    """

    def __init__(
        self,
        port: int,
        cluster: str = "bench",
        prefix: str = "backbeat",
        topics: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.beat_topic = f"{prefix}/{cluster}/beat"
        self.sent: dict[str, int] = {}
        self.first_sent: dict[str, float] = {}
        self.armed = threading.Event()
        self._own: set[bytes] = set()
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(self.beat_topic)
        for topic, qos in topics:
            self._client.subscribe(topic, qos=qos)
        self._client.loop_start()

    def send(self, kind: str, data: dict[str, Any], delay: float) -> None:
        """Publish ``data`` as a JSON frame on the beat topic ``delay`` seconds from now."""
        payload = json.dumps(data).encode()
        with self._lock:
            self._own.add(payload)

        def go() -> None:
            self.first_sent.setdefault(kind, time.monotonic())
            self._client.publish(self.beat_topic, payload)
            self.sent[kind] = self.sent.get(kind, 0) + 1

        threading.Timer(max(delay, 0.0), go).start()

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self._client.publish(topic, payload, qos=qos)

    def on_frame(self, data: dict[str, Any]) -> None:
        """A real beat frame, decoded, while armed."""

    def on_other(self, topic: str, payload: bytes) -> None:
        """A message on one of the other topics."""

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if msg.topic != self.beat_topic:
            self.on_other(msg.topic, payload)
            return
        with self._lock:
            if payload in self._own:  # a spoof of ours coming back
                self._own.discard(payload)
                return
        if not self.armed.is_set():
            return
        try:
            _, data = decode_beat_frame_with_map(payload)
        except ValueError:
            return
        self.on_frame(data)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
