"""The durable claim sequence: the highest seq ever handed out, kept apart from the claims.

Claims carry ``metadata.seq``, which a collector reads as "gap-free means nothing lost".
So a seq must never be handed out twice, not after a kill, a power cut, a corrupt or
deleted segment, nor after a run that kept its claims in memory. The segments alone cannot
promise that (they may be damaged, or not written at all), so the highest seq that may
have been handed out is kept in a small file of its own, ``seq.hw`` beside the segments.

**The file** holds two 52-byte *slots*, at offsets 0 and 4096 (different sectors and
flash pages, so one torn write cannot take both)::

    magic "BBHW" | version u8 | flags u8 | pad u16 | generation u64 | high u64 |
    floor u64 | boot id 16 bytes | crc32 u32

A write goes, in place, to the slot not holding the newest generation, so a write cut
short leaves the other slot valid; the reader takes the valid slot with the highest
generation. Writing in place needs no new space and no directory entry: the file, once
created (written as a ``.tmp``, fsynced, renamed), is kept up to date on a full disk and in
a directory that became read-only. ``flags``: *clean* (``high`` is exactly the last seq, set
by :meth:`HighWater.close`), *volatile* (this run handed out seqs that are not in the
segments: it keeps claims in memory). ``floor`` is where the writing run started.

**Reserved in blocks.** A write and an fsync per claim would cost more than the claim, so
``high`` is *reserved ahead*: at open it is set to the resumed seq + ``block`` and fsynced
before any seq is handed out; when fewer than half a block remain, the next block is
written and its fsync handed to the outbox's syncer thread, so by the time the block is
used up it is durable (if it is not, the fsync runs on the caller's thread: slow, rare).
One write and one fsync per ``block`` claims.

**Where a restart resumes** (:meth:`HighWater.resume`), given the highest seq the
segments show: after a clean close, at ``high`` (exact); after a kill on the same boot
(the boot id says the page cache survived, so every record written is in the segments)
when the segments read back undamaged, are there and reach ``floor``, and the run kept
nothing in memory, at what the
segments show, so a kill costs no gap; otherwise (a power cut, damage, a run in memory)
at the reservation ``high``: a gap of at most two blocks, never a reuse. If the file
cannot be written (a read-only filesystem), seqs are still handed out, ``problem`` says
so, and only the claims' ``metadata.incarnation`` (random per process start) tells a
collector that the run restarted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "seq.hw"
#: Seqs reserved per write of the high-water file.
SEQ_BLOCK = 64
_SLOT = struct.Struct(">4sBBHQQQ16s")  # magic, version, flags, pad, generation, high, floor, boot
_CRC = struct.Struct(">I")
_SLOT_SIZE = _SLOT.size + _CRC.size
_OFFSETS = (0, 4096)
_MAGIC, _VERSION = b"BBHW", 1
CLEAN, VOLATILE = 1, 2
#: The boot id where the system gives none.
NO_BOOT = bytes(16)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

#: Queues an fsync of a descriptor on the syncer; returns a callable saying whether it is done.
Background = Callable[[int, Path, Callable[[int], None]], Callable[[], bool]]


def new_incarnation() -> str:
    """A random id for this process start: 16 hex digits (``metadata.incarnation``)."""
    return secrets.token_hex(8)


def boot_id() -> bytes:
    """This boot's id (Linux), or 16 zero bytes where there is none."""
    try:
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError):
        return NO_BOOT


@dataclass(frozen=True, slots=True)
class Mark:
    """One slot of the high-water file."""

    generation: int
    high: int
    flags: int
    boot: bytes
    floor: int = 0

    def pack(self) -> bytes:
        body = _SLOT.pack(
            _MAGIC, _VERSION, self.flags, 0, self.generation, self.high, self.floor, self.boot
        )
        return body + _CRC.pack(zlib.crc32(body))


def _unpack(blob: bytes) -> Mark | None:
    if len(blob) < _SLOT_SIZE:
        return None
    body = blob[: _SLOT.size]
    if zlib.crc32(body) != _CRC.unpack_from(blob, _SLOT.size)[0]:
        return None
    magic, version, flags, _, generation, high, floor, boot = _SLOT.unpack(body)
    if magic != _MAGIC or version != _VERSION:
        return None
    return Mark(generation, high, flags, boot, floor)


