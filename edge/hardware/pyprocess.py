"""Python devices' worker processes: starting one (off the loop), its pipes, killing it.

A worker is ``python -m edge.pyworker`` with two pipes; it leads its own process group, so
a kill takes whatever its function started too. Starting one blocks until the exec is
done, so the agent starts them on the :class:`Spawner` thread, never in the beat loop.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
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
    unread_bytes: int = 0  # written since the worker last said anything (see _post)
    entry_late_s: float | None = None  # the last call's entry, against its time
    at_rest: bool = False  # safe_call was asked for and no call was sent since

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.send is not None


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


def spawn_worker(
    spec: DeviceSpec,
) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
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
        self.done: queue.SimpleQueue[
            tuple[str, int, tuple[subprocess.Popen[bytes], Connection, Connection] | None, str]
        ] = queue.SimpleQueue()
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
