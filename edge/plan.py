"""The beat plan: the actions waiting to fire and what became of each beat's actions.

Theory of operation
-------------------
At each beat start the runner asks the score for the actions of this beat and the next
(one beat of look-ahead) and hands them to :meth:`BeatPlan.plan`, with the guard's
admission: a beat is planned once, actions whose deadline has already passed are not
planned, what is admitted waits in ``pending`` (in firing order: time, then priority)
and what is shed is counted in the beat's :class:`BeatLedger`.

After every frame the follower's model may move (slew, tempo change): :meth:`retime`
re-derives the pending times from the score, and drops an action the score no longer
places in its beat. :meth:`pop_due` hands the actions out in time order. When the pulse
renumbers its beats, :meth:`renumber` carries the pending actions, the planned beats and
the ledgers over, so nothing planned under the old numbers is planned (and fired) again.

What an action's result means is one pure rule, :func:`outcome`: an action taken out
after its deadline (the end of its phase) is a *miss* and must not run; a dropped action
(rate limit, isolated, busy, bad action) did not run, and teaches the guard no duration; a
busy command device counts as a miss (its runs take longer than the score allows: load),
the other drops only as drops; a command handed to its launcher is *running*, and its
cost is learned from its end (done, killed: a miss, or not started: a failure), and so is
a python call handed to its worker (its ends: :data:`CALL_ENDS`). The
runner hands each outcome to :meth:`settle` (or :meth:`settle_run` for a command's end,
whose beat may have been reviewed already: then it counts in the next review) and feeds
the guard and the metrics as the outcome says.

Pure: plain values in and out, no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge.score import ScheduledAction

#: Ledgers and planned beats this far behind the reviewed beat are forgotten (jumps,
#: silence): they can no longer be reviewed.
KEEP_BEATS = 4


@dataclass
class BeatLedger:
    """What happened to one beat's actions, for its review."""

    planned: int = 0
    fired: int = 0
    missed: int = 0
    failed: int = 0
    late_ms: list[float] = field(default_factory=list)
    shed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0


class Fate(enum.Enum):
    """What became of an action (or of a command run, at its end)."""

    FIRED = "fired"  # done, its cost known now
    RUNNING = "running"  # a command handed to its launcher: its cost comes with its end
    ENDED = "ended"  # a command run ended in time
    FAILED = "failed"  # tried and failed (or a command could not start)
    DROPPED = "dropped"  # not applied: the device's rule or state refused it
    MISSED = "missed"  # too late (deadline passed, or a command killed at its deadline)


@dataclass(frozen=True, slots=True)
class Outcome:
    """An action's fate and what it teaches.

    ``reason`` names a drop or a miss (``"deadline_passed"``, ``"busy"``, ``"not_started"``,
    ``"killed"``...). ``miss`` counts for the guard's miss rate; ``learn`` says the measured
    duration teaches the guard's cost estimate (else the guard only counts the ``reason``);
    ``measured`` says the metrics record the action (as missed when the fate is MISSED).
    """

    fate: Fate
    reason: str | None = None
    miss: bool = False
    learn: bool = False
    measured: bool = True


#: The follow-ups by which the hardware reports a command run's end.
COMMAND_ENDS = frozenset({"command_done", "command_killed", "command_not_started"})
#: The follow-ups by which the hardware reports a python call's end (edge.hardware.pycalls).
CALL_ENDS = frozenset(
    {"call_done", "call_failed", "call_overran", "call_killed", "call_not_started"}
)
#: Every end that comes later, tagged, for the beat its action was fired in.
RUN_ENDS = COMMAND_ENDS | CALL_ENDS


def overdue(sa: ScheduledAction, now: float) -> bool:
    """Its phase is over at ``now``: switching now would be wrong, so it is a miss."""
    return now > sa.deadline


