"""The hysteresis latch the guard keeps on each load signal."""

from __future__ import annotations

import math

# --------------------------------------------------------------------------- hysteresis


class Hysteresis:
    """A latch on one signal: raises above ``enter``, clears at or below ``leave``.

    ``update(None, at)`` keeps the state; once no value has been seen for ``stale_after_s``
    the latch clears. ``update`` returns whether the state changed.
    """

    __slots__ = ("active", "enter", "leave", "seen_at", "stale_after_s")

    def __init__(self, enter: float, leave: float, stale_after_s: float = math.inf) -> None:
        self.enter = enter
        self.leave = leave
        self.stale_after_s = stale_after_s
        self.active = False
        self.seen_at: float | None = None

    def update(self, value: float | None, at: float, may_raise: bool = True) -> bool:
        before = self.active
        if value is None or math.isnan(value):
            if self.active and self.seen_at is not None and at - self.seen_at >= self.stale_after_s:
                self.active = False
            return self.active != before
        self.seen_at = at
        if self.active:
            if value <= self.leave:
                self.active = False
        elif value > self.enter and may_raise:
            self.active = True
        return self.active != before
