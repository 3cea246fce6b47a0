"""Store-and-forward for status claims: a bounded on-disk queue that survives kills.

Theory of operation
-------------------
Every claim is appended here before the link sends it, and leaves only when the broker
acknowledges it (MQTT QoS 1 PUBACK). After an outage or a restart the backlog goes out
first, in order, then the live claims.

**The log.** The directory holds append-only *segment* files ``seg-00000001.log``,
``seg-00000002.log``... (numbered in the order they were started). Each holds *frames*::

    length u32 | crc32(body) u32 | body          (big-endian; length = len(body))

and each body starts with a kind byte:

* ``BASE`` (first frame of every segment): the last seq assigned before this segment, so a
  restart never reuses a seq even when every record before it was acked and deleted;
* ``DATA``: ``seq u64 | enqueued_at f64 | topic_len u16 | topic | payload``;
* ``ACK`` / ``DROP``: ``seq u64``: that record was acknowledged / dropped to keep the bound.

An ACK or DROP is always written after its DATA (a record is acked after it was stored), so
replaying the segments in order rebuilds the queue: DATA records minus the acked and dropped
ones, ordered by seq. Acks may come out of order (several claims in flight); each marks its
own record, and the head of the queue is simply the oldest record not yet marked.

**Kills and torn records.** A kill (or power cut) can leave the last frame of a segment
half written. Reading stops at the first frame whose length runs past the end of the file,
whose CRC does not match or whose body does not parse; that tail is counted in ``torn``,
cut off (best effort), and the segment is never appended to again: each open starts a fresh
segment, so good frames never follow garbage. Only the frame being written at the kill can
be torn, and it was never reported as appended, so nothing that was acked comes back and
nothing un-acked is lost (for a kill of the process; for a power cut see fsync below).

**Space.** Segments are started anew after ``segment_bytes``. A segment that is not the
one being written and whose DATA records are all acked or dropped is deleted, oldest first
(only from the front, so an ACK needed to cancel an older DATA is never deleted before it).
If an old record is stuck un-acked so that dead segments pile up past ``max_bytes + 2 *
segment_bytes``, the queue is *compacted*: the pending records are copied into a new
segment (written as a ``.tmp``, fsynced, renamed) and every older segment is deleted. A
crash between the rename and the deletes leaves duplicates of DATA, which replay ignores.

**Bounds.** At most ``max_count`` records and ``max_bytes`` bytes (topic + payload + frame
overhead) are pending; an append that would pass either drops the oldest pending records
(a DROP frame each, so they stay dropped after a restart) and counts them in ``dropped``.

**Disk trouble.** Any ``OSError`` while writing (disk full, read-only, I/O error) switches
the outbox to memory: pending records are always held in memory as well, so nothing is lost
while the process lives. ``degraded`` then says why. Every ``retry_interval_s`` (judged on
the ``now`` passed to ``append``) the disk is tried again by compacting the whole pending
queue into a new segment; if that works ``degraded`` is cleared. Acks made while in memory
are not on disk; if the process dies before the disk comes back, those records may be sent
twice after the restart (at least once, never lost while the disk held them). If the
directory could not even be *read* at open, the outbox never writes into it while it holds
segment files it could not read (it would clobber them); it stays in memory until restart.

**fsync and SD cards.** ``append`` always writes the frame with one ``write`` call and
flushes it to the kernel, which survives a kill of the process. Surviving a power cut also
needs ``fsync``, which on an SD card forces a flash program of a whole page or erase block
(often 5-50 ms on cheap cards, and wear: 1 claim/s fsynced is ~86,000 programs a day). The
default fsyncs every ``fsync_every`` = 10 appends or ``fsync_interval_s`` = 1 s, whichever
comes first (checked at each append), and at rotation, compaction and close: a power cut
loses at most the last 10 claims or 1 s of claims, and the card sees at most one fsync per
second. ``fsync_every = 1`` fsyncs each record (safest, slowest, most wear); ``0``
disables the count trigger (the interval still applies; ``fsync_interval_s = 0`` disables
it). Acks are flushed, not fsynced: a lost ack costs a duplicate send, not a lost claim.

**The syncer thread.** ``append`` runs in the beat loop, where a 5-50 ms fsync would make
the next actions late (a phase is 20-83 ms at 240-1000 BPM), so no fsync ever runs on the
caller's thread during ``append`` or ``ack``: when one is due, the loop hands an
``os.dup`` of the segment's file descriptor to one background *syncer* thread (started on
first need, a daemon) and goes on. The dup refers to the same open file description, so
the fsync covers everything the loop wrote, and the syncer owns and closes it: the loop
may close, rotate, compact or delete the segment meanwhile without the syncer ever
syncing a closed or reused descriptor. Requests coalesce: while one fsync of a segment is
queued and not started, a second request joins it (it will cover the newer writes too);
while one is *running*, exactly one follow-up is queued, because a running fsync may have
started before the newest write. So at most one running and one queued fsync per segment,
however slow the card. A new segment's BASE frame and its directory entry are synced by
the syncer too; until that is done the dead segments in front are not deleted, so a power
cut never leaves neither the old records nor the new BASE to say what the last seq was.
Opening, compaction (write, fsync, rename: ordering matters and it is rare) and ``close``
(which drains and joins the syncer, then fsyncs once more) stay synchronous. An fsync
that fails in the background (EIO, ENOSPC...) is recorded and counted in
``fsync_failures``; the next ``append`` (or ``retry_disk``/``close``) on the loop thread
finds it and degrades to memory exactly as a failed write does, ``degraded`` naming the
background fsync. ``wait_synced`` waits until the syncer is idle (tests, shutdown).

**The publish window.** ``to_publish`` hands out the oldest unsent records, at most
``PUBLISH_WINDOW`` published (``published(seq, mid)``) and not yet acknowledged
(``acked(mid)``, with the link's message id) at once.

Not thread-safe: the runner owns it (paho's callbacks only hand the PUBACKs over). The
syncer shares nothing with the loop but its own queue, under its own lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from edge.config import OutboxConfig
from edge.errors import OutboxError
from edge.outbox_format import (
    ACK,
    BASE,
    CORRUPT_SUFFIX,
    DATA,
    DROP,
    RECORD_OVERHEAD,
    Record,
    Scan,
    data_frame,
    mark_frame,
    scan,
    segment_name,
    segment_number,
)
from edge.outbox_seq import HighWater, new_incarnation
from edge.outbox_syncer import Syncer, fsync_directory

__all__ = ["PUBLISH_WINDOW", "RECORD_OVERHEAD", "Opener", "Outbox", "OutboxConfig", "Record"]

log = logging.getLogger("backbeat.outbox")

Opener = Callable[[Path, str], BinaryIO]
"""Opens a file (path, mode) as ``open`` does; a seam so tests can inject disk failures."""

_TMP_SUFFIX = ".tmp"
#: At most this many records published and not yet acknowledged at once (``to_publish``);
#: the rest wait here, so a reconnect does not hand the link the whole backlog at once.
PUBLISH_WINDOW = 16


def _default_opener(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, open(path, mode))  # the outbox owns the handle and closes it


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int = 0
    live: int = 0  # DATA records in it that are still pending


class Outbox:
    """A bounded, crash-safe queue of records waiting for the broker's acknowledgement.

    Opening recovers whatever the directory holds (un-acked records, in seq order) and
    starts a new segment; a missing directory is created. If the directory cannot be used
    the outbox runs in memory and ``degraded`` says why. ``opener`` opens files (default:
    the builtin ``open``) and ``fsync`` syncs a file descriptor (default ``os.fsync``):
    seams so tests can fail like a full or read-only disk and count fsyncs. ``fsync`` is
    called on the caller's thread only while opening, compacting and closing; the fsyncs
    that ``append`` makes due run on the syncer thread, with a descriptor of their own.

    ``config.memory``: claims are kept in memory only (nothing but the sequence's
    high-water file is written; segments an earlier run left are read and left alone).
    ``seq_fsync`` syncs the high-water file (:mod:`edge.outbox_seq`; default ``os.fsync``).

    Attributes: ``dropped`` (records dropped to keep the bounds, this process), ``torn`` /
    ``corrupt`` (unreadable stretches of the segments found at open: at the end of a
    segment / with good records after them), ``lost`` (claims those stretches cost, as far
    as the seqs around them show), ``degraded`` (``None`` when the disk is in use, else the
    reason), ``fsync_failures`` (background fsyncs that failed, this process),
    ``last_seq`` (the last seq handed out, never handed out again: see
    :mod:`edge.outbox_seq`), ``incarnation`` (random per process), ``backlog`` (pending
    records).
    """

    def __init__(
        self,
        config: OutboxConfig,
        opener: Opener = _default_opener,
        fsync: Callable[[int], None] = os.fsync,
        seq_fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._config = config
        self._opener = opener
        self._fsync_fd = fsync
        self._pending: dict[int, Record] = {}
        self._inflight: set[int] = set()
        self._mids: dict[int, int] = {}  # the link's message id -> seq, until acked
        self._bytes = 0
        self._where: dict[int, int] = {}  # seq -> segment number holding its DATA
        self._segments: dict[int, _Segment] = {}  # by number, oldest first
        self._active: BinaryIO | None = None
        self._active_number = 0
        self._since_fsync = 0
        self._last_fsync: float | None = None
        self._retry_at = 0.0
        self._closed = False
        # If the directory could not be read, writing into it could clobber records we
        # never saw; only an empty directory may be taken over later.
        self._unread = False
        self._syncer: Syncer | None = None  # created at the first background fsync
        # Ticket of the active segment's BASE + directory fsync while it is not done: the
        # dead segments in front may not be deleted before it (they still say last_seq).
        self._unsynced_base: int | None = None
        self._memory_only = config.memory
        self._damaged: set[int] = set()  # segments to set aside (never truncated or deleted)
        self.dropped = 0
        self.torn = 0
        self.corrupt = 0
        self.lost = 0
        self.fsync_failures = 0
        self.degraded: str | None = None
        self.last_seq = 0
        self.incarnation = new_incarnation()
        # Weakly: an outbox dropped without close() must be freed at once, closing its files.
        me = weakref.WeakMethod(self._background_sync)

        def background(fd: int, path: Path, fsync: Callable[[int], None]) -> Callable[[], bool]:
            method = me()
            if method is None:
                raise RuntimeError("the outbox is gone")
            return method(fd, path, fsync)

        self._hw = HighWater(config.directory, seq_fsync, background=background)
        if config.directory is not None:
            self._open_directory(config.directory)
        else:
            self._hw.start(0, volatile=True)

    @property
    def seq_writes(self) -> int:
        """Writes of the high-water file so far, this process (one per block of seqs)."""
        return self._hw.writes

    @property
    def seq_problem(self) -> str | None:
        """Why the high-water file cannot be kept (seqs may repeat after a restart), if so."""
        return self._hw.problem

    def where(self) -> str:
        """Where claims are kept, in one line (logged at start)."""
        directory = self._config.directory
        if self.degraded is not None:
            return f"claims kept in memory only: {self.degraded}"
        if directory is None:
            return "claims kept in memory only (no directory); seq starts at 1"
        if self._memory_only:
            return f"claims kept in memory only (memory = true); seq high-water in {directory}"
        return f"claims kept on disk in {directory}"

    def note_seq(self, seq: int) -> None:
        """Seqs up to ``seq`` were used outside the outbox (the final claim, sent directly):
        they are never handed out again."""
        if seq > self.last_seq:
            self._hw.volatile()
            self._hw.take(seq)
            self.last_seq = seq

    # ----------------------------------------------------------------- public

    @property
    def backlog(self) -> int:
        """Number of pending (un-acked) records."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes the pending records count against ``max_bytes``."""
        return self._bytes

    @property
    def inflight(self) -> int:
        """Number of pending records marked as sent and not yet acked."""
        return len(self._inflight)

    def append(self, topic: str, payload: bytes, now: float) -> Record:
        """Store a new record and return it (with its seq); the oldest go past the bounds.

        ``now`` is the wall time, stored as ``enqueued_at`` and used for the fsync interval
        and disk retries. The frame is written and flushed before this returns; a due
        fsync is only handed to the syncer thread, never waited for. A disk failure is not
        raised (nor one a background fsync reported since the last call): the record is
        kept in memory and ``degraded`` set. Raises ValueError if one record alone is larger than
        ``max_bytes`` or the topic is empty or too long (caller bugs), OutboxError if the
        outbox was closed.
        """
        if self._closed:
            raise OutboxError("the outbox is closed")
        encoded_topic = topic.encode("utf-8")
        if not encoded_topic or len(encoded_topic) > 0xFFFF:
            raise ValueError(f"topic must be 1 to 65535 bytes of UTF-8, got {len(encoded_topic)}")
        record = Record(self.last_seq + 1, topic, bytes(payload), float(now))
        if record.cost > self._config.max_bytes:
            raise ValueError(
                f"a record of {record.cost} bytes cannot fit max_bytes {self._config.max_bytes}"
            )
        self._take_sync_failure(now)
        self._maybe_retry(now)
        while self._pending and (
            len(self._pending) + 1 > self._config.max_count
            or self._bytes + record.cost > self._config.max_bytes
        ):
            self._drop_oldest()
        self._hw.take(record.seq)
        self.last_seq = record.seq
        self._pending[record.seq] = record
        self._bytes += record.cost
        if self._active is not None:
            self._write_record(record, now)
        return record

    def pending(self, limit: int | None = None) -> list[Record]:
        """Un-acked records, oldest first (at most ``limit``)."""
        out: list[Record] = []
        for record in self._pending.values():
            if limit is not None and len(out) >= limit:
                break
            out.append(record)
        return out

    def unsent(self, limit: int) -> list[Record]:
        """Pending records not currently in flight, oldest first (at most ``limit``)."""
        out: list[Record] = []
        if limit <= 0:
            return out
        for seq, record in self._pending.items():
            if seq not in self._inflight:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def mark_sent(self, seq: int) -> None:
        """The link handed this record to the broker; it is in flight until acked."""
        if seq in self._pending:
            self._inflight.add(seq)

    def to_publish(self) -> list[Record]:
        """The next records to hand the link, oldest first: as many as keep at most
        ``PUBLISH_WINDOW`` published and not yet acknowledged by the link (see
        :meth:`published`), so a reconnect does not flood the broker with the backlog."""
        return self.unsent(PUBLISH_WINDOW - len(self._mids))

    def published(self, seq: int, mid: int) -> None:
        """The link took record ``seq`` as its message ``mid``: in flight until
        :meth:`acked` with that ``mid`` (counted in the window even if the record is
        dropped meanwhile, as the link still holds it)."""
        self.mark_sent(seq)
        self._mids[mid] = seq

    def acked(self, mid: int) -> bool:
        """The link's message ``mid`` was acknowledged: its record is acked (see
        :meth:`ack`). False if ``mid`` is not one of ours."""
        seq = self._mids.pop(mid, None)
        if seq is None:
            return False
        self.ack(seq)
        return True

    def requeue_inflight(self) -> None:
        """After a disconnect: every in-flight record is unsent again (order is kept)."""
        self._inflight.clear()
        self._mids.clear()

    def ack(self, seq: int) -> None:
        """The broker acknowledged record ``seq``: it is removed for good.

        Acks may come in any order; an ack for a record that is not pending (a duplicate,
        or one dropped meanwhile) is ignored.
        """
        record = self._pending.pop(seq, None)
        if record is None:
            return
        self._inflight.discard(seq)
        self._bytes -= record.cost
        self._retire(seq, ACK)

    def retry_disk(self, now: float) -> bool:
        """Try the disk again now if degraded; True if the disk is in use afterwards.

        A background fsync failure not yet seen counts as degraded (so it is retried).
        """
        self._take_sync_failure(now)
        if self.degraded is not None and self._config.directory is not None:
            self._retry_at = now
            self._maybe_retry(now)
        return self.degraded is None and self._active is not None

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until every fsync handed to the syncer has been attempted.

        For tests and shutdown; the beat loop never calls it. Returns False if
        ``timeout`` (seconds; None = no limit) ran out first. A failure is not raised
        here: the next ``append`` degrades on it.
        """
        return self._syncer is None or self._syncer.wait_idle(timeout)

    def close(self) -> None:
        """Flush, fsync and close the segment; pending records stay on disk for next time.

        Lets the syncer finish what it was handed and joins it, then fsyncs the segment on
        the caller's thread, so what was appended is on disk when this returns. A failure
        of a background fsync, or a degraded outbox, makes it try the disk once more first
        (rewriting the queue), so a backlog held in memory is not lost at shutdown if the
        disk has come back.
        """
        if self._closed:
            return
        if self._syncer is not None:
            self._syncer.stop()
            self._take_sync_failure(self._last_fsync or 0.0)
        if self.degraded is not None and self._config.directory is not None:
            self._retry_at = 0.0
            self._maybe_retry(self._last_fsync or 0.0)
        self._closed = True
        kept = self._active is not None
        if self._active is not None:
            try:
                self._active.flush()
                self._fsync_fd(self._active.fileno())
            except OSError:
                pass  # nothing left to degrade to: what was flushed is what is kept
            self._close_active()
        self._hw.close(self.last_seq)
        if self._pending and not kept:
            log.warning(
                "outbox: %d claims not delivered were kept in memory only and are lost at exit "
                "(seq %d-%d)",
                len(self._pending),
                next(iter(self._pending)),
                next(reversed(self._pending)),
            )
        elif self._pending:
            log.info(
                "outbox: %d claims not delivered yet are kept in %s for the next start",
                len(self._pending),
                self._config.directory,
            )

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
        self.last_seq = self._hw.resume(self._hw.load(), self.last_seq, trusted)
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

    def _drop_oldest(self) -> None:
        seq, record = next(iter(self._pending.items()))
        del self._pending[seq]
        self._inflight.discard(seq)
        self._bytes -= record.cost
        self.dropped += 1
        self._retire(seq, DROP)

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
