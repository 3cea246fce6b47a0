"""The guard's values: a machine sample, the levels, verdicts and reason codes, and the
shapes of the candidates it admits (see the package doc)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the machine, as ``edge.probe.Probe`` takes it.

    Every reading is optional: ``None`` means missing (no such sensor, unreadable, or not
    read by a light sample), never zero. Units: percentages 0..100 (``process_cpu_percent``
    is of one CPU, as ``top`` shows it, so it may exceed 100 on several cores), MiB,
    degrees Celsius. ``throttled`` is the raw firmware bit field (Raspberry Pi
    ``get_throttled``). ``at`` is local monotonic seconds; ``cost_s`` what taking the
    sample cost.
    """

    at: float
    cpu_percent: float | None
    process_cpu_percent: float | None
    process_rss_mb: float | None
    memory_percent: float | None
    swap_percent: float | None
    load1: float | None
    temperature_c: float | None
    throttled: int | None
    disk_free_mb: float | None
    cost_s: float


class Level(enum.Enum):
    """How much work the guard lets through, from all of it to none."""

    FULL = "full"
    ESSENTIAL = "essential_only"
    SHED = "shed"


_SEVERITY: Mapping[Level, int] = MappingProxyType(
    {Level.FULL: 0, Level.ESSENTIAL: 1, Level.SHED: 2}
)
# Recovery is one rung at a time: the transition table for getting better.
_STEP_DOWN: Mapping[Level, Level] = MappingProxyType(
    {Level.SHED: Level.ESSENTIAL, Level.ESSENTIAL: Level.FULL, Level.FULL: Level.FULL}
)

#: Reason codes of a verdict, besides the condition names in the module docstring.
REASON_OK = "ok"
REASON_RECOVERING = "recovering"
REASON_DISABLED = "disabled"

#: Reason codes of a shed candidate.
SHED_LEVEL = "level_shed"
SHED_ESSENTIAL_ONLY = "essential_only"
SHED_DECIMATED = "decimated"
SHED_OVER_BUDGET = "over_budget"
SHED_TOO_LATE = "too_late"
SHED_QUEUE_FULL = "queue_full"
SHED_INVALID = "invalid_cost"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer for a beat: a level and the reason code that set it."""

    level: Level
    reason: str


class ActionLike(Protocol):
    """What the guard reads of an action (``edge.score.Action`` matches)."""

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def essential(self) -> bool: ...
    @property
    def cost_s(self) -> float: ...


class Candidate(Protocol):
    """An action due in a beat (``edge.score.ScheduledAction`` matches)."""

    @property
    def beat_index(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def action(self) -> ActionLike: ...


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Admission(Generic[C]):
    """The plan for one beat: what runs (in firing order) and what was shed, with why.

    Generic in the candidate type, so ``admit`` given ``ScheduledAction``s hands back
    ``ScheduledAction``s (the same objects) with no cast.
    """

    admitted: tuple[C, ...]
    shed: tuple[tuple[C, str], ...]
