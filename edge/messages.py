"""The BACKBEAT v1 wire contract in code: BeatFrame, StatusClaim, BarReport.

Theory of operation
-------------------
Every message is a frozen value, checked when it is built (``__post_init__``), so the rest
of the agent trusts it. ``decode_*`` turn bytes from the network into messages; ``encode``
turns a message into bytes. The rules are those of ``spec/backbeat-contract.md`` (the
upstream JSON Schemas, draft-07, 1.0.0):

* both JSON (what the upstream Pulse emits) and CBOR are accepted; the format is told from
  the first byte after JSON whitespace (a JSON object starts with ``{``; a CBOR map never
  does, ``{`` would be a 27-byte text string);
* unknown top-level fields, missing required fields, wrong types, out-of-range numbers,
  NaN and infinities, duplicate keys, and booleans posing as integers (or integers posing
  as booleans) are all refused. Integer fields take integers only (``42``, not ``42.0``:
  no upstream producer writes integers as floats);
* ``tempo_bpm`` must lie on the 0.1 grid, checked in decimal arithmetic on the shortest
  decimal form of the number, so ``0.3`` and ``2.3`` pass;
* ``deadline_at`` is RFC 3339 (``T``/``Z`` in either case, optional fraction, ``Z`` or a
  numeric offset); it is kept as an aware datetime normalised to UTC;
* CBOR payloads carry the JSON data model only: maps with text keys, arrays, text, integers
  (64-bit), floats, booleans and null. Tags (dates, bignums, shared references...), byte
  strings, ``undefined`` and other simple values are refused, as are bytes after the item;
* text must be valid Unicode (a JSON ``\\ud800`` escape is refused), so every decoded
  message can be encoded again;
* payloads above :data:`MAX_PAYLOAD_BYTES` are refused before parsing; values nested
  deeper than :data:`MAX_DEPTH` inside ``metadata``/``resources`` while or after parsing;
* anything wrong raises :class:`edge.errors.FrameError` naming the field and the value;
  nothing else ever escapes a decoder (hostile bytes included).

Absent optional fields are ``None``: Go producers omit ``beats_left: 0`` and
``progress: 0`` (omitempty), so absence means "not given", never an error.

CBOR output is canonical (RFC 8949 core deterministic encoding: map keys sorted bytewise
by their encoding, shortest lengths and floats, definite lengths), so identical messages
give identical bytes; JSON output is compact with sorted keys. Whatever is not in the
upstream schema travels under ``metadata``; ``encode`` never adds a top-level key, so the
output always validates against the upstream v1 schemas.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias, cast

import cbor2

from edge.errors import FrameError

#: Largest payload a decoder accepts, in bytes. A BeatFrame is ~250 bytes and a full
#: StatusClaim with the agent's metadata ~500; 64 KiB leaves room for rich metadata while
#: bounding the work a hostile sender can cause (larger payloads are refused unread).
MAX_PAYLOAD_BYTES = 64 * 1024
#: Deepest nesting of objects and arrays accepted inside ``metadata`` and ``resources``
#: (the object itself is level 0).
MAX_DEPTH = 16

BEATFRAME_TYPE = "backbeat.beatframe.v1"
STATUSCLAIM_TYPE = "backbeat.statusclaim.v1"
BARREPORT_TYPE = "backbeat.barreport.v1"

Phase: TypeAlias = Literal["plan", "execute", "review"]
PHASES: tuple[Phase, ...] = ("plan", "execute", "review")
ClaimState: TypeAlias = Literal[
    "idle", "planning", "executing", "reviewing", "completed", "failed", "blocked", "helping"
]
CLAIM_STATES: frozenset[str] = frozenset(
    ("idle", "planning", "executing", "reviewing", "completed", "failed", "blocked", "helping")
)
Format: TypeAlias = Literal["cbor", "json"]

#: A JSON value as carried in ``metadata`` / ``resources`` after freezing: objects become
#: read-only mappings and arrays tuples, so a message is immutable all the way down.
JSONValue: TypeAlias = Any

MAX_BEAT_INDEX = 2**63 - 1
#: Integers inside metadata must fit CBOR's native integers (no bignum tags on the wire).
_MIN_INT, _MAX_INT = -(2**64), 2**64 - 1

_CLUSTER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_HLC = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_WINDOW_ID = re.compile(r"[0-9a-fA-F]{32}")
# [0-9], not \d: \d also matches non-ASCII digits, which RFC 3339 does not allow.
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_TENTH = Decimal("0.1")
_STATES_TEXT = ", ".join(sorted(CLAIM_STATES))


# --------------------------------------------------------------------------- field checks


def _show(value: object) -> str:
    """A short, always-printable rendering of an offending value for an error message."""
    if type(value) is int and not -(10**60) < value < 10**60:
        # repr() of a huge int is slow and may raise (int max str digits).
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a hostile object's repr must not mask the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(name: str, message: str) -> FrameError:
    return FrameError(f"{name} {message}", field=name)


def _valid_text(value: str) -> bool:
    """True if ``value`` is encodable as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(name: str, value: object, pattern: re.Pattern[str] | None = None) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise _fail(name, f"must be a string, got {_show(value)}")
        value = str(value)  # a str subclass: keep plain str in the frozen value
    if pattern is not None:
        if pattern.fullmatch(value) is None:
            raise _fail(name, f"must match ^{pattern.pattern}$, got {_show(value)}")
    elif not _valid_text(value):
        raise _fail(name, f"must be valid Unicode text, got {_show(value)}")
    return value


