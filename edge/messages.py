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

Where the time goes (a claim is built, encoded and decoded every beat):

* each message's rules live in one ``_fill_*`` function run exactly once per field:
  ``__post_init__`` runs it on what the caller passed, the decoders on a bare instance
  with what they parsed (no dataclass ``__init__`` pass over copies);
* ``metadata``/``resources`` a caller passes are deep-copied into read-only views (dicts
  in canonical key order) and, in the same pass, into a private *wire tree*: plain dicts
  in canonical order, with floats that have a shorter exact form pre-encoded. ``encode``
  hands that tree to cbor2's fast (non-canonical) C encoder, which then writes canonical
  bytes. A decoder's own dicts are checked and frozen in place instead (nothing else holds
  them); a decoded message derives its wire tree only if it is encoded again;
* cbor2's output needs fewer checks than json's (its text is valid Unicode and its
  integers fit 64 bits), so it is frozen by its own walk that checks types by set
  membership;
* fields are stored through the slots' descriptors (see :func:`_slot_setters`);
* cbor2 encoders and decoders are reused from small pools (making one is costly); a pooled
  decoder keeps its stream, which is re-pointed at each payload.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

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
_AGENT_ID_MATCH = _AGENT_ID.fullmatch
_HLC_MATCH = _HLC.fullmatch
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
    # float arithmetic would call 0.3 or 2.3 off-step. In this range repr() never uses an
    # exponent, so one digit after the point means a multiple of 0.1; anything else is
    # settled in decimal arithmetic.
    text = repr(bpm)
    if len(text) - text.find(".") == 2:
        return bpm
    if Decimal(text) % _TENTH != 0:
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


#: Who built the data a message is made from: a caller (its containers are copied), or
#: our JSON or CBOR decoder (frozen in place; CBOR text and integers need fewer checks).
_BY_CALLER, _BY_JSON, _BY_CBOR = 0, 1, 2


#: Stands for the wire tree of a decoded message's object: derived when encoding.
_DERIVE: Any = object()


class _Bad(Exception):
    """Raised while freezing JSON data; collects the path while unwinding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


class _Raw:
    """CBOR bytes that ``encode`` writes verbatim: a float in its shortest canonical form.

    cbor2's fast (non-canonical) mode writes every float in 8 bytes; canonical CBOR wants
    the shortest exact form, so a wire tree carries such floats pre-encoded, and cbor2
    hands them to :func:`_write_raw` (its ``default`` hook).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: _Raw of recently seen short floats (60.0, 0.5...: they repeat). Never 0.0: it equals
#: -0.0, which encodes differently. Bounded: a sender inventing floats costs time only.
_SHORT: dict[float, _Raw] = {}
_SHORT_MAX = 256


def _short_float(value: float) -> _Raw | None:
    """The canonical encoding of finite ``value`` if shorter than 8 bytes, else None."""
    # A double fits a single (and so maybe a half) only if its significand has at most
    # 24 bits: one multiplication rules out almost every measured value.
    if not (_frexp(value)[0] * 16777216.0).is_integer():
        return None
    raw = _SHORT.get(value) if value else None
    if raw is None:
        data = _cbor_float(value)
        if len(data) == 9:  # too large or too small for a single
            return None
        raw = _Raw(data)
        if value and len(_SHORT) < _SHORT_MAX:
            _SHORT[value] = raw
    return raw


def _plain_scalar(value: object) -> JSONValue:
    """Check one JSON scalar; subclasses (an IntEnum...) become the plain type."""
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
    if isinstance(value, str):
        return _plain_scalar(str(value))
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _plain_scalar(int(value))
    if isinstance(value, float):
        return _plain_scalar(float(value))
    raise _Bad(f"must hold only JSON values, got {type(value).__name__} {_show(value)}")


def _container(value: object) -> int:
    """1 for a mapping, 2 for a sequence (not text or bytes), 0 otherwise."""
    t = type(value)
    if t is dict or t is MappingProxyType:
        return 1
    if t is list or t is tuple:
        return 2
    if isinstance(value, Mapping):
        return 1
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return 2
    return 0


# Freezing a decoder's output: the decoder built every dict and list and nothing else
# holds them, so they are checked and frozen in place, with no copy.


