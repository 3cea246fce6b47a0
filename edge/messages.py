"""The BACKBEAT v1 wire contract in code: BeatFrame, StatusClaim, BarReport.

Every message is a frozen value, checked when it is built, so the rest of the agent trusts
it. ``decode_*`` turn bytes from the network into messages, ``encode`` turns a message into
bytes. The rules are those of ``spec/backbeat-contract.md`` (the upstream JSON Schemas,
draft-07, 1.0.0).

Messages and fields
-------------------
``BeatFrame`` (``backbeat.beatframe.v1``, the Pulse to everyone), all required but metadata:

* ``cluster_id``: ``[a-zA-Z0-9_-]``, 1 to 64 characters
* ``beat_index``: integer, 0 to 2^63-1
* ``downbeat``: boolean
* ``phase``: ``plan``, ``execute`` or ``review``
* ``hlc``: three groups of 4 hex digits, either case (``7ffd:0001:beef``)
* ``deadline_at``: RFC 3339 date-time (``T``/``Z`` in either case, optional fraction, ``Z``
  or a numeric offset); kept as an aware datetime in UTC
* ``tempo_bpm``: number, 0.1 to 1000, a multiple of 0.1 (checked in decimal arithmetic on
  the shortest decimal form of the number, so ``0.3`` and ``2.3`` pass); kept as a float
* ``window_id``: 32 hex digits
* ``metadata``: optional object

``StatusClaim`` (``backbeat.statusclaim.v1``, an agent to the Reverb):

* ``agent_id``: ``[a-zA-Z0-9_:-]``, 1 to 128 characters; ``beat_index``; ``hlc``
* ``state``: ``idle``, ``planning``, ``executing``, ``reviewing``, ``completed``, ``failed``,
  ``blocked`` or ``helping``
* optional ``task_id`` (as ``agent_id``), ``beats_left`` (integer 0 to 1000), ``progress``
  (number 0 to 1, kept as a float), ``notes`` (at most 256 characters), ``dependencies``
  (array of agent ids, kept as a tuple), ``metadata`` (object)
* optional ``resources`` (object); if present, ``cpu_percent`` and ``network_kb`` are
  numbers >= 0, ``memory_mb`` and ``disk_io_ops`` integers 0 to 2^63-1

``BarReport`` (``backbeat.barreport.v1``, the Reverb to everyone, once a bar):

* ``window_id``; ``from_beat``, ``to_beat`` (inclusive), ``agents_reporting``,
  ``on_time_reviews``, ``help_promises_fulfilled``: integers 0 to 2^63-1
* ``secret_rotations_ok``: boolean; ``tempo_drift_ms``: number (positive = behind)
* optional ``issues``: at most 100 objects of ``severity`` and ``category`` (text) and
  ``count`` (integer 0 to 2^63-1), kept as a tuple of :class:`BarIssue`

Absent optional fields are ``None``: Go producers omit ``beats_left: 0`` and
``progress: 0`` (omitempty), so absence means "not given", never an error. A null optional
field reads as absent; a null required field, or a null ``resources`` figure, is refused.

Rules for every message
-----------------------
* Unknown top-level fields, missing required fields, a wrong ``type``, wrong types,
  out-of-range numbers, NaN and infinities, duplicate keys, and booleans posing as integers
  (or integers posing as booleans) are refused. Integer fields take integers only (``42``,
  not ``42.0``: no upstream producer writes integers as floats).
* ``metadata`` and ``resources`` hold JSON data only: objects with text keys, arrays, text,
  integers (64-bit: -2^64 to 2^64-1, what CBOR writes without a tag), finite floats,
  booleans and null, nested at most :data:`MAX_DEPTH` deep (the object itself is level 0).
  They are kept read-only (objects as FrozenObject dicts, arrays as tuples), so a message is
  immutable all the way down.
* Text must be valid Unicode (a JSON ``\\ud800`` escape is refused), so every decoded
  message can be encoded again.
* Anything wrong raises :class:`edge.errors.FrameError` (a ValueError) naming the field,
  with its full path (``metadata.a.b[1].c``), and the value.

Formats and limits
------------------
* Decoders accept JSON (what the upstream Pulse emits) and CBOR, told apart by the first
  byte after JSON whitespace: a JSON object starts with ``{``, a CBOR map never does.
* CBOR carries the JSON data model only: tags (dates, bignums, shared references...),
  byte strings, ``undefined`` and other simple values are refused, as are bytes after the
  item. Non-canonical CBOR is accepted and encodes canonically when sent again.
* Payloads above :data:`MAX_PAYLOAD_BYTES` are refused unread. Only FrameError ever
  escapes a decoder, hostile bytes included.
* ``encode`` writes canonical CBOR (RFC 8949 core deterministic encoding: map keys sorted
  by their encoding, shortest lengths and floats, definite lengths), so identical messages
  give identical bytes, or compact JSON with sorted keys. It never adds a top-level key:
  whatever is not in the upstream schema travels under ``metadata``, so the output always
  validates against the upstream v1 schemas.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeAlias, get_args

import cbor2

from edge.errors import FrameError
from edge.topics import CLUSTER_ID
from edge.wire_values import (
    MAX_DEPTH,
    JSONValue,
    array,
    boolean,
    choice,
    fail,
    format_rfc3339,
    frozen_object,
    integer,
    number,
    parse_rfc3339,
    show,
    string,
)

# The public names; MAX_DEPTH, JSONValue and the RFC 3339 pair are re-exported from
# edge.wire_values.
__all__ = [
    "BARREPORT_TYPE",
    "BEATFRAME_TYPE",
    "CLAIM_STATES",
    "MAX_BEAT_INDEX",
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "PHASES",
    "STATUSCLAIM_TYPE",
    "BarIssue",
    "BarReport",
    "BeatFrame",
    "ClaimState",
    "Format",
    "JSONValue",
    "Message",
    "Phase",
    "StatusClaim",
    "decode_bar_report",
    "decode_beat_frame",
    "decode_beat_frame_with_map",
    "decode_status_claim",
    "decode_status_claim_with_map",
    "encode",
    "format_rfc3339",
    "parse_rfc3339",
    "to_wire",
]

#: Largest payload a decoder accepts, in bytes. A BeatFrame is ~250 bytes and a full
#: StatusClaim with the agent's metadata ~500; 64 KiB leaves room for rich metadata while
#: bounding the work a hostile sender can cause (larger payloads are refused unread).
MAX_PAYLOAD_BYTES = 64 * 1024

BEATFRAME_TYPE = "backbeat.beatframe.v1"
STATUSCLAIM_TYPE = "backbeat.statusclaim.v1"
BARREPORT_TYPE = "backbeat.barreport.v1"

Phase: TypeAlias = Literal["plan", "execute", "review"]
PHASES: tuple[Phase, ...] = get_args(Phase)
ClaimState: TypeAlias = Literal[
    "idle", "planning", "executing", "reviewing", "completed", "failed", "blocked", "helping"
]
CLAIM_STATES: frozenset[str] = frozenset(get_args(ClaimState))
Format: TypeAlias = Literal["cbor", "json"]


MAX_BEAT_INDEX = 2**63 - 1

_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_HLC = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_WINDOW_ID = re.compile(r"[0-9a-fA-F]{32}")
#: The tempos the BeatFrame schema allows.
MIN_TEMPO_BPM, MAX_TEMPO_BPM = 0.1, 1000.0
_TENTH = Decimal("0.1")
_STATES_TEXT = ", ".join(sorted(CLAIM_STATES))


# --------------------------------------------------------------------------- field checks


def _tempo(value: object) -> float:
    bpm = number("tempo_bpm", value)
    if not MIN_TEMPO_BPM <= bpm <= MAX_TEMPO_BPM:
        raise fail("tempo_bpm", f"must be between 0.1 and 1000, got {show(value)}")
    # repr() is the shortest decimal that round-trips, i.e. what the sender wrote; binary
    # float arithmetic would call 0.3 or 2.3 off-step.
    if Decimal(repr(bpm)) % _TENTH != 0:
        raise fail("tempo_bpm", f"must be a multiple of 0.1, got {show(value)}")
    return bpm


def _deadline(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise fail("deadline_at", f"must carry a time zone, got {show(value)}")
        try:
            return value.astimezone(UTC)
        except (ValueError, OverflowError):
            raise fail("deadline_at", f"is out of range in UTC, got {show(value)}") from None
    return parse_rfc3339("deadline_at", value)


# --------------------------------------------------------------------------- the messages
#
# Each ``__post_init__`` checks every field in order and stores it normalised. The
# instances are frozen, so the values are stored as dataclasses' own ``__init__`` does.

_set = object.__setattr__


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
        _set(self, "cluster_id", string("cluster_id", self.cluster_id, CLUSTER_ID))
        _set(self, "beat_index", integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX))
        _set(self, "downbeat", boolean("downbeat", self.downbeat))
        _set(self, "phase", choice("phase", self.phase, PHASES, "plan, execute, review"))
        _set(self, "hlc", string("hlc", self.hlc, _HLC))
        _set(self, "deadline_at", _deadline(self.deadline_at))
        _set(self, "tempo_bpm", _tempo(self.tempo_bpm))
        _set(self, "window_id", string("window_id", self.window_id, _WINDOW_ID))
        if self.metadata is not None:
            _set(self, "metadata", frozen_object("metadata", self.metadata))

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
        _set(self, "agent_id", string("agent_id", self.agent_id, _AGENT_ID))
        _set(self, "beat_index", integer("beat_index", self.beat_index, 0, MAX_BEAT_INDEX))
        _set(self, "state", choice("state", self.state, CLAIM_STATES, _STATES_TEXT))
        _set(self, "hlc", string("hlc", self.hlc, _HLC))
        if self.task_id is not None:
            _set(self, "task_id", string("task_id", self.task_id, _AGENT_ID))
        if self.beats_left is not None:
            _set(self, "beats_left", integer("beats_left", self.beats_left, 0, 1000))
        if self.progress is not None:
            _set(self, "progress", number("progress", self.progress, 0.0, 1.0))
        if self.notes is not None:
            notes = string("notes", self.notes)
            if len(notes) > 256:
                raise fail("notes", f"must be at most 256 characters, got {len(notes)}")
            _set(self, "notes", notes)
        if self.resources is not None:
            resources = frozen_object("resources", self.resources)
            # The four figures the contract defines; a present null is not "absent".
            for name in ("cpu_percent", "network_kb"):
                if name in resources:
                    number(f"resources.{name}", resources[name], 0.0)
            for name in ("memory_mb", "disk_io_ops"):
                if name in resources:
                    integer(f"resources.{name}", resources[name], 0, MAX_BEAT_INDEX)
            _set(self, "resources", resources)
        if self.dependencies is not None:
            deps = enumerate(array("dependencies", self.dependencies))
            _set(
                self,
                "dependencies",
                tuple(string(f"dependencies[{i}]", d, _AGENT_ID) for i, d in deps),
            )
        if self.metadata is not None:
            _set(self, "metadata", frozen_object("metadata", self.metadata))


@dataclass(frozen=True, slots=True)
class BarIssue:
    """One entry of a BarReport's ``issues``: a count of one kind of trouble."""

    severity: str
    category: str
    count: int

    def __post_init__(self) -> None:
        _set(self, "severity", string("issues.severity", self.severity))
        _set(self, "category", string("issues.category", self.category))
        _set(self, "count", integer("issues.count", self.count, 0, MAX_BEAT_INDEX))


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
        _set(self, "window_id", string("window_id", self.window_id, _WINDOW_ID))
        for name in _REPORT_COUNTS:
            _set(self, name, integer(name, getattr(self, name), 0, MAX_BEAT_INDEX))
        _set(self, "secret_rotations_ok", boolean("secret_rotations_ok", self.secret_rotations_ok))
        _set(self, "tempo_drift_ms", number("tempo_drift_ms", self.tempo_drift_ms))
        if self.issues is not None:
            entries = array("issues", self.issues)
            if len(entries) > 100:
                raise fail("issues", f"must hold at most 100 items, got {len(entries)}")
            _set(self, "issues", tuple(_issue(i, item) for i, item in enumerate(entries)))


