"""The python worker: the process that runs one python device's function on the beat.

``edge.hardware.pycalls`` starts it (``python -m edge.pyworker``) with the device's
``call``, ``path`` and ``safe_call`` and two pipe ends, and talks to it with
:mod:`multiprocessing.connection` messages. The module is imported once, at start; then
the worker waits for jobs. A job comes *ahead* of its time, with the intended monotonic
time (``CLOCK_MONOTONIC`` is one clock for every process of the machine): the worker
sleeps on its pipe until just before it, spins the last :data:`SPIN_S`, and calls the
function itself, so the hand-off costs the beat loop one pipe write done early, not a
wake-up across processes at the boundary.

Messages in (tuples): ``("job", id, at, deadline, context)`` queues or re-times a job (a
job that has started is never queued again); ``("cancel", id)`` answers
``("cancelled", id, removed)``; ``("safe", reason, params)`` calls ``safe_call``; ``("stop",)``
ends the worker. Messages out: ``("ready", pid, error)`` once the module is imported
(``error`` set, and the worker exits 3, when it cannot be); ``("done", id, entry, exit,
values, error, kind)`` after each call (``kind`` is ``None``, ``"exception"`` or
``"bad_values"``); ``("skipped", id)`` for a job that came after its deadline;
``("safe_done", error)``.

The function gets one :class:`CallContext` and may return a mapping of small values
(:func:`check_values` says which). This module imports only the standard library, so a
worker costs one bare interpreter plus the user's module.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

#: The worker wakes this long before a job's time and spins the rest (a sleep wakes late).
SPIN_S = 0.001
#: Returned values: at most this many keys, each a short name, each value a bool, an
#: integer, a finite float or a string of at most MAX_VALUE_TEXT characters.
MAX_VALUES = 16
MAX_VALUE_TEXT = 64
_VALUE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,32}")
#: Jobs remembered as started, so a late re-time never runs one twice.
_STARTED_KEPT = 256


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a python device's function is told about the beat it runs on (read-only).

    ``at`` is the intended local ``time.monotonic()`` of the call (the phase boundary plus
    the rule's offset) and ``deadline`` the one by which it must return (the end of its
    phase, or ``deadline_beats`` after ``at``): past it the worker is killed. ``downbeat``
    is ``None`` while the bar is not known. ``params`` are the device's, with the rule's
    merged over them.
    """

    beat_index: int
    phase: str
    downbeat: bool | None
    tempo_bpm: float
    at: float
    deadline: float
    device: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class SafeContext:
    """What ``safe_call`` is told: the device, why (``"shutdown"``, ``"beat lost"``...)
    and the device's params."""

    device: str
    reason: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def describe(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_values(result: object) -> tuple[dict[str, object] | None, str | None]:
    """A function's return value as the claim may carry it: ``(values, None)``, or
    ``(None, problem)`` when it is not a mapping of at most :data:`MAX_VALUES` short names
    to booleans, 64-bit integers, finite floats or short strings. ``None`` is no values."""
    if result is None:
        return None, None
    if not isinstance(result, Mapping):
        return None, f"returned a {type(result).__name__}, not a mapping of values"
    if len(result) > MAX_VALUES:
        return None, f"returned {len(result)} values, more than {MAX_VALUES}"
    values: dict[str, object] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not _VALUE_KEY.fullmatch(key):
            return None, f"value name {key!r} is not 1-32 letters, digits, '_', '.' or '-'"
        if isinstance(value, bool):
            values[key] = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                return None, f"value {key} = {value} does not fit 64 bits"
            values[key] = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                return None, f"value {key} is not finite ({value})"
            values[key] = value
        elif isinstance(value, str):
            if len(value) > MAX_VALUE_TEXT:
                return None, f"value {key} is a string over {MAX_VALUE_TEXT} characters"
            values[key] = value
        else:
            return None, f"value {key} is a {type(value).__name__} (numbers, strings, booleans)"
    return values, None


def load(call: str, path: str | None, safe_call: str | None) -> tuple[Callable[..., Any], Any]:
    """Import ``package.module:function`` (``path`` first on the import path) and return
    the function and the module's ``safe_call`` (or None); raises what the import raises,
    or a TypeError / AttributeError naming what is missing or not callable."""
    module_name, _, attr = call.partition(":")
    if path:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"path {path!r} is not a directory")
        sys.path.insert(0, path)
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{call} is a {type(fn).__name__}, not callable")
    safe = None
    if safe_call:
        if not hasattr(module, safe_call):
            raise AttributeError(f"module {module_name!r} has no safe_call {safe_call!r}")
        safe = getattr(module, safe_call)
        if not callable(safe):
            raise TypeError(f"{module_name}:{safe_call} is not callable")
    return fn, safe


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


@dataclass(slots=True)
class _Job:
    job_id: int
    at: float
    deadline: float
    context: dict[str, Any]