def _freeze_json(d: dict[Any, Any], depth: int) -> Mapping[str, JSONValue]:
    """Check a JSON object our JSON decoder built; freeze it in place; return a read-only
    view. Nested objects become views, arrays tuples. Raises _Bad (with the path)."""
    if depth >= MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
    for key, item in d.items():
        try:
            # json.loads gives str keys, but a \ud800 escape makes text that is not Unicode.
            if not key.isascii() and not _valid_text(key):
                raise _Bad(f"keys must be valid Unicode text, got {_show(key)}")
            t = type(item)
            if t is str:
                if not item.isascii() and not _valid_text(item):
                    raise _Bad(f"must be valid Unicode text, got {_show(item)}")
            elif t is int:
                if not _MIN_INT <= item <= _MAX_INT:
                    raise _Bad(f"must fit in 64 bits, got {_show(item)}")
            elif t is float:
                if item - item != 0.0:  # 1e400 parses as an infinity
                    raise _Bad(_not_json(item))
            elif t is dict:
                d[key] = _freeze_json(item, depth + 1)
            elif t is list:
                d[key] = _freeze_owned_list(item, depth + 1, False)
            # booleans and null: nothing to check.
        except _Bad as bad:
            bad.path.append(f".{key}")
            raise
    return MappingProxyType(d)


#: The types cbor2 gives that need no check at all: its text is always valid Unicode (it
#: refuses bad UTF-8) and its integers always fit 64 bits (bignums are tags, refused).
_CBOR_PLAIN = frozenset((str, int, bool, type(None)))


def _freeze_cbor(d: dict[Any, Any], depth: int) -> Mapping[str, JSONValue]:
    """Check a JSON object cbor2 built; freeze it in place; return a read-only view.

    As :func:`_freeze_json`, for CBOR's wider data model: keys may be other than text and
    values may be NaN, infinities, byte strings, ``undefined`` or other simple values.
    This runs for every value of every claim decoded, so the common shapes are inline.
    """
    if depth >= MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
    for key, item in d.items():
        t = type(item)
        if type(key) is str:
            if t in _CBOR_PLAIN or (t is float and item - item == 0.0):
                continue
            if t is dict:
                # Most objects in a claim hold only scalars: check those here, which saves
                # a call; anything else gets the full treatment (and its error path).
                if depth + 1 < MAX_DEPTH:
                    for k2, v2 in item.items():
                        t2 = type(v2)
                        if type(k2) is not str or not (
                            t2 in _CBOR_PLAIN or (t2 is float and v2 - v2 == 0.0)
                        ):
                            break
                    else:
                        d[key] = MappingProxyType(item)  # same size: safe in the loop
                        continue
                try:
                    d[key] = _freeze_cbor(item, depth + 1)
                except _Bad as bad:
                    bad.path.append(f".{key}")
                    raise
                continue
            if t is list:
                try:
                    d[key] = _freeze_owned_list(item, depth + 1, True)
                except _Bad as bad:
                    bad.path.append(f".{key}")
                    raise
                continue
            breach = _Bad(_not_json(item))
            breach.path.append(f".{key}")
        else:
            breach = _Bad(f"keys must be strings, got {_show(key)}")
            breach.path.append(f".{_show(key)}")
        raise breach
    return MappingProxyType(d)


def _not_json(item: object) -> str:
    """Why a scalar from a decoder is not a JSON value (it is not text, an integer...)."""
    if type(item) is float:
        return f"must be a finite number, got {item!r}"
    return f"must hold only JSON values, got {type(item).__name__} {_show(item)}"


def _freeze_owned_list(items: list[Any], depth: int, cbor: bool) -> tuple[JSONValue, ...]:
    """Check a JSON array our decoder built; return it as a tuple of frozen values."""
    if depth >= MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
    for i, item in enumerate(items):
        try:
            t = type(item)
            if t is dict:
                items[i] = (_freeze_cbor if cbor else _freeze_json)(item, depth + 1)
            elif t is list:
                items[i] = _freeze_owned_list(item, depth + 1, cbor)
            elif t is str or t is int or t is float or t is bool or item is None:
                _plain_scalar(item)
            else:
                raise _Bad(f"must hold only JSON values, got {t.__name__} {_show(item)}")
        except _Bad as bad:
            bad.path.append(f"[{i}]")
            raise
    return tuple(items)


# Freezing what a caller passed: a deep copy (the caller keeps its dicts), made in
# canonical key order, together with the wire tree ``encode`` hands to cbor2.


