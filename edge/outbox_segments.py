"""The outbox's segment files: recover them at open, append frames, rotate, compact, degrade.

The disk side of :class:`edge.outbox.Outbox` (its module docstring has the theory): the
methods that touch the segment directory and the state they keep; the queue, its bounds
and the publish window stay in ``edge.outbox``. Not thread-safe, like the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edge.config import OutboxConfig
from edge.outbox_format import (
    ACK,
    BASE,
    CORRUPT_SUFFIX,
    DATA,
    DROP,
    Record,
    Scan,
    data_frame,
    mark_frame,
    scan,
    segment_name,
    segment_number,
)
from edge.outbox_seq import CLEAN, HighWater
from edge.outbox_syncer import Syncer, fsync_directory

log = logging.getLogger(__name__)

Opener = Callable[[Path, str], BinaryIO]
"""Opens a file (path, mode) as ``open`` does; a seam so tests can inject disk failures."""

_TMP_SUFFIX = ".tmp"


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int = 0
    live: int = 0  # DATA records in it that are still pending


class SegmentFiles:
    """The segment directory of one outbox; :class:`edge.outbox.Outbox` builds on it.

    The attributes below are set by ``Outbox.__init__``; ``_drop_oldest`` is the
    outbox's (the bounds are the queue's business).
    """

    _config: OutboxConfig
    _opener: Opener
    _fsync_fd: Callable[[int], None]
    _pending: dict[int, Record]
    _inflight: set[int]
    _bytes: int
    _where: dict[int, int]  # seq -> segment number holding its DATA
    _segments: dict[int, _Segment]  # by number, oldest first
    _active: BinaryIO | None
    _active_number: int
    _since_fsync: int
    _last_fsync: float | None
    _retry_at: float
    # If the directory could not be read, writing into it could clobber records we never
    # saw; only an empty directory may be taken over later.
    _unread: bool
    _syncer: Syncer | None  # created at the first background fsync
    # Ticket of the active segment's BASE + directory fsync while it is not done: the dead
    # segments in front may not be deleted before it (they still say last_seq).
    _unsynced_base: int | None
    _memory_only: bool
    _damaged: set[int]  # segments to set aside (never truncated or deleted)
    _hw: HighWater
    torn: int
    corrupt: int
    lost: int
    fsync_failures: int
    degraded: str | None
    last_seq: int

    def _drop_oldest(self) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- recovery

    def _open_directory(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in directory.iterdir())
        except OSError as exc:
            self._unread = True
            self._degrade(f"cannot read {directory}: {exc}", 0.0)
            self._resume(trusted=False)
            return
        if not self._memory_only:
            for name in names:
                if name.endswith(_TMP_SUFFIX):  # a compaction that never finished
                    self._unlink(directory / name)
        numbers = sorted(n for n in map(segment_number, names) if n is not None)
        try:
            records = self._replay(directory, numbers)
        except OSError as exc:
            self._unread = True
            self._pending.clear()
            self._where.clear()
            self._segments.clear()
            self._damaged.clear()
            self._degrade(f"cannot read {directory}: {exc}", 0.0)
            self._resume(trusted=False)
            return
        for record in records:
            self._pending[record.seq] = record
            self._bytes += record.cost
        self._resume(trusted=bool(self._segments) and not self._damaged)
        self._active_number = max(numbers, default=0)
        if self._memory_only:
            self._segments.clear()  # left alone: never deleted, never written
        elif self._damaged:
            self._compact(0.0)  # the good records into a new segment; the bad ones aside
        else:
            self._start_segment(0.0)
        # Bounds may have shrunk since the records were written (after the new segment is
        # up, so the DROP frames are stored).
        while self._pending and (
            len(self._pending) > self._config.max_count or self._bytes > self._config.max_bytes
        ):
            self._drop_oldest()
        self._delete_dead_segments()

    def _resume(self, trusted: bool) -> None:
        """Set ``last_seq`` from the high-water file and the segments, and reserve ahead."""
        mark = self._hw.load()
        on_disk = self.last_seq
        self.last_seq = self._hw.resume(mark, on_disk, trusted)
        if self.torn and mark is not None and mark.flags & CLEAN and mark.high > on_disk:
            # A torn tail has no record after it to show what it held; a clean close's
            # high-water mark is exactly the last seq handed out, so the seqs past the last
            # one read were in it (or were the final claim, sent directly).
            gone = list(range(on_disk + 1, mark.high + 1))
            self.lost += len(gone)
            log.warning(
                "outbox: claims lost to a torn tail: seq %s (not on disk; lost unless the"
                " broker had them)",
                _ranges(gone),
            )
        self._hw.start(self.last_seq, volatile=self._memory_only or self.degraded is not None)

    def _replay(self, directory: Path, numbers: list[int]) -> list[Record]:
        found: dict[int, Record] = {}
        done: set[int] = set()
        suspect: set[int] = set()  # seqs a damaged stretch may have held
        for number in numbers:
            path = directory / segment_name(number)
            with self._opener(path, "rb") as handle:
                blob = handle.read()
            if not blob:
                if not self._memory_only:
                    self._unlink(path)  # created but never written: a kill at the very start
                continue
            read = scan(blob)
            segment = _Segment(number, path, size=len(blob))
            self._segments[number] = segment
            data: set[int] = set()
            for frame in read.frames:
                seq = frame.seq
                self.last_seq = max(self.last_seq, seq)
                if frame.kind == DATA and frame.record is not None:
                    data.add(seq)
                    if seq not in found and seq not in done:  # duplicates come from compaction
                        found[seq] = frame.record
                        self._where[seq] = number
                        segment.live += 1
                elif frame.kind in (ACK, DROP):
                    done.add(seq)
                    if found.pop(seq, None) is not None:
                        self._segments[self._where.pop(seq)].live -= 1
            if read.damage:
                self._damaged.add(number)
                self.torn += sum(1 for d in read.damage if d.torn)
                self.corrupt += sum(1 for d in read.damage if not d.torn)
                # Records after a segment's BASE are appended with consecutive seqs: a
                # seq missing between BASE and the last one read was in the damage.
                if read.frames and read.frames[0].kind == BASE:
                    base = read.frames[0].seq
                    newer = [s for s in data if s > base]
                    suspect.update(set(range(base + 1, max(newer, default=base) + 1)) - data)
                self._say_damage(path, read, number)
        lost = sorted(s for s in suspect if s not in found and s not in done)
        self.lost += len(lost)
        if lost:
            log.warning("outbox: claims lost to the damage: seq %s", _ranges(lost))
        return [found[seq] for seq in sorted(found)]

    def _say_damage(self, path: Path, read: Scan, number: int) -> None:
        where = ", ".join(
            f"{d.size} bytes at {d.offset}{' (torn tail)' if d.torn else ''}" for d in read.damage
        )
        kept = (
            "left in place (memory = true)"
            if self._memory_only
            else f"set aside as {path.with_suffix(CORRUPT_SUFFIX).name}"
        )
        log.warning(
            "outbox: %s (format %d): %d unreadable stretch(es): %s; %d good frames read; %s",
            path.name,
            read.version,
            len(read.damage),
            where,
            len(read.frames),
            kept,
        )

    # ----------------------------------------------------------------- writing

    def _write_record(self, record: Record, now: float) -> None:
        assert self._active is not None
        segment = self._segments[self._active_number]
        frame = data_frame(record)
        try:
            self._active.write(frame)
            self._active.flush()
        except OSError as exc:
            self._degrade(f"cannot write {segment.path}: {exc}", now)
            return
        segment.size += len(frame)
        segment.live += 1
        self._where[record.seq] = segment.number
        self._since_fsync += 1
        if segment.size >= self._config.segment_bytes:
            self._rotate(now)  # fsyncs the full segment anyway
        elif self._fsync_due(now):
            self._request_fsync(now)

    def _write_mark(self, kind: int, seq: int) -> None:
        if self._active is None:
            return
        segment = self._segments[self._active_number]
        frame = mark_frame(kind, seq)
        try:
            self._active.write(frame)
            self._active.flush()
        except OSError as exc:
            self._degrade(f"cannot write {segment.path}: {exc}", self._retry_base())
            return
        segment.size += len(frame)

    def _fsync_due(self, now: float) -> bool:
        config = self._config
        if config.fsync_every and self._since_fsync >= config.fsync_every:
            return True
        if config.fsync_interval_s <= 0:
            return False
        if self._last_fsync is None or now < self._last_fsync:  # wall clock stepped back
            self._last_fsync = now
            return False
        return now - self._last_fsync >= config.fsync_interval_s

    def _request_fsync(self, now: float, directory: Path | None = None) -> int | None:
        """Hand an fsync of the active segment (and ``directory``) to the syncer.

        Returns the job's ticket, or None if the outbox degraded instead.
        """
        assert self._active is not None
        segment = self._segments[self._active_number]
        try:
            ticket = self._syncer_for().request(
                segment.number, self._active.fileno(), segment.path, directory
            )
        except OSError as exc:
            self._degrade(f"cannot hand {segment.path} to the fsync thread: {exc}", now)
            return None
        self._since_fsync = 0
        self._last_fsync = now
        return ticket

    def _take_sync_failure(self, now: float) -> None:
        """Degrade on a background fsync failure reported since the last look."""
        if self._syncer is None:
            return
        failure, self.fsync_failures = self._syncer.take_failure()
        if failure is None:
            return
        if self.degraded is not None:
            # Already in memory: the retry rewrites every pending record anyway, and the
            # first reason (and its retry time) stays.
            return
        self._degrade(f"background fsync of {failure.path} failed: {failure.error}", now)

    def _start_segment(self, now: float, background: bool = False) -> None:
        """Open a new segment after the newest one and write its BASE frame.

        The BASE frame and the new name are fsynced here, or by the syncer if
        ``background`` (a rotation in ``append``).
        """
        directory = self._config.directory
        assert directory is not None
        number = self._active_number + 1
        path = directory / segment_name(number)
        try:
            handle = self._opener(path, "ab")
        except OSError as exc:
            self._degrade(f"cannot create {path}: {exc}", now)
            return
        frame = mark_frame(BASE, self.last_seq)
        try:
            handle.write(frame)
            handle.flush()
            if not background:
                self._fsync_fd(handle.fileno())
                fsync_directory(directory)
        except OSError as exc:
            _close_quietly(handle)
            self._unlink(path)
            self._degrade(f"cannot write {path}: {exc}", now)
            return
        self._active = handle
        self._active_number = number
        self._segments[number] = _Segment(number, path, size=len(frame))
        self._since_fsync = 0
        if background:
            self._unsynced_base = self._request_fsync(now, directory)

    def _rotate(self, now: float) -> None:
        assert self._active is not None
        self._request_fsync(now)  # the syncer's dup keeps the file open after the close
        if self._active is None:
            return
        self._close_active()
        self._start_segment(now, background=True)
        if self._active is None:
            return
        self._delete_dead_segments()
        disk = sum(s.size for s in self._segments.values())
        if disk > self._config.max_bytes + 2 * self._config.segment_bytes:
            self._compact(now)

    def _compact(self, now: float) -> None:
        """Copy the pending records into a new segment and delete every older one.

        Also the way back from memory mode. On failure the old segments are kept (they
        hold what the disk has) and the outbox degrades.
        """
        directory = self._config.directory
        assert directory is not None
        number = self._active_number + 1
        path = directory / segment_name(number)
        tmp = path.with_suffix(_TMP_SUFFIX)
        handle: BinaryIO | None = None
        try:
            handle = self._opener(tmp, "wb")
            parts = [mark_frame(BASE, self.last_seq)]
            parts.extend(data_frame(r) for r in self._pending.values())
            blob = b"".join(parts)
            handle.write(blob)
            handle.flush()
            self._fsync_fd(handle.fileno())
            os.replace(tmp, path)
            fsync_directory(directory)
        except OSError as exc:
            if handle is not None:
                _close_quietly(handle)
            self._unlink(tmp)
            self._degrade(f"cannot compact into {path}: {exc}", now)
            return
        self._close_active()
        old = list(self._segments.values())
        self._segments = {number: _Segment(number, path, size=len(blob), live=len(self._pending))}
        self._where = dict.fromkeys(self._pending, number)
        self._active = handle
        self._active_number = number
        self._unsynced_base = None  # this BASE was fsynced above, before the rename
        self._since_fsync = 0
        self._last_fsync = now
        for segment in old:
            self._remove(segment)
        self._damaged.clear()

    def _retire(self, seq: int, kind: int) -> None:
        """Record that ``seq`` left the queue (acked or dropped) and free dead segments."""
        number = self._where.pop(seq, None)
        if number is not None and number in self._segments:
            self._segments[number].live -= 1
        self._write_mark(kind, seq)
        self._delete_dead_segments()

    def _delete_dead_segments(self) -> None:
        if self._unsynced_base is not None:
            # Not before the new BASE is durable: see the module docstring. Deleting later
            # only costs space for a moment; each ack and rotation tries again. If that
            # fsync failed, the next append degrades (which lifts this wait).
            if self._syncer is not None and not self._syncer.synced(self._unsynced_base):
                return
            self._unsynced_base = None
        # Front only: a later segment may hold the ACK that cancels an earlier DATA.
        for number in list(self._segments):
            segment = self._segments[number]
            if number == self._active_number or segment.live > 0:
                break
            self._remove(segment)
            del self._segments[number]

    # ----------------------------------------------------------------- degrading

    def _degrade(self, reason: str, now: float) -> None:
        self._close_active()
        self._hw.volatile()  # seqs from here on may exist only in memory
        # In memory, dead segments may go as acks come (as before the syncer): their space
        # may be what the disk needs back; the recovery compaction writes a durable BASE.
        self._unsynced_base = None
        self.degraded = f"outbox in memory: {reason}"
        self._retry_at = now + self._config.retry_interval_s

    def _retry_base(self) -> float:
        # Marks are written without a time at hand; the last fsync time or 0 will do, as the
        # next append checks the retry time against its own ``now`` anyway.
        return self._last_fsync or 0.0

    def _maybe_retry(self, now: float) -> None:
        if self.degraded is None or self._config.directory is None:
            return
        # A wall clock that stepped back must not postpone the retry forever.
        if self._retry_at - self._config.retry_interval_s <= now < self._retry_at:
            return
        directory = self._config.directory
        if self._unread:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                if any(segment_number(p.name) is not None for p in directory.iterdir()):
                    self._degrade(
                        f"{directory} holds segments that could not be read at "
                        f"start; staying in memory until restart",
                        now,
                    )
                    return
            except OSError as exc:
                self._degrade(f"cannot read {directory}: {exc}", now)
                return
            self._unread = False
        self._compact(now)
        if self._active is not None:
            self.degraded = None

    def _remove(self, segment: _Segment) -> None:
        """Delete a segment that is done with, or set it aside if it was found damaged."""
        if segment.number not in self._damaged:
            self._unlink(segment.path)
            return
        aside = segment.path.with_suffix(CORRUPT_SUFFIX)
        counter = 1
        while aside.exists():  # never overwrite bad data kept earlier
            aside = segment.path.with_suffix(f"{CORRUPT_SUFFIX}.{counter}")
            counter += 1
        try:
            os.replace(segment.path, aside)
        except OSError as exc:
            log.warning(
                "outbox: cannot set %s aside (%s); it is read again next time", segment.path, exc
            )

    def _background_sync(
        self, fd: int, path: Path, fsync: Callable[[int], None]
    ) -> Callable[[], bool]:
        """The high-water file's fsync, handed to the syncer; returns "is it done?"."""
        ticket = self._syncer_for().request(-1, fd, path, None, fsync)
        syncer = self._syncer
        assert syncer is not None
        return lambda: syncer.synced(ticket)

    def _syncer_for(self) -> Syncer:
        if self._syncer is None:
            where = self._config.directory
            self._syncer = Syncer(self._fsync_fd, f"outbox-fsync {where}")
            # An outbox dropped without close() must not leave its thread waiting forever.
            weakref.finalize(self, self._syncer.stop, False)
        return self._syncer

    def _close_active(self) -> None:
        if self._active is not None:
            _close_quietly(self._active)
            self._active = None

    def _unlink(self, path: Path) -> None:
        # A leftover segment is replayed (and deduplicated) at the next open.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _close_quietly(handle: BinaryIO) -> None:
    # A failed close after a failed write: the outbox has already degraded.
    with contextlib.suppress(OSError):
        handle.close()


def _ranges(seqs: list[int]) -> str:
    """``[3, 4, 5, 9]`` as ``"3-5, 9"``."""
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(parts)