class _Worker:
    def __init__(
        self,
        inbox: Connection,
        outbox: Connection,
        device: str,
        fn: Callable[..., Any],
        safe: Any,
        params: Mapping[str, Any],
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.device = device
        self.fn = fn
        self.safe = safe
        self.params = params
        self.jobs: dict[int, _Job] = {}
        self.started: dict[int, None] = {}  # insertion-ordered set

    def serve(self) -> int:
        while True:
            job = min(self.jobs.values(), key=lambda j: j.at, default=None)
            timeout = None if job is None else max(0.0, job.at - time.monotonic() - SPIN_S)
            if job is None or (timeout is not None and timeout > 0):
                try:
                    if self.inbox.poll(timeout):
                        if not self._handle(self.inbox.recv()):
                            return 0
                        continue
                except (EOFError, OSError):  # the agent is gone: rest safe and end
                    self._safe("agent gone", reply=False)
                    return 0
            if job is None:
                continue
            context = self._context(job)  # made before the instant, not after it
            while time.monotonic() < job.at:
                pass
            del self.jobs[job.job_id]
            if time.monotonic() > job.deadline:  # an earlier call ran past this one's phase
                self.outbox.send(("skipped", job.job_id))
                continue
            self._run(job, context)

    def _handle(self, message: tuple[Any, ...]) -> bool:
        what = message[0]
        if what == "job":
            _, job_id, at, deadline, context = message
            if job_id in self.started:
                return True
            if time.monotonic() > deadline:
                self.jobs.pop(job_id, None)
                self.outbox.send(("skipped", job_id))
                return True
            self.jobs[job_id] = _Job(job_id, at, deadline, context)
        elif what == "cancel":
            removed = self.jobs.pop(message[1], None) is not None
            self.outbox.send(("cancelled", message[1], removed))
        elif what == "safe":
            self.params = dict(message[2])
            self._safe(str(message[1]), reply=True)
        elif what == "stop":
            return False
        return True

    def _context(self, job: _Job) -> CallContext:
        ctx = job.context
        return CallContext(
            beat_index=ctx["beat_index"],
            phase=ctx["phase"],
            downbeat=ctx["downbeat"],
            tempo_bpm=ctx["tempo_bpm"],
            at=job.at,
            deadline=job.deadline,
            device=self.device,
            params=MappingProxyType(ctx["params"]),
        )

    def _run(self, job: _Job, context: CallContext) -> None:
        self.started[job.job_id] = None
        error: str | None = None
        kind: str | None = None
        values: dict[str, object] | None = None
        entry = time.monotonic()
        try:
            result = self.fn(context)
        except Exception as exc:  # the function's fault: reported, the worker goes on
            exit_at = time.monotonic()
            error, kind = describe(exc), "exception"
        else:
            exit_at = time.monotonic()
            values, problem = check_values(result)
            if problem is not None:
                error, kind = problem, "bad_values"
        self.outbox.send(("done", job.job_id, entry, exit_at, values, error, kind))
        if len(self.started) > _STARTED_KEPT:
            del self.started[next(iter(self.started))]

    def _safe(self, reason: str, reply: bool) -> None:
        error = None
        if self.safe is not None:
            try:
                self.safe(SafeContext(self.device, reason, MappingProxyType(dict(self.params))))
            except Exception as exc:
                error = describe(exc)
        if reply:
            self.outbox.send(("safe_done", error))


def check_main(call: str, path: str | None, safe_call: str | None) -> int:
    """``python -m edge.pyworker --check CALL PATH SAFE``: import only, print the problem
    (exit 1) or nothing (exit 0). ``check`` runs it in a child with a time limit."""
    try:
        load(call, path or None, safe_call or None)
    except BaseException as exc:
        print(describe(exc))
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--check":
        return check_main(argv[1], argv[2] or None, argv[3] or None)
    read_fd, write_fd = int(argv[0]), int(argv[1])
    device, call, path, safe_call = argv[2], argv[3], argv[4] or None, argv[5] or None
    params: dict[str, Any] = {}
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    # Die with the agent even inside a hung function (PR_SET_PDEATHSIG: it fires when the
    # thread that started us ends, the agent's loop or its spawner thread, both of which
    # outlive their workers), and sleep with 1 ns timer slack so a wake-up before a job is
    # on time (PR_SET_TIMERSLACK).
    _prctl(1, signal.SIGKILL)
    _prctl(29, 1)
    if os.getppid() == 1:  # the agent died before the prctl took
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we stop
    try:
        fn, safe = load(call, path, safe_call)
    except BaseException as exc:
        outbox.send(("ready", os.getpid(), describe(exc)))
        return 3
    outbox.send(("ready", os.getpid(), None))
    return _Worker(inbox, outbox, device, fn, safe, params).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
