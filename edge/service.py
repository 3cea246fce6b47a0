"""systemd's notify protocol: ready, status, watchdog, reloading, stopping.

Theory of operation
-------------------
systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` in its environment: the
address of a unix datagram socket (a path, or an abstract name written with a leading
``@``). The service tells systemd about itself by sending newline-separated ``KEY=value``
datagrams there: ``READY=1`` when it is up, ``STATUS=...`` a line for ``systemctl
status``, ``WATCHDOG=1`` to prove it is alive, ``RELOADING=1`` (with ``MONOTONIC_USEC``,
which systemd 253+ requires for ``Type=notify-reload`` and older ones ignore) before a
reload and ``READY=1`` after it, and ``STOPPING=1`` on the way out.

With ``WatchdogSec=`` set, systemd also passes ``WATCHDOG_USEC`` (the period) and
``WATCHDOG_PID`` (the process it expects the pings from) and restarts the service when a
period passes without ``WATCHDOG=1``. A ping must prove that the *beat loop* is alive, not
merely that some thread is: :class:`WatchdogGate` lets a ping out only when the loop
reported an iteration recently, so a hung loop starves systemd of pings and gets restarted.

:class:`Notifier` is the adapter. Off systemd (no ``NOTIFY_SOCKET``) every method is a
no-op. Sends never block (the socket is non-blocking) and never raise: a failure is counted
in ``failures`` and remembered in ``last_error``, because a full or vanished notify socket
must not take the beat loop down with it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Longest STATUS= text sent; systemd shows one line, and a datagram should stay small.
MAX_STATUS_CHARS = 200


def _parse_address(value: str) -> tuple[str | None, str | None]:
    """(socket address, problem) for a NOTIFY_SOCKET value."""
    if value.startswith("/"):
        return value, None
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL byte instead of a path.
        return "\0" + value[1:], None
    return None, f"NOTIFY_SOCKET {value!r} is neither a path nor an abstract @name"


def _parse_watchdog(environ: Mapping[str, str], pid: int) -> tuple[int | None, str | None]:
    """(watchdog period in microseconds, problem) from WATCHDOG_USEC / WATCHDOG_PID."""
    raw = environ.get("WATCHDOG_USEC")
    if raw is None or raw == "":
        return None, None
    try:
        usec = int(raw)
    except ValueError:
        return None, f"WATCHDOG_USEC must be an integer, got {raw!r}"
    if usec <= 0:
        return None, f"WATCHDOG_USEC must be positive, got {raw!r}"
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            owner_pid = int(owner)
        except ValueError:
            return None, f"WATCHDOG_PID must be an integer, got {owner!r}"
        # The variables leaked to another process (a child): the watchdog is not ours.
        if owner_pid != pid:
            return None, None
    return usec, None


class Notifier:
    """Tells systemd how the agent is doing, over ``NOTIFY_SOCKET``.

    Build it with :meth:`from_env`. ``enabled`` is false off systemd, and then every method
    does nothing and returns False. Each method returns True when the datagram was handed
    to the kernel, False otherwise; it never raises and never blocks. ``sent`` counts the
    datagrams delivered, ``failures`` the ones that were not (``last_error`` says why).

    ``watchdog_interval_s`` is how often to send :meth:`watchdog`: half the period systemd
    configured (so at least two pings land in every period), or None without a watchdog.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        *,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        problem: str | None = None,
    ) -> None:
        """``address`` is the kernel form (a path, or NUL + abstract name); None disables.

        ``monotonic_ns`` reads CLOCK_MONOTONIC (the clock systemd compares MONOTONIC_USEC
        against); it is injected for tests. ``problem`` records why the environment was
        not usable, for the agent to log.
        """
        self._address = address
        self.watchdog_usec = watchdog_usec
        self._monotonic_ns = monotonic_ns
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = problem
        self.problem = problem

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, pid: int | None = None
    ) -> Notifier:
        """A notifier for the environment systemd gave this process.

        Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``; ``pid`` defaults
        to this process's id. A malformed value disables that part and is kept in
        ``problem``; nothing raises. The environment is left as it is.
        """
        pid = os.getpid() if pid is None else pid
        raw = environ.get("NOTIFY_SOCKET", "")
        address, problem = _parse_address(raw) if raw else (None, None)
        usec, wd_problem = _parse_watchdog(environ, pid)
        if address is None:
            usec = None
        return cls(address, usec, problem=problem or wd_problem)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a usable NOTIFY_SOCKET."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings (half the period), or None without a watchdog."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    # ------------------------------------------------------------------ the messages

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (start-up or a reload finished), with an optional status line."""
        return self._send(["READY=1", *self._status_field(status)])

    def status(self, text: str) -> bool:
        """STATUS=<text>, one line (newlines become spaces, cut to MAX_STATUS_CHARS)."""
        return self._send(self._status_field(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the beat loop is alive. Send it only when a WatchdogGate says so."""
        return self._send(["WATCHDOG=1"])

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC=<now>; send ready() when the reload is done."""
        usec = self._monotonic_ns() // 1000
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status_field(status)])

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutting down (outputs going to their safe state)."""
        return self._send(["STOPPING=1", *self._status_field(status)])

    def close(self) -> None:
        """Close the socket; later sends open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ the socket

    @staticmethod
    def _status_field(text: str | None) -> list[str]:
        if text is None:
            return []
        line = " ".join(text.splitlines())[:MAX_STATUS_CHARS]
        return [f"STATUS={line}"]

    def _send(self, fields: list[str]) -> bool:
        if self._address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            # Full queue (EAGAIN), systemd gone (ECONNREFUSED / ENOENT): count and carry on.
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.sent += 1
        return True

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class WatchdogGate:
    """Decides when a WATCHDOG=1 ping is due; pure logic, time passed in (seconds).

    The runner calls :meth:`beat_alive` after each loop iteration that did its work and,
    whenever it wakes, asks :meth:`due`; when a ping is due it sends one and calls
    :meth:`pinged`. :meth:`next_deadline` says when to wake up for the next one.

    A ping is due when ``interval_s`` has passed since the last one (at once for the first)
    *and* the loop reported an iteration within ``stale_after_s`` (default: the interval).
    So while the loop iterates, pings go out every ``interval_s`` (half the systemd period:
    two per period); when it stops iterating they stop, and systemd restarts the service.
    ``withheld`` counts the stalls that held a due ping back (once per stall). Not
    thread-safe: call it from one thread.
    """

    interval_s: float
    stale_after_s: float | None = None
    last_alive: float | None = None
    last_ping: float | None = None
    pings: int = 0
    withheld: int = 0
    _stall_counted: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s!r}")
        if self.stale_after_s is None:
            self.stale_after_s = self.interval_s
        elif not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be positive, got {self.stale_after_s!r}")

    def beat_alive(self, now: float) -> None:
        """The loop completed an iteration at ``now`` (an older ``now`` is ignored)."""
        if self.last_alive is None or now > self.last_alive:
            self.last_alive = now

    def alive(self, now: float) -> bool:
        """True when the loop iterated within ``stale_after_s`` before ``now``."""
        stale_after = self.interval_s if self.stale_after_s is None else self.stale_after_s
        return self.last_alive is not None and now - self.last_alive <= stale_after

    def due(self, now: float) -> bool:
        """True when a ping should be sent at ``now``: time for one, and the loop alive."""
        if self.last_ping is not None and now - self.last_ping < self.interval_s:
            return False
        if self.alive(now):
            return True
        if self.last_alive is not None and self._stall_counted != self.last_alive:
            self.withheld += 1
            self._stall_counted = self.last_alive
        return False

    def pinged(self, now: float) -> None:
        """A ping was sent at ``now``; the next is due ``interval_s`` later."""
        self.last_ping = now
        self.pings += 1

    def next_deadline(self, now: float) -> float:
        """When the loop should next ask :meth:`due` (``now`` if a ping is due already).

        While a ping is overdue but held back (the loop stalled, or has not iterated yet),
        this is a quarter interval ahead: look again soon, without spinning.
        """
        if self.last_ping is not None and self.last_ping + self.interval_s > now:
            return self.last_ping + self.interval_s
        if self.alive(now):
            return now
        return now + self.interval_s / 4