def _freeze_map(value: Mapping[Any, Any], depth: int) -> tuple[Mapping[str, JSONValue], Any]:
    """Check a JSON object; return (read-only deep copy, wire tree).

    The copy's dicts are in canonical CBOR key order. The wire tree is the same data as
    plain dicts and lists, with :class:`_Raw` for floats that have a short form; it shares
    every dict that needs no change. Raises _Bad (with the path) on a breach.
    """
    if depth >= MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
    keys = tuple(value)
    order = _ORDERS.get(keys)
    if order is None:
        order = _canonical_order(keys)
    out: dict[str, JSONValue] = {}
    patches: list[tuple[str, object]] | None = None
    for key in order or keys:
        try:
            item = value[key]
            if type(key) is not str:
                raise _Bad(f"keys must be strings, got {_show(key)}")
            if not key.isascii() and not _valid_text(key):
                raise _Bad(f"keys must be valid Unicode text, got {_show(key)}")
            t = type(item)
            if t is str:
                if not item.isascii() and not _valid_text(item):
                    raise _Bad(f"must be valid Unicode text, got {_show(item)}")
            elif t is int:
                if not _MIN_INT <= item <= _MAX_INT:
                    raise _Bad(f"must fit in 64 bits, got {_show(item)}")
            elif t is float:
                if item - item != 0.0:  # NaN or an infinity
                    raise _Bad(f"must be a finite number, got {item!r}")
                if (raw := _short_float(item)) is not None:
                    if patches is None:
                        patches = []
                    patches.append((key, raw))
            elif t is not bool and item is not None:
                kind = (
                    1
                    if t is dict or t is MappingProxyType
                    else 2
                    if t is list or t is tuple
                    else _container(item)
                )
                if kind == 0:
                    item = _plain_scalar(item)
                    if type(item) is float and (raw := _short_float(item)) is not None:
                        if patches is None:
                            patches = []
                        patches.append((key, raw))
                else:
                    item, wire = (
                        _freeze_map(item, depth + 1) if kind == 1 else _freeze_seq(item, depth + 1)
                    )
                    if wire is not item:
                        if patches is None:
                            patches = []
                        patches.append((key, wire))
            out[key] = item
        except _Bad as bad:
            bad.path.append(f".{_show(key) if type(key) is not str else key}")
            raise
    if patches is None:
        return MappingProxyType(out), out
    wire_map = dict(out)
    wire_map.update(patches)
    return MappingProxyType(out), wire_map


def _freeze_seq(value: Sequence[Any], depth: int) -> tuple[tuple[JSONValue, ...], Any]:
    """Check a JSON array; return (tuple of frozen copies, wire tree): see _freeze_map."""
    if depth >= MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
    items = list(value)
    patches: list[tuple[int, object]] | None = None
    for i, item in enumerate(items):
        try:
            kind = _container(item)
            wire: object
            if kind == 0:
                item = items[i] = _plain_scalar(item)
                wire = _short_float(item) if type(item) is float else None
            else:
                item, wire = (
                    _freeze_map(item, depth + 1) if kind == 1 else _freeze_seq(item, depth + 1)
                )
                items[i] = item
                if wire is item:
                    wire = None
            if wire is not None:
                if patches is None:
                    patches = []
                patches.append((i, wire))
        except _Bad as bad:
            bad.path.append(f"[{i}]")
            raise
    frozen = tuple(items)
    if patches is None:
        return frozen, frozen
    wire_list: list[object] = list(frozen)
    for i, part in patches:
        wire_list[i] = part
    return frozen, wire_list


def _object(name: str, value: object, owned: int) -> tuple[Mapping[str, JSONValue], Any]:
    """Check ``value`` is a JSON object of plain JSON data; return (view, wire tree).

    ``owned`` (see :data:`_BY_CALLER`): ``value`` was built by our decoder and is frozen
    in place; its wire tree is then :data:`_DERIVE` (``encode`` derives one if the message
    is ever encoded again: few are). Otherwise the view is a deep copy. Raises FrameError
    naming the full path of a breach.
    """
    try:
        if owned and type(value) is dict:
            if owned == _BY_CBOR:
                return _freeze_cbor(value, 0), _DERIVE
            return _freeze_json(value, 0), _DERIVE
        if not isinstance(value, Mapping):
            raise _fail(name, f"must be an object, got {_show(value)}")
        return _freeze_map(value, 0)
    except _Bad as bad:
        where = name + "".join(reversed(bad.path))
        raise _fail(where, bad.message) from None


def _thaw(value: JSONValue) -> object:
    t = type(value)
    if t is MappingProxyType or t is dict:
        return {k: _thaw(v) for k, v in value.items()}
    if t is tuple:
        return [_thaw(v) for v in value]
    return value


def _wire_map(view: Mapping[str, JSONValue]) -> dict[str, object]:
    """The wire tree of a frozen object that has none (a decoded one): see _freeze_map."""
    keys = tuple(view)
    order = _ORDERS.get(keys)
    if order is None:
        order = _canonical_order(keys)
    wire: dict[str, object] = {}
    for key in order or keys:
        item = view[key]
        t = type(item)
        if t is float:
            wire[key] = _short_float(item) or item
        elif t is MappingProxyType:
            wire[key] = _wire_map(item)
        elif t is tuple:
            wire[key] = _wire_list(item)
        else:
            wire[key] = item
    return wire


