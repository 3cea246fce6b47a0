"""What ``run`` needs beyond a well-formed config, checked before anything is switched.

``check``, ``run`` and a reload all call :func:`preflight`, so what ``check`` passes
``run`` can start, and what a reload would fail on it refuses instead:

* the broker's files: ``password_file`` found (the systemd credential first, as
  :func:`edge.mqtt_link.read_password` looks) and a regular readable file; ``ca_file``,
  ``cert_file`` and ``key_file`` regular files that load into an ``ssl.SSLContext``;
* the pin factory loadable, with a hint to use ``mock`` on a bench when it is not
  (:class:`NoPinFactory`, a hardware problem: exit code 4, not a config error);
* every pin a GPIO pin of the board, in whichever spelling gpiozero takes (``17``,
  ``"GPIO17"``, ``"BCM17"``, ``"BOARD11"``, ``"J8:11"``, ``"WPI0"``), normalised with
  gpiozero's own board data so two spellings of one pin are refused as a duplicate;
* every device buildable: the profile is built on a mock factory of the same board and
  closed again, so nothing real is touched;
* every python device's ``call`` (and ``safe_call``) loadable: its module is imported in a
  child process (``python -m edge.pyworker --check``), all devices at once, killed after
  :data:`CALL_CHECK_S`, so an import's side effects or hangs cannot touch the agent. One
  that passed is not imported again by a reload in the same process (the loop waits for
  it), unless its ``call``, ``path`` or ``safe_call`` changed.

Files are read by :func:`edge.files.read_regular` (never blocking, 1 MiB at most).
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from edge.config import BrokerConfig, Config, FileRefused
from edge.errors import ConfigError, ConfigProblems, HardwareError
from edge.files import read_regular
from edge.hardware import Hardware, load_pin_factory
from edge.profile import DeviceSpec, Profile

BENCH_HINT = (
    'on a bench without GPIO set pin_factory = "mock" in [gpio] (or GPIOZERO_PIN_FACTORY=mock)'
)


class NoPinFactory(HardwareError):
    """No gpiozero pin factory can be loaded here (wrong machine, missing library)."""


# --------------------------------------------------------------------------- broker files


def credential_candidates(path: Path) -> list[Path]:
    """Where the password is looked for, in order: the systemd credential named like the
    file (``$CREDENTIALS_DIRECTORY``), then the file itself."""
    candidates = [path]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidates.insert(0, Path(creds) / path.name)
    return candidates


def check_broker_files(
    broker: BrokerConfig, problems: ConfigProblems, where: str = "broker"
) -> None:
    """Add a problem for each broker file ``run`` could not use."""
    if broker.password_file is not None:
        _check_password(broker.password_file, problems, f"{where}.password_file")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(broker, key)
        if path is not None:
            try:
                read_regular(path)
            except FileRefused as exc:
                problems.add(f"{where}.{key}", str(exc))
                return  # TLS is not set up from files that cannot be read
    if broker.tls or broker.ca_file is not None:
        _check_tls(broker, problems, where)


def _check_password(path: Path, problems: ConfigProblems, where: str) -> None:
    for candidate in credential_candidates(path):
        try:
            data = read_regular(candidate)
        except FileRefused as exc:
            if exc.problem == "does not exist":
                continue
            problems.add(where, str(exc))
            return
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            problems.add(where, f"{str(candidate)!r} is not UTF-8 text")
        return
    problems.add(where, f"{str(path)!r} does not exist")


def _no_passphrase() -> str:
    return ""  # an encrypted key fails to load instead of prompting on a terminal


def _check_tls(broker: BrokerConfig, problems: ConfigProblems, where: str) -> None:
    context = ssl.create_default_context()
    if broker.ca_file is not None:
        data = read_regular(broker.ca_file)  # checked above: a regular file under the cap
        try:
            # PEM, as the link loads it (given, it is the only CA the link trusts).
            context = ssl.create_default_context(cadata=data.decode("latin-1"))
        except (ssl.SSLError, ValueError) as exc:
            problems.add(
                f"{where}.ca_file",
                f"{str(broker.ca_file)!r} holds no certificate ssl can load ({_ssl_reason(exc)})",
            )
    if broker.cert_file is not None and broker.key_file is not None:
        try:
            context.load_cert_chain(
                str(broker.cert_file), str(broker.key_file), password=_no_passphrase
            )
        except (ssl.SSLError, OSError) as exc:
            problems.add(
                f"{where}.cert_file",
                f"{str(broker.cert_file)!r} and key_file {str(broker.key_file)!r} do not load "
                f"as a certificate and its unencrypted key ({_ssl_reason(exc)})",
            )


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).strip() or type(exc).__name__


# --------------------------------------------------------------------------- pins


@contextlib.contextmanager
def pin_factory_for(profile: Profile, given: object | None = None) -> Iterator[Any]:
    """The pin factory ``run`` would use for ``profile``: ``given``, else the profile's
    ``[gpio] pin_factory``, else gpiozero's default (``GPIOZERO_PIN_FACTORY``, then what
    the machine has). A factory made here is closed on the way out. Raises
    :class:`NoPinFactory` with the bench hint when none loads."""
    if given is not None:
        yield given
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpiozero's fallback warnings: the error says it
        if profile.pin_factory is not None:
            try:
                factory = load_pin_factory(profile.pin_factory)
            except HardwareError as exc:
                raise NoPinFactory(str(exc)) from exc
            try:
                yield factory
            finally:
                with contextlib.suppress(Exception):
                    factory.close()
            return
        try:
            Device.ensure_pin_factory()
        except Exception as exc:
            raise NoPinFactory(
                f"no GPIO pin factory could be loaded ({type(exc).__name__}: {exc}); " + BENCH_HINT
            ) from exc
    yield Device.pin_factory  # gpiozero's own, shared with Hardware: not ours to close


def board_of(factory: object) -> Any | None:
    """The factory's board info (``PiBoardInfo``), or None when it has none."""
    try:
        return getattr(factory, "board_info", None)
    except Exception:
        return None


