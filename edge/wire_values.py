"""The contract's rules for single values, shared by every wire message.

Typed field checks that name the field and show the offending value (:func:`fail`), RFC
3339 date-times, and the freeze walk: JSON data (``metadata``, ``resources``) checked and
made read-only all the way down. :mod:`edge.messages` builds its messages from these; the
rules themselves are written out in its docstring.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

from edge.errors import FrameError

#: Deepest nesting of objects and arrays accepted inside ``metadata`` and ``resources``
#: (the object itself is level 0).
MAX_DEPTH = 16

#: A JSON value as carried in ``metadata`` / ``resources`` after freezing: objects become
#: read-only mappings and arrays tuples, so a message is immutable all the way down.
JSONValue: TypeAlias = Any

#: Integers inside metadata must fit CBOR's native integers (no bignum tags on the wire).
_MIN_INT, _MAX_INT = -(2**64), 2**64 - 1
# [0-9], not \d: \d also matches non-ASCII digits, which RFC 3339 does not allow.
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


# --------------------------------------------------------------------------- field checks


def show(value: object) -> str:
    """A short, always-printable rendering of an offending value for an error message."""
    if type(value) is int and not -(10**60) < value < 10**60:
        # repr() of a huge int is slow and may raise (int max str digits).
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a hostile object's repr must not mask the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, message: str) -> FrameError:
    return FrameError(f"{name} {message}", field=name)


def valid_text(value: str) -> bool:
    """True if ``value`` is encodable as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def string(name: str, value: object, pattern: re.Pattern[str] | None = None) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise fail(name, f"must be a string, got {show(value)}")
        value = str(value)  # a str subclass: keep plain str in the frozen value
    if pattern is not None:
        if pattern.fullmatch(value) is None:
            raise fail(name, f"must match ^{pattern.pattern}$, got {show(value)}")
    elif not valid_text(value):
        raise fail(name, f"must be valid Unicode text, got {show(value)}")
    return value