def _wire_list(view: tuple[JSONValue, ...]) -> list[object]:
    wire: list[object] = []
    for item in view:
        t = type(item)
        if t is float:
            wire.append(_short_float(item) or item)
        elif t is MappingProxyType:
            wire.append(_wire_map(item))
        elif t is tuple:
            wire.append(_wire_list(item))
        else:
            wire.append(item)
    return wire


#: Canonical key order of recently seen key tuples (a claim's maps repeat every beat):
#: ``()`` when the tuple is already in order, else the keys in order. Bounded, so a
#: sender inventing keys costs a sort per map, never memory.
_ORDERS: dict[tuple[Any, ...], tuple[str, ...]] = {}
_ORDERS_MAX = 1024


def _canonical_order(keys: tuple[Any, ...]) -> tuple[str, ...]:
    # RFC 8949 core deterministic order is bytewise on the encoded key: for text keys,
    # shorter UTF-8 first, then bytewise. Keys that are not valid text are left in place
    # (and uncached) for the caller to refuse.
    try:
        ordered = tuple(sorted(keys, key=_utf8_length_then_bytes))
    except (AttributeError, TypeError, UnicodeEncodeError):
        return ()
    order = () if ordered == keys else ordered
    if len(_ORDERS) < _ORDERS_MAX and len(keys) <= 64:
        _ORDERS[keys] = order
    return order