def _board_name(board: Any) -> str:
    model = getattr(board, "model", "?")
    revision = getattr(board, "revision", "?")
    return f"Raspberry Pi {model} (revision {revision})"


def gpio_name(pin: int | str, board: Any) -> str:
    """The board's own name of ``pin`` (``"GPIO17"`` for ``17``, ``"BOARD11"``,
    ``"J8:11"``, ``"WPI0"``...), by gpiozero's pin data. Raises ``ValueError`` (gpiozero's
    ``PinInvalidPin``) when it is no GPIO pin of the board."""
    name: str = board.to_gpio(pin)
    return name


def check_pins(profile: Profile, board: Any, problems: ConfigProblems) -> bool:
    """Add a problem for every pin that is no GPIO pin of ``board`` and for every pin used
    twice under any spelling. True when every pin is good."""
    ok = True
    used: dict[str, tuple[str, int | str]] = {}
    for spec in profile.devices.values():
        if spec.pin is None:
            continue
        where = f"devices.{spec.name}.pin"
        try:
            name = gpio_name(spec.pin, board)
        except ValueError:
            problems.add(where, f"{spec.pin!r} is not a GPIO pin of a {_board_name(board)}")
            ok = False
            continue
        if name in used:
            other, spelled = used[name]
            same = "" if str(spelled) == str(spec.pin) else f" (given as {spelled!r})"
            problems.add(
                where,
                f"{spec.pin!r} is {name}, already used by devices.{other}{same}",
            )
            ok = False
        else:
            used[name] = (spec.name, spec.pin)
    return ok


