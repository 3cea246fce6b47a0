"""Store-and-forward for status claims: a bounded on-disk queue that survives kills.

Theory of operation
-------------------
Every claim is appended here before the link sends it, and leaves only when the broker
acknowledges it (MQTT QoS 1 PUBACK). After an outage or a restart the backlog goes out
first, in order, then the live claims.

The rooms: this module is the queue (order, bounds, acks, the publish window);
:mod:`edge.outbox_segments` the segment files; :mod:`edge.outbox_format` the record
format and its resynchronising reader; :mod:`edge.outbox_seq` the durable sequence (seq
numbers are never handed out twice) and the incarnation id; :mod:`edge.outbox_syncer` the
fsync thread.

**Where.** ``config.directory`` (the agent resolves the default place: systemd's
``$STATE_DIRECTORY/outbox``, else the XDG state directory); ``config.memory`` keeps claims
in memory only, though the seq high-water file still goes to the directory. :meth:`where`
says in one line where claims are kept.

**The log.** The directory holds append-only *segment* files ``seg-00000001.log``,
``seg-00000002.log``... (numbered in the order they were started) of *frames*
(:mod:`edge.outbox_format`): a ``BASE`` first (the last seq before the segment), then
``DATA`` records and ``ACK`` / ``DROP`` marks.

An ACK or DROP is always written after its DATA (a record is acked after it was stored), so
replaying the segments in order rebuilds the queue: DATA records minus the acked and dropped
ones, ordered by seq. Acks may come out of order (several claims in flight); each marks its
own record, and the head of the queue is simply the oldest record not yet marked.

**Damage.** A power cut can leave the last frame of a segment half written; a failing card
can flip bytes anywhere. The reader resynchronises on the next good frame, so a bad
stretch costs only the records in it: counted in ``torn`` (at the end of a segment) or
``corrupt`` (good frames after it), the claims it cost in ``lost`` (seqs missing between a
segment's BASE and its last record), logged once at open and reported in every claim
(``metadata.outbox``). A damaged segment's good records are rewritten to a new segment and
the segment itself is set aside whole as ``seg-N.corrupt``: never cut, never deleted.
Each open starts a fresh segment, so good frames never follow garbage. At close, claims
that could not be kept (memory only) are counted in the log.

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

**The syncer thread.** No fsync runs on the caller's thread during ``append`` or ``ack``
(:mod:`edge.outbox_syncer` says how; the seq high-water file's block fsyncs go there too).
A new segment's BASE frame and its directory entry are synced by
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
(``acked(mid)``, with the link's message id) at once. ``resend(mid)`` gives up on an
acknowledgement that did not come (the caller's time-out): the slot is free again and the
record is handed out again, so a lost ack never holds a slot for ever.

Not thread-safe: the runner owns it (paho's callbacks only hand the PUBACKs over). The
syncer shares nothing with the loop but its own queue, under its own lock.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from edge.config import OutboxConfig
from edge.errors import OutboxError
from edge.outbox_format import (
    ACK,
    DROP,
    RECORD_OVERHEAD,
    Record,
)
from edge.outbox_segments import Opener, SegmentFiles, _Segment
from edge.outbox_seq import HighWater, new_incarnation

__all__ = ["PUBLISH_WINDOW", "RECORD_OVERHEAD", "Opener", "Outbox", "OutboxConfig", "Record"]

log = logging.getLogger(__name__)

#: At most this many records published and not yet acknowledged at once (``to_publish``);
#: the rest wait here, so a reconnect does not hand the link the whole backlog at once.
PUBLISH_WINDOW = 16


def _default_opener(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, open(path, mode))  # the outbox owns the handle and closes it


class Outbox(SegmentFiles):
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
        self._where: dict[int, int] = {}
        self._segments: dict[int, _Segment] = {}
        self._active: BinaryIO | None = None
        self._active_number = 0
        self._since_fsync = 0
        self._last_fsync: float | None = None
        self._retry_at = 0.0
        self._closed = False
        self._unread = False  # see SegmentFiles for what each of these is
        self._syncer = None
        self._unsynced_base = None
        self._memory_only = config.memory
        self._damaged: set[int] = set()
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

    def resend(self, mid: int) -> bool:
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

    def _drop_oldest(self) -> None:
        seq, record = next(iter(self._pending.items()))
        del self._pending[seq]
        self._inflight.discard(seq)
        self._bytes -= record.cost
        self.dropped += 1
        self._retire(seq, DROP)
