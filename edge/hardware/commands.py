"""Command runs: the launcher thread that starts them, and their polls, ends and kills
(see the package doc for why a command needs a thread and a pin does not)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge.hardware.devices import Devices, _Device
from edge.hardware.results import ActionResult, _describe
from edge.profile import DEFAULT_COMMAND_TIMEOUT_S
from edge.score import Action

log = logging.getLogger(__name__)

#: How soon after its apply a command is first polled (for a start or an end); each later
#: poll waits twice as long as the one before, up to COMMAND_POLL_S.
COMMAND_POLL_MIN_S = 0.002
#: The longest wait between two polls of a running command.
COMMAND_POLL_S = 0.02
#: How long close() waits for the launcher to finish a start it is in (an exec, bounded).
LAUNCHER_STOP_S = 5.0
#: Bytes of a command's stderr kept for its result.
COMMAND_STDERR_BYTES = 2048


@dataclass(slots=True)
class _Run:
    """One command run, from its apply (``applied``) until it is reaped."""

    run_id: int
    argv: tuple[str, ...]
    applied: float  # the deadline and the reported duration count from here
    deadline: float
    poll_at: float
    poll_every: float = COMMAND_POLL_MIN_S
    proc: subprocess.Popen[bytes] | None = None  # None until the launcher has started it
    killed: bool = False
    tag: object = None  # the caller's, echoed in the run's end

    def schedule_poll(self, now: float) -> None:
        # Doubling intervals: a short command is seen ending within a few ms, a long one
        # costs few wake-ups; the deadline itself is always a due-time (see earliest()).
        self.poll_at = now + self.poll_every
        self.poll_every = min(self.poll_every * 2.0, COMMAND_POLL_S)


Popen = Callable[..., "subprocess.Popen[bytes]"]


def start_command(popen: Popen, argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a command device runs it: no stdin, stdout discarded, stderr kept
    for the error, its own session (so a kill takes its children)."""
    return popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        close_fds=True,
        start_new_session=True,
    )


class _Launcher:
    """The one thread that starts commands (see the module doc for why there is one).

    ``submit`` queues a start and returns at once; the thread runs ``popen`` and puts
    ``(run_id, process, None)`` or ``(run_id, None, error text)`` on ``started``, which the
    loop drains in :meth:`Hardware.tick`. The thread touches nothing else of the hardware,
    so the loop needs no lock. Pins never use it: a pin write is microseconds and must
    stay in order with the other writes of the beat.
    """

    def __init__(self, popen: Popen) -> None:
        self._popen = popen
        self._requests: queue.SimpleQueue[tuple[int, tuple[str, ...]] | None] = queue.SimpleQueue()
        self.started: queue.SimpleQueue[tuple[int, subprocess.Popen[bytes] | None, str | None]] = (
            queue.SimpleQueue()
        )
        self._submitted = 0  # written by the loop only
        self._made = 0  # written by the thread only, under _settled
        self._settled = threading.Condition()
        self.thread = threading.Thread(
            target=self._serve, name="backbeat-command-launcher", daemon=True
        )
        self.thread.start()

    def submit(self, run_id: int, argv: tuple[str, ...]) -> None:
        self._submitted += 1
        self._requests.put((run_id, argv))

    def wait_made(self, timeout: float) -> bool:
        """Wait until every start submitted so far has been made (or has failed)."""
        submitted = self._submitted
        with self._settled:
            return self._settled.wait_for(lambda: self._made >= submitted, timeout)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            run_id, argv = request
            try:
                # Returns once the child has exec'd (or failed to): the wait the loop avoids.
                proc = start_command(self._popen, argv)
                if proc.stderr is not None:
                    os.set_blocking(proc.stderr.fileno(), False)
            except Exception as exc:  # any failure is this run's, never the thread's end
                self.started.put((run_id, None, _describe(exc)))
            else:
                self.started.put((run_id, proc, None))
            with self._settled:
                self._made += 1
                self._settled.notify_all()

    def stop(self, timeout: float) -> bool:
        """Finish the queued starts, end the thread; False if it did not end in time."""
        self._requests.put(None)
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _program(argv: tuple[str, ...]) -> str:
    return argv[0] if argv else "(empty argv)"