def _integer(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, f"must be an integer, got {_show(value)}")
        value = int(value)
    if not low <= value <= high:
        raise _fail(name, f"must be between {low} and {high}, got {_show(value)}")
    return value


def _number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    if type(value) is float:
        number = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, f"must be a number, got {_show(value)}")
    else:
        try:
            number = float(value)
        except OverflowError:
            raise _fail(name, f"must be a finite number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise _fail(name, f"must be a finite number, got {_show(value)}")
    if low is not None and number < low:
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _fail(name, f"must be {bound}, got {_show(value)}")
    if high is not None and number > high:
        bound = f"between {low:g} and {high:g}" if low is not None else f"at most {high:g}"
        raise _fail(name, f"must be {bound}, got {_show(value)}")
    return number


def _boolean(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise _fail(name, f"must be true or false, got {_show(value)}")
    return value


def _tempo(value: object) -> float:
    bpm = _number("tempo_bpm", value)
    if not 0.1 <= bpm <= 1000:
        raise _fail("tempo_bpm", f"must be between 0.1 and 1000, got {_show(value)}")
    # repr() is the shortest decimal that round-trips, i.e. what the sender wrote; binary
    # float arithmetic would call 0.3 or 2.3 off-step.
    if Decimal(repr(bpm)) % _TENTH != 0:
        raise _fail("tempo_bpm", f"must be a multiple of 0.1, got {_show(value)}")
    return bpm


def parse_rfc3339(name: str, value: object) -> datetime:
    """Parse an RFC 3339 date-time (``Z`` or a numeric offset, optional fraction).

    Returns an aware datetime in UTC. Fractions finer than a microsecond are truncated; a
    leap second (``:60``) is read as the last microsecond of the minute, as Python's
    datetime has no 61st second. Raises FrameError naming ``name`` if ``value`` is not a
    string, not RFC 3339, not a real date, or not representable in UTC (year 1 to 9999).
    """
    text = _string(name, value)
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise _fail(name, f"must be an RFC 3339 date-time, got {_show(value)}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    if second == 60:
        second, micro = 59, 999_999
    zone = m.group(8)
    try:
        if zone in ("Z", "z"):
            tz: timezone = UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            hh, mm = int(zone[1:3]), int(zone[4:6])
            if hh > 23 or mm > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        return moment if tz is UTC else moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _fail(name, f"is not a valid date-time ({exc}), got {_show(value)}") from None


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` (microseconds if any)."""
    u = moment.astimezone(UTC)
    base = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        base += f".{u.microsecond:06d}"
    return base + "Z"


def _deadline(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _fail("deadline_at", f"must carry a time zone, got {_show(value)}")
        try:
            return value if value.tzinfo is UTC else value.astimezone(UTC)
        except (ValueError, OverflowError):
            raise _fail("deadline_at", f"is out of range in UTC, got {_show(value)}") from None
    return parse_rfc3339("deadline_at", value)


class _Bad(Exception):
    """Raised inside :func:`_freeze_value`; collects the path while unwinding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def _freeze_scalar(value: object) -> JSONValue:
    """Check one JSON scalar; raise _Bad if it is not one (containers are handled apart)."""
    t = type(value)
    if t is str:
        if not _valid_text(value):  # type: ignore[arg-type]
            raise _Bad(f"must be valid Unicode text, got {_show(value)}")
        return value
    if t is int:
        if not _MIN_INT <= value <= _MAX_INT:  # type: ignore[operator]
            raise _Bad(f"must fit in 64 bits, got {_show(value)}")
        return value
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Bad(f"must be a finite number, got {value!r}")
        return value
    if value is None or t is bool:
        return value
    # Subclasses (an IntEnum, a str subclass...) are stored as the plain type.
    if isinstance(value, str):
        return _freeze_scalar(str(value))
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _freeze_scalar(int(value))
    if isinstance(value, float):
        return _freeze_scalar(float(value))
    raise _Bad(f"must hold only JSON values, got {type(value).__name__} {_show(value)}")


def _freeze_value(value: object, depth: int) -> JSONValue:
    """A read-only deep copy of JSON data: objects become mappingproxy, arrays tuples.

    Scalars of the common exact types are checked inline (this runs for every value of
    every decoded claim); everything else goes through :func:`_freeze_scalar`.
    """
    t = type(value)
    if t is dict or t is MappingProxyType or (t is not str and isinstance(value, Mapping)):
        if depth >= MAX_DEPTH:
            raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
        out: dict[str, JSONValue] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            try:
                if type(key) is not str:
                    raise _Bad(f"keys must be strings, got {_show(key)}")
                if not key.isascii() and not _valid_text(key):
                    raise _Bad(f"keys must be valid Unicode text, got {_show(key)}")
                ti = type(item)
                if ti is int:
                    if not _MIN_INT <= item <= _MAX_INT:
                        raise _Bad(f"must fit in 64 bits, got {_show(item)}")
                    out[key] = item
                elif ti is str and item.isascii():
                    out[key] = item
                elif ti is float:
                    if item - item != 0.0:  # NaN or an infinity
                        raise _Bad(f"must be a finite number, got {item!r}")
                    out[key] = item
                elif ti is dict or ti is list or ti is tuple or ti is MappingProxyType:
                    out[key] = _freeze_value(item, depth + 1)
                else:
                    out[key] = _freeze_other(item, depth + 1)
            except _Bad as bad:
                bad.path.append(f".{_show(key) if type(key) is not str else key}")
                raise
        return MappingProxyType(out)
    if t is list or t is tuple or (
        isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)
    ):
        if depth >= MAX_DEPTH:
            raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
        items = []
        for i, item in enumerate(value):  # type: ignore[arg-type]
            try:
                items.append(_freeze_other(item, depth + 1))
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return tuple(items)
    return _freeze_scalar(value)


def _freeze_other(value: object, depth: int) -> JSONValue:
    t = type(value)
    if t is dict or t is list or t is tuple or t is MappingProxyType:
        return _freeze_value(value, depth)
    if isinstance(value, Mapping) or (
        isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)
    ):
        return _freeze_value(value, depth)
    return _freeze_scalar(value)


def _object(name: str, value: object) -> Mapping[str, JSONValue]:
    """Check ``value`` is a JSON object of plain JSON data; return a read-only deep copy."""
    if not isinstance(value, Mapping):
        raise _fail(name, f"must be an object, got {_show(value)}")
    try:
        frozen: Mapping[str, JSONValue] = _freeze_value(value, 0)
    except _Bad as bad:
        where = name + "".join(reversed(bad.path))
        raise _fail(where, bad.message) from None
    return frozen


def _thaw(value: JSONValue) -> object:
    t = type(value)
    if t is MappingProxyType or t is dict:
        return {k: _thaw(v) for k, v in value.items()}
    if t is tuple:
        return [_thaw(v) for v in value]
    return value


def _set(instance: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields once, in __post_init__.
    object.__setattr__(instance, name, value)


# --------------------------------------------------------------------------- the messages


@dataclass(frozen=True, slots=True)
class BeatFrame:
    """One beat (or phase) announcement from the Pulse.

    Built directly (``deadline_at`` may be an aware datetime or an RFC 3339 string) or by
    :func:`decode_beat_frame`; raises FrameError if any field breaks the contract.
    ``deadline_at`` is stored in UTC, ``tempo_bpm`` as a float.
    """

    TYPE: ClassVar[str] = BEATFRAME_TYPE

    cluster_id: str
    beat_index: int
    downbeat: bool
    phase: Phase
    hlc: str
    deadline_at: datetime
    tempo_bpm: float
    window_id: str
    metadata: Mapping[str, JSONValue] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _set(self, "cluster_id", _string("cluster_id", self.cluster_id, _CLUSTER_ID))
        _set(self, "beat_index", _integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX))
        _boolean("downbeat", self.downbeat)
        if type(self.phase) is not str or self.phase not in PHASES:
            raise _fail("phase", f"must be one of plan, execute, review, got {_show(self.phase)}")
        _set(self, "hlc", _string("hlc", self.hlc, _HLC))
        _set(self, "deadline_at", _deadline(self.deadline_at))
        _set(self, "tempo_bpm", _tempo(self.tempo_bpm))
        _set(self, "window_id", _string("window_id", self.window_id, _WINDOW_ID))
        if self.metadata is not None:
            _set(self, "metadata", _object("metadata", self.metadata))

    @property
    def beat_seconds(self) -> float:
        """Length of one beat at this frame's tempo."""
        return 60.0 / self.tempo_bpm

    @property
    def phase_seconds(self) -> float:
        """Length of one phase (a third of a beat) at this frame's tempo."""
        return 20.0 / self.tempo_bpm


@dataclass(frozen=True, slots=True)
class StatusClaim:
    """An agent's claim about what it is doing in a beat.

    Optional fields are ``None`` when not given (Go producers omit ``beats_left: 0`` and
    ``progress: 0``). ``progress`` is stored as a float, ``dependencies`` as a tuple,
    ``resources``/``metadata`` as read-only mappings. Raises FrameError on any breach.
    """

    TYPE: ClassVar[str] = STATUSCLAIM_TYPE

    agent_id: str
    beat_index: int
    state: ClaimState
    hlc: str
    task_id: str | None = None
    beats_left: int | None = None
    progress: float | None = None
    notes: str | None = None
    resources: Mapping[str, JSONValue] | None = field(default=None, hash=False)
    dependencies: tuple[str, ...] | None = None
    metadata: Mapping[str, JSONValue] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _set(self, "agent_id", _string("agent_id", self.agent_id, _AGENT_ID))
        _set(self, "beat_index", _integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX))
        if type(self.state) is not str or self.state not in CLAIM_STATES:
            raise _fail("state", f"must be one of {_STATES_TEXT}, got {_show(self.state)}")
        _set(self, "hlc", _string("hlc", self.hlc, _HLC))
        if self.task_id is not None:
            _set(self, "task_id", _string("task_id", self.task_id, _AGENT_ID))
        if self.beats_left is not None:
            _set(self, "beats_left", _integer("beats_left", self.beats_left, 0, 1000))
        if self.progress is not None:
            _set(self, "progress", _number("progress", self.progress, 0.0, 1.0))
        if self.notes is not None:
            notes = _string("notes", self.notes)
            if len(notes) > 256:
                raise _fail("notes", f"must be at most 256 characters, got {len(notes)}")
            _set(self, "notes", notes)
        if self.resources is not None:
            resources = _object("resources", self.resources)
            for key in ("cpu_percent", "network_kb"):
                if key in resources:
                    _number(f"resources.{key}", resources[key], 0.0)
            for key in ("memory_mb", "disk_io_ops"):
                if key in resources:
                    _integer(f"resources.{key}", resources[key], 0, MAX_BEAT_INDEX)
            _set(self, "resources", resources)
        if self.dependencies is not None:
            deps = self.dependencies
            if isinstance(deps, str | bytes | bytearray | Mapping) or not isinstance(
                deps, Sequence
            ):
                raise _fail("dependencies", f"must be an array, got {_show(deps)}")
            _set(self, "dependencies", tuple(
                _string(f"dependencies[{i}]", d, _AGENT_ID) for i, d in enumerate(deps)
            ))
        if self.metadata is not None:
            _set(self, "metadata", _object("metadata", self.metadata))


@dataclass(frozen=True, slots=True)
class BarIssue:
    """One entry of a BarReport's ``issues``: a count of one kind of trouble."""

    severity: str
    category: str
    count: int

    def __post_init__(self) -> None:
        _set(self, "severity", _string("issues.severity", self.severity))
        _set(self, "category", _string("issues.category", self.category))
        _set(self, "count", _integer("issues.count", self.count, 0, MAX_BEAT_INDEX))


@dataclass(frozen=True, slots=True)
class BarReport:
    """The Reverb's roll-up of one bar (``from_beat`` to ``to_beat``, inclusive).

    ``tempo_drift_ms`` is positive when the cluster runs behind. ``issues`` (at most 100)
    is a tuple of :class:`BarIssue`. Raises FrameError on any breach.
    """

    TYPE: ClassVar[str] = BARREPORT_TYPE

    window_id: str
    from_beat: int
    to_beat: int
    agents_reporting: int
    on_time_reviews: int
    help_promises_fulfilled: int
    secret_rotations_ok: bool
    tempo_drift_ms: float
    issues: tuple[BarIssue, ...] | None = None

    def __post_init__(self) -> None:
        _set(self, "window_id", _string("window_id", self.window_id, _WINDOW_ID))
        for name in ("from_beat", "to_beat", "agents_reporting", "on_time_reviews",
                     "help_promises_fulfilled"):
            _set(self, name, _integer(name, getattr(self, name), 0, MAX_BEAT_INDEX))
        _boolean("secret_rotations_ok", self.secret_rotations_ok)
        _set(self, "tempo_drift_ms", _number("tempo_drift_ms", self.tempo_drift_ms))
        if self.issues is not None:
            issues = self.issues
            if isinstance(issues, str | bytes | bytearray | Mapping) or not isinstance(
                issues, Sequence
            ):
                raise _fail("issues", f"must be an array, got {_show(issues)}")
            if len(issues) > 100:
                raise _fail("issues", f"must hold at most 100 items, got {len(issues)}")
            items = []
            for i, item in enumerate(issues):
                if isinstance(item, BarIssue):
                    items.append(item)
                    continue
                if not isinstance(item, Mapping):
                    raise _fail(f"issues[{i}]", f"must be an object, got {_show(item)}")
                try:
                    items.append(_build(BarIssue, item, with_type=False))
                except FrameError as exc:
                    # Re-point "issues.count" (or a bare key) at this item.
                    where = exc.field.removeprefix("issues.")
                    message = str(exc).removeprefix(exc.field)
                    raise _fail(f"issues[{i}].{where}", message.lstrip()) from None
            _set(self, "issues", tuple(items))


Message: TypeAlias = BeatFrame | StatusClaim | BarReport

_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls))
    for cls in (BeatFrame, StatusClaim, BarIssue, BarReport)
}
_REQUIRED: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if f.default is not None)
    for cls in (BeatFrame, StatusClaim, BarIssue, BarReport)
}
_ALLOWED: dict[type, frozenset[str]] = {
    BarIssue: frozenset(_FIELD_NAMES[BarIssue]),
    **{cls: frozenset(_FIELD_NAMES[cls]) | {"type"} for cls in (BeatFrame, StatusClaim, BarReport)},
}


# --------------------------------------------------------------------------- decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FrameError(f"payload has the key {_show(key)} twice", field=key)
            seen.add(key)
    return out


def _reject_constant(name: str) -> None:
    raise FrameError(f"payload holds {name}, which is not a JSON number")


def _no_tag(*_: object) -> None:
    raise ValueError("CBOR tags are not part of the contract")


class _EveryTag(Mapping[int, Any]):
    """Routes every CBOR tag to :func:`_no_tag`, overriding cbor2's built-in decoders."""

    def __getitem__(self, tag: int) -> Any:
        return _no_tag

    def __contains__(self, tag: object) -> bool:
        return True

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[int]:
        return iter(())


_EVERY_TAG = _EveryTag()
_JSON_START = b"{"
_CBOR_EOF = cbor2.CBORDecodeEOF


def _load(payload: bytes) -> object:
    """Bytes to a plain value, JSON or CBOR by the first byte; only FrameError escapes."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError(f"payload must be bytes, got {type(payload).__name__}")
    size = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
    if size == 0:
        raise FrameError("payload is empty")
    if size > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload is {size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    data = payload if type(payload) is bytes else bytes(payload)
    first = data[:1]
    if first in b" \t\r\n":
        first = data.lstrip(b" \t\r\n")[:1]
    try:
        if first == _JSON_START:
            return json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
        decoder = cbor2.CBORDecoder(
            io.BytesIO(data),
            semantic_decoders=_EVERY_TAG,
            tag_hook=_no_tag,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH + 3,
        )
        value = decoder.decode()
        try:
            decoder.read(1)
        except _CBOR_EOF:
            return value
        raise FrameError("payload has bytes after the CBOR item")
    except FrameError:
        raise
    except UnicodeDecodeError as exc:
        raise FrameError(f"payload is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise FrameError(f"payload is not valid JSON: {exc.msg} at byte {exc.pos}") from None
    except RecursionError:
        raise FrameError("payload is nested too deeply") from None
    except Exception as exc:  # cbor2 raises many types on hostile input; all are garbage in.
        detail = str(exc.__cause__ or exc)[:120]
        raise FrameError(f"payload is not valid CBOR/JSON: {type(exc).__name__}: {detail}"
                         ) from None


def _build(cls: Any, data: Mapping[Any, Any], with_type: bool = True) -> Any:
    """Check the keys of ``data`` against ``cls`` and construct it (which checks values)."""
    allowed = _ALLOWED[cls]
    keys = data.keys()
    if not allowed.issuperset(keys):
        for key in keys:
            if key not in allowed:
                where = key if type(key) is str else _show(key)
                what = cls.TYPE if with_type else "an issue"
                raise FrameError(f"{where} is not a field of {what} (unknown fields are not "
                                 f"allowed)", field=where)
    if with_type:
        if "type" not in keys:
            raise FrameError("type is required", field="type")
        got = data["type"]
        if type(got) is not str or got != cls.TYPE:
            raise FrameError(f"type must be {cls.TYPE!r}, got {_show(got)}", field="type")
    missing = _REQUIRED[cls] - keys
    if missing:
        name = min(missing)
        prefix = "issues." if cls is BarIssue else ""
        raise FrameError(f"{prefix}{name} is required", field=f"{prefix}{name}")
    kwargs = dict(data)
    kwargs.pop("type", None)
    return cls(**kwargs)


def _decode(cls: Any, payload: bytes) -> Any:
    data = _load(payload)
    if type(data) is not dict:
        raise FrameError(f"payload must be an object, got {type(data).__name__}")
    try:
        return _build(cls, data)
    except FrameError:
        raise
    except Exception as exc:  # a safety net: a checker bug must still not crash a reader
        raise FrameError(f"payload is malformed: {type(exc).__name__}: {exc}") from None


def decode_beat_frame(payload: bytes) -> BeatFrame:
    """Decode and validate a BeatFrame from JSON or CBOR bytes; raises FrameError."""
    frame: BeatFrame = _decode(BeatFrame, payload)
    return frame


def decode_status_claim(payload: bytes) -> StatusClaim:
    """Decode and validate a StatusClaim from JSON or CBOR bytes; raises FrameError."""
    claim: StatusClaim = _decode(StatusClaim, payload)
    return claim


def decode_bar_report(payload: bytes) -> BarReport:
    """Decode and validate a BarReport from JSON or CBOR bytes; raises FrameError."""
    report: BarReport = _decode(BarReport, payload)
    return report


# --------------------------------------------------------------------------- canonical CBOR
#
# cbor2's canonical mode sorts each map in native code but pays a fixed cost per map
# (~3 us), and a claim carries a dozen small maps. This encoder covers just the frozen
# JSON data model a message can hold, caches the encoding of map keys (a small, fixed
# vocabulary) and emits RFC 8949 core deterministic CBOR: definite lengths, shortest
# integer and length heads, shortest exact float, map keys sorted bytewise by encoding.
# The golden-byte tests pin its output; cbor2 decodes it.

_HEAD_SMALL = [bytes((i,)) for i in range(256)]
_U8, _U16, _U32, _U64 = (struct.Struct(f">B{c}").pack for c in "BHIQ")
_F64 = struct.Struct(">d").pack
_F32 = struct.Struct(">f")
_F16 = struct.Struct(">e")
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_MAX = 4096


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return _HEAD_SMALL[major | n]
    if n < 0x100:
        return _U8(major | 24, n)
    if n < 0x10000:
        return _U16(major | 25, n)
    if n < 0x100000000:
        return _U32(major | 26, n)
    return _U64(major | 27, n)


def _cbor_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _head(0x60, len(raw)) + raw


def _cbor_key(key: str) -> bytes:
    cached = _KEY_CACHE.get(key)
    if cached is None:
        cached = _cbor_text(key)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[key] = cached
    return cached


def _cbor_float(value: float) -> bytes:
    raw = _F64(value)
    # A double fits a single only if its low 29 mantissa bits are zero: test that on the
    # bytes before trying the narrower packings.
    if raw[5:] != b"\x00\x00\x00" or raw[4] & 0x1F:
        return b"\xfb" + raw
    try:
        half = _F16.pack(value)
        if _F16.unpack(half)[0] == value:
            return b"\xf9" + half
    except OverflowError:
        pass
    try:
        single = _F32.pack(value)
        if _F32.unpack(single)[0] == value:
            return b"\xfa" + single
    except OverflowError:
        pass
    return b"\xfb" + raw


def _cbor_value(value: object, out: list[bytes]) -> None:
    t = type(value)
    if t is str:
        out.append(_cbor_text(value))  # type: ignore[arg-type]
    elif t is int:
        if value >= 0:  # type: ignore[operator]
            out.append(_head(0x00, value))  # type: ignore[arg-type]
        else:
            out.append(_head(0x20, -1 - value))  # type: ignore[operator]
    elif t is float:
        out.append(_cbor_float(value))  # type: ignore[arg-type]
    elif t is bool:
        out.append(b"\xf5" if value else b"\xf4")
    elif value is None:
        out.append(b"\xf6")
    elif t is MappingProxyType or t is dict:
        _cbor_map(value, out)  # type: ignore[arg-type]
    elif t is tuple or t is list:
        out.append(_head(0x80, len(value)))  # type: ignore[arg-type]
        for item in value:  # type: ignore[attr-defined]
            _cbor_value(item, out)
    else:  # unreachable for a validated message
        raise TypeError(f"cannot encode {t.__name__} as CBOR")


def _cbor_map(value: Mapping[str, JSONValue], out: list[bytes]) -> None:
    # Every map of every claim passes here: the common small scalars are written inline.
    cache = _KEY_CACHE
    items = [(cache.get(k) or _cbor_key(k), v) for k, v in value.items()]
    items.sort()  # encoded keys are unique, so the values are never compared
    count = len(items)
    append = out.append
    append(_HEAD_SMALL[0xA0 | count] if count < 24 else _head(0xA0, count))
    for key, item in items:
        append(key)
        t = type(item)
        if t is int and 0 <= item < 24:
            append(_HEAD_SMALL[item])
        elif t is str and len(item) < 24 and item.isascii():
            append(_HEAD_SMALL[0x60 | len(item)])
            append(item.encode("ascii"))
        elif t is float:
            append(_cbor_float(item))
        else:
            _cbor_value(item, out)


def to_wire(message: Message) -> dict[str, object]:
    """The message as the plain dict the upstream schema describes (absent fields omitted)."""
    out: dict[str, object] = {"type": message.TYPE}
    for name in _FIELD_NAMES[type(message)]:
        value = getattr(message, name)
        if value is None:
            continue
        t = type(value)
        if t is str or t is int or t is float or t is bool:
            out[name] = value
        elif t is datetime:
            out[name] = format_rfc3339(value)
        elif name == "issues":
            out[name] = [{"severity": i.severity, "category": i.category, "count": i.count}
                         for i in value]
        else:
            out[name] = _thaw(value)
    return out


def _cbor_order(cls: Any) -> tuple[tuple[str, bytes], ...]:
    names = ("type", *_FIELD_NAMES[cls])
    return tuple(sorted(((n, _cbor_text(n)) for n in names), key=lambda pair: pair[1]))


_CBOR_ORDER: dict[type, tuple[tuple[str, bytes], ...]] = {
    cls: _cbor_order(cls) for cls in (BeatFrame, StatusClaim, BarReport)
}


def _encode_cbor(message: Message) -> bytes:
    out: list[bytes] = []
    count = 0
    for name, key in _CBOR_ORDER[type(message)]:
        value = message.TYPE if name == "type" else getattr(message, name)
        if value is None:
            continue
        count += 1
        out.append(key)
        if type(value) is datetime:
            out.append(_cbor_text(format_rfc3339(value)))
        elif name == "issues":
            issues = cast("tuple[BarIssue, ...]", value)
            _cbor_value([{"severity": i.severity, "category": i.category, "count": i.count}
                         for i in issues], out)
        else:
            _cbor_value(value, out)
    return _head(0xA0, count) + b"".join(out)


def encode(message: Message, fmt: Format = "cbor") -> bytes:
    """Encode a message: canonical CBOR (default) or compact JSON with sorted keys.

    The output always validates against the upstream v1 schema, since the message was
    validated when it was built. Raises ValueError for an unknown ``fmt``.
    """
    if fmt == "cbor":
        return _encode_cbor(message)
    if fmt == "json":
        wire = to_wire(message)
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          sort_keys=True).encode("utf-8")
    raise ValueError(f"fmt must be 'cbor' or 'json', got {fmt!r}")
