"""A private Mosquitto on a free loopback port, for the demo, the tests and the benchmarks.

Only the demo and the test/benchmark tooling start brokers; the agent itself never does.
The broker runs with a generated config in a temporary directory, listens on 127.0.0.1
only, and is stopped by its process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from edge.errors import EdgeError

_SEARCH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerUnavailable(EdgeError, RuntimeError):
    """Mosquitto is not installed or would not start."""


def find_binary(name: str, search: tuple[str, ...], package: str) -> str:
    """Path of the broker binary ``name`` (on PATH, else in ``search``); raises
    BrokerUnavailable with how to install Debian's ``package``."""
    found = shutil.which(name)
    if found:
        return found
    for path in search:
        if os.access(path, os.X_OK):
            return path
    raise BrokerUnavailable(
        f"{name} is not installed. Run scripts/setup (it installs Debian's {package}), "
        f"or: sudo apt-get install {package}"
    )


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises BrokerUnavailable with how to install it."""
    return find_binary("mosquitto", _SEARCH, "mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_by_pid(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to ``process`` by its pid and wait for it, with SIGKILL after
    ``timeout``; nothing if it has already exited."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, sig)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class PrivateBroker:
    """What a private broker (one Mosquitto, or a NATS cluster) does on ``close()``: stop
    every process, then remove its work directory if it made it. A context manager that
    closes on exit."""

    workdir: Path
    _owned_dir: bool

    def stop_all(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop_all()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Mosquitto(PrivateBroker):
    """A running private broker. Use as a context manager or call ``stop()``."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    extra_conf: str = ""
    _owned_dir: bool = field(default=True, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop the broker by its pid (SIGKILL after ``timeout``)."""
        stop_by_pid(self.process, sig, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port with the same config (after ``stop``/``kill``)."""
        self.stop()
        self.process = _spawn(self.workdir, self.port)

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        self.stop()


def _spawn(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = find_mosquitto()
    proc = subprocess.Popen(
        [binary, "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal is the demo's to handle, not its
    )
    if not wait_for_port(port):
        proc.kill()
        proc.wait()
        log = (
            (workdir / "mosquitto.log").read_text(errors="replace")[-2000:]
            if (workdir / "mosquitto.log").exists()
            else ""
        )
        raise BrokerUnavailable(f"mosquitto did not start on 127.0.0.1:{port}\n{log}")
    return proc


def start_mosquitto(
    port: int | None = None,
    extra_conf: str = "",
    workdir: Path | None = None,
    listener_conf: str | None = None,
    persistence: bool = False,
) -> Mosquitto:
    """Start a private Mosquitto on 127.0.0.1 (a free port unless given).

    ``listener_conf`` replaces the default plain, anonymous listener (for TLS or password
    tests: it must open ``port`` on 127.0.0.1); ``extra_conf`` is appended to the config.
    With ``persistence`` the broker keeps sessions and queued messages across a restart
    (saved on a clean stop, and every second).
    Raises BrokerUnavailable if mosquitto is missing or does not come up.
    """
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="backbeat-mosquitto-")) if workdir is None else workdir
    port = free_port() if port is None else port
    listener = (
        listener_conf
        if listener_conf is not None
        else (f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    )
    conf = (
        listener
        + (
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            if persistence
            else "persistence false\n"
        )
        # As root mosquitto would drop to its own user, which cannot read the private
        # temporary files (password files, certificates) a test hands it.
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "max_queued_messages 100000\n"
        # Small messages must not wait behind Nagle's algorithm (see MqttLink._quickack).
        "set_tcp_nodelay true\n" + extra_conf
    )
    (workdir / "mosquitto.conf").write_text(conf)
    try:
        proc = _spawn(workdir, port)
    except BaseException:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Mosquitto(
        port=port, process=proc, workdir=workdir, extra_conf=extra_conf, _owned_dir=owned
    )