def integer(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(name, f"must be an integer, got {show(value)}")
        value = int(value)  # an IntEnum...: keep plain int
    if not low <= value <= high:
        raise fail(name, f"must be between {low} and {high}, got {show(value)}")
    return value


def number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    if type(value) is float:
        number = value
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(name, f"must be a number, got {show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise fail(name, f"must be a finite number, got {show(value)}") from None
    if not math.isfinite(number):
        raise fail(name, f"must be a finite number, got {show(value)}")
    if low is not None and number < low:
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise fail(name, f"must be {bound}, got {show(value)}")
    if high is not None and number > high:
        bound = f"between {low:g} and {high:g}" if low is not None else f"at most {high:g}"
        raise fail(name, f"must be {bound}, got {show(value)}")
    return number


def boolean(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise fail(name, f"must be true or false, got {show(value)}")
    return value


def choice(name: str, value: object, allowed: Sequence[str] | frozenset[str], text: str) -> str:
    if type(value) is not str or value not in allowed:
        raise fail(name, f"must be one of {text}, got {show(value)}")
    return value


def array(name: str, value: object) -> Sequence[object]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Sequence):
        raise fail(name, f"must be an array, got {show(value)}")
    return value


def parse_rfc3339(name: str, value: object) -> datetime:
    """Parse an RFC 3339 date-time (``Z`` or a numeric offset, optional fraction).

    Returns an aware datetime in UTC. Fractions finer than a microsecond are truncated; a
    leap second (``:60``) is read as the last microsecond of the minute, as Python's
    datetime has no 61st second. Raises FrameError naming ``name`` if ``value`` is not a
    string, not RFC 3339, not a real date, or not representable in UTC (year 1 to 9999).
    """
    text = string(name, value)
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise fail(name, f"must be an RFC 3339 date-time, got {show(value)}")
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
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise fail(name, f"is not a valid date-time ({exc}), got {show(value)}") from None


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` (microseconds if any)."""
    u = moment.astimezone(UTC)
    base = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        base += f".{u.microsecond:06d}"
    return base + "Z"


# --------------------------------------------------------------------------- JSON objects


class _Bad(Exception):
    """Raised while freezing JSON data; collects the path while unwinding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


class FrozenObject(dict[str, Any]):
    """A JSON object that cannot be changed after the freeze walk built it.

    A dict, so cbor2 and json encode it as it is (no copy back to plain dicts before
    each encode); every method that would change it raises TypeError, as a
    ``MappingProxyType`` does. Copies (``dict(obj)``, ``obj.copy()``, ``obj | other``)
    are plain dicts, the caller's to change.
    """

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        raise _read_only()

    def __delitem__(self, key: str) -> NoReturn:
        raise _read_only()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        raise _read_only()

    def clear(self) -> NoReturn:
        raise _read_only()

    def pop(self, *args: Any) -> NoReturn:
        raise _read_only()

    def popitem(self) -> NoReturn:
        raise _read_only()

    def setdefault(self, *args: Any) -> NoReturn:
        raise _read_only()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _read_only()

    def __reduce__(self) -> tuple[type[FrozenObject], tuple[dict[str, Any]]]:
        # pickle and copy would otherwise rebuild it item by item through __setitem__.
        return (FrozenObject, (dict(self),))


#: FrozenObject's own writer, for the freeze walk that builds it.
_put = dict.__setitem__


def _read_only() -> TypeError:
    return TypeError("a message's JSON objects are read-only")


def _freeze(value: object, depth: int, isfinite: Any = math.isfinite) -> JSONValue:
    """Check one JSON value and return it immutable: the freeze walk.

    Objects become :class:`FrozenObject` copies, arrays tuples, subclasses of the scalar
    types (an IntEnum...) the plain type. Always a copy: a caller keeps its own dicts, and
    copying a decoder's costs little. Raises _Bad, with the path.

    Inside objects the common valid scalars (ASCII text, 64-bit integers, finite floats,
    booleans, null) are taken in the loop itself; anything else comes back
    here for the full check and its wording. A busy claim's metadata is two dozen such
    values, and a call each was most of the cost of decoding it.
    """
    t = type(value)
    if t is str:
        if not valid_text(value):  # type: ignore[arg-type]
            raise _Bad(f"must be valid Unicode text, got {show(value)}")
        return value
    if t is int:
        if not _MIN_INT <= value <= _MAX_INT:  # type: ignore[operator]
            raise _Bad(f"must fit in 64 bits, got {show(value)}")
        return value
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Bad(f"must be a finite number, got {value!r}")
        return value
    if t is bool or value is None:
        return value
    if t is dict or t is FrozenObject or t is MappingProxyType or isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
        # Copied whole first (at C speed); only nested objects and arrays, and scalars
        # that need a closer look, are put back, frozen.
        out = FrozenObject(value)  # type: ignore[call-overload]
        for key, item in out.items():
            if type(key) is not str or not (key.isascii() or valid_text(key)):
                bad = _Bad(
                    f"keys must be strings, got {show(key)}"
                    if type(key) is not str
                    else f"keys must be valid Unicode text, got {show(key)}"
                )
                bad.path.append(f".{key if type(key) is str else show(key)}")
                raise bad
            kind = type(item)
            if not (
                (kind is str and item.isascii())
                or (kind is int and _MIN_INT <= item <= _MAX_INT)
                or (kind is float and isfinite(item))
                or kind is bool
                or item is None
            ):
                try:
                    _put(out, key, _freeze(item, depth + 1))
                except _Bad as bad:
                    bad.path.append(f".{key}")
                    raise
        return out
    if (
        t is list
        or t is tuple
        or (isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray))
    ):
        if depth >= MAX_DEPTH:
            raise _Bad(f"is nested deeper than {MAX_DEPTH} levels")
        items = []
        for i, item in enumerate(value):  # type: ignore[arg-type]
            try:
                items.append(_freeze(item, depth + 1))
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return tuple(items)
    for plain in (str, bool, int, float):
        if isinstance(value, plain):
            return _freeze(plain(value), depth)
    raise _Bad(f"must hold only JSON values, got {t.__name__} {show(value)}")


def frozen_object(name: str, value: object) -> Mapping[str, JSONValue]:
    """Check ``value`` is a JSON object of JSON data; return it frozen. Raises FrameError
    naming the full path of a breach."""
    if not isinstance(value, Mapping):
        raise fail(name, f"must be an object, got {show(value)}")
    try:
        frozen: Mapping[str, JSONValue] = _freeze(value, 0)
    except _Bad as bad:
        raise fail(name + "".join(reversed(bad.path)), bad.message) from None
    return frozen