def _utf8_length_then_bytes(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return len(raw), raw


def _slot_setters(cls: type, names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of ``cls``'s slots, in the order ``names`` gives them.

    A frozen dataclass refuses attribute assignment, so its checked fields are stored
    through the slot descriptors, as dataclasses' own ``__init__`` does through
    ``object.__setattr__``; calling a descriptor's ``__set__`` skips the attribute lookup
    and costs ~40 % less, which counts for the dozen fields of every decoded message.
    """
    return tuple(cls.__dict__[name].__set__ for name in names.split())


def _array(name: str, value: object) -> Sequence[object]:
    if type(value) is list or type(value) is tuple:
        return value
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Sequence):
        raise _fail(name, f"must be an array, got {_show(value)}")
    return value


# --------------------------------------------------------------------------- the messages
#
# Each message's rules live in one ``_fill_*`` function that checks every field and
# stores it (normalised) on the instance. ``__post_init__`` runs it on what the caller
# passed; the decoders run it on a bare instance (``object.__new__``) with the values
# they just parsed, telling it those containers are theirs to freeze in place. Either
# way every rule runs exactly once per field.


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
    # The canonical-CBOR wire tree of ``metadata`` (see _freeze_map); private.
    _metadata_wire: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _fill_beat_frame(
            self,
            _BY_CALLER,
            self.cluster_id,
            self.beat_index,
            self.downbeat,
            self.phase,
            self.hlc,
            self.deadline_at,
            self.tempo_bpm,
            self.window_id,
            self.metadata,
        )

    @property
    def beat_seconds(self) -> float:
        """Length of one beat at this frame's tempo."""
        return 60.0 / self.tempo_bpm

    @property
    def phase_seconds(self) -> float:
        """Length of one phase (a third of a beat) at this frame's tempo."""
        return 20.0 / self.tempo_bpm


#: Setters of BeatFrame's slots (see _slot_setters).
(
    _frame_cluster_id,
    _frame_beat_index,
    _frame_downbeat,
    _frame_phase,
    _frame_hlc,
    _frame_deadline_at,
    _frame_tempo_bpm,
    _frame_window_id,
    _frame_metadata,
    _frame_metadata_wire,
) = _slot_setters(
    BeatFrame,
    (
        "cluster_id beat_index downbeat phase hlc deadline_at tempo_bpm window_id metadata "
        "_metadata_wire"
    ),
)


def _fill_beat_frame(
    f: BeatFrame,
    owned: int,
    cluster_id: object,
    beat_index: object,
    downbeat: object,
    phase: object,
    hlc: object,
    deadline_at: object,
    tempo_bpm: object,
    window_id: object,
    metadata: object,
) -> None:
    _frame_cluster_id(f, _string("cluster_id", cluster_id, _CLUSTER_ID))
    _frame_beat_index(f, _integer("beat_index", beat_index, 0, MAX_BEAT_INDEX))
    _frame_downbeat(f, _boolean("downbeat", downbeat))
    if type(phase) is not str or phase not in PHASES:
        raise _fail("phase", f"must be one of plan, execute, review, got {_show(phase)}")
    _frame_phase(f, phase)
    _frame_hlc(f, _string("hlc", hlc, _HLC))
    _frame_deadline_at(f, _deadline(deadline_at))
    _frame_tempo_bpm(f, _tempo(tempo_bpm))
    _frame_window_id(f, _string("window_id", window_id, _WINDOW_ID))
    wire = None
    if metadata is not None:
        metadata, wire = _object("metadata", metadata, owned)
    _frame_metadata(f, metadata)
    _frame_metadata_wire(f, wire)


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
    # The canonical-CBOR wire trees of ``resources`` and ``metadata``; private.
    _resources_wire: Any = field(default=None, init=False, repr=False, compare=False, hash=False)
    _metadata_wire: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _fill_status_claim(
            self,
            _BY_CALLER,
            self.agent_id,
            self.beat_index,
            self.state,
            self.hlc,
            self.task_id,
            self.beats_left,
            self.progress,
            self.notes,
            self.resources,
            self.dependencies,
            self.metadata,
        )


#: Setters of StatusClaim's slots (see _slot_setters).
(
    _claim_agent_id,
    _claim_beat_index,
    _claim_state,
    _claim_hlc,
    _claim_task_id,
    _claim_beats_left,
    _claim_progress,
    _claim_notes,
    _claim_resources,
    _claim_resources_wire,
    _claim_dependencies,
    _claim_metadata,
    _claim_metadata_wire,
) = _slot_setters(
    StatusClaim,
    (
        "agent_id beat_index state hlc task_id beats_left progress notes resources "
        "_resources_wire dependencies metadata _metadata_wire"
    ),
)

#: Stands for a key that is absent (a present null must still be refused).
_ABSENT: Any = object()


def _fill_status_claim(
    c: StatusClaim,
    owned: int,
    agent_id: object,
    beat_index: object,
    state: object,
    hlc: object,
    task_id: object,
    beats_left: object,
    progress: object,
    notes: object,
    resources: object,
    dependencies: object,
    metadata: object,
) -> None:
    # The common case inline (a plain value that passes); the helpers convert subclasses
    # and word the errors.
    if type(agent_id) is not str or _AGENT_ID_MATCH(agent_id) is None:
        agent_id = _string("agent_id", agent_id, _AGENT_ID)
    _claim_agent_id(c, agent_id)
    if type(beat_index) is not int or not 0 <= beat_index <= MAX_BEAT_INDEX:
        beat_index = _integer("beat_index", beat_index, 0, MAX_BEAT_INDEX)
    _claim_beat_index(c, beat_index)
    if type(state) is not str or state not in CLAIM_STATES:
        raise _fail("state", f"must be one of {_STATES_TEXT}, got {_show(state)}")
    _claim_state(c, state)
    if type(hlc) is not str or _HLC_MATCH(hlc) is None:
        hlc = _string("hlc", hlc, _HLC)
    _claim_hlc(c, hlc)
    if task_id is not None:
        task_id = _string("task_id", task_id, _AGENT_ID)
    _claim_task_id(c, task_id)
    if beats_left is not None:
        beats_left = _integer("beats_left", beats_left, 0, 1000)
    _claim_beats_left(c, beats_left)
    if progress is not None:
        progress = _number("progress", progress, 0.0, 1.0)
    _claim_progress(c, progress)
    if notes is not None:
        notes = _string("notes", notes)
        if len(notes) > 256:
            raise _fail("notes", f"must be at most 256 characters, got {len(notes)}")
    _claim_notes(c, notes)
    wire = None
    if resources is not None:
        resources, wire = _object("resources", resources, owned)
        # The four figures the contract defines, inline (this runs for every claim): the
        # passing case is a float or int, known finite; the helpers word the errors.
        get = resources.get
        cpu, net = get("cpu_percent", _ABSENT), get("network_kb", _ABSENT)
        mem, ops = get("memory_mb", _ABSENT), get("disk_io_ops", _ABSENT)
        if cpu is not _ABSENT and not ((type(cpu) is float or type(cpu) is int) and cpu >= 0):
            _number("resources.cpu_percent", cpu, 0.0)
        if net is not _ABSENT and not ((type(net) is float or type(net) is int) and net >= 0):
            _number("resources.network_kb", net, 0.0)
        if mem is not _ABSENT and not (type(mem) is int and 0 <= mem <= MAX_BEAT_INDEX):
            _integer("resources.memory_mb", mem, 0, MAX_BEAT_INDEX)
        if ops is not _ABSENT and not (type(ops) is int and 0 <= ops <= MAX_BEAT_INDEX):
            _integer("resources.disk_io_ops", ops, 0, MAX_BEAT_INDEX)
    _claim_resources(c, resources)
    _claim_resources_wire(c, wire)
    if dependencies is not None:
        deps = _array("dependencies", dependencies)
        dependencies = tuple(
            _string(f"dependencies[{i}]", d, _AGENT_ID) for i, d in enumerate(deps)
        )
    _claim_dependencies(c, dependencies)
    wire = None
    if metadata is not None:
        metadata, wire = _object("metadata", metadata, owned)
    _claim_metadata(c, metadata)
    _claim_metadata_wire(c, wire)


@dataclass(frozen=True, slots=True)
class BarIssue:
    """One entry of a BarReport's ``issues``: a count of one kind of trouble."""

    severity: str
    category: str
    count: int

    def __post_init__(self) -> None:
        _fill_bar_issue(self, _BY_CALLER, self.severity, self.category, self.count)


#: Setters of BarIssue's slots (see _slot_setters).
(
    _issue_severity,
    _issue_category,
    _issue_count,
) = _slot_setters(BarIssue, ("severity category count"))


def _fill_bar_issue(
    i: BarIssue, owned: int, severity: object, category: object, count: object
) -> None:
    _issue_severity(i, _string("issues.severity", severity))
    _issue_category(i, _string("issues.category", category))
    _issue_count(i, _integer("issues.count", count, 0, MAX_BEAT_INDEX))


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
        _fill_bar_report(
            self,
            _BY_CALLER,
            self.window_id,
            self.from_beat,
            self.to_beat,
            self.agents_reporting,
            self.on_time_reviews,
            self.help_promises_fulfilled,
            self.secret_rotations_ok,
            self.tempo_drift_ms,
            self.issues,
        )


#: Setters of BarReport's slots (see _slot_setters).
(
    _report_window_id,
    _report_from_beat,
    _report_to_beat,
    _report_agents_reporting,
    _report_on_time_reviews,
    _report_help_promises_fulfilled,
    _report_secret_rotations_ok,
    _report_tempo_drift_ms,
    _report_issues,
) = _slot_setters(
    BarReport,
    (
        "window_id from_beat to_beat agents_reporting on_time_reviews help_promises_fulfilled "
        "secret_rotations_ok tempo_drift_ms issues"
    ),
)


def _fill_bar_report(
    r: BarReport,
    owned: int,
    window_id: object,
    from_beat: object,
    to_beat: object,
    agents_reporting: object,
    on_time_reviews: object,
    help_promises_fulfilled: object,
    secret_rotations_ok: object,
    tempo_drift_ms: object,
    issues: object,
) -> None:
    _report_window_id(r, _string("window_id", window_id, _WINDOW_ID))
    _report_from_beat(r, _integer("from_beat", from_beat, 0, MAX_BEAT_INDEX))
    _report_to_beat(r, _integer("to_beat", to_beat, 0, MAX_BEAT_INDEX))
    _report_agents_reporting(r, _integer("agents_reporting", agents_reporting, 0, MAX_BEAT_INDEX))
    _report_on_time_reviews(r, _integer("on_time_reviews", on_time_reviews, 0, MAX_BEAT_INDEX))
    _report_help_promises_fulfilled(
        r, _integer("help_promises_fulfilled", help_promises_fulfilled, 0, MAX_BEAT_INDEX)
    )
    _report_secret_rotations_ok(r, _boolean("secret_rotations_ok", secret_rotations_ok))
    _report_tempo_drift_ms(r, _number("tempo_drift_ms", tempo_drift_ms))
    if issues is not None:
        entries = _array("issues", issues)
        if len(entries) > 100:
            raise _fail("issues", f"must hold at most 100 items, got {len(entries)}")
        items = []
        for i, item in enumerate(entries):
            if isinstance(item, BarIssue):
                items.append(item)
                continue
            if not isinstance(item, Mapping):
                raise _fail(f"issues[{i}]", f"must be an object, got {_show(item)}")
            try:
                items.append(_build(BarIssue, item, owned, with_type=False))
            except FrameError as exc:
                # Re-point "issues.count" (or a bare key) at this item.
                where = exc.field.removeprefix("issues.")
                message = str(exc).removeprefix(exc.field)
                raise _fail(f"issues[{i}].{where}", message.lstrip()) from None
        issues = tuple(items)
    _report_issues(r, issues)


Message: TypeAlias = BeatFrame | StatusClaim | BarReport

#: Per class: its public fields in order, and the function holding its rules.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.init)
    for cls in (BeatFrame, StatusClaim, BarIssue, BarReport)
}
_FILL: dict[type, Callable[..., None]] = {
    BeatFrame: _fill_beat_frame,
    StatusClaim: _fill_status_claim,
    BarIssue: _fill_bar_issue,
    BarReport: _fill_bar_report,
}
_REQUIRED: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if f.init and f.default is not None)
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
_JSON_START = 0x7B  # "{"
_JSON_SPACE = b" \t\r\n"
#: Idle cbor2 decoders with their streams, reused (making a decoder costs about as much
#: as reading a small map). list.pop and list.append are atomic, so two threads never
#: share one; a decoder that raised is dropped, never returned.
_DECODERS: list[tuple[cbor2.CBORDecoder, io.BytesIO]] = []
#: Points a pooled stream at the next payload, at position 0: BytesIO shares the bytes
#: (no copy) and re-initialising it costs less than a new stream plus setting the
#: decoder's ``fp``. The idle stream keeps the last payload (at most 64 KiB) alive.
_point_stream = io.BytesIO.__init__


