"""The BACKBEAT v1 wire contract in code: BeatFrame, StatusClaim, BarReport.

Every message is a frozen value, checked when it is built, so the rest of the agent trusts
it. ``decode_*`` turn bytes from the network into messages; ``encode`` turns a message into
bytes. The rules are those of ``spec/backbeat-contract.md`` (the upstream JSON Schemas,
draft-07, 1.0.0):

* both JSON (what the upstream Pulse emits) and CBOR are accepted; the format is told from
  the first byte (a JSON object starts with ``{``, a CBOR map never does);
* unknown top-level fields, missing required fields, wrong types, out-of-range numbers,
  NaN and infinities, duplicate keys, and booleans posing as integers (or integers posing
  as booleans) are all refused;
* ``tempo_bpm`` must lie on the 0.1 grid, checked in decimal arithmetic on the shortest
  decimal form of the number, so ``0.3`` and ``2.3`` pass;
* payloads above :data:`MAX_PAYLOAD_BYTES` and values nested deeper than
  :data:`MAX_DEPTH` are refused before or while parsing;
* anything wrong raises :class:`edge.errors.FrameError` naming the field and the value;
  nothing else ever escapes a decoder.

CBOR output is canonical (RFC 8949 core deterministic encoding: sorted keys, shortest
lengths and floats), so identical messages give identical bytes. Whatever is not in the
upstream schema travels under ``metadata``; ``encode`` never adds a top-level key.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

import cbor2

from edge.errors import FrameError

#: Largest payload a decoder accepts. A BeatFrame is ~250 bytes and a full StatusClaim with
#: the agent's metadata ~700; 64 KiB leaves room for rich metadata while bounding the work a
#: hostile sender can cause.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Deepest nesting of objects and arrays accepted inside ``metadata`` and friends.
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

_CLUSTER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_HLC = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_WINDOW_ID = re.compile(r"[0-9a-fA-F]{32}")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_TENTH = Decimal("0.1")


# --------------------------------------------------------------------------- field checks


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(name: str, message: str) -> FrameError:
    return FrameError(f"{name} {message}", field=name)


def _string(name: str, value: object, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {_show(value)}")
    if pattern is not None and pattern.fullmatch(value) is None:
        raise _fail(name, f"must match {pattern.pattern}, got {_show(value)}")
    return value


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise _fail(name, f"must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, f"must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(name, f"must be a finite number, got {_show(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise _fail(name, f"must be between {low:g} and {high:g}, got {_show(value)}")
    return number


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {_show(value)}")
    return value


def _tempo(value: object) -> float:
    bpm = _number("tempo_bpm", value)
    if not 0.1 <= bpm <= 1000:
        raise _fail("tempo_bpm", f"must be between 0.1 and 1000, got {_show(value)}")
    # repr() is the shortest decimal that round-trips, i.e. what the sender wrote.
    if Decimal(repr(value)) % _TENTH != 0:
        raise _fail("tempo_bpm", f"must be a multiple of 0.1, got {_show(value)}")
    return bpm


def parse_rfc3339(name: str, value: object) -> datetime:
    """Parse an RFC 3339 date-time (``Z`` or a numeric offset, optional fraction).

    Fractions finer than a microsecond are truncated; a leap second (``:60``) is read as
    the last microsecond of the minute, as Python's datetime has no 61st second.
    """
    text = _string(name, value)
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise _fail(name, f"must be an RFC 3339 date-time, got {_show(value)}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    leap = second == 60
    if leap:
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
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise _fail(name, f"is not a valid date-time ({exc}), got {_show(value)}") from None


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` (microseconds if any)."""
    utc = moment.astimezone(UTC)
    base = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        base += f".{utc.microsecond:06d}"
    return base + "Z"


