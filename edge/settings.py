"""Reading one TOML section into its frozen dataclass: a table of fields, one wording.

A section declares its keys once, as :class:`Field` rows (kind, bounds, whether each bound
is inclusive, default), and :class:`Section` reads a TOML table into the section's frozen
dataclass. Every problem goes to a :class:`~edge.errors.ConfigProblems`, all of them in one
pass, each naming the full key and saying what the key must be and what it got::

    guard.cpu_enter: must be a number between 0 and 100, got 150
    outbox.max_bytes: must be an integer at least 1024, got 'big'
    status.mode: must be one of "every", "on_change", got 'sometimes'
    guard.cpu_exitt: is not a known key (known: backoff_factor, ...)

The wording depends only on the field, never on what was wrong, so a wrong type and a value
out of range read alike. A key that is bad keeps its default, so the result is always
usable. Rules every section shares:

* ``float`` keys take TOML integers and floats (stored as ``float``), never booleans, and
  only finite values: ``nan`` and ``inf`` are refused even where no bound is given.
* ``int`` keys take TOML integers only: not ``2.0``, and not ``true`` (Python's ``bool``
  is an ``int``; a config's is not).
* Keys the table does not know are problems, so a typo cannot fall back to a default.

Checks that tie two keys together (an exit threshold below its enter threshold) stay with
the section; :func:`check_order` words them alike.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from edge.errors import ConfigProblems

Kind = Literal["float", "int", "bool", "str", "path", "choice"]
T = TypeVar("T")


class _FromClass:
    """Marks a field whose default is the dataclass's own."""

    def __repr__(self) -> str:
        return "<the dataclass default>"


FROM_CLASS: Any = _FromClass()


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One key of a section: what it takes, and what the reader stores.

    ``low`` / ``high`` bound ``float`` and ``int`` keys (``None`` = unbounded on that side);
    ``low_inclusive`` / ``high_inclusive`` say whether the bound itself is allowed.
    ``choices`` are the values a ``choice`` key takes, compared with their type (``1`` is
    not ``true``). ``convert`` turns an accepted TOML value into the stored one (``"auto"``
    into ``None``, say); the default is stored as it is. ``default`` is the dataclass's own
    unless given here.
    """

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[object, ...] = ()
    convert: Callable[[Any], object] | None = None
    default: Any = FROM_CLASS

    def __post_init__(self) -> None:
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"{self.name}: a choice needs its choices")
        if self.kind not in ("float", "int") and (self.low is not None or self.high is not None):
            raise ValueError(f"{self.name}: only numbers have bounds")

    @property
    def expects(self) -> str:
        """What the key must be, as the problem says it: ``a number between 0 and 100``."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a non-empty string"
        if self.kind == "path":
            return "a non-empty path"
        if self.kind == "choice":
            return "one of " + ", ".join(_toml(c) for c in self.choices)
        noun = "an integer" if self.kind == "int" else "a number"
        if self.kind == "float" and (self.low is None or self.high is None):
            noun = "a finite number"  # with both bounds, finite goes without saying
        scope = self._range()
        return f"{noun} {scope}" if scope else noun

    def _range(self) -> str:
        low, high = self.low, self.high
        low_word = "at least" if self.low_inclusive else "greater than"
        high_word = "at most" if self.high_inclusive else "less than"
        if low is not None and high is not None:
            if self.low_inclusive and self.high_inclusive:
                return f"between {_number(low)} and {_number(high)}"
            return f"{low_word} {_number(low)} and {high_word} {_number(high)}"
        if low is not None:
            return f"{low_word} {_number(low)}"
        if high is not None:
            return f"{high_word} {_number(high)}"
        return ""

    def accept(self, value: object) -> tuple[bool, object]:
        """``(True, stored value)`` if ``value`` is good for this key, else ``(False, None)``."""
        ok = self._fits(value)
        if not ok:
            return False, None
        if self.kind == "float":
            assert isinstance(value, int | float)  # _fits saw to it
            value = float(value)
        elif self.kind == "path":
            value = Path(str(value))
        return True, value if self.convert is None else self.convert(value)

    def _fits(self, value: object) -> bool:
        kind = self.kind
        if kind == "bool":
            return isinstance(value, bool)
        if kind in ("str", "path"):
            return isinstance(value, str) and bool(value)
        if kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "int" and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        low, high = self.low, self.high
        if low is not None and (value < low or (value == low and not self.low_inclusive)):
            return False
        return high is None or not (value > high or (value == high and not self.high_inclusive))


