"""The published correction: how the runner's timeline follows the model without jumping.

When the model moves, the published timeline keeps its position by adding a correction
``corr(t)`` that starts at the model's shift and decays toward 0 at ``slew_rate`` seconds
per second, so boundaries slide instead of jumping; a shift too large to slew is stepped.
"""

from __future__ import annotations

import math


class Correction:
    """``corr(t)``: ``c0`` at ``ct0``, shrinking toward 0 at ``slew_rate`` after it."""

    def __init__(self, slew_rate: float) -> None:
        self._slew = slew_rate
        self._c0 = 0.0
        self._ct0 = 0.0
        self.last_shift = 0.0  # the model's last shift, slewed or stepped

    def reset(self, at: float) -> None:
        """No correction from ``at`` on (a new timeline)."""
        self._c0, self._ct0, self.last_shift = 0.0, at, 0.0

    def start(self, now: float, shift: float, step: bool) -> None:
        """The model moved by ``shift`` at ``now``: slew it away, or step (no correction)."""
        self.last_shift = shift
        if step:
            shift = 0.0
        self._c0, self._ct0 = shift, now

    def at(self, t: float) -> float:
        """The correction at local time ``t``."""
        c0 = self._c0
        if c0 == 0.0 or t <= self._ct0:
            return c0
        left = abs(c0) - self._slew * (t - self._ct0)
        return math.copysign(left, c0) if left > 0 else 0.0

    def published(self, m: float) -> float:
        """Local time of a point the model puts at ``m``: solve T = m + corr(T)."""
        c0, t0, slew = self._c0, self._ct0, self._slew
        if c0 == 0.0 or m + c0 <= t0:
            return m + c0
        if c0 > 0:
            t = (m + c0 + slew * t0) / (1.0 + slew)
            return t if t - t0 < c0 / slew else m
        t = (m + c0 - slew * t0) / (1.0 - slew)
        return t if t - t0 < -c0 / slew else m
