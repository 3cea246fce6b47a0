"""Firing: each due action of the beat plan handed to the hardware at its time, or missed.

The runner calls :meth:`Firing.fire_due` at every wake-up (first thing after a spin): an
action whose time has come is applied (``Hardware.apply``) unless its deadline (the end of
its phase) has already passed, which makes it a miss, not a late switch
(``edge.plan.outcome``); either way its outcome is settled (``edge.settle``). The device of
the next action is touched ``WARM_S`` ahead, so its first write is not cold; a python
device's calls are handed to its worker ahead of their time (:meth:`Firing.prepare_calls`).

With ``--trace`` every action's fate (fired, missed, shed) becomes a row (``edge.trace``)
with the follower's error bound and sync state at that moment; the rows are written at each
beat's review and on shutdown (:meth:`Firing.flush_trace`).

The hardware, the score and the guard are the runner's and a reload replaces them, so each
call is handed the ones in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import IO

from edge.clock import Clock
from edge.guard import Guard
from edge.hardware import Hardware
from edge.plan import BeatPlan, outcome, overdue
from edge.score import ScheduledAction, Score
from edge.settle import Settler
from edge.sync import BeatFollower
from edge.trace import TraceRow, write_rows

#: Touch the hardware path this long before an action so the first write is not cold.
WARM_S = 0.004


@dataclass
class Firing:
    """Fires the plan's due actions on the hardware and traces every action's fate."""

    plan: BeatPlan
    settler: Settler
    follower: BeatFollower
    clock: Clock
    #: Where the trace rows go (None: no trace).
    trace: IO[str] | None = None
    #: When the last action was handed to the hardware (-inf: none yet).
    last_fired_at: float = -math.inf
    _warmed: set[tuple[int, int]] = field(default_factory=set)
    _rows: list[TraceRow] = field(default_factory=list)

    def fire_due(self, now: float, hardware: Hardware, score: Score, guard: Guard) -> None:
        """Fire every pending action due by ``now`` (warming the next one's device)."""
        while (head := self.plan.head()) is not None:
            key = (head.beat_index, head.rule)
            if head.at - now <= WARM_S and key not in self._warmed:
                self._warmed.add(key)
                hardware.warm([head.action.device])
            sa = self.plan.pop_due(now)
            if sa is None:
                return
            self._warmed.discard(key)
            self._fire(sa, hardware, score, guard)
            now = self.clock.monotonic()

    def prepare_calls(self, hardware: Hardware, score: Score) -> None:
        """Hand the python devices' workers every call the plan holds, ahead of its time
        (edge.hardware.pycalls): sent once, re-sent when re-timed, cancelled when dropped."""
        if hardware.has_calls:
            calls = [
                score.call_job(sa, self.follower)
                for sa in self.plan.pending
                if sa.action.do == "call"
            ]
            hardware.prepare_calls(calls, self.clock.monotonic())

    def miss(self, sa: ScheduledAction, at: float, guard: Guard) -> None:
        """``sa`` came due at ``at``, after its deadline: a miss, not applied."""
        missed = outcome(sa.action.do, overdue=True)
        self.settler.settle(guard, sa, missed, 0.0, at - sa.at, at)
        if self.trace is not None:
            bound, state = self._sync_now()
            self._rows.append(TraceRow.missed_at(sa, at, bound_ms=bound, sync_state=state))

    def shed(self, sa: ScheduledAction, reason: str) -> None:
        """The guard shed ``sa`` for ``reason``: a trace row (the plan counts it)."""
        if self.trace is not None:
            bound, state = self._sync_now()
            self._rows.append(TraceRow.shed_by(sa, reason, bound_ms=bound, sync_state=state))

    def renumbered(self) -> None:
        """The pulse renumbered its beats: what was warmed is forgotten."""
        self._warmed.clear()

    def flush_trace(self) -> None:
        """Write the rows gathered so far (and forget them)."""
        if self.trace is not None:
            write_rows(self._rows, self.trace)
        self._rows.clear()

    def _fire(self, sa: ScheduledAction, hardware: Hardware, score: Score, guard: Guard) -> None:
        before = self.clock.monotonic()
        if overdue(sa, before):
            self.miss(sa, before, guard)
            return
        call = score.call_job(sa, self.follower) if sa.action.do == "call" else None
        command = sa.action.do == "command" or call is not None
        # A command's (or a call's) end comes later, tagged, so it is counted in the beat it
        # belongs to.
        tag = self.plan.tag(sa) if command else None
        result = hardware.apply(sa.action, before, tag=tag, call=call)
        after = self.clock.monotonic()
        self.last_fired_at = after
        fate = outcome(
            result.do,
            ok=result.ok,
            dropped=result.dropped,
            running=command and result.run is not None,
        )
        self.settler.settle(guard, sa, fate, after - before, before - sa.at, after)
        if self.trace is not None:
            bound, state = self._sync_now()
            self._rows.append(
                TraceRow.applied(
                    sa,
                    before,
                    after - before,
                    result.ok,
                    result.dropped,
                    bound_ms=bound,
                    sync_state=state,
                )
            )

    def _sync_now(self) -> tuple[float, str]:
        """The follower's error bound (ms) and sync state, for a trace row."""
        return self.follower.error_bound_s * 1000.0, self.follower.state.value
