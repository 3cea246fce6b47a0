"""Settling actions: what became of each one, counted and taught to the guard and metrics.

Every fired, missed, dropped or ended action has one :class:`edge.plan.Outcome`; this is
where it is written down: in its beat's ledger (``BeatPlan.settle``, or ``settle_run`` for
a command's later end, matched by the tag the hardware echoes), in the runner's counters,
in the guard's estimates (or its drop counts) and in the metrics.
"""

from __future__ import annotations

import logging
from collections import deque

from edge.counters import Counters
from edge.guard import Guard
from edge.hardware import ActionResult
from edge.metrics import Metrics
from edge.plan import CALL_ENDS, RUN_ENDS, BeatPlan, Fate, Outcome, RunTag, outcome
from edge.score import ScheduledAction

log = logging.getLogger(__name__)


class Settler:
    """Writes each action's outcome to the plan, the counters, the guard and the metrics."""

    def __init__(self, plan: BeatPlan, counters: Counters, metrics: Metrics) -> None:
        self.plan = plan
        self.counters = counters
        self.metrics = metrics
        #: How late the last fired actions started (ms), for the demo view.
        self.recent_late_ms: deque[float] = deque(maxlen=256)

    def settle(
        self,
        guard: Guard,
        sa: ScheduledAction,
        fate: Outcome,
        duration: float,
        late_s: float,
        at: float,
    ) -> None:
        """Count what became of ``sa`` and teach ``guard`` and the metrics, as ``fate``
        says (``duration``: how long applying it took; ``late_s``: how late it started)."""
        self.plan.settle(sa.beat_index, fate, late_s, duration)
        if fate.fate is Fate.FIRED or fate.fate is Fate.RUNNING:
            self.counters.fired += 1
            self.recent_late_ms.append(late_s * 1000.0)
        self._learn(guard, sa.action.name, fate, duration, late_s, at)

    def followup(self, guard: Guard, result: ActionResult) -> None:
        """A result of the hardware's own follow-ups (a command's or a call's end, a drop,
        an error)."""
        if result.dropped is not None:
            self.counters.dropped[result.dropped] += 1
        if result.do in RUN_ENDS and isinstance(result.tag, RunTag):
            fate = outcome(result.do, ok=result.ok)
            self.plan.settle_run(result.tag, fate)
            duration = result.duration_s if result.duration_s is not None else float("nan")
            self._learn(guard, result.tag.name, fate, duration, 0.0, result.at)
        if not result.ok and result.error and result.do not in CALL_ENDS:
            # (a python call's trouble is logged once per kind by the hardware)
            log.warning("%s.%s: %s", result.device, result.do, result.error)

    def _learn(
        self, guard: Guard, name: str, fate: Outcome, duration: float, late_s: float, at: float
    ) -> None:
        if fate.fate is Fate.MISSED:
            self.counters.missed += 1
        elif fate.fate is Fate.DROPPED and fate.reason is not None:
            self.counters.dropped[fate.reason] += 1
        if fate.learn:
            guard.record(name, duration, late_s, fate.miss)
        elif fate.reason is not None:
            guard.count_dropped(name, fate.reason, missed=fate.miss)
        if fate.measured:
            self.metrics.record_action(name, duration, late_s, fate.fate is Fate.MISSED, at)
