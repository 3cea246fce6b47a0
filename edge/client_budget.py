"""Beat budgets for :mod:`edge.client`: the deadline a function runs under, and how it went.

A budget is ``n`` beats at the tempo when it starts, as a local monotonic deadline. A plain
function is never interrupted (Python cannot stop a thread): it may poll
:attr:`Budget.expired` or call :meth:`Budget.check`, which raises :class:`BudgetExpired`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from edge.clock import Clock
from edge.errors import EdgeError

T = TypeVar("T")


class BudgetExpired(EdgeError, TimeoutError):
    """Raised by :meth:`Budget.check` once the budget's deadline has passed."""


@dataclass(frozen=True, slots=True)
class Budget:
    """The deadline a function runs under: ``beats`` beats, ``budget_s`` local seconds at
    the tempo when it started, ending at local monotonic ``deadline``."""

    beats: float
    budget_s: float
    started: float
    deadline: float
    clock: Clock

    @property
    def remaining_s(self) -> float:
        return self.deadline - self.clock.monotonic()

    @property
    def expired(self) -> bool:
        return self.clock.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise :class:`BudgetExpired` if the deadline has passed (a cooperative cancel)."""
        if self.expired:
            late = (self.clock.monotonic() - self.deadline) * 1000.0
            raise BudgetExpired(
                f"the budget of {self.beats:g} beats ({self.budget_s * 1000:.1f} ms) ran out "
                f"{late:.1f} ms ago"
            )


@dataclass(frozen=True, slots=True)
class BudgetResult(Generic[T]):
    """How a budgeted run went. ``finished``: ``fn`` returned (``value`` is what it
    returned); ``cancelled``: it was stopped at (or after) its deadline, by the coroutine
    form's cancel or by :class:`BudgetExpired`; ``overran``: it ran past its deadline, by
    ``overrun_s``."""

    value: T | None
    finished: bool
    cancelled: bool
    overran: bool
    elapsed_s: float
    budget_s: float
    beats: float

    @property
    def overrun_s(self) -> float:
        return max(0.0, self.elapsed_s - self.budget_s)


@dataclass
class BudgetCounts:
    """How many budgeted runs a client made, and how they ended (``metadata.client.budgets``)."""

    run: int = 0
    finished: int = 0
    overran: int = 0
    cancelled: int = 0
