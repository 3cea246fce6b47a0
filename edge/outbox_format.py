"""The outbox's segment record format: frames, their encoding, and a reader that resyncs.

A segment file (``seg-00000001.log``...) is a sequence of *frames*. Format 2 (written
since issue 15)::

    magic "\\xbb\\xed\\x9e\\x02" | length u32 | crc32(length || body) u32 | body

(big-endian; ``length = len(body)``). The CRC covers the length too, so a bad length field
is found at once, and the magic lets a reader that met a bad frame *resynchronise*: it
looks for the next magic whose frame checks out and goes on from there, so one bad byte
costs the frame it is in, not everything after it. Format 1 (before issue 15) is
``length u32 | crc32(body) u32 | body``, with no way to resync: it is still read (a
segment that starts with a good format-1 BASE frame is format 1), up to its first bad
frame; it is never written again. Each body starts with a kind byte:

* ``BASE`` (first frame of every segment): the last seq handed out before this segment;
* ``DATA``: ``seq u64 | enqueued_at f64 | topic_len u16 | topic | payload``;
* ``ACK`` / ``DROP``: ``seq u64``: that record was acknowledged / dropped to keep the bound.

What the reader could not read comes back as :class:`Damage`: a stretch of bytes, *torn*
when it runs to the end of the segment (a write cut short, a zero-filled tail after a
power cut), *corrupt* when good frames follow it. A magic inside a payload cannot fool the
reader: a frame counts only if its length and CRC check out.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\xbb\xed\x9e\x02"
_HEADER = struct.Struct(">4sII")  # magic, length, crc32(length || body)
_LENGTH = struct.Struct(">I")
_V1_HEADER = struct.Struct(">II")  # format 1: length, crc32(body)
_DATA = struct.Struct(">BQdH")  # kind, seq, enqueued_at, topic_len
_MARK = struct.Struct(">BQ")  # kind, seq  (BASE, ACK, DROP)
BASE, DATA, ACK, DROP = 1, 2, 3, 4
MAX_BODY = 64 * 1024 * 1024  # a length beyond this is garbage, not a record
#: Bytes a record costs against ``max_bytes`` besides its topic and payload.
RECORD_OVERHEAD = _HEADER.size + _DATA.size

SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".log"
#: A segment found damaged is renamed to this suffix (kept, never read again).
CORRUPT_SUFFIX = ".corrupt"


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


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame read back: its kind, its seq, and the record of a DATA frame."""

    kind: int
    seq: int
    record: Record | None = None


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes ``[offset, offset + size)`` of a segment that hold no readable frame."""

    offset: int
    size: int
    torn: bool  # runs to the end of the segment


@dataclass(slots=True)
class Scan:
    """What :func:`scan` read from one segment."""

    frames: list[Frame] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    version: int = 2


def frame(body: bytes) -> bytes:
    """A format-2 frame around ``body``."""
    length = _LENGTH.pack(len(body))
    return MAGIC + length + struct.pack(">I", zlib.crc32(body, zlib.crc32(length))) + body


def data_frame(record: Record) -> bytes:
    topic = record.topic.encode("utf-8")
    head = _DATA.pack(DATA, record.seq, record.enqueued_at, len(topic))
    return frame(head + topic + record.payload)


def mark_frame(kind: int, seq: int) -> bytes:
    return frame(_MARK.pack(kind, seq))


def _body(body: bytes) -> Frame | None:
    """Parse one frame body, or None if it is not a valid one."""
    kind, length = body[0], len(body)
    if kind == DATA and length >= _DATA.size:
        _, seq, enqueued_at, topic_len = _DATA.unpack_from(body)
        topic_end = _DATA.size + topic_len
        if topic_end > length:
            return None
        try:
            topic = body[_DATA.size : topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return Frame(kind, seq, Record(seq, topic, body[topic_end:], enqueued_at))
    if kind in (BASE, ACK, DROP) and length == _MARK.size:
        return Frame(kind, _MARK.unpack(body)[1])
    return None


def _frame_at(blob: bytes, offset: int) -> tuple[Frame, int] | None:
    """The format-2 frame at ``offset`` and where it ends, or None."""
    if len(blob) - offset < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(blob, offset)
    start = offset + _HEADER.size
    if magic != MAGIC or length < 1 or length > MAX_BODY or start + length > len(blob):
        return None
    body = blob[start : start + length]
    if zlib.crc32(body, zlib.crc32(blob[offset + 4 : offset + 8])) != crc:
        return None
    parsed = _body(body)
    return None if parsed is None else (parsed, start + length)


def _v1_frame_at(blob: bytes, offset: int) -> tuple[Frame, int] | None:
    if len(blob) - offset < _V1_HEADER.size:
        return None
    length, crc = _V1_HEADER.unpack_from(blob, offset)
    start = offset + _V1_HEADER.size
    if length < 1 or length > MAX_BODY or start + length > len(blob):
        return None
    body = blob[start : start + length]
    if zlib.crc32(body) != crc:
        return None
    parsed = _body(body)
    return None if parsed is None else (parsed, start + length)


def is_v1(blob: bytes) -> bool:
    """Whether a segment is format 1: it starts with a good format-1 BASE frame."""
    if blob[:4] == MAGIC:
        return False
    first = _v1_frame_at(blob, 0)
    return first is not None and first[0].kind == BASE


def scan(blob: bytes) -> Scan:
    """Every good frame of a segment, in order, and every stretch that was not one."""
    if is_v1(blob):
        return _scan_v1(blob)
    out = Scan()
    offset, size = 0, len(blob)
    bad_from: int | None = None
    while offset < size:
        found = _frame_at(blob, offset)
        if found is None:
            if bad_from is None:
                bad_from = offset
            # Resynchronise: the next magic whose frame checks out.
            offset = blob.find(MAGIC, offset + 1)
            if offset < 0:
                break
            continue
        if bad_from is not None:
            out.damage.append(Damage(bad_from, offset - bad_from, torn=False))
            bad_from = None
        out.frames.append(found[0])
        offset = found[1]
    if bad_from is not None:
        out.damage.append(Damage(bad_from, size - bad_from, torn=True))
    return out


def _scan_v1(blob: bytes) -> Scan:
    out = Scan(version=1)
    offset, size = 0, len(blob)
    while offset < size:
        found = _v1_frame_at(blob, offset)
        if found is None:  # format 1 cannot resync: the rest is lost
            out.damage.append(Damage(offset, size - offset, torn=True))
            break
        out.frames.append(found[0])
        offset = found[1]
    return out


def v1_frame(body: bytes) -> bytes:
    """A format-1 frame (tests and the reader's own checks; never written by the outbox)."""
    return _V1_HEADER.pack(len(body), zlib.crc32(body)) + body


def v1_body(kind: int, seq: int, record: Record | None = None) -> bytes:
    """A format-1 body (same layout as format 2's), for tests of the old reader."""
    if record is None:
        return _MARK.pack(kind, seq)
    topic = record.topic.encode("utf-8")
    return _DATA.pack(DATA, record.seq, record.enqueued_at, len(topic)) + topic + record.payload


def segment_name(number: int) -> str:
    return f"{SEGMENT_PREFIX}{number:08d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None