def _load(payload: bytes) -> tuple[object, int]:
    """Bytes to a plain value and its source (_BY_JSON or _BY_CBOR), told by the first
    byte; only FrameError escapes."""
    if type(payload) is bytes:
        size = len(payload)
    elif isinstance(payload, bytearray | memoryview):
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    else:
        raise FrameError(f"payload must be bytes, got {type(payload).__name__}")
    if size == 0:
        raise FrameError("payload is empty")
    if size > MAX_PAYLOAD_BYTES:
        raise FrameError(f"payload is {size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    data = payload if type(payload) is bytes else bytes(payload)
    first = data[0]
    if first in _JSON_SPACE:
        stripped = data.lstrip(_JSON_SPACE)
        first = stripped[0] if stripped else -1
    try:
        if first == _JSON_START:
            return json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            ), _BY_JSON
        try:
            decoder, stream = _DECODERS.pop()
        except IndexError:
            stream = io.BytesIO()
            decoder = cbor2.CBORDecoder(
                stream,
                semantic_decoders=_EVERY_TAG,
                tag_hook=_no_tag,
                allow_duplicate_keys=False,
                max_depth=MAX_DEPTH + 3,
            )
        _point_stream(stream, data)
        value = decoder.decode()
        _DECODERS.append((decoder, stream))  # only after a clean decode
        # cbor2 leaves the stream just after the item it read (it seeks back over any
        # read-ahead), so a short position means bytes follow the item.
        if stream.tell() != size:
            raise FrameError("payload has bytes after the CBOR item")
        return value, _BY_CBOR
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