def _freeze(name: str, value: object, depth: int = 0) -> JSONValue:
    """Check ``value`` is plain JSON data and return a read-only copy of it."""
    if depth > MAX_DEPTH:
        raise _fail(name, f"is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(name, f"must be a finite number, got {value!r}")
        return value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(name, f"keys must be strings, got {_show(key)}")
            out[key] = _freeze(f"{name}.{key}", item, depth + 1)
        return MappingProxyType(out)
    if isinstance(value, list | tuple):
        return tuple(_freeze(f"{name}[{i}]", item, depth + 1) for i, item in enumerate(value))
    raise _fail(name, f"must hold only JSON values, got {type(value).__name__} {_show(value)}")


def _thaw(value: JSONValue) -> object:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _object(name: str, value: object) -> Mapping[str, JSONValue]:
    if not isinstance(value, Mapping):
        raise _fail(name, f"must be an object, got {_show(value)}")
    frozen: Mapping[str, JSONValue] = _freeze(name, value)
    return frozen


def _set(instance: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields once, in __post_init__.
    object.__setattr__(instance, name, value)


# --------------------------------------------------------------------------- the messages


@dataclass(frozen=True, slots=True)
class BeatFrame:
    """One beat (or phase) announcement from the Pulse."""

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
        _string("cluster_id", self.cluster_id, _CLUSTER_ID)
        _integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX)
        _boolean("downbeat", self.downbeat)
        if self.phase not in PHASES:
            raise _fail("phase", f"must be one of plan, execute, review, got {_show(self.phase)}")
        _string("hlc", self.hlc, _HLC)
        if not isinstance(self.deadline_at, datetime):
            _set(self, "deadline_at", parse_rfc3339("deadline_at", self.deadline_at))
        elif self.deadline_at.tzinfo is None:
            raise _fail("deadline_at", "must carry a time zone")
        _set(self, "tempo_bpm", _tempo(self.tempo_bpm))
        _string("window_id", self.window_id, _WINDOW_ID)
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
    """An agent's claim about what it is doing in a beat."""

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
        _string("agent_id", self.agent_id, _AGENT_ID)
        _integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX)
        if self.state not in CLAIM_STATES:
            raise _fail("state", f"must be one of {', '.join(sorted(CLAIM_STATES))}, got "
                        f"{_show(self.state)}")
        _string("hlc", self.hlc, _HLC)
        if self.task_id is not None:
            _string("task_id", self.task_id, _AGENT_ID)
        if self.beats_left is not None:
            _integer("beats_left", self.beats_left, 0, 1000)
        if self.progress is not None:
            _set(self, "progress", _number("progress", self.progress, 0.0, 1.0))
        if self.notes is not None:
            _string("notes", self.notes)
            if len(self.notes) > 256:
                raise _fail("notes", f"must be at most 256 characters, got {len(self.notes)}")
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
            if isinstance(self.dependencies, str | bytes) or not isinstance(
                self.dependencies, Sequence
            ):
                raise _fail("dependencies", f"must be an array, got {_show(self.dependencies)}")
            deps = tuple(
                _string(f"dependencies[{i}]", d, _AGENT_ID) for i, d in enumerate(self.dependencies)
            )
            _set(self, "dependencies", deps)
        if self.metadata is not None:
            _set(self, "metadata", _object("metadata", self.metadata))


@dataclass(frozen=True, slots=True)
class BarIssue:
    """One entry of a BarReport's ``issues``."""

    severity: str
    category: str
    count: int

    def __post_init__(self) -> None:
        _string("issues.severity", self.severity)
        _string("issues.category", self.category)
        _integer("issues.count", self.count, 0, MAX_BEAT_INDEX)


@dataclass(frozen=True, slots=True)
class BarReport:
    """The Reverb's roll-up of one bar."""

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
        _string("window_id", self.window_id, _WINDOW_ID)
        _integer("from_beat", self.from_beat, 0, MAX_BEAT_INDEX)
        _integer("to_beat", self.to_beat, 0, MAX_BEAT_INDEX)
        for name in ("agents_reporting", "on_time_reviews", "help_promises_fulfilled"):
            _integer(name, getattr(self, name), 0, MAX_BEAT_INDEX)
        _boolean("secret_rotations_ok", self.secret_rotations_ok)
        _set(self, "tempo_drift_ms", _number("tempo_drift_ms", self.tempo_drift_ms))
        if self.issues is not None:
            if not isinstance(self.issues, Sequence) or isinstance(self.issues, str | bytes):
                raise _fail("issues", f"must be an array, got {_show(self.issues)}")
            if len(self.issues) > 100:
                raise _fail("issues", f"must hold at most 100 items, got {len(self.issues)}")
            items = []
            for i, item in enumerate(self.issues):
                if isinstance(item, BarIssue):
                    items.append(item)
                    continue
                if not isinstance(item, Mapping):
                    raise _fail(f"issues[{i}]", f"must be an object, got {_show(item)}")
                items.append(_build(BarIssue, item, f"issues[{i}].", with_type=False))
            _set(self, "issues", tuple(items))