#: BarReport's counts, all integers from 0 to MAX_BEAT_INDEX.
_REPORT_COUNTS: tuple[str, ...] = ("from_beat", "to_beat", "agents_reporting", "on_time_reviews")
_REPORT_COUNTS += ("help_promises_fulfilled",)


def _issue(i: int, item: object) -> BarIssue:
    """The ``i``-th entry of ``issues`` as a BarIssue; errors name ``issues[i]``."""
    if isinstance(item, BarIssue):
        return item
    if not isinstance(item, Mapping):
        raise fail(f"issues[{i}]", f"must be an object, got {show(item)}")
    try:
        issue: BarIssue = _build(BarIssue, item)
    except FrameError as exc:
        # Re-point "issues.count" (or a bare key) at this item.
        where = exc.field.removeprefix("issues.")
        message = str(exc).removeprefix(exc.field)
        raise fail(f"issues[{i}].{where}", message.lstrip()) from None
    return issue


Message: TypeAlias = BeatFrame | StatusClaim | BarReport

#: Per class: its fields in order, and those a payload must carry.
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (BeatFrame, StatusClaim, BarIssue, BarReport)
}
_REQUIRED: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if f.default is not None) for cls in _FIELDS
}


# --------------------------------------------------------------------------- decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FrameError(f"payload has the key {show(key)} twice", field=key)
            seen.add(key)
    return out