class _ThisThreadQuiet(logging.Filter):
    """Drops the records logged on one thread: the mock build's own "outputs to safe
    state" must not read like the real devices', which keep logging from other threads."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def _quiet_hardware_logs() -> Iterator[None]:
    quiet = _ThisThreadQuiet()
    names = [
        n for n in logging.Logger.manager.loggerDict if n.split(".")[:2] == ["edge", "hardware"]
    ]
    loggers = [logging.getLogger(name) for name in {"edge.hardware", *names}]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def check_build(profile: Profile, board: Any, problems: ConfigProblems) -> None:
    """Build every device of ``profile`` on a mock factory of ``board`` and close them;
    a device that cannot be built is a problem at its name."""
    revision = getattr(board, "revision", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factory = MockFactory(revision=revision) if revision else MockFactory()
    try:
        with _quiet_hardware_logs():
            hardware = Hardware(profile, pin_factory=factory, python_workers=False)
            try:
                for name, error in hardware.errors.items():
                    problems.add(f"devices.{name}", f"cannot be built: {error}")
            finally:
                hardware.close()
    finally:
        with contextlib.suppress(Exception):
            factory.close()


# --------------------------------------------------------------------------- python calls

#: How long the import check of every python device's module may take, all at once.
CALL_CHECK_S = 10.0
#: The (call, path, safe_call) triples that imported cleanly in this process.
_CALLS_OK: set[tuple[str, str, str]] = set()


def _call_key(spec: DeviceSpec) -> tuple[str, str, str]:
    return (spec.text("call", ""), spec.text("path", ""), spec.text("safe_call", ""))


def check_calls(profile: Profile, problems: ConfigProblems, timeout: float = CALL_CHECK_S) -> int:
    """Import every python device's module in a child (see the module doc); a problem at
    ``devices.NAME.call`` for each that cannot be. Returns how many were imported."""
    specs = [
        s
        for s in profile.devices.values()
        if s.family == "python" and s.text("call", "") and _call_key(s) not in _CALLS_OK
    ]
    children: list[tuple[DeviceSpec, subprocess.Popen[bytes]]] = []
    for spec in specs:
        call, path, safe = _call_key(spec)
        if path and not os.path.isdir(path):  # said at its own key, resolved, before importing
            problems.add(f"devices.{spec.name}.path", f"{path!r} is not a directory")
            continue
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "edge.pyworker", "--check", call, path, safe],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            problems.add(f"devices.{spec.name}.call", f"cannot check {call!r}: {exc}")
            continue
        children.append((spec, child))
    end = time.monotonic() + timeout
    for spec, child in children:
        where = f"devices.{spec.name}.call"
        call = spec.text("call", "")
        try:
            # Its one line of output fits the pipe: waiting without reading cannot stall.
            child.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            problems.add(where, f"importing {call!r} did not finish within {timeout:g} s")
            continue
        out, _ = child.communicate()
        text = out.decode("utf-8", "replace").strip().splitlines()
        if child.returncode == 0:
            _CALLS_OK.add(_call_key(spec))
        else:
            reason = text[-1] if text else f"the check exited {child.returncode}"
            problems.add(where, f"{call!r} cannot be loaded: {reason}")
    return len(children)


# --------------------------------------------------------------------------- all of it


def preflight(config: Config, pin_factory: object | None = None) -> str:
    """Check what ``run`` needs of ``config`` (see the module doc); returns what was
    checked, for ``check`` to print.

    Raises :class:`~edge.errors.ConfigError` listing every problem, or
    :class:`NoPinFactory` when no pin factory loads (the broker files are checked first,
    so their problems are not hidden behind it).
    """
    problems = ConfigProblems(config.source)
    check_broker_files(config.broker, problems)
    named = [config.broker.password_file, config.broker.ca_file, config.broker.cert_file]
    checked = "broker files readable" if any(named) else "no broker files named"
    if config.security.signing_key is not None:
        from edge.signing import SigningKey  # `cryptography` only where a key is configured

        try:
            SigningKey.load(config.security.signing_key, where="security.signing_key")
            checked += "; claim signing key usable"
        except ConfigError as exc:
            problems.items.extend(exc.problems)
    if any(s.family == "python" for s in config.profile.devices.values()):
        check_calls(config.profile, problems)
        checked += "; every python call importable"
    try:
        with pin_factory_for(config.profile, pin_factory) as factory:
            board = board_of(factory)
            if board is None:
                checked += f"; pins not checked ({type(factory).__name__} has no board data)"
            elif check_pins(config.profile, board, problems):
                check_build(config.profile, board, problems)
                checked += (
                    f"; every pin a GPIO of a {_board_name(board)}, used once; "
                    "every device built on mock pins"
                )
    except NoPinFactory:
        if problems:
            raise ConfigError(problems.items, problems.source) from None
        raise
    problems.raise_if_any()
    return checked