def _number(value: float) -> str:
    """A bound as a person writes it: ``100``, not ``100.0`` or ``1e+02``."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _toml(value: object) -> str:
    """A choice as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _show(value: object) -> str:
    """The offending value in a problem as TOML writes it (``true``, not ``True``; a table
    as a table), cut short so a pasted blob stays readable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        text = "a table {" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, dt.date | dt.time):  # TOML's own dates and times
        text = f"the {type(value).__name__} {value.isoformat()}"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Short makers for the tables, so each key reads as one line.


def number(
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Field:
    """A finite ``float`` key within the bounds given."""
    return Field(name, "float", low, high, low_inclusive, high_inclusive)


def integer(
    name: str,
    low: int | None = None,
    high: int | None = None,
    *,
    convert: Callable[[Any], object] | None = None,
) -> Field:
    """An ``int`` key within ``[low, high]``."""
    return Field(name, "int", low, high, convert=convert)


def flag(name: str) -> Field:
    """A ``bool`` key."""
    return Field(name, "bool")


def text(name: str) -> Field:
    """A non-empty string key."""
    return Field(name, "str")


def pathname(name: str, default: object = FROM_CLASS) -> Field:
    """A non-empty string key stored as a ``pathlib.Path`` (not resolved, not checked)."""
    return Field(name, "path", default=default)


def choice(name: str, *choices: object, convert: Callable[[Any], object] | None = None) -> Field:
    """A key that takes one of ``choices``."""
    return Field(name, "choice", choices=tuple(choices), convert=convert)


class Section(Generic[T]):
    """A TOML section read into the frozen dataclass ``cls`` by a table of fields.

    ``fields`` name fields of ``cls``; each needs a default (the dataclass's, or its own).
    Fields of ``cls`` left out of the table are handed to :meth:`read` by the caller (a
    value the section checks its own way, or one derived from others). ``also_known``
    names keys of the TOML table that the caller reads itself, so they are not reported
    as unknown.
    """

    def __init__(
        self, cls: type[T], fields: Sequence[Field], *, also_known: Iterable[str] = ()
    ) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        own = {f.name: f for f in dataclasses.fields(cls)}
        self._make: Callable[..., T] = cls
        self._fields: dict[str, Field] = {}
        self._defaults: dict[str, object] = {}
        for spec in fields:
            if spec.name not in own:
                raise ValueError(f"{cls.__name__} has no field {spec.name!r}")
            if spec.name in self._fields:
                raise ValueError(f"{spec.name!r} is in the table twice")
            default = spec.default
            if default is FROM_CLASS:
                default = own[spec.name].default
                if default is dataclasses.MISSING:
                    raise ValueError(f"{cls.__name__}.{spec.name} has no default to fall back to")
            self._fields[spec.name] = spec
            self._defaults[spec.name] = default
        self.known: frozenset[str] = frozenset(self._fields) | frozenset(also_known)

    @property
    def fields(self) -> Mapping[str, Field]:
        """The table, by key."""
        return dict(self._fields)

    def read(self, raw: object, problems: ConfigProblems, where: str, **given: object) -> T:
        """Read the TOML table ``raw`` (the section at ``where``) into the dataclass.

        ``given`` supplies the dataclass fields the table leaves out. Every problem (not a
        table, unknown key, wrong type, out of range) is added to ``problems``; a bad key
        keeps its default. Never raises for bad input.
        """
        values = dict(self._defaults)
        if not isinstance(raw, Mapping):
            problems.add(where, f"must be a table, got {_show(raw)}")
            return self._make(**values, **given)
        for key, value in raw.items():
            spec = self._fields.get(key)
            if spec is None:
                if key not in self.known:
                    known = ", ".join(sorted(self.known))
                    problems.add(f"{where}.{key}", f"is not a known key (known: {known})")
                continue
            ok, stored = spec.accept(value)
            if ok:
                values[key] = stored
            else:
                problems.add(f"{where}.{key}", f"must be {spec.expects}, got {_show(value)}")
        return self._make(**values, **given)


def check_order(
    config: object,
    lower: str,
    upper: str,
    problems: ConfigProblems,
    where: str,
    *,
    strict: bool,
    blame: Literal["lower", "upper"],
) -> bool:
    """Check that ``config.lower`` is below (``strict``) or not above ``config.upper``.

    A problem is added at the key ``blame`` names, worded from that key's side
    (``guard.cpu_exit: must be below cpu_enter (85), got 90``). Returns whether the order
    holds; what to fall back to is the section's choice.
    """
    low, high = getattr(config, lower), getattr(config, upper)
    if low < high or (low == high and not strict):
        return True
    if blame == "lower":
        rule = "must be below" if strict else "must not be above"
        problems.add(f"{where}.{lower}", f"{rule} {upper} ({_number(high)}), got {_number(low)}")
    else:
        rule = "must be above" if strict else "must not be below"
        problems.add(f"{where}.{upper}", f"{rule} {lower} ({_number(low)}), got {_number(high)}")
    return False