Message: TypeAlias = BeatFrame | StatusClaim | BarReport


# --------------------------------------------------------------------------- decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FrameError(f"payload has the key {key!r} twice", field=key)
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise FrameError(f"payload holds {name}, which is not a JSON number")


def _load(payload: bytes) -> object:
    """Bytes to a plain value, JSON or CBOR by the first byte; only FrameError escapes."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError(f"payload must be bytes, got {type(payload).__name__}")
    size = len(payload)
    if size == 0:
        raise FrameError("payload is empty")
    if size > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload is {size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    data = bytes(payload)
    first = data.lstrip(b" \t\r\n")[:1]
    try:
        if first == b"{":
            return json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
        decoder = cbor2.CBORDecoder(
            io.BytesIO(data), allow_duplicate_keys=False, max_depth=MAX_DEPTH + 2
        )
        value = decoder.decode()
        if decoder.fp.tell() != size:
            raise FrameError(f"payload has {size - decoder.fp.tell()} bytes after the CBOR item")
        return value
    except FrameError:
        raise
    except UnicodeDecodeError as exc:
        raise FrameError(f"payload is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise FrameError(f"payload is not valid JSON: {exc.msg} at byte {exc.pos}") from None
    except RecursionError:
        raise FrameError("payload is nested too deeply") from None
    except Exception as exc:  # cbor2 raises many types on hostile input; all are garbage in.
        raise FrameError(f"payload is not valid CBOR: {type(exc).__name__}: {exc}") from None


def _build(cls: Any, data: Mapping[str, Any], prefix: str = "", with_type: bool = True) -> Any:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key == "type" and with_type:
            continue
        if key not in names:
            raise FrameError(f"{prefix}{key} is not a field of {cls.TYPE if with_type else 'it'}"
                             f" (unknown fields are not allowed)", field=f"{prefix}{key}")
    if with_type:
        got = data.get("type", None)
        if "type" not in data:
            raise FrameError("type is required", field="type")
        if got != cls.TYPE:
            raise FrameError(f"type must be {cls.TYPE!r}, got {_show(got)}", field="type")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = data[f.name]
        elif f.default is MISSING:
            raise FrameError(f"{prefix}{f.name} is required", field=f"{prefix}{f.name}")
    return cls(**kwargs)


def _decode(cls: Any, payload: bytes) -> Any:
    data = _load(payload)
    if not isinstance(data, dict):
        raise FrameError(f"payload must be an object, got {type(data).__name__}")
    try:
        return _build(cls, data)
    except FrameError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a key that is not a string
        raise FrameError(f"payload is malformed: {exc}") from None


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


# --------------------------------------------------------------------------- encoding


def to_wire(message: Message) -> dict[str, object]:
    """The message as the plain dict the upstream schema describes (absent fields omitted)."""
    out: dict[str, object] = {"type": message.TYPE}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is None:
            continue
        if isinstance(value, datetime):
            out[f.name] = format_rfc3339(value)
        elif f.name == "issues":
            out[f.name] = [{"severity": i.severity, "category": i.category, "count": i.count}
                           for i in value]
        else:
            out[f.name] = _thaw(value)
    return out


def encode(message: Message, fmt: Format = "cbor") -> bytes:
    """Encode a message: canonical CBOR (default) or compact JSON.

    The output always validates against the upstream v1 schema, since the message was
    validated when it was built.
    """
    wire = to_wire(message)
    if fmt == "cbor":
        return cbor2.dumps(wire, canonical=True)
    if fmt == "json":
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    raise ValueError(f"fmt must be 'cbor' or 'json', got {fmt!r}")
