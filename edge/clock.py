"""The clock seam: the one place in the core that reads the time.

Everything else is handed a :class:`Clock` (or plain numbers) so that tests can move time
by hand, as trio's ``MockClock`` does. Two readings are offered:

* ``monotonic()`` — seconds on ``time.monotonic()``; never steps, used for every deadline.
* ``wall()`` — seconds since the Unix epoch; may be hours off at boot on a Pi with no
  battery clock and may step when NTP catches up. Used only for reports and for
  ``deadline_at`` once the beat follower has decided the wall clock is in step.

The loop's waiting goes through the clock too, so a test can drive it: ``wait(inbox,
timeout)`` blocks for the next inbox item or the timeout, ``spin_until(deadline)`` spins
the last fraction of a millisecond before a deadline. The fake clock does both at once:
it takes an item already queued, or moves forward by the timeout (to the deadline).
"""

from __future__ import annotations

import math
import queue
import time
from typing import Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Inbox(Protocol[T_co]):
    """What ``wait`` reads: a ``queue.Queue`` (raising ``queue.Empty`` when empty)."""

    def get(self, block: bool = True, timeout: float | None = None) -> T_co: ...

    def get_nowait(self) -> T_co: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch on the (possibly wrong) wall clock."""
        ...

    def wait(self, inbox: Inbox[T] | None, timeout: float) -> T | None:
        """The next item of ``inbox``, waiting at most ``timeout`` seconds for it (none
        at all when ``timeout <= 0``); None if none came. With no inbox, just wait."""
        ...

    def spin_until(self, deadline: float) -> None:
        """Return at monotonic ``deadline`` (at once if it has passed), spinning."""
        ...


class SystemClock:
    """The real clocks of this machine."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, inbox: Inbox[T] | None, timeout: float) -> T | None:
        if inbox is None:
            if timeout > 0:
                time.sleep(timeout)
            return None
        try:
            return inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
        except queue.Empty:
            return None

    def spin_until(self, deadline: float) -> None:
        # A plain sleep wakes 0.1-0.7 ms late; a spin does not (and holds the GIL).
        while time.monotonic() < deadline:
            pass


class FakeClock:
    """A clock for tests that only moves when told.

    ``advance`` moves both readings forward together; ``step_wall`` moves only the wall
    clock (either way), as NTP or an operator would. The monotonic reading never goes back.
    """

    __slots__ = ("_mono", "_wall")

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_767_225_600.0) -> None:
        self._mono = float(monotonic)
        self._wall = float(wall)

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def wait(self, inbox: Inbox[T] | None, timeout: float) -> T | None:
        """An item already in ``inbox`` at once (the clock stays), else move forward by
        ``timeout`` (when positive) and return None: nothing arrives while it waits."""
        if inbox is not None:
            try:
                return inbox.get_nowait()
            except queue.Empty:
                pass
        if timeout > 0:
            self.advance(timeout)
        return None

    def spin_until(self, deadline: float) -> None:
        """Move forward to ``deadline`` (no-op if already there)."""
        if deadline > self._mono:
            self.set(deadline)

    def advance(self, seconds: float) -> None:
        # "not >= 0" also catches NaN, which would otherwise poison both readings.
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(
                f"a FakeClock only moves forward by finite steps, got advance({seconds})"
            )
        self._mono += seconds
        self._wall += seconds

    def set(self, monotonic: float) -> None:
        """Move forward to an absolute monotonic time (no-op if already there)."""
        if not monotonic >= self._mono:
            raise ValueError(f"a FakeClock only moves forward: {monotonic} < {self._mono}")
        self.advance(monotonic - self._mono)

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone by ``seconds`` (either sign, finite)."""
        if not math.isfinite(seconds):
            raise ValueError(f"a wall-clock step must be finite, got step_wall({seconds})")
        self._wall += seconds
