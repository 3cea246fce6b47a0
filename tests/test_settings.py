"""The one settings reader: a table of fields in, a frozen dataclass and every problem out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from edge.errors import ConfigProblems
from edge.settings import (
    Field,
    Section,
    check_order,
    choice,
    flag,
    integer,
    number,
    pathname,
    text,
)


@dataclass(frozen=True, slots=True)
class Knobs:
    ratio: float = 0.5
    level: float = 50.0
    floor: float = 1.0
    count: int = 4
    enabled: bool = True
    name: str | None = None
    spool: Path | None = None
    mode: str = "every"
    trust: bool | None = None
    expiry_s: int | None = 60


KNOBS = Section(
    Knobs,
    (
        number("ratio", 0.0, 1.0, low_inclusive=False),
        number("level", 0, 100),
        number("floor", 0.05),
        integer("count", 1, 1000),
        flag("enabled"),
        text("name"),
        pathname("spool"),
        choice("mode", "every", "on_change"),
        choice("trust", True, False, "auto", convert=lambda v: None if v == "auto" else v),
        integer("expiry_s", 0, convert=lambda s: s or None),
    ),
)


def read(raw: object, where: str = "knobs") -> tuple[Knobs, list[str]]:
    problems = ConfigProblems()
    got = KNOBS.read(raw, problems, where)
    return got, problems.items


def test_an_empty_table_gives_the_defaults() -> None:
    assert read({}) == (Knobs(), [])


def test_every_kind_reads_its_value() -> None:
    got, problems = read(
        {
            "ratio": 1,
            "level": 12.5,
            "floor": 7,
            "count": 9,
            "enabled": False,
            "name": "pi",
            "spool": "var/spool",
            "mode": "on_change",
            "trust": "auto",
            "expiry_s": 0,
        }
    )
    assert problems == []
    assert got == Knobs(1.0, 12.5, 7.0, 9, False, "pi", Path("var/spool"), "on_change", None, None)
    assert isinstance(got.ratio, float) and isinstance(got.floor, float)
    assert isinstance(got.count, int) and isinstance(got.spool, Path)
    assert read({"trust": True})[0].trust is True and read({"expiry_s": 5})[0].expiry_s == 5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("level", 150, "must be a number between 0 and 100, got 150"),
        ("level", "high", "must be a number between 0 and 100, got 'high'"),
        ("ratio", 0, "must be a number greater than 0 and at most 1, got 0"),
        ("floor", 0.01, "must be a finite number at least 0.05, got 0.01"),
        ("count", 0, "must be an integer between 1 and 1000, got 0"),
        ("count", 2.0, "must be an integer between 1 and 1000, got 2.0"),
        ("enabled", "yes", "must be true or false, got 'yes'"),
        ("enabled", 1, "must be true or false, got 1"),
        ("name", "", "must be a non-empty string, got ''"),
        ("spool", 3, "must be a non-empty path, got 3"),
        ("mode", "sometimes", 'must be one of "every", "on_change", got \'sometimes\''),
        ("trust", 1, 'must be one of true, false, "auto", got 1'),
        ("expiry_s", -1, "must be an integer at least 0, got -1"),
    ],
)
def test_one_wording_names_the_full_key(key: str, value: object, message: str) -> None:
    got, problems = read({key: value}, "devices.pi.knobs")
    assert problems == [f"devices.pi.knobs.{key}: {message}"]
    assert got == Knobs()  # the bad key kept its default


@pytest.mark.parametrize("key", ["ratio", "level", "floor"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_for_every_float(key: str, value: float) -> None:
    got, problems = read({key: value})
    assert len(problems) == 1 and problems[0].startswith(f"knobs.{key}: must be a")
    assert getattr(got, key) == getattr(Knobs(), key)


def test_an_unbounded_float_still_refuses_infinity() -> None:
    problems = ConfigProblems()
    assert Section(Knobs, (number("floor"),)).read({"floor": -1e300}, problems, "k").floor == -1e300
    Section(Knobs, (number("floor"),)).read({"floor": math.inf}, problems, "k")
    assert problems.items == ["k.floor: must be a finite number, got inf"]


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number(value: bool) -> None:
    _, problems = read({"count": value, "level": value, "expiry_s": value})
    assert [p.split(":")[0] for p in problems] == ["knobs.count", "knobs.level", "knobs.expiry_s"]


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        (number("level", 0, 100), [0, 100, 50.5], [-0.001, 100.001]),
        (number("level", 0, 100, low_inclusive=False), [1e-9, 100], [0, 0.0]),
        (number("level", 0, 100, high_inclusive=False), [0, 99.999], [100, 100.0]),
        (
            number("level", 0, 100, low_inclusive=False, high_inclusive=False),
            [0.5, 99.5],
            [0, 100],
        ),
        (number("level", None, 10), [-1e9, 10], [10.5]),
        (integer("count", 2, 5), [2, 5], [1, 6]),
    ],
)
def test_bounds_inclusive_and_exclusive(field: Field, good: list[float], bad: list[float]) -> None:
    for value in good:
        assert field.accept(value)[0], value
    for value in bad:
        assert field.accept(value) == (False, None), value


@pytest.mark.parametrize(
    ("field", "expects"),
    [
        (number("x", 0, 1, high_inclusive=False), "a number at least 0 and less than 1"),
        (
            number("x", 0, 1, low_inclusive=False, high_inclusive=False),
            "a number greater than 0 and less than 1",
        ),
        (number("x", low=0, low_inclusive=False), "a finite number greater than 0"),
        (number("x", high=86_400), "a finite number at most 86400"),
        (number("x"), "a finite number"),
        (integer("x", 0, 0xFFFFFFFF), "an integer between 0 and 4294967295"),
        (integer("x"), "an integer"),
        (number("x", 0.001, 1e7), "a number between 0.001 and 10000000"),
    ],
)
def test_the_range_is_said_as_a_person_writes_it(field: Field, expects: str) -> None:
    assert field.expects == expects


def test_every_problem_is_listed_at_once_in_table_order() -> None:
    got, problems = read(
        {
            "level": -5,
            "typo": 1,
            "count": "many",
            "enabled": None,
            "mode": "often",
            "ratio": math.nan,
            "name": 7,
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "knobs.level",
        "knobs.typo",
        "knobs.count",
        "knobs.enabled",
        "knobs.mode",
        "knobs.ratio",
        "knobs.name",
    ]
    assert got == Knobs()


def test_an_unknown_key_lists_the_known_ones() -> None:
    _, problems = read({"levle": 3})
    assert problems == [
        "knobs.levle: is not a known key (known: count, enabled, expiry_s, floor, level, "
        "mode, name, ratio, spool, trust)"
    ]


def test_keys_the_caller_reads_itself_are_not_unknown() -> None:
    section = Section(Knobs, (number("level", 0, 100),), also_known=("name",))
    problems = ConfigProblems()
    got = section.read({"name": "x", "level": 3}, problems, "k", name="given")
    assert problems.items == [] and got == Knobs(level=3.0, name="given")
    assert section.known == {"level", "name"}


def test_a_section_that_is_not_a_table() -> None:
    got, problems = read(["level"], "knobs")
    assert got == Knobs() and problems == ["knobs: must be a table, got ['level']"]


def test_a_long_value_is_cut_short() -> None:
    _, [problem] = read({"name": ["x" * 200]})
    assert problem.endswith("...") and len(problem) < 120


def test_the_table_is_checked_when_it_is_made() -> None:
    with pytest.raises(ValueError, match="no field 'nope'"):
        Section(Knobs, (number("nope"),))
    with pytest.raises(ValueError, match="twice"):
        Section(Knobs, (number("level"), number("level")))
    with pytest.raises(ValueError, match="needs its choices"):
        choice("mode")
    with pytest.raises(ValueError, match="only numbers have bounds"):
        Field("name", "str", low=1)
    with pytest.raises(TypeError, match="not a dataclass"):
        Section(dict, ())

    @dataclass(frozen=True)
    class Required:
        where: str

    with pytest.raises(ValueError, match="no default"):
        Section(Required, (text("where"),))
    problems = ConfigProblems()
    optional = Section(Required, (pathname("where", default=None),))
    assert optional.read({}, problems, "r").where is None


@dataclass(frozen=True)
class Band:
    low: float = 1.0
    high: float = 2.0


@pytest.mark.parametrize(
    ("low", "high", "strict", "blame", "problem"),
    [
        (1.0, 2.0, True, "lower", None),
        (2.0, 2.0, False, "lower", None),
        (2.0, 2.0, True, "lower", "b.low: must be below high (2), got 2"),
        (3.0, 2.0, False, "lower", "b.low: must not be above high (2), got 3"),
        (2.0, 2.0, True, "upper", "b.high: must be above low (2), got 2"),
        (3.0, 2.5, False, "upper", "b.high: must not be below low (3), got 2.5"),
    ],
)
def test_check_order_words_a_pair_alike(
    low: float, high: float, strict: bool, blame: Literal["lower", "upper"], problem: str | None
) -> None:
    problems = ConfigProblems()
    ok = check_order(Band(low, high), "low", "high", problems, "b", strict=strict, blame=blame)
    assert ok is (problem is None)
    assert problems.items == ([] if problem is None else [problem])