def _reject_constant(name: str) -> None:
    raise FrameError(f"payload holds {name}, which is not a JSON number")


def _no_tag(*_: object) -> None:
    raise ValueError("CBOR tags are not part of the contract")


#: The tags cbor2 decodes itself: naming them routes them to _no_tag, as ``tag_hook`` does
#: every other tag. A test sweeps every tag number up to 65535, so a cbor2 that learns a
#: new one fails there.
_NO_TAGS = {
    tag: _no_tag
    for group in (
        (0, 1, 100, 1004),  # dates and times
        (2, 3, 4, 5, 30, 43000),  # bignums, decimal fractions, bigfloats, rationals, complex
        (25, 28, 29, 256),  # string and shared references
        (35, 36, 37, 52, 54, 258, 260, 261),  # regexp, MIME, UUID, IP addresses, sets
        (55799,),  # self-described CBOR
    )
    for tag in group
}
_JSON_SPACE = b" \t\r\n"


def _load(payload: bytes) -> object:
    """Bytes to a plain value, JSON or CBOR told by the first byte; only FrameError
    escapes."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError(f"payload must be bytes, got {type(payload).__name__}")
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if size == 0:
        raise FrameError("payload is empty")
    if size > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload is {size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    data = bytes(payload)
    try:
        if data.lstrip(_JSON_SPACE)[:1] == b"{":
            return json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
        stream = io.BytesIO(data)
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            tag_hook=_no_tag,
            allow_duplicate_keys=False,
            # The message's map and one level past MAX_DEPTH: the freeze walk, not cbor2,
            # words the error for a nest just too deep.
            max_depth=MAX_DEPTH + 3,
        ).decode()
        # cbor2 leaves the stream just after the item it read.
        if stream.tell() != size:
            raise FrameError("payload has bytes after the CBOR item")
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
        detail = str(exc.__cause__ or exc)[:120]
        raise FrameError(
            f"payload is not valid CBOR/JSON: {type(exc).__name__}: {detail}"
        ) from None


def _build(cls: Any, data: Mapping[Any, Any]) -> Any:
    """Check the keys of ``data`` against ``cls`` (and its ``type``), then build it."""
    names = _FIELDS[cls]
    is_issue = cls is BarIssue
    for key in data:
        if key not in names and (is_issue or key != "type"):
            where = key if type(key) is str else show(key)
            what = "an issue" if is_issue else cls.TYPE
            raise FrameError(
                f"{where} is not a field of {what} (unknown fields are not allowed)", field=where
            )
    if not is_issue:
        if "type" not in data:
            raise FrameError("type is required", field="type")
        got = data["type"]
        if type(got) is not str or got != cls.TYPE:
            raise FrameError(f"type must be {cls.TYPE!r}, got {show(got)}", field="type")
    missing = _REQUIRED[cls].difference(data)
    if missing:
        name = ("issues." if is_issue else "") + min(missing)
        raise FrameError(f"{name} is required", field=name)
    return cls(**{name: data[name] for name in names if name in data})


def _decode_with_map(cls: Any, payload: bytes) -> tuple[Any, dict[str, Any]]:
    data = _load(payload)
    if type(data) is not dict:
        raise FrameError(f"payload must be an object, got {type(data).__name__}")
    try:
        return _build(cls, data), data
    except FrameError:
        raise
    except Exception as exc:  # a safety net: a checker bug must still not crash a reader
        raise FrameError(f"payload is malformed: {type(exc).__name__}: {exc}") from None


def _decode(cls: Any, payload: bytes) -> Any:
    return _decode_with_map(cls, payload)[0]


def decode_beat_frame(payload: bytes) -> BeatFrame:
    """Decode and validate a BeatFrame from JSON or CBOR bytes; raises FrameError."""
    frame: BeatFrame = _decode(BeatFrame, payload)
    return frame


def decode_beat_frame_with_map(payload: bytes) -> tuple[BeatFrame, dict[str, Any]]:
    """As :func:`decode_beat_frame`, and the decoded map the frame was built from: plain
    dicts, lists and scalars with the types they were decoded with (a JSON integer stays
    an integer), which is what a signature covers (:mod:`edge.trust`). The map is the
    caller's own; the frame shares nothing with it."""
    frame, data = _decode_with_map(BeatFrame, payload)
    return frame, data


