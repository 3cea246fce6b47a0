"""The ``backbeat-edge`` command: run | demo | pulse | timekeeper | check | monitor | keygen."""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edge import __version__
from edge.errors import ConfigError, ConfigProblems, EdgeError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edge.signing import SigningKey


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------------------- run


#: Exit codes of ``run`` and ``check`` (also in their ``--help``; the unit's
#: RestartPreventExitStatus= names the ones a restart cannot cure).
EXIT_OK = 0
EXIT_USAGE = 2  # argparse: a wrong command line
EXIT_CONFIG = 3  # the config, a file it names, a pin or a device it describes
EXIT_HARDWARE = 4  # no GPIO pin factory on this machine

EXIT_CODES = (
    "exit status: 0 ok; 2 usage (a wrong command line); 3 config error (the config, its "
    "profile, password or TLS files, a pin or device that cannot be used); 4 hardware "
    "(no GPIO pin factory here). Expected failures are reported without a traceback."
)


def _refused(command: str, exc: BaseException) -> int:
    """Report an expected failure without a traceback; its exit code."""
    from edge.errors import HardwareError, LinkError

    if isinstance(exc, ConfigError):
        print(f"backbeat-edge {command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(exc, HardwareError):
        print(f"backbeat-edge {command}: hardware: {exc}", file=sys.stderr)
        return EXIT_HARDWARE
    if isinstance(exc, LinkError | OSError):  # credentials or TLS files, read at connect
        print(f"backbeat-edge {command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    raise exc


def cmd_run(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.errors import HardwareError, LinkError
    from edge.pulse import open_trace

    trace = open_trace(args.trace)
    try:
        try:
            agent = Agent(args.config, trace=trace)
        except (ConfigError, HardwareError, OSError) as exc:
            return _refused("run", exc)
        agent.install_signals()
        try:
            return agent.run(duration_s=args.duration)
        except (LinkError, HardwareError) as exc:
            return _refused("run", exc)
    finally:
        if trace is not None:
            trace.close()


# ---------------------------------------------------------------------------- pulse


def cmd_pulse(args: argparse.Namespace) -> int:
    from edge.clock import SystemClock
    from edge.config import parse_broker
    from edge.errors import LinkError
    from edge.mqtt_link import MqttLink
    from edge.pulse import PulseOptions, open_trace, run_pulse
    from edge.topics import Topics

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
    signer = _pulse_signer(args.signing_key)
    if isinstance(signer, int):
        return signer
    topics = Topics(args.prefix, args.cluster)
    controls: queue.Queue[tuple[float, bool]] = queue.Queue()
    try:
        link = MqttLink(
            broker,
            f"backbeat-pulse-{args.cluster}",
            subscriptions=(topics.pulse_control,)
            + (() if args.no_time_exchange else (topics.all_time_requests,)),
        )
    except LinkError as exc:  # the password file: missing, unreadable, not UTF-8
        # The link names the agent's setting; here the option is what the operator typed.
        reason = str(exc).replace("broker.password_file", "--password-file", 1)
        print(f"backbeat-edge pulse: {reason}", file=sys.stderr)
        return 2
    stop = threading.Event()
    tempo = [float(args.bpm)]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop.set()
        else:  # SIGUSR1 faster, SIGUSR2 slower, by the largest unforced step
            tempo[0] *= 1.1 if signum == signal.SIGUSR1 else 0.9
            controls.put((tempo[0], False))

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
        words = item.payload.decode("utf-8", "replace").split()
        try:
            bpm = float(words[0])
        except (IndexError, ValueError):
            log.warning(
                "ignored tempo request %r: expected e.g. '72' or '72 force'", item.payload[:40]
            )
            return
        tempo[0] = bpm
        controls.put((bpm, len(words) > 1 and words[1] == "force"))

    link.start()
    if not link.wait_connected(args.connect_timeout):
        # A beat sent to no broker is lost (QoS 0): say so and fail, rather than "send".
        link.stop(timeout=1.0)
        print(
            f"backbeat-edge pulse: cannot reach the broker at {args.broker} in "
            f"{args.connect_timeout:g} s ({link.last_error or 'no answer'}); no beat sent",
            file=sys.stderr,
        )
        return 1
    threading.Thread(target=pump_controls, name="pulse-control", daemon=True).start()
    trace = open_trace(args.trace)
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
        if trace is not None:
            trace.close()
    if unsent[0]:
        log.warning(
            "pulse sent %d frames; %d more were not sent while the broker was away",
            sent - unsent[0],
            unsent[0],
        )
    else:
        log.info("pulse sent %d frames", sent)
    return 0


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
    logging.info("signing beat frames with key %s", key.kid)
    return key


# ---------------------------------------------------------------------------- timekeeper


def cmd_timekeeper(args: argparse.Namespace) -> int:
    from edge.timekeeper import TimekeeperOptions, run_timekeeper

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    options = TimekeeperOptions(
        broker_url=args.broker,
        cluster=args.cluster,
        prefix=args.prefix,
        signing_key=None if args.signing_key is None else Path(args.signing_key),
        username=args.username,
        password_file=None if args.password_file is None else Path(args.password_file),
        connect_timeout_s=args.connect_timeout,
        duration_s=args.duration,
        protocol=args.protocol,
    )
    return run_timekeeper(options, stop)


# ---------------------------------------------------------------------------- keygen


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge.signing import keygen

    try:
        private, public, kid = keygen(args.name)
    except ValueError as exc:
        print(f"backbeat-edge keygen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # exists, not writable: a file-system problem, not the command line
        print(f"backbeat-edge keygen: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {private} (private, mode 0600) and {public} (public); sig_kid {kid}")
    return 0


# ---------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.errors import HardwareError
    from edge.files import read_regular
    from edge.preflight import preflight

    try:
        config = load_config(args.config, read=read_regular)
        # What run needs beyond the file: credentials, TLS files, the pin factory, the
        # pins on this board, every device built (on a mock of the board).
        checked = preflight(config)
    except (ConfigError, HardwareError) as exc:
        return _refused("check", exc)
    print(
        f"{config.source}: OK (agent {config.agent.id}, cluster {config.agent.cluster}, "
        f"broker {config.broker.url}, config hash {config.digest})"
    )
    print(f"checked: {checked}")
    devices = config.profile.devices
    factory = config.profile.pin_factory or "(gpiozero default / GPIOZERO_PIN_FACTORY)"
    print(f"pin factory: {factory}; {len(devices)} device(s):")
    for name, spec in devices.items():
        print(f"  {name:<16} {spec.kind:<14} pin {spec.pin}  safe {spec.safe_state}")
    print(f"score: {len(config.score.rules)} rule(s)")
    for i, rule in enumerate(config.score.rules):
        a = rule.action
        print(
            f"  [{i}] {a.device}.{a.do} every {rule.every} in {rule.phase} +{rule.offset:.2f}"
            f" {'essential' if a.essential else 'optional'} prio {a.priority}; "
            f"fits up to {rule.max_tempo_bpm():.1f} BPM"
        )
    tempos = [float(t) for t in args.tempo] if args.tempo else [1, 10, 60, 240, 1000]
    print("plan by tempo:")
    worst = 0
    for bpm in tempos:
        problems = config.score.fit(bpm)
        worst = max(worst, len(problems))
        verdict = "all rules fit" if not problems else "; ".join(str(p) for p in problems)
        print(f"  {bpm:>7.1f} BPM: {verdict}")
    return 0


# ---------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    try:
        return run_demo(
            bpm=args.bpm,
            duration_s=args.duration,
            profile=args.profile,
            trace_path=args.trace,
            plain=args.plain,
            nats=args.nats,
        )
    except EdgeError as exc:
        print(f"backbeat-edge demo: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------- monitor


def cmd_monitor(args: argparse.Namespace) -> int:
    from edge.monitor import run_monitor

    return run_monitor(
        args.broker,
        args.cluster,
        as_json=args.json,
        prefix=args.prefix,
        duration_s=args.duration,
        connect_timeout_s=args.connect_timeout,
        keys_dir=args.keys,
        protocol=args.protocol,
    )


# ---------------------------------------------------------------------------- parser


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` gives every option's default, but not the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _tempo(text: str) -> float:
    """A ``--tempo`` value: a finite BPM in the contract's 0.1..1000."""
    try:
        bpm = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a tempo in BPM, got {text!r}") from None
    if not (math.isfinite(bpm) and 0.1 <= bpm <= 1000):
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 1000 BPM, got {text!r}")
    return bpm


def _broker_options(p: argparse.ArgumentParser) -> None:
    """``--broker`` (one URL or a comma-separated list) and ``--protocol``, as every tool
    that talks to the broker takes them."""
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="broker URL, or several comma-separated (tried in order, moved on from on loss)",
    )
    p.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (NATS's MQTT gateway speaks 3.1.1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbeat-edge",
        description="Follow a BACKBEAT cluster beat and fire hardware actions on it.",
        formatter_class=_HelpWithDefaults,
    )
    parser.add_argument("--version", action="version", version=f"backbeat-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run the agent",
        description="Run the agent: follow the "
        "beat from the broker, fire the score's actions, report status. The config is "
        "checked as by check before any pin is touched; SIGHUP re-reads it, and a bad "
        "one is refused (logged) while the agent runs on.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--config", required=True, help="agent config TOML (may name a profile)")
    p.add_argument("--trace", help="append one JSON line per action fired or shed to FILE")
    p.add_argument("--duration", type=float, help="stop after S seconds (tests, benches)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "pulse",
        help="send a BACKBEAT beat for benches and demos",
        description="Send one BeatFrame per beat (SIGUSR1/SIGUSR2 or the topic "
        "{prefix}/{cluster}/pulse/tempo change the tempo, +/-10% per change "
        "unless the payload says e.g. '600 force').",
    )
    _broker_options(p)
    p.add_argument("--username", help="broker user (e.g. pulse-CLUSTER, see systemd/mosquitto)")
    p.add_argument(
        "--password-file", help="file holding that user's password (never the password itself)"
    )
    p.add_argument("--cluster", required=True, help="cluster id (topic {prefix}/{cluster}/beat)")
    p.add_argument("--bpm", type=float, required=True, help="tempo, 0.1-1000 BPM")
    p.add_argument("--bar", type=int, default=4, help="beats per bar")
    p.add_argument("--format", choices=("json", "cbor"), default="json", help="frame encoding")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: run on)")
    p.add_argument("--per-phase", action="store_true", help="send a frame per phase")
    p.add_argument("--start-beat", type=int, default=0, help="first beat index")
    p.add_argument("--prefix", default="backbeat", help="topic prefix")
    p.add_argument("--trace", help="append one JSON line per frame sent to FILE")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="give up (exit 1) if the broker is not reached in S seconds",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="sign every frame with this Ed25519 private key (PEM, from keygen)",
    )
    p.add_argument(
        "--no-time-exchange",
        action="store_true",
        help="do not answer time requests ({prefix}/{cluster}/time/req/+)",
    )
    p.set_defaults(func=cmd_pulse)

    p = sub.add_parser(
        "timekeeper",
        help="answer the agents' time exchange on the host of a pulse",
        description="Answer time requests ({prefix}/{cluster}/time/req/+) with this "
        "host's wall clock, for agents whose own wall clock is not trusted. Run it on the "
        "host whose wall clock the pulse's deadline_at is written in (the bench pulse "
        "answers by itself).",
    )
    _broker_options(p)
    p.add_argument("--cluster", required=True, help="cluster id")
    p.add_argument("--prefix", default="backbeat", help="topic prefix")
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="sign every response with this Ed25519 private key (PEM, from keygen)",
    )
    p.add_argument("--username", help="broker user")
    p.add_argument(
        "--password-file", help="file holding that user's password (never the password itself)"
    )
    p.add_argument("--connect-timeout", type=float, default=5.0, help="give up after S seconds")
    p.add_argument("--duration", type=float, help="stop after S seconds (tests, benches)")
    p.set_defaults(func=cmd_timekeeper)

    p = sub.add_parser(
        "check",
        help="validate a config and print the plan",
        description="Validate a config and its profile as run would use them (the "
        "broker's password and TLS files, the pin factory, every pin on this board, every "
        "device built on mock pins), list every problem, and print which actions fit at "
        "which tempo. Run it as the user the service runs as, or with sudo.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--config", required=True, help="agent config TOML (may name a profile)")
    p.add_argument(
        "--tempo",
        nargs="*",
        type=_tempo,
        help="tempos to plan for, in BPM (default: 1 10 60 240 1000)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "demo",
        help="run the embedded demo (broker, pulse, agent on mock pins)",
        description="Start a private Mosquitto, a pulse and the agent on mock "
        "pins, and show a live view until Ctrl-C or --duration.",
    )
    p.add_argument("--bpm", type=float, default=60.0, help="the pulse's tempo")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("--profile", help="hardware profile (default: the bench profile in hw/)")
    p.add_argument("--trace", help="write the agent's action trace to FILE")
    p.add_argument("--plain", action="store_true", help="one status line per beat, no screen")
    p.add_argument(
        "--nats",
        action="store_true",
        help="run on a private 3-node NATS cluster instead of one Mosquitto",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "monitor",
        help="live table of a fleet's status",
        description="Watch a cluster's status and availability topics.",
    )
    _broker_options(p)
    p.add_argument("--cluster", required=True, help="cluster id")
    p.add_argument("--prefix", default="backbeat", help="topic prefix")
    p.add_argument("--json", action="store_true", help="one JSON line per claim")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="give up (exit 1) if the broker is not reached in S seconds",
    )
    p.add_argument(
        "--keys",
        metavar="DIR",
        help="verify claims against the *.pub.pem in DIR: rows say signed, unsigned or forged",
    )
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signed beats or claims",
        description="Write NAME.pem (the private key, mode 0600) and NAME.pub.pem (the "
        "public key to install on devices as [security] beat_keys, or in monitor --keys). "
        "Existing files are never overwritten.",
    )
    p.add_argument("name", metavar="NAME", help="path and name of the pair, without .pem")
    p.set_defaults(func=cmd_keygen)
    for command in sub.choices.values():
        command.formatter_class = _HelpWithDefaults
    return parser


#: Exit status when the reader of our output went away (``| head``), as a program killed
#: by SIGPIPE would report it in a shell.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help writes too
        _setup_logging(args.verbose)
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Not our error, and no traceback: later writes (the interpreter's last flush
        # included) go to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    return code


if __name__ == "__main__":
    sys.exit(main())