class Commands(Devices):
    """Starts, polls, reaps and kills the runs of command devices."""

    _popen: Popen
    _launcher: _Launcher | None
    _launching: dict[int, tuple[_Device, _Run]]
    _next_run: int
    commands_killed: int

    def _spawn(self, d: _Device, action: Action, now: float, tag: object) -> ActionResult:
        """Hand the start to the launcher and return at once (see the module doc)."""
        name = d.spec.name
        running = d.running if d.running is not None else []
        if len([r for r in running if not r.killed]) >= int(d.spec.number("max_running", 1)):
            self._drop("busy")
            return ActionResult(name, "command", False, "busy", "still running", None, now)
        if d.min_interval and now - d.last_switch < d.min_interval:
            self._drop("rate_limit")
            return ActionResult(name, "command", False, "rate_limit", None, None, now)
        argv = action.argv or ()
        timeout = action.duration_s or d.spec.number("timeout_s", DEFAULT_COMMAND_TIMEOUT_S)
        if self._launcher is None:  # only after close(): start one again rather than fail
            self._launcher = _Launcher(self._popen)
        run = _Run(self._next_run, argv, now, now + timeout, now, tag=tag)
        self._next_run += 1
        run.schedule_poll(now)
        running.append(run)
        d.running = running
        d.last_switch = now
        self._launching[run.run_id] = (d, run)
        self._launcher.submit(run.run_id, argv)
        return ActionResult(name, "command", True, None, None, None, now, run=run.run_id, tag=tag)

    def _collect_starts(self, launcher: _Launcher | None, now: float) -> list[ActionResult]:
        """Take the launcher's finished starts: attach each process to its run, kill it at
        once if its run was killed meanwhile, report a start that failed."""
        results: list[ActionResult] = []
        if launcher is None:
            return results
        while True:
            try:
                run_id, proc, error = launcher.started.get_nowait()
            except queue.Empty:
                return results
            d, run = self._launching.pop(run_id)
            name = d.spec.name
            if proc is None:
                message = f"{name}: could not start {_program(run.argv)!r}: {error}"
                self._failures[name] = self._failures.get(name, 0) + 1
                self.errors[name] = message
                if d.running is not None and run in d.running:
                    d.running.remove(run)
                if run.killed:
                    log.warning("%s", message)  # its kill was reported already
                else:
                    results.append(
                        ActionResult(
                            name,
                            "command_not_started",
                            False,
                            None,
                            message,
                            None,
                            now,
                            run=run_id,
                            duration_s=now - run.applied,
                            tag=run.tag,
                        )
                    )
                continue
            run.proc = proc
            if run.killed:
                # Its deadline (or a safe state) came before it even started.
                with contextlib.suppress(OSError):
                    proc.kill()

    def _tick_commands(self, d: _Device, now: float) -> list[ActionResult]:
        results: list[ActionResult] = []
        keep: list[_Run] = []
        name = d.spec.name
        for run in d.running or ():
            if now < run.poll_at and (run.killed or now < run.deadline):
                keep.append(run)  # another run's due-time woke us; nothing due for this one
                continue
            code = run.proc.poll() if run.proc is not None else None
            if code is not None:
                err = self._stderr(run)
                if not run.killed:
                    ok = code == 0
                    program = _program(run.argv)
                    text = None if ok else f"{program} exited {code}: {err}".rstrip(": ")
                    if not ok:
                        self._failures[name] = self._failures.get(name, 0) + 1
                    results.append(
                        ActionResult(
                            name,
                            "command_done",
                            ok,
                            None,
                            text,
                            float(code),
                            now,
                            run=run.run_id,
                            duration_s=now - run.applied,
                            tag=run.tag,
                        )
                    )
                continue
            if not run.killed and now >= run.deadline:
                if run.proc is not None:
                    with contextlib.suppress(OSError):
                        run.proc.kill()
                    how = "was killed"
                else:  # the launcher kills it the moment it exists (_collect_starts)
                    how = "had not even started; it is killed once it does"
                run.killed = True
                self.commands_killed += 1
                limit = run.deadline - run.applied
                results.append(
                    ActionResult(
                        name,
                        "command_killed",
                        False,
                        None,
                        f"{_program(run.argv)} overran its {limit:g} s deadline and {how}",
                        None,
                        now,
                        run=run.run_id,
                        duration_s=now - run.applied,
                        tag=run.tag,
                    )
                )
            run.schedule_poll(now)
            keep.append(run)
        d.running = keep
        return results

    @staticmethod
    def _stderr(run: _Run) -> str:
        stream = run.proc.stderr if run.proc is not None else None
        if stream is None:
            return ""
        try:
            data = stream.read(COMMAND_STDERR_BYTES) or b""
        except OSError:
            data = b""
        finally:
            stream.close()
        return data.decode("utf-8", "replace").strip()