class HighWater:
    """The high-water file of one outbox directory (``directory`` None: nothing kept).

    Use: :meth:`load` (what the last run left), :meth:`resume` (where this run starts),
    :meth:`start`, then :meth:`take` before each seq is handed out, :meth:`volatile`
    when claims go to memory, :meth:`close` at the end. Never raises on disk trouble:
    ``problem`` says what went wrong (logged once).
    """

    def __init__(
        self,
        directory: Path | None,
        fsync: Callable[[int], None] = os.fsync,
        block: int = SEQ_BLOCK,
        background: Background | None = None,
    ) -> None:
        self.path = None if directory is None else directory / FILE_NAME
        self.block = max(2, block)
        self.problem: str | None = None
        self.writes = 0  # slot writes, this process (the benchmark reads it)
        self._fsync = fsync
        self._background = background
        # A file object, not a bare descriptor: an outbox dropped without close() must not
        # hold the file open for writing (a read-only remount would be refused).
        self._file: io.FileIO | None = None
        self._last: Mark | None = None  # the newest slot, read or written
        self._durable = 0  # seqs up to this are covered by an fsynced slot
        self._ahead: tuple[int, Callable[[], bool]] | None = None  # written, fsync queued
        self._flags = 0
        self._floor = 0
        self._boot = boot_id()
        self._failed_in_background: OSError | None = None
        # Writes go to the slot that does not hold the newest *durable* mark, so a write
        # cut short (or not yet fsynced) can never take the only good one.
        self._durable_slot = 1
        self._dirty_slot: int | None = None

    def load(self) -> Mark | None:
        """The newest valid slot the file holds (None: no file, or no valid slot)."""
        if self.path is None:
            return None
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "outbox: cannot read %s (%s); seq resumes from the segments", self.path, exc
            )
            return None
        slots = [(_unpack(blob[o : o + _SLOT_SIZE]), i) for i, o in enumerate(_OFFSETS)]
        marks = [(m, i) for m, i in slots if m is not None]
        if not marks:
            if blob:
                log.warning(
                    "outbox: %s holds no valid slot; seq resumes from the segments", self.path
                )
            return None
        self._last, self._durable_slot = max(marks, key=lambda pair: pair[0].generation)
        return self._last

    def resume(self, mark: Mark | None, on_disk: int, trusted: bool) -> int:
        """The last seq to count as handed out, given the newest slot and the highest seq
        the segments show (``trusted``: some were found, all read without damage). See
        the module docstring."""
        if mark is None:
            return on_disk
        if mark.flags & CLEAN:
            return max(mark.high, on_disk)
        same_boot = mark.boot == self._boot and mark.boot != NO_BOOT
        if trusted and same_boot and not mark.flags & VOLATILE and on_disk >= mark.floor:
            return on_disk
        return max(mark.high, on_disk)

    def start(self, last: int, volatile: bool) -> None:
        """Reserve the first block after ``last`` and make it durable before any use."""
        self._flags = VOLATILE if volatile else 0
        self._durable = self._floor = last
        if self.path is None:
            return
        if self._write(last + self.block) and self._sync():
            self._durable = last + self.block

    def take(self, seq: int) -> None:
        """``seq`` is about to be handed out: make sure a durable slot covers it."""
        if self._ahead is not None and self._ahead[1]():
            if self._failed_in_background is None:
                self._durable = max(self._durable, self._ahead[0])
                self._synced()
            self._ahead = None
        if self.path is None or self.problem is not None:
            self._durable = max(self._durable, seq)  # nothing more to be done: say-so only
            return
        if seq > self._durable:
            # The block ran out before its fsync was done (or failed): sync here.
            high = max(seq, self._ahead[0] if self._ahead else 0, self._durable) + self.block
            self._ahead = None
            if self._write(high) and self._sync():
                self._durable = high
            else:
                self._durable = seq
            return
        if self._ahead is None and self._durable - seq < self.block // 2:
            high = self._durable + self.block
            if self._write(high):
                self._ahead = (high, self._queue_sync())

    def volatile(self) -> None:
        """Claims from here on may exist only in memory: a kill must resume at ``high``."""
        if self._flags & VOLATILE:
            return
        self._flags |= VOLATILE
        if self._last is not None and self.path is not None and self.problem is None:
            self._write(self._last.high)  # no fsync: a power cut resumes at high anyway

    def close(self, last: int) -> None:
        """The run ends with ``last`` as its last seq: keep it exactly (clean)."""
        if self.path is not None and self.problem is None:
            self._flags = CLEAN
            if self._write(last):
                self._sync()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # ------------------------------------------------------------------ file

    def _write(self, high: int) -> bool:
        assert self.path is not None
        generation = 1 if self._last is None else self._last.generation + 1
        mark = Mark(generation, high, self._flags, self._boot, self._floor)
        slot = 1 - self._durable_slot
        try:
            if self._file is None:
                self._file = self._open()
            os.pwrite(self._file.fileno(), mark.pack(), _OFFSETS[slot])
        except OSError as exc:
            self._say(f"cannot write {self.path}: {exc}")
            return False
        self._last = mark
        self._dirty_slot = slot
        self.writes += 1
        return True

    def _synced(self) -> None:
        if self._dirty_slot is not None:
            self._durable_slot, self._dirty_slot = self._dirty_slot, None

    def _open(self) -> io.FileIO:
        assert self.path is not None
        try:
            return io.FileIO(self.path, "r+")
        except FileNotFoundError:
            pass
        # Created whole (both slots' room) under a temporary name, then renamed: a reader
        # never sees a half-made file. In place from then on.
        tmp = self.path.with_name(self.path.name + ".tmp")
        handle = io.FileIO(tmp, "w+")
        try:
            os.ftruncate(handle.fileno(), _OFFSETS[1] + _SLOT_SIZE)
            self._fsync(handle.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                with contextlib.suppress(OSError):  # some filesystems cannot
                    os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return handle

    def _sync(self) -> bool:
        assert self._file is not None
        try:
            self._fsync(self._file.fileno())
        except OSError as exc:
            self._say(f"cannot fsync {self.path}: {exc}")
            return False
        self._synced()
        return True

    def _queue_sync(self) -> Callable[[], bool]:
        assert self._file is not None and self.path is not None
        fd = self._file.fileno()
        self._failed_in_background = None

        def guarded(fd: int) -> None:
            try:
                self._fsync(fd)
            except OSError as exc:  # found by take(), which then syncs itself
                self._failed_in_background = exc

        if self._background is None:
            guarded(fd)
            return lambda: True
        try:
            return self._background(fd, self.path, guarded)
        except (OSError, RuntimeError):
            guarded(fd)
            return lambda: True

    def _say(self, problem: str) -> None:
        if self.problem is None:
            log.warning(
                "outbox: seq high-water: %s; seq numbers after a restart may repeat "
                "(metadata.incarnation tells the runs apart)",
                problem,
            )
        self.problem = problem