def outcome(
    do: str,
    *,
    ok: bool = True,
    dropped: str | None = None,
    overdue: bool = False,
    running: bool = False,
) -> Outcome:
    """What one result means: the miss and drop rules (see the theory of operation).

    ``do`` is the result's ``do`` (an action's, a command end's ``command_done``,
    ``command_killed``, ``command_not_started``, or a python call's end, :data:`CALL_ENDS`,
    which mean what a command's do; ``call_failed`` is a failure); ``ok`` and ``dropped``
    are as the hardware reported them; ``overdue`` says the action was due after its deadline (it is
    not applied, the rest is then ignored); ``running`` that a command was handed over.
    """
    if overdue:
        # It did not run, so it teaches the guard no duration.
        return Outcome(Fate.MISSED, "deadline_passed", miss=True)
    if do == "command_not_started":
        # A fault (missing program...), not load: counted, failed, nothing learned.
        return Outcome(Fate.FAILED, "not_started", measured=False)
    if do == "command_killed":
        # An overrun is a deadline miss, and teaches the guard what it really costs.
        return Outcome(Fate.MISSED, "killed", miss=True, learn=True)
    if do == "command_done" or do == "call_done":
        return Outcome(Fate.ENDED, learn=True)
    if do == "call_not_started":
        # Its worker died or was down: a fault, not load.
        return Outcome(Fate.FAILED, "not_started", measured=False)
    if do == "call_killed" or do == "call_overran":
        # Still running at its deadline (killed), or returned after it: a deadline miss.
        return Outcome(
            Fate.MISSED, "killed" if do == "call_killed" else "overran", miss=True, learn=True
        )
    if do == "call_failed":
        # The function raised or returned what a claim cannot carry: the beat failed.
        return Outcome(Fate.FAILED, "exception", learn=True)
    if dropped is not None:
        # Nothing ran, so no duration is learned (a ~0 s sample would pull the estimate
        # down just when the device struggles). A busy command device means earlier runs
        # are still going: commands take longer than the score allows, which is load, so
        # it counts as a miss (miss rate, backoff, decimation). A rate limit, an isolated
        # pin or a bad action is the device's rule or fault: counted only.
        return Outcome(Fate.DROPPED, dropped, miss=dropped == "busy")
    if not ok:
        return Outcome(Fate.FAILED, learn=True)
    if running:
        # Its cost is learned when it ends, from the hardware's own measure of that run.
        return Outcome(Fate.RUNNING, measured=False)
    return Outcome(Fate.FIRED, learn=True)


@dataclass(frozen=True, slots=True)
class RunTag:
    """What the runner hands the hardware with a command, echoed in the run's end: the
    action's name and its beat under the numbering in force when it was fired."""

    name: str
    beat_index: int
    numbering: int


class Admission(Protocol):
    """What the guard's ``admit`` hands back (``edge.guard.Admission`` is one)."""

    @property
    def admitted(self) -> Sequence[ScheduledAction]: ...

    @property
    def shed(self) -> Sequence[tuple[ScheduledAction, str]]: ...


def _order(sa: ScheduledAction) -> tuple[float, int]:
    return (sa.at, -sa.action.priority)


