"""``backbeat-edge pulse``: the bench pulse as a process, around :func:`edge.pulse.run_pulse`.

Its options are checked first (every problem at once, exit 2); then it connects to the
broker (exit 1 when it cannot: a beat sent to no broker is lost), answers the time
exchange on the same link (unless ``--no-time-exchange``), takes tempo changes from its
control topic and from SIGUSR1 / SIGUSR2, and sends until SIGTERM, SIGINT or
``--duration``. Frames that could not be sent while the broker was away are counted.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from edge.errors import ConfigError, ConfigProblems
from edge.loglimit import LogLimiter
from edge.tool_link import reach, tool_client_id

if TYPE_CHECKING:
    from edge.broker_config import BrokerConfig
    from edge.pulse import TempoRequest
    from edge.signing import SigningKey

log = logging.getLogger(__name__)


def cmd_pulse(args: argparse.Namespace) -> int:
    from edge.config import parse_broker
    from edge.files import FileRefused
    from edge.pulse import open_trace

    problems = ConfigProblems("pulse")
    table: dict[str, object] = {"url": args.broker}
    if args.username is not None:
        table["username"] = args.username
    if args.password_file is not None:
        table["password_file"] = args.password_file
    table["protocol"] = args.protocol
    broker = parse_broker(table, problems, Path.cwd(), where="--broker")
    if args.password_file is not None and args.username is None:
        problems.add("--password-file", "needs --username (the broker user it is the password of)")
    if not 0.1 <= args.bpm <= 1000:
        problems.add("--bpm", f"must be between 0.1 and 1000, got {args.bpm}")
    if args.bar < 1:
        problems.add("--bar", f"must be at least 1, got {args.bar}")
    if problems:
        print(f"backbeat-edge {ConfigError(problems.items, 'pulse')}", file=sys.stderr)
        return 2
    try:  # before anything starts: a directory or a FIFO here once came up only later
        trace = open_trace(args.trace)
    except FileRefused as exc:
        print(f"backbeat-edge pulse: --trace: {exc}", file=sys.stderr)
        return 2
    try:
        return _pulse(args, broker, trace)
    finally:
        if trace is not None:
            trace.close()


def _pulse(args: argparse.Namespace, broker: BrokerConfig, trace: IO[str] | None) -> int:
    """The pulse, once its options (and ``trace``, its open ``--trace``) are good."""
    from edge.clock import SystemClock
    from edge.errors import LinkError
    from edge.mqtt_link import MqttLink
    from edge.pulse import PulseOptions, run_pulse
    from edge.topics import Topics

    signer = _pulse_signer(args.signing_key)
    if isinstance(signer, int):
        return signer
    topics = Topics(args.prefix, args.cluster)
    controls: queue.Queue[TempoRequest] = queue.Queue()
    try:
        link = MqttLink(
            broker,
            tool_client_id("pulse", args.cluster),
            subscriptions=(topics.pulse_control,)
            + (() if args.no_time_exchange else (topics.all_time_requests,)),
        )
    except LinkError as exc:  # the password file: missing, unreadable, not UTF-8
        # The link names the agent's setting; here the option is what the operator typed.
        reason = str(exc).replace("broker.password_file", "--password-file", 1)
        print(f"backbeat-edge pulse: {reason}", file=sys.stderr)
        return 2
    stop = threading.Event()
    requests = TempoRequests(controls)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop.set()
        else:  # SIGUSR1 faster, SIGUSR2 slower, by the largest unforced step
            requests.step(1.1 if signum == signal.SIGUSR1 else 0.9)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, on_signal)

    from edge.inbox import Inbound
    from edge.timekeeper import Responder, serve

    def respond(topic: str, payload: bytes) -> object:
        return link.publish(topic, payload, qos=0)

    # The bench pulse answers the time exchange too (its frames' wall clock is its own).
    responder = Responder(topics, respond, signer)

    def pump_controls() -> None:
        serve(link.inbox, responder, stop, other=control)

    def control(item: Inbound) -> None:
        requests.take(item.payload, time.monotonic())

    # A beat sent to no broker is lost (QoS 0): say so and fail, rather than "send".
    if not reach(link, "pulse", args.broker, args.connect_timeout, lost="; no beat sent"):
        return 1
    threading.Thread(target=pump_controls, name="pulse-control", daemon=True).start()
    options = PulseOptions(
        cluster=args.cluster,
        bpm=args.bpm,
        bar=args.bar,
        fmt=args.format,
        duration_s=args.duration,
        per_phase=args.per_phase,
        start_beat=args.start_beat,
        prefix=args.prefix,
    )

    unsent = [0]

    def publish(topic: str, payload: bytes) -> object:
        if not link.connected:  # QoS 0 while disconnected: it would be dropped unseen
            unsent[0] += 1
            return None
        return link.publish(topic, payload, qos=0)

    try:
        sent = run_pulse(options, publish, SystemClock(), stop, controls, trace, signer)
    finally:
        stop.set()
        link.stop(timeout=1.0)
    if requests.refused:
        log.warning("refused %d tempo requests", requests.refused)
    if unsent[0]:
        # Away, or the link was closed for a client that took our id (logged as such).
        away = "the broker was away" if not link.taken_over else "the link was down"
        log.warning(
            "pulse sent %d frames; %d more were not sent while %s",
            sent - unsent[0],
            unsent[0],
            away,
        )
    else:
        log.info("pulse sent %d frames", sent)
    return 0


class TempoRequests:
    """The tempo changes asked of a running pulse, checked before they reach it.

    A request from the control topic (:meth:`take`) goes on ``controls`` as (bpm, force)
    only if :func:`edge.pulse.parse_tempo_request` takes it; any other payload is
    refused, counted (``refused``) and logged with the payload, at most once per
    ``quiet_s`` (anyone on the broker may publish there). Signals step from the tempo in
    force (:meth:`step`).
    """

    def __init__(self, controls: queue.Queue[TempoRequest], quiet_s: float = 10.0) -> None:
        self.controls = controls
        self.refused = 0
        self._bad = LogLimiter(log, quiet_s=quiet_s)

    def take(self, payload: bytes, now: float) -> bool:
        """Queue the request ``payload`` says; False if it was refused."""
        from edge.pulse import parse_tempo_request

        try:
            bpm, force = parse_tempo_request(payload)
        except ValueError as exc:
            self.refused += 1
            self._bad.note(
                "tempo",
                f"refused tempo request {payload[:40]!r}: {exc} ({self.refused} refused so far)",
                now,
            )
            return False
        self.controls.put((bpm, force))
        return True

    def step(self, factor: float) -> None:
        """Ask for ``factor`` times the tempo in force, unforced (kept in range there)."""
        from edge.pulse import TempoStep

        self.controls.put(TempoStep(factor))


def _pulse_signer(path: str | None) -> SigningKey | int | None:
    """The key ``pulse --signing-key`` signs with (None: unsigned), or exit code 2."""
    if path is None:
        return None
    from edge.signing import SigningKey

    try:
        key = SigningKey.load(Path(path), where="--signing-key")
    except ConfigError as exc:
        print(f"backbeat-edge pulse: {exc}", file=sys.stderr)
        return 2
    log.info("signing beat frames with key %s", key.kid)
    return key