def _build(cls: Any, data: Mapping[Any, Any], owned: int, with_type: bool = True) -> Any:
    """Check the keys of ``data`` against ``cls``, then its values, and build it.

    ``owned`` (see :data:`_BY_CALLER`): who built ``data``; a decoder's containers are
    frozen in place, a caller's (a BarIssue given to a BarReport as a mapping) copied.
    """
    allowed = _ALLOWED[cls]
    keys = data.keys()
    if not allowed.issuperset(keys):
        for key in keys:
            if key not in allowed:
                where = key if type(key) is str else _show(key)
                what = cls.TYPE if with_type else "an issue"
                raise FrameError(
                    f"{where} is not a field of {what} (unknown fields are not allowed)",
                    field=where,
                )
    if with_type:
        if "type" not in keys:
            raise FrameError("type is required", field="type")
        got = data["type"]
        if type(got) is not str or got != cls.TYPE:
            raise FrameError(f"type must be {cls.TYPE!r}, got {_show(got)}", field="type")
    if not keys >= _REQUIRED[cls]:
        name = min(_REQUIRED[cls] - keys)
        prefix = "issues." if cls is BarIssue else ""
        raise FrameError(f"{prefix}{name} is required", field=f"{prefix}{name}")
    # The fields were just checked: build the instance without the dataclass __init__
    # (which would run the same rules on copies) and let the rules store the values.
    message = _new(cls)
    _FILL[cls](
        message, owned if type(data) is dict else _BY_CALLER, *map(data.get, _FIELD_NAMES[cls])
    )
    return message


_new = object.__new__


def _decode(cls: Any, payload: bytes) -> Any:
    data, source = _load(payload)
    if type(data) is not dict:
        raise FrameError(f"payload must be an object, got {type(data).__name__}")
    try:
        return _build(cls, data, source)
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
# cbor2's canonical mode sorts every map in native code but pays ~0.3 us per key for it,
# and its fast mode writes maps in insertion order and every float in 8 bytes. A claim is
# a dozen small maps, so: when a message is built, each JSON object is also kept as a
# "wire tree" (see _freeze_map) of plain dicts already in canonical key order, with the
# floats that have a shorter exact form pre-encoded as _Raw. ``encode`` then puts the
# top-level fields in a dict in canonical order and lets cbor2's fast mode write it,
# handing each _Raw to _write_raw. Every other JSON value encodes the same in both modes
# (shortest integer and length heads, definite lengths), so the bytes are RFC 8949 core
# deterministic CBOR, identical to cbor2.dumps(to_wire(m), canonical=True) (the property
# tests check that); the golden-byte tests pin them.

