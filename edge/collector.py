"""When the cyclic garbage collector runs: between actions, never on their path.

CPython collects when allocations pass a threshold, wherever that happens to be: in the
agent mostly inside a frame's or a review's work, and now and then in the wake-up right
before an action's spin. A young collection takes a fraction of a millisecond, a middle one
a few and a full one tens of ms on a Pi-class core (everything the agent made since
start-up; ``gc.freeze`` keeps start-up's own objects out; the agent logs the longest at
its exit), and the action behind it is that late.

So the agent turns automatic collection off and its loop collects in its side work (no
action imminent, the quiet after one over: ``edge.runner``), by CPython's own thresholds:
the youngest generation once allocations pass ``threshold0``, an older one once the
younger has been collected more than ``threshold1`` / ``threshold2`` times since. A
collection that took longer last time than the room before the next precise deadline
waits for a wider gap. A loop that never has one (actions closer together than a
collection takes) collects anyway once the young generation is ``FORCE_FACTOR`` times
over its threshold, so memory stays bounded.

The ``gc`` functions are arguments, so tests drive it without touching the process's
collector.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

#: A collection waits for room at most until the young generation is this many times over
#: its threshold; then it runs wherever the loop is.
FORCE_FACTOR = 8
#: What a collection of each generation is assumed to take until one has been timed (s).
START_ESTIMATE_S = (0.001, 0.005, 0.05)
#: Room kept beyond the estimate (s): the estimate is a recent peak, not a promise.
MARGIN_S = 0.002
#: Per collection of a generation, its remembered peak duration shrinks by this factor.
DECAY = 0.9


class Collector:
    """Runs the cyclic collector when :meth:`collect` is given room for it."""

    def __init__(
        self,
        get_count: Callable[[], tuple[int, int, int]] = gc.get_count,
        run: Callable[[int], int] = gc.collect,
        thresholds: tuple[int, int, int] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._get_count = get_count
        self._run = run
        self.thresholds = thresholds if thresholds is not None else gc.get_threshold()
        self._timer = timer
        #: The recent peak duration of a collection of each generation (s); the start
        #: values until one is timed.
        self.estimate_s = list(START_ESTIMATE_S)
        # Counters.
        self.collections = [0, 0, 0]
        self.deferred = 0  # times a due collection waited for more room
        self.forced = 0  # collections run without the room for them
        self.longest_s = 0.0

    def due(self) -> int | None:
        """The oldest generation whose collection is due (CPython's rule), or None."""
        return self._due(self._get_count())

    def _due(self, counts: tuple[int, int, int]) -> int | None:
        t0, t1, t2 = self.thresholds
        if t0 <= 0 or counts[0] <= t0:  # a threshold of 0 is CPython's "off"
            return None
        if counts[2] > t2:
            return 2
        return 1 if counts[1] > t1 else 0

    def collect(self, room_s: float) -> int | None:
        """Collect what is due if it fits in ``room_s`` (until the next precise deadline;
        inf: none), or anyway when long overdue. Returns the generation collected."""
        counts = self._get_count()
        gen = self._due(counts)
        if gen is None:
            return None
        if self.estimate_s[gen] + MARGIN_S > room_s:
            if counts[0] < FORCE_FACTOR * self.thresholds[0]:
                self.deferred += 1
                return None
            self.forced += 1
        self.run(gen)
        return gen

    def summary(self) -> str:
        """What it did, for the log at the agent's exit."""
        young, middle, full = self.collections
        return (
            f"garbage collections in the loop: {young} young, {middle} middle, {full} full, "
            f"longest {self.longest_s * 1000:.1f} ms; {self.forced} without room for them"
        )

    def run(self, gen: int) -> None:
        """Collect generation ``gen`` (and the younger ones) now, timing it."""
        start = self._timer()
        self._run(gen)
        took = max(0.0, self._timer() - start)
        first = self.collections[gen] == 0
        self.collections[gen] += 1
        self.longest_s = max(self.longest_s, took)
        self.estimate_s[gen] = took if first else max(took, self.estimate_s[gen] * DECAY)
