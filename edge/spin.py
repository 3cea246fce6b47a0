"""How long before a precise deadline the loop stops waiting and spins.

A timed wait wakes late by the scheduler's latency (here 0.05-0.2 ms with 1 ns timer
slack, more on a loaded box) plus the GIL hand-over; the spin after it covers that, and
burns CPU for as long as it runs. So the lead is not a constant: it is a little more than
the recent *peak* wake-up lateness, a maximum that decays (half-life ~140 wake-ups, some
ten seconds of a beat loop), so one slow wake-up widens the next spins at once and a
quiet spell narrows them again. It stays within [SPIN_MIN_S, SPIN_MAX_S].
"""

from __future__ import annotations

import math

#: Never spin less than this (a wake-up is never on time) nor more than this (past it a
#: wake-up is so late that spinning longer costs more than the lateness it saves).
SPIN_MIN_S = 0.0001
SPIN_MAX_S = 0.001
#: The lead at start, until wake-ups have been seen (the old fixed value).
SPIN_START_S = 0.0006
#: Per wake-up, the remembered peak shrinks by this factor.
DECAY = 0.995
#: Lead = peak x this + MARGIN_S.
HEADROOM = 1.25
MARGIN_S = 0.00003


class SpinLead:
    """The current spin lead (:attr:`seconds`), from the wake-ups reported by :meth:`woke`."""

    __slots__ = ("_peak", "seconds", "wakeups")

    def __init__(self) -> None:
        self._peak = (SPIN_START_S - MARGIN_S) / HEADROOM
        self.seconds = SPIN_START_S
        self.wakeups = 0

    @property
    def peak_s(self) -> float:
        """The remembered peak wake-up lateness (decayed)."""
        return self._peak

    def woke(self, late_s: float) -> None:
        """A timed wait returned ``late_s`` after the time it was asked for (a negative or
        non-finite value counts as on time). Lateness above SPIN_MAX_S counts as that much:
        a stall must not keep the spins long for minutes after it."""
        late = min(late_s, SPIN_MAX_S) if math.isfinite(late_s) and late_s > 0 else 0.0
        self.wakeups += 1
        self._peak = max(late, self._peak * DECAY)
        self.seconds = min(SPIN_MAX_S, max(SPIN_MIN_S, self._peak * HEADROOM + MARGIN_S))