_HEAD_SMALL = [bytes((i,)) for i in range(256)]
_U8, _U16, _U32, _U64 = (struct.Struct(f">B{c}").pack for c in "BHIQ")
_F64 = struct.Struct(">d").pack
_F32 = struct.Struct(">f")
_F16 = struct.Struct(">e")
_frexp = math.frexp


def _cbor_float(value: float) -> bytes:
    """The shortest CBOR encoding of ``value`` that decodes to exactly ``value``."""
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


def _write_raw(encoder: cbor2.CBOREncoder, value: object) -> None:
    """cbor2's ``default`` hook: write a _Raw verbatim (nothing else reaches it)."""
    if type(value) is not _Raw:  # unreachable for a validated message
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")
    encoder.write(value.data)


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
            out[name] = [
                {"severity": i.severity, "category": i.category, "count": i.count} for i in value
            ]
        else:
            out[name] = _thaw(value)
    return out


def _cbor_plan(
    cls: Any,
) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]], tuple[str, ...]]:
    """The wire names of ``cls`` in canonical order, a getter of their values, and the
    names whose values need converting for the wire (see :data:`_CBOR_CONVERT`).

    The getter reads ``TYPE`` for ``type`` and a JSON object's wire tree for the object.
    """
    names = tuple(sorted(("type", *_FIELD_NAMES[cls]), key=_utf8_length_then_bytes))
    slots = set(cls.__slots__)
    return (
        names,
        operator.attrgetter(
            *(
                "TYPE" if n == "type" else f"_{n}_wire" if f"_{n}_wire" in slots else n
                for n in names
            )
        ),
        _CBOR_CONVERT[cls],
    )


#: The fields whose value is not written as it is: floats (in their shortest exact form),
#: datetimes (as RFC 3339 text), JSON objects of a decoded message (:data:`_DERIVE`) and
#: BarReport's issues. The others are text, integers, booleans, tuples of text or wire
#: trees, which cbor2 writes canonically as they are. (A float field left out here would
#: be written in 8 bytes: the property tests against cbor2's canonical mode catch that.)
_CBOR_CONVERT: dict[type, tuple[str, ...]] = {
    BeatFrame: ("deadline_at", "tempo_bpm", "metadata"),
    StatusClaim: ("progress", "resources", "metadata"),
    BarReport: ("tempo_drift_ms", "issues"),
}
_CBOR_PLAN = {cls: _cbor_plan(cls) for cls in (BeatFrame, StatusClaim, BarReport)}

#: Idle cbor2 encoders, reused (an encoder copies cbor2's table of type encoders when
#: made). list.pop and list.append are atomic, so two threads never share one; an encoder
#: that raised is dropped, never returned.
_ENCODERS: list[cbor2.CBOREncoder] = []


def _encode_cbor(message: Message) -> bytes:
    names, values, convert = _CBOR_PLAN[type(message)]
    wire = {
        name: value for name, value in zip(names, values(message), strict=True) if value is not None
    }
    for name in convert:
        value = wire.get(name)
        if value is None:
            continue
        if type(value) is float:
            wire[name] = _short_float(value) or value
        elif value is _DERIVE:  # a decoded message's object
            wire[name] = _wire_map(getattr(message, name))
        elif type(value) is datetime:
            wire[name] = format_rfc3339(value)
        elif name == "issues":
            # Keys in canonical order: count, category, severity.
            wire[name] = [
                {"count": i.count, "category": i.category, "severity": i.severity} for i in value
            ]
        # else a wire tree, already in canonical form
    try:
        encoder = _ENCODERS.pop()
    except IndexError:
        encoder = cbor2.CBOREncoder(io.BytesIO(), default=_write_raw)
    data = encoder.encode_to_bytes(wire)
    _ENCODERS.append(encoder)
    return data


def encode(message: Message, fmt: Format = "cbor") -> bytes:
    """Encode a message: canonical CBOR (default) or compact JSON with sorted keys.

    The output always validates against the upstream v1 schema, since the message was
    validated when it was built. Raises ValueError for an unknown ``fmt``.
    """
    if fmt == "cbor":
        return _encode_cbor(message)
    if fmt == "json":
        wire = to_wire(message)
        return json.dumps(
            wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
        ).encode("utf-8")
    raise ValueError(f"fmt must be 'cbor' or 'json', got {fmt!r}")