class BeatPlan:
    """The pending actions and the per-beat ledgers (see the theory of operation).

    ``pending`` is in firing order; ``planned`` the beats planned so far; ``ledgers`` the
    beats not yet reviewed; ``last_reviewed`` the last beat :meth:`review` closed.
    """

    def __init__(self) -> None:
        self.pending: list[ScheduledAction] = []
        self.planned: set[int] = set()
        self.ledgers: dict[int, BeatLedger] = {}
        self.last_reviewed: int | None = None
        # The sum of every renumbering offset so far: a tag fired under an older numbering
        # is carried over to today's by the difference.
        self._numbering = 0

    def ledger(self, beat: int) -> BeatLedger:
        return self.ledgers.setdefault(beat, BeatLedger())

    # ------------------------------------------------------------------ planning

    def plan(
        self,
        beat: int,
        due: Callable[[int], Iterable[ScheduledAction]],
        now: float,
        admit: Callable[[list[ScheduledAction]], Admission],
    ) -> list[tuple[ScheduledAction, str]]:
        """Plan ``beat`` once: of ``due(beat)`` (the score's actions for it, asked only
        if the beat is not planned yet), those whose deadline is still ahead of ``now``
        go through ``admit`` (the guard); the admitted wait in ``pending``. Returns what
        was shed (nothing if the beat was planned already or nothing is due)."""
        if beat in self.planned:
            return []
        self.planned.add(beat)
        ledger = self.ledger(beat)
        candidates = [sa for sa in due(beat) if sa.deadline > now]
        if not candidates:
            return []
        admission = admit(candidates)
        ledger.planned += len(admission.admitted)
        for _, reason in admission.shed:
            ledger.shed[reason] += 1
        self.pending.extend(admission.admitted)
        self.pending.sort(key=_order)
        return list(admission.shed)

    def retime(self, due: Callable[[int], Iterable[ScheduledAction]]) -> None:
        """Re-derive pending times from ``due`` (the score on the follower's current
        model): an action the score no longer places in its beat (the bar was learnt, the
        beat was renumbered) is dropped; the rest follow the latest model."""
        if not self.pending:
            return
        fresh: dict[tuple[int, int], ScheduledAction] = {}
        for beat in {sa.beat_index for sa in self.pending}:
            for sa in due(beat):
                fresh[(beat, sa.rule)] = sa
        retimed = [
            dataclasses.replace(sa, at=new.at, deadline=new.deadline)
            for sa in self.pending
            if (new := fresh.get((sa.beat_index, sa.rule))) is not None
        ]
        retimed.sort(key=_order)
        self.pending = retimed

    def head(self) -> ScheduledAction | None:
        """The next pending action, or None."""
        return self.pending[0] if self.pending else None

    def next_at(self) -> float | None:
        """When the next pending action is due, or None."""
        return self.pending[0].at if self.pending else None

    def pop_due(self, now: float) -> ScheduledAction | None:
        """Take the next action due by ``now`` (in time order), or None if none is."""
        if self.pending and self.pending[0].at <= now:
            return self.pending.pop(0)
        return None

    def take_overdue(self, through_beat: int, now: float) -> list[ScheduledAction]:
        """Take out the pending actions of beats up to ``through_beat`` whose deadline has
        passed by ``now`` (in firing order): misses, to settle before that beat's review."""
        late: list[ScheduledAction] = []
        keep: list[ScheduledAction] = []
        for sa in self.pending:
            (late if sa.beat_index <= through_beat and overdue(sa, now) else keep).append(sa)
        self.pending = keep
        return late

    def cancel(self, keep: Collection[str] = ()) -> None:
        """Drop every pending action but those of the devices in ``keep``; the beats stay
        planned (a safe state)."""
        self.pending = [sa for sa in self.pending if sa.action.device in keep]

    def replan(self) -> None:
        """Drop every pending action and let every beat be planned anew (a reload)."""
        self.pending.clear()
        self.planned.clear()

    def renumber(self, offset: int) -> None:
        """Carry what is planned over to the pulse's new numbering (``offset`` = new - old),
        so a beat already planned (or half fired) under its old number is not planned and
        fired again."""
        self.pending = [
            dataclasses.replace(sa, beat_index=sa.beat_index + offset) for sa in self.pending
        ]
        self.planned = {b + offset for b in self.planned}
        self.ledgers = {b + offset: ledger for b, ledger in self.ledgers.items()}
        self._numbering += offset

    # ------------------------------------------------------------------ outcomes

    def tag(self, sa: ScheduledAction) -> RunTag:
        """The tag to hand the hardware with ``sa``, for :meth:`settle_run`."""
        return RunTag(sa.action.name, sa.beat_index, self._numbering)

    def beat_of(self, tag: RunTag) -> int:
        """The beat ``tag`` was fired in, under today's numbering."""
        return tag.beat_index + self._numbering - tag.numbering

    def open_beat(self, beat: int) -> int:
        """``beat``, or the next one to be reviewed if its review has passed: an outcome
        that lands late (a command's end) goes into the next review, not nowhere."""
        if self.last_reviewed is not None and beat <= self.last_reviewed:
            return self.last_reviewed + 1
        return beat

    def settle(
        self, beat: int, result: Outcome, late_s: float = 0.0, busy_s: float = 0.0
    ) -> BeatLedger:
        """Count ``result`` in ``beat``'s ledger (``late_s``: how late it started;
        ``busy_s``: how long applying it took) and return the ledger."""
        ledger = self.ledger(beat)
        ledger.busy_s += busy_s
        fate = result.fate
        if fate is Fate.FIRED or fate is Fate.RUNNING:
            ledger.fired += 1
            ledger.late_ms.append(late_s * 1000.0)
        elif fate is Fate.FAILED:
            ledger.failed += 1
        elif fate is Fate.MISSED:
            ledger.missed += 1
        elif fate is Fate.DROPPED and result.reason is not None:
            ledger.dropped[result.reason] += 1
        return ledger

    def settle_run(self, tag: RunTag, result: Outcome) -> int:
        """Count a command run's end in the open beat it belongs to; returns that beat."""
        beat = self.open_beat(self.beat_of(tag))
        if result.fate is not Fate.ENDED:  # an end in time changes no count
            self.settle(beat, result)
        return beat

    def review(self, beat: int) -> BeatLedger:
        """Close ``beat`` for its review: its ledger (empty if it had none), and forget
        the ledgers and planned beats that can no longer be reviewed."""
        ledger = self.ledgers.pop(beat, BeatLedger())
        self.last_reviewed = beat
        for old in [b for b in self.ledgers if b < beat - KEEP_BEATS]:
            del self.ledgers[old]
        self.planned = {b for b in self.planned if b >= beat - KEEP_BEATS}
        return ledger
