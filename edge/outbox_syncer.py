"""The outbox's fsync thread: segment fsyncs run here, never on the beat loop's thread.

``append`` runs in the beat loop, where a 5-50 ms fsync would make the next actions late
(a phase is 20-83 ms at 240-1000 BPM), so when an fsync is due the loop hands an
``os.dup`` of the file's descriptor to one background *syncer* thread (started on first
need, a daemon) and goes on. The dup refers to the same open file description, so the
fsync covers everything the loop wrote, and the syncer owns and closes it: the loop may
close, rotate, compact or delete the file meanwhile without the syncer ever syncing a
closed or reused descriptor. Requests coalesce: while one fsync of a file is queued and
not started, a second request joins it (it will cover the newer writes too); while one is
*running*, exactly one follow-up is queued, because a running fsync may have started
before the newest write. So at most one running and one queued fsync per file, however
slow the card. A failure is recorded for the loop thread to find (``take_failure``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class SyncJob:
    fd: int  # a dup the syncer owns and closes
    path: Path  # for the error message
    directory: Path | None  # also fsync this directory (a new segment's name)
    ticket: int
    fsync: Callable[[int], None] | None = None  # instead of the syncer's own


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """A background fsync that failed: the segment it was for and the error."""

    path: Path
    error: Exception


class Syncer:
    """One background thread that runs the outbox's fsyncs, in the order requested.

    ``request`` is called on the loop thread and never blocks on the disk; the thread is
    started on the first request. Jobs are keyed by segment number (see the module
    docstring for how they coalesce). Every job gets a ticket and tickets finish in
    order, so ``synced(t)`` can say whether job ``t`` is done.
    """

    def __init__(self, fsync: Callable[[int], None], name: str) -> None:
        self._fsync = fsync
        self._name = name
        self._cond = threading.Condition()
        self._queue: dict[int, SyncJob] = {}  # insertion order is run order
        self._running: int | None = None  # segment number being synced
        self._tickets = 0
        self._finished = 0
        self._failed: set[int] = set()  # tickets whose job failed (rare)
        self._failure: SyncFailure | None = None
        self._failures = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(
        self,
        key: int,
        fileno: int,
        path: Path,
        directory: Path | None,
        fsync: Callable[[int], None] | None = None,
    ) -> int:
        """Queue an fsync of ``fileno`` (a dup of it) unless one for ``key`` is waiting.

        ``fsync`` replaces the syncer's own for this job (the sequence file has its own).

        Returns the ticket that covers this request. Raises OSError if the descriptor
        cannot be duplicated (too many open files), RuntimeError after ``stop``.
        """
        with self._cond:
            if self._stopping:
                raise RuntimeError("the outbox syncer was stopped")
            waiting = self._queue.get(key)
            if waiting is not None:  # not started: it will see what was just written
                if directory is not None:
                    waiting.directory = directory
                return waiting.ticket
            fd = os.dup(fileno)
            self._tickets += 1
            self._queue[key] = SyncJob(fd, path, directory, self._tickets, fsync)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._tickets

    def synced(self, ticket: int) -> bool:
        """True once the job with ``ticket`` has run and succeeded."""
        with self._cond:
            return self._finished >= ticket and ticket not in self._failed

    def take_failure(self) -> tuple[SyncFailure | None, int]:
        """The first failure not taken yet (or None) and how many failed in all."""
        with self._cond:
            failure, self._failure = self._failure, None
            return failure, self._failures

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is queued or running; False if ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._running is None, timeout)

    def stop(self, join: bool = True) -> None:
        """Let the thread finish the queued jobs and exit; ``join`` waits for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                key = next(iter(self._queue))
                job = self._queue.pop(key)
                self._running = key
            failure: SyncFailure | None = None
            try:
                (job.fsync or self._fsync)(job.fd)
                if job.directory is not None:
                    fsync_directory(job.directory)
            except Exception as exc:  # any error: the loop thread must hear of it
                failure = SyncFailure(job.path, exc)
            finally:
                with contextlib.suppress(OSError):
                    os.close(job.fd)
            with self._cond:
                self._running = None
                self._finished = job.ticket
                if failure is not None:
                    self._failures += 1
                    self._failed.add(job.ticket)
                    if self._failure is None:
                        self._failure = failure
                self._cond.notify_all()


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or deleted file name durable (POSIX needs the dir fsynced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot
            raise
    finally:
        os.close(fd)
