"""The ``backbeat-edge`` command: run | demo | pulse | timekeeper | check | monitor | keygen.

The argument parser (one table, :data:`COMMANDS`: each command's help and its options in
help order, the options several commands take written once), the dispatch to each
command's body, and the exit codes. The bodies live with what they run: ``edge.agent``
(run), ``edge.pulse_command``, ``edge.timekeeper``, ``edge.preflight`` and
``edge.check_report`` (check), ``edge.demo``, ``edge.monitor``, ``edge.signing`` (keygen).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from edge import __version__
from edge.errors import ConfigError, EdgeError
from edge.messages import MAX_TEMPO_BPM, MIN_TEMPO_BPM
from edge.pulse_command import cmd_pulse
from edge.topics import cluster_problem, prefix_problem


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
    from edge.files import FileRefused
    from edge.pulse import open_trace

    try:
        trace = open_trace(args.trace)
    except FileRefused as exc:
        print(f"backbeat-edge run: --trace {exc}", file=sys.stderr)
        return EXIT_USAGE
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
    from edge.check_report import DEFAULT_TEMPOS, report
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
    tempos = [float(t) for t in args.tempo] if args.tempo else DEFAULT_TEMPOS
    for line in report(config, checked, tempos):
        print(line)
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


def _finite(kind: str, ok: Callable[[float], bool], bounds: str) -> Callable[[str], float]:
    """An argparse type: a finite number for which ``ok`` holds, refused in words."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return value

    return parse


def _checked(problem: Callable[[str], str | None], strip: str = "") -> Callable[[str], str]:
    """An argparse type: the text (``strip`` taken off its end), if ``problem`` finds
    nothing wrong with it."""

    def parse(text: str) -> str:
        wrong = problem(text)
        if wrong is not None:
            raise argparse.ArgumentTypeError(wrong)
        return text.rstrip(strip) if strip else text

    return parse


#: ``--cluster`` and ``--prefix``: the rules of the agent's config (``edge.topics``; a
#: prefix loses a trailing ``/`` there too), so a tool never subscribes with a wildcard
#: (and answers other clusters) or builds a topic no frame can carry.
_cluster = _checked(cluster_problem)
_prefix = _checked(prefix_problem, strip="/")


def _start_beat(text: str) -> int:
    """``pulse --start-beat``: a beat index as frames carry it, 0 to 2^63-1."""
    from edge.messages import MAX_BEAT_INDEX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_BEAT_INDEX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_BEAT_INDEX}, got {text!r}")
    return value


#: A ``--tempo`` or the demo's ``--bpm``: the contract's 0.1..1000 BPM.
_tempo = _finite(
    "a tempo in BPM", lambda bpm: MIN_TEMPO_BPM <= bpm <= MAX_TEMPO_BPM, "between 0.1 and 1000 BPM"
)
#: A ``--duration`` or ``--connect-timeout``.
_seconds = _finite("a number of seconds", lambda s: s > 0, "a finite number of seconds above 0")


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a command, as ``add_argument`` takes it."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any]


def _option(*flags: str, **settings: Any) -> Option:
    return Option(flags, settings)


def _duration(note: str) -> Option:
    return _option("--duration", type=_seconds, help=f"stop after S seconds ({note})")


def _signing_key(what: str) -> Option:
    text = f"sign every {what} with this Ed25519 private key (PEM, from keygen)"
    return _option("--signing-key", metavar="FILE", help=text)


def _connect_timeout(default: float, text: str) -> Option:
    return _option("--connect-timeout", type=_seconds, default=default, help=text)