def decode_status_claim_with_map(payload: bytes) -> tuple[StatusClaim, dict[str, Any]]:
    """As :func:`decode_status_claim`, and its decoded map (see
    :func:`decode_beat_frame_with_map`)."""
    claim, data = _decode_with_map(StatusClaim, payload)
    return claim, data


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
    """The message as the dict the upstream schema describes (absent fields omitted).

    The top-level dict is the caller's; objects inside it are the message's own
    read-only :class:`~edge.wire_values.FrozenObject` dicts and arrays are tuples, which
    cbor2 and json encode as they are (copy one with ``dict()`` to change it)."""
    out: dict[str, object] = {"type": message.TYPE}
    for name in _FIELDS[type(message)]:
        value = getattr(message, name)
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = format_rfc3339(value)
        elif name == "issues":
            out[name] = [
                {"severity": i.severity, "category": i.category, "count": i.count} for i in value
            ]
        else:
            # Frozen objects are dicts and arrays tuples: both encoders take them as is.
            out[name] = value
    return out


def encode(message: Message, fmt: Format = "cbor") -> bytes:
    """Encode a message: canonical CBOR (default) or compact JSON with sorted keys.

    The output always validates against the upstream v1 schema, since the message was
    validated when it was built. Raises ValueError for an unknown ``fmt``.
    """
    if fmt == "cbor":
        return cbor2.dumps(to_wire(message), canonical=True)
    if fmt == "json":
        return json.dumps(
            to_wire(message),
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            sort_keys=True,
        ).encode("utf-8")
    raise ValueError(f"fmt must be 'cbor' or 'json', got {fmt!r}")
