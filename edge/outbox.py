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
(``acked(mid)``, with the link's message id) at once. ``lost(mid)`` gives up on an
acknowledgement that did not come (the caller's time-out): the slot is free again and the
record is handed out again, so a lost ack never holds a slot for ever.

Not thread-safe: the runner owns it (paho's callbacks only hand the PUBACKs over). The
syncer shares nothing with the loop but its own queue, under its own lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from edge.config import OutboxConfig
from edge.errors import OutboxError

Opener = Callable[[Path, str], BinaryIO]
"""Opens a file (path, mode) as ``open`` does; a seam so tests can inject disk failures."""

_HEADER = struct.Struct(">II")  # length, crc32
_DATA = struct.Struct(">BQdH")  # kind, seq, enqueued_at, topic_len
_MARK = struct.Struct(">BQ")  # kind, seq  (BASE, ACK, DROP)
_BASE, _DATA_KIND, _ACK, _DROP = 1, 2, 3, 4
_MAX_BODY = 64 * 1024 * 1024  # a length beyond this is garbage, not a record
_SEGMENT_PREFIX, _SEGMENT_SUFFIX, _TMP_SUFFIX = "seg-", ".log", ".tmp"
#: Bytes a record costs against ``max_bytes`` besides its topic and payload.
RECORD_OVERHEAD = _HEADER.size + _DATA.size
#: At most this many records published and not yet acknowledged at once (``to_publish``);
#: the rest wait here, so a reconnect does not hand the link the whole backlog at once.
PUBLISH_WINDOW = 16


def _default_opener(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, open(path, mode))  # the outbox owns the handle and closes it


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message: its outbox seq, MQTT topic, payload and enqueue wall time."""

    seq: int
    topic: str
    payload: bytes
    enqueued_at: float

    @property
    def cost(self) -> int:
        """Bytes this record counts against ``max_bytes``."""
        return RECORD_OVERHEAD + len(self.topic.encode("utf-8")) + len(self.payload)


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _data_frame(record: Record) -> bytes:
    topic = record.topic.encode("utf-8")
    head = _DATA.pack(_DATA_KIND, record.seq, record.enqueued_at, len(topic))
    return _frame(head + topic + record.payload)


def _mark_frame(kind: int, seq: int) -> bytes:
    return _frame(_MARK.pack(kind, seq))


def _scan(blob: bytes) -> tuple[list[tuple[int, int, object]], int | None]:
    """Parse a segment: the good frames as (kind, seq, record|None) and the torn offset.

    Returns ``(frames, torn_at)``; ``torn_at`` is the offset where a cut-short or corrupt
    frame starts (None if the segment is clean).
    """
    frames: list[tuple[int, int, object]] = []
    offset, size = 0, len(blob)
    while offset < size:
        if size - offset < _HEADER.size:
            return frames, offset
        length, crc = _HEADER.unpack_from(blob, offset)
        start = offset + _HEADER.size
        if length < 1 or length > _MAX_BODY or start + length > size:
            return frames, offset
        body = blob[start : start + length]
        if zlib.crc32(body) != crc:
            return frames, offset
        kind = body[0]
        if kind == _DATA_KIND and length >= _DATA.size:
            _, seq, enqueued_at, topic_len = _DATA.unpack_from(body)
            topic_end = _DATA.size + topic_len
            if topic_end > length:
                return frames, offset
            try:
                topic = body[_DATA.size : topic_end].decode("utf-8")
            except UnicodeDecodeError:
                return frames, offset
            frames.append((kind, seq, Record(seq, topic, body[topic_end:], enqueued_at)))
        elif kind in (_BASE, _ACK, _DROP) and length == _MARK.size:
            frames.append((kind, _MARK.unpack(body)[1], None))
        else:
            return frames, offset
        offset = start + length
    return frames, None


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int = 0
    live: int = 0  # DATA records in it that are still pending


@dataclass(slots=True)
class _SyncJob:
    fd: int  # a dup the syncer owns and closes
    path: Path  # for the error message
    directory: Path | None  # also fsync this directory (a new segment's name)
    ticket: int


@dataclass(frozen=True, slots=True)
class _SyncFailure:
    """A background fsync that failed: the segment it was for and the error."""

    path: Path
    error: Exception


class _Syncer:
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
        self._queue: dict[int, _SyncJob] = {}  # insertion order is run order
        self._running: int | None = None  # segment number being synced
        self._tickets = 0
        self._finished = 0
        self._failed: set[int] = set()  # tickets whose job failed (rare)
        self._failure: _SyncFailure | None = None
        self._failures = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self, key: int, fileno: int, path: Path, directory: Path | None) -> int:
        """Queue an fsync of ``fileno`` (a dup of it) unless one for ``key`` is waiting.

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
            self._queue[key] = _SyncJob(fd, path, directory, self._tickets)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._tickets

    def synced(self, ticket: int) -> bool:
        """True once the job with ``ticket`` has run and succeeded."""
        with self._cond:
            return self._finished >= ticket and ticket not in self._failed

    def take_failure(self) -> tuple[_SyncFailure | None, int]:
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
            failure: _SyncFailure | None = None
            try:
                self._fsync(job.fd)
                if job.directory is not None:
                    _fsync_directory(job.directory)
            except Exception as exc:  # any error: the loop thread must hear of it
                failure = _SyncFailure(job.path, exc)
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


class Outbox:
    """A bounded, crash-safe queue of records waiting for the broker's acknowledgement.

    Opening recovers whatever the directory holds (un-acked records, in seq order) and
    starts a new segment; a missing directory is created. If the directory cannot be used
    the outbox runs in memory and ``degraded`` says why. ``opener`` opens files (default:
    the builtin ``open``) and ``fsync`` syncs a file descriptor (default ``os.fsync``):
    seams so tests can fail like a full or read-only disk and count fsyncs. ``fsync`` is
    called on the caller's thread only while opening, compacting and closing; the fsyncs
    that ``append`` makes due run on the syncer thread, with a descriptor of their own.

    Attributes: ``dropped`` (records dropped to keep the bounds, this process), ``torn``
    (torn or corrupt segment tails found at open), ``degraded`` (``None`` when the disk is
    in use, else the reason), ``fsync_failures`` (background fsyncs that failed, this
    process), ``last_seq`` (the last seq assigned, persisted across restarts),
    ``backlog`` (pending records).
    """

    def __init__(
        self,
        config: OutboxConfig,
        opener: Opener = _default_opener,
        fsync: Callable[[int], None] = os.fsync,
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
        self._syncer: _Syncer | None = None  # created at the first background fsync
        # Ticket of the active segment's BASE + directory fsync while it is not done: the
        # dead segments in front may not be deleted before it (they still say last_seq).
        self._unsynced_base: int | None = None
        self.dropped = 0
        self.torn = 0
        self.fsync_failures = 0
        self.degraded: str | None = None
        self.last_seq = 0
        if config.directory is not None:
            self._open_directory(config.directory)

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

    def lost(self, mid: int) -> bool:
        """The link's message ``mid`` will not be acknowledged (its ack timed out): its
        window slot is freed and its record, if still pending, is unsent again, so the
        next :meth:`to_publish` hands it out again (oldest first, as always). False if
        ``mid`` is not one of ours."""
        seq = self._mids.pop(mid, None)
        if seq is None:
            return False
        if seq not in self._mids.values():  # not also in flight under another id
            self._inflight.discard(seq)
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
        self._retire(seq, _ACK)

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
        if self._active is not None:
            try:
                self._active.flush()
                self._fsync_fd(self._active.fileno())
            except OSError:
                pass  # nothing left to degrade to: what was flushed is what is kept
            self._close_active()

    # ----------------------------------------------------------------- recovery

    def _open_directory(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in directory.iterdir())
        except OSError as exc:
            self._unread = True
            self._degrade(f"cannot read {directory}: {exc}", 0.0)
            return
        for name in names:
            if name.endswith(_TMP_SUFFIX):  # a compaction that never finished
                self._unlink(directory / name)
        numbers = []
        for name in names:
            number = _segment_number(name)
            if number is not None:
                numbers.append(number)
        try:
            records = self._replay(directory, sorted(numbers))
        except OSError as exc:
            self._unread = True
            self._pending.clear()
            self._where.clear()
            self._segments.clear()
            self._degrade(f"cannot read {directory}: {exc}", 0.0)
            return
        for record in records:
            self._pending[record.seq] = record
            self._bytes += record.cost
        self._active_number = max(numbers, default=0)
        self._start_segment(0.0)
        # Bounds may have shrunk since the records were written (after the new segment is
        # up, so the DROP frames are stored).
        while self._pending and (
            len(self._pending) > self._config.max_count or self._bytes > self._config.max_bytes
        ):
            self._drop_oldest()
        self._delete_dead_segments()

    def _replay(self, directory: Path, numbers: list[int]) -> list[Record]:
        found: dict[int, Record] = {}
        done: set[int] = set()
        for number in numbers:
            path = directory / _segment_name(number)
            with self._opener(path, "rb") as handle:
                blob = handle.read()
            frames, torn_at = _scan(blob)
            if torn_at is not None:
                self.torn += 1
                self._cut(path, torn_at)
            segment = _Segment(number, path, size=torn_at if torn_at is not None else len(blob))
            self._segments[number] = segment
            for kind, seq, item in frames:
                self.last_seq = max(self.last_seq, seq)
                if kind == _DATA_KIND and isinstance(item, Record):
                    if seq not in found and seq not in done:  # duplicates come from compaction
                        found[seq] = item
                        self._where[seq] = number
                        segment.live += 1
                elif kind in (_ACK, _DROP):
                    done.add(seq)
                    if found.pop(seq, None) is not None:
                        self._segments[self._where.pop(seq)].live -= 1
            if not blob:
                self._unlink(path)  # created but never written: a kill at the very start
                del self._segments[number]
        return [found[seq] for seq in sorted(found)]

    def _cut(self, path: Path, offset: int) -> None:
        # Best effort: the segment is never appended to again, so the tail only wastes
        # space and is found (and counted) again at the next open if the cut fails.
        with contextlib.suppress(OSError):
            os.truncate(path, offset)

    # ----------------------------------------------------------------- writing

    def _write_record(self, record: Record, now: float) -> None:
        assert self._active is not None
        segment = self._segments[self._active_number]
        frame = _data_frame(record)
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
        frame = _mark_frame(kind, seq)
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
        if self._syncer is None:
            where = self._config.directory
            self._syncer = _Syncer(self._fsync_fd, f"outbox-fsync {where}")
            # An outbox dropped without close() must not leave its thread waiting forever.
            weakref.finalize(self, self._syncer.stop, False)
        try:
            ticket = self._syncer.request(
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
        path = directory / _segment_name(number)
        try:
            handle = self._opener(path, "ab")
        except OSError as exc:
            self._degrade(f"cannot create {path}: {exc}", now)
            return
        frame = _mark_frame(_BASE, self.last_seq)
        try:
            handle.write(frame)
            handle.flush()
            if not background:
                self._fsync_fd(handle.fileno())
                _fsync_directory(directory)
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
        path = directory / _segment_name(number)
        tmp = path.with_suffix(_TMP_SUFFIX)
        handle: BinaryIO | None = None
        try:
            handle = self._opener(tmp, "wb")
            parts = [_mark_frame(_BASE, self.last_seq)]
            parts.extend(_data_frame(r) for r in self._pending.values())
            blob = b"".join(parts)
            handle.write(blob)
            handle.flush()
            self._fsync_fd(handle.fileno())
            os.replace(tmp, path)
            _fsync_directory(directory)
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
            self._unlink(segment.path)

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
            self._unlink(segment.path)
            del self._segments[number]

    def _drop_oldest(self) -> None:
        seq, record = next(iter(self._pending.items()))
        del self._pending[seq]
        self._inflight.discard(seq)
        self._bytes -= record.cost
        self.dropped += 1
        self._retire(seq, _DROP)

    # ----------------------------------------------------------------- degrading

    def _degrade(self, reason: str, now: float) -> None:
        self._close_active()
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
                if any(_segment_number(p.name) is not None for p in directory.iterdir()):
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

    def _close_active(self) -> None:
        if self._active is not None:
            _close_quietly(self._active)
            self._active = None

    def _unlink(self, path: Path) -> None:
        # A leftover segment is replayed (and deduplicated) at the next open.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _segment_name(number: int) -> str:
    return f"{_SEGMENT_PREFIX}{number:08d}{_SEGMENT_SUFFIX}"


def _segment_number(name: str) -> int | None:
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _close_quietly(handle: BinaryIO) -> None:
    # A failed close after a failed write: the outbox has already degraded.
    with contextlib.suppress(OSError):
        handle.close()


def _fsync_directory(directory: Path) -> None:
    """Make a created, renamed or deleted file name durable (POSIX needs the dir fsynced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot
            raise
    finally:
        os.close(fd)