# The options more than one command takes, each written once.
CONFIG = _option("--config", required=True, help="agent config TOML (may name a profile)")
#: ``--broker`` (one URL or a comma-separated list) and ``--protocol``, as every tool that
#: talks to the broker takes them.
BROKER = (
    _option(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="broker URL, or several comma-separated (tried in order, moved on from on loss)",
    ),
    _option(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (NATS's MQTT gateway speaks 3.1.1)",
    ),
)
CLUSTER = _option("--cluster", type=_cluster, required=True, help="cluster id")
PREFIX = _option("--prefix", type=_prefix, default="backbeat", help="topic prefix")
PASSWORD_FILE = _option(
    "--password-file", help="file holding that user's password (never the password itself)"
)
REACHED = "give up (exit 1) if the broker is not reached in S seconds"


@dataclass(frozen=True, slots=True)
class Command:
    """A sub-command: its name, what runs it, its help and its options in help order."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    options: tuple[Option, ...]
    epilog: str | None = None


COMMANDS = (
    Command(
        "run",
        cmd_run,
        "run the agent",
        "Run the agent: follow the beat from the broker, fire the score's actions, report "
        "status. The config is checked as by check before any pin is touched; SIGHUP "
        "re-reads it, and a bad one is refused (logged) while the agent runs on.",
        (
            CONFIG,
            _option("--trace", help="append one JSON line per action fired or shed to FILE"),
            _duration("tests, benches"),
        ),
        EXIT_CODES,
    ),
    Command(
        "pulse",
        cmd_pulse,
        "send a BACKBEAT beat for benches and demos",
        "Send one BeatFrame per beat (SIGUSR1/SIGUSR2 or the topic "
        "{prefix}/{cluster}/pulse/tempo change the tempo, +/-10% per change unless the "
        "payload says e.g. '600 force').",
        (
            *BROKER,
            _option("--username", help="broker user (e.g. pulse-CLUSTER, see systemd/mosquitto)"),
            PASSWORD_FILE,
            _option(
                "--cluster",
                type=_cluster,
                required=True,
                help="cluster id (topic {prefix}/{cluster}/beat)",
            ),
            _option("--bpm", type=float, required=True, help="tempo, 0.1-1000 BPM"),
            _option("--bar", type=int, default=4, help="beats per bar"),
            _option("--format", choices=("json", "cbor"), default="json", help="frame encoding"),
            _duration("default: run on"),
            _option("--per-phase", action="store_true", help="send a frame per phase"),
            _option("--start-beat", type=_start_beat, default=0, help="first beat index"),
            PREFIX,
            _option("--trace", help="append one JSON line per frame sent to FILE"),
            _connect_timeout(5.0, REACHED),
            _signing_key("frame"),
            _option(
                "--no-time-exchange",
                action="store_true",
                help="do not answer time requests ({prefix}/{cluster}/time/req/+)",
            ),
        ),
    ),
    Command(
        "timekeeper",
        cmd_timekeeper,
        "answer the agents' time exchange on the host of a pulse",
        "Answer time requests ({prefix}/{cluster}/time/req/+) with this host's wall clock, "
        "for agents whose own wall clock is not trusted. Run it on the host whose wall "
        "clock the pulse's deadline_at is written in (the bench pulse answers by itself).",
        (
            *BROKER,
            CLUSTER,
            PREFIX,
            _signing_key("response"),
            _option("--username", help="broker user"),
            PASSWORD_FILE,
            _connect_timeout(5.0, "give up after S seconds"),
            _duration("tests, benches"),
        ),
    ),
    Command(
        "check",
        cmd_check,
        "validate a config and print the plan",
        "Validate a config and its profile as run would use them (the broker's password "
        "and TLS files, the pin factory, every pin on this board, every device built on "
        "mock pins), list every problem, and print which actions fit at which tempo. Run "
        "it as the user the service runs as, or with sudo.",
        (
            CONFIG,
            _option(
                "--tempo",
                nargs="*",
                type=_tempo,
                help="tempos to plan for, in BPM (default: 1 10 60 240 1000)",
            ),
        ),
        EXIT_CODES,
    ),
    Command(
        "demo",
        cmd_demo,
        "run the embedded demo (broker, pulse, agent on mock pins)",
        "Start a private Mosquitto, a pulse and the agent on mock pins, and show a live "
        "view until Ctrl-C or --duration.",
        (
            _option("--bpm", type=_tempo, default=60.0, help="the pulse's tempo, 0.1-1000 BPM"),
            _duration("default: Ctrl-C"),
            _option("--profile", help="hardware profile (default: the bench profile in hw/)"),
            _option("--trace", help="write the agent's action trace to FILE"),
            _option("--plain", action="store_true", help="one status line per beat, no screen"),
            _option(
                "--nats",
                action="store_true",
                help="run on a private 3-node NATS cluster instead of one Mosquitto",
            ),
        ),
    ),
    Command(
        "monitor",
        cmd_monitor,
        "live table of a fleet's status",
        "Watch a cluster's status and availability topics.",
        (
            *BROKER,
            CLUSTER,
            PREFIX,
            _option("--json", action="store_true", help="one JSON line per claim"),
            _duration("default: Ctrl-C"),
            _connect_timeout(10.0, REACHED),
            _option(
                "--keys",
                metavar="DIR",
                help="verify claims against the *.pub.pem in DIR: rows say signed, unsigned "
                "or forged",
            ),
        ),
    ),
    Command(
        "keygen",
        cmd_keygen,
        "make an Ed25519 key pair for signed beats or claims",
        "Write NAME.pem (the private key, mode 0600) and NAME.pub.pem (the public key to "
        "install on devices as [security] beat_keys, or in monitor --keys). Existing "
        "files are never overwritten.",
        (_option("name", metavar="NAME", help="path and name of the pair, without .pem"),),
    ),
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
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=_HelpWithDefaults,
        )
        for option in command.options:
            p.add_argument(*option.flags, **option.settings)
        # -v after the command too; SUPPRESS keeps one given before it.
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
        # Its own parser, so that an unknown option is told with this command's usage.
        p.set_defaults(func=command.run, command_parser=p)
    return parser


#: Exit status when the reader of our output went away (``| head``), as a program killed
#: by SIGPIPE would report it in a shell.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, unknown = build_parser().parse_known_args(argv)  # --help writes too
        if unknown:
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
