"""Python devices' worker processes: starting one (off the loop), its pipes, killing it,
its restarts and its stop.

A worker is ``python -m edge.pyworker`` with two pipes; it leads its own process group, so
a kill takes whatever its function started too. Starting one blocks until the exec is
done, so the agent starts them on the :class:`Spawner` thread, never in the beat loop. A
write to it never blocks the loop either (:meth:`Worker.post` keeps what it has not read
under a budget), and one that dies soon after its start waits longer before each restart.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from edge.profile import DeviceSpec

#: A worker that dies this soon after it started waits before the next start, doubling
#: from RESTART_MIN_S up to RESTART_MAX_S (an import that fails must not spin).
QUICK_DEATH_S = 1.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
#: How long close() gives a worker to run its safe_call and end before it is killed.
WORKER_STOP_S = 2.0
#: Bytes written to a worker since it last said anything, above which a job waits (see
#: Worker.post), and above which even a cancel or a safe_call does (a pipe holds 64 KiB).
SEND_BUDGET = 32 * 1024
PIPE_BUDGET = 60 * 1024

#: A started worker: its process and our two pipe ends (send, recv).
Made = tuple[subprocess.Popen[bytes], Connection, Connection]


@dataclass(slots=True)
class Worker:
    """One python device's worker: its process, pipes, restart state, the last entry."""

    spec: DeviceSpec
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    send: Connection | None = None
    recv: Connection | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    spawning: bool = False
    backoff: float = RESTART_MIN_S
    unread_bytes: int = 0  # written since the worker last said anything (see post)
    entry_late_s: float | None = None  # the last call's entry, against its time
    at_rest: bool = False  # safe_call was asked for and no call was sent since

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.send is not None

    def attach(self, made: Made, now: float) -> None:
        """Take a started worker's process and pipes (``now``: when it started)."""
        self.proc, self.send, self.recv = made
        self.unread_bytes = 0
        self.started_at = now
        self.restart_at = None

    def post(self, message: tuple[Any, ...], budget: int) -> bool:
        """Write ``message`` to the worker unless that could fill its pipe: a pipe write
        blocks when the pipe is full, and a hung worker reads nothing until its kill. So
        what was written since the worker last said anything is kept under ``budget``
        bytes (the message waits, and is sent after its next word)."""
        if self.send is None:
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if self.unread_bytes and self.unread_bytes + len(data) > budget:
            return False
        try:
            self.send.send_bytes(data)
        except OSError:
            return False  # it died: the next tick sees it and restarts it
        self.unread_bytes += len(data)
        return True

    def restart(self, spawner: Spawner) -> None:
        """Ask ``spawner`` for the worker's next generation (its jobs wait for it)."""
        self.spawning = True
        self.generation += 1
        spawner.requests.put((self.spec, self.generation))

    def spawn_failed(self, now: float) -> None:
        """A start failed: the next one waits the backoff, which doubles."""
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2.0, RESTART_MAX_S)

    def lost(self, now: float, killed: bool) -> None:
        """The worker is gone (``killed`` at a deadline, or it died): pipes closed, the
        process reaped, its restart scheduled. A kill is ours, so it restarts at once; a
        death soon after a start (an import that fails) waits, longer each time."""
        self.close_pipes()
        quick = not killed and now - self.started_at < QUICK_DEATH_S
        self.restart_at = now + (self.backoff if quick else 0.0)
        if quick:
            self.backoff = min(self.backoff * 2.0, RESTART_MAX_S)
        else:
            self.backoff = RESTART_MIN_S

    def close_pipes(self) -> None:
        """Close both pipes and kill the process (reaped now if it is gone already)."""
        for conn in (self.send, self.recv):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        proc = self.proc
        if proc is not None:
            kill_worker(proc)
            # Reaped now if it is gone already, else by the next start's Popen (the
            # subprocess module reaps finished children it knows of).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0)
        self.proc = self.send = self.recv = None


def worker_argv(spec: DeviceSpec, read_fd: int, write_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge.pyworker",
        str(read_fd),
        str(write_fd),
        spec.name,
        spec.text("call", ""),
        spec.text("path", ""),
        spec.text("safe_call", ""),
    ]


def spawn_worker(spec: DeviceSpec) -> Made:
    """Start ``spec``'s worker; returns the process and our two pipe ends (send, recv).
    Blocks until the child has exec'd: not for the beat loop (the spawner thread)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    try:
        proc = subprocess.Popen(
            worker_argv(spec, to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
            pass_fds=(to_child_r, from_child_w),
            close_fds=True,
            start_new_session=True,  # a Ctrl-C to the agent's terminal is the agent's
        )
    except BaseException:
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
        raise
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker and whatever its function started: the worker leads its own process
    group (``start_new_session``), so a program it ran and left hanging goes too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            proc.kill()


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


class Spawner:
    """The thread that (re)starts workers, so the loop never waits for an exec."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue[tuple[DeviceSpec, int] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[str, int, Made | None, str]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="backbeat-pyworker", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (request := self.requests.get()) is not None:
            spec, generation = request
            try:
                self.done.put((spec.name, generation, spawn_worker(spec), ""))
            except Exception as exc:
                self.done.put((spec.name, generation, None, f"{type(exc).__name__}: {exc}"))

    def stop(self, timeout: float) -> None:
        self.requests.put(None)
        self.thread.join(timeout)


def discard(made: Made) -> None:
    """Kill and reap a started worker nobody wants (a late start, or one after close)."""
    made[0].kill()
    made[0].wait()


def stop_workers(workers: Iterable[Worker], spawner: Spawner | None) -> list[str]:
    """End every worker: told to stop (after its safe_call), killed if it has not within
    :data:`WORKER_STOP_S`; then the spawner, and what it started too late. Returns the
    names of the workers that had to be killed."""
    workers = list(workers)
    killed: list[str] = []
    for worker in workers:
        if worker.send is not None:
            worker.post(("stop",), PIPE_BUDGET)
    for worker in workers:
        proc = worker.proc
        if proc is not None:
            try:
                proc.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                killed.append(worker.spec.name)
        worker.close_pipes()
        worker.restart_at = None
    if spawner is not None:
        spawner.stop(WORKER_STOP_S)
        while True:
            try:
                _, _, made, _ = spawner.done.get_nowait()
            except queue.Empty:
                break
            if made is not None:
                discard(made)
    return killed
