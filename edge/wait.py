"""The loop's wait: block on the inbox until the next deadline, spinning to a precise one.

A plain blocking wait wakes 0.05-0.7 ms late, which does not matter to phase boundaries,
samples and the safe state (and a spin costs CPU for as long as it runs). An action's time
(or a hardware follow-up's, such as a pulse's end) is *precise*: the wait ends a little
before it (the recent peak wake-up lateness, ``edge.spin.SpinLead``) and a short spin
takes it to the instant, with the garbage collector held off and the due actions fired
first, before anything else of the wake-up: the shortest path from the spin to the pin.
A message ends the wait early; what else is queued behind it is taken in the same wake-up.
Every wait and spin goes through the clock, so a fake clock drives it in tests.
"""

from __future__ import annotations

import gc
import queue
from collections.abc import Callable

from edge.clock import Clock
from edge.inbox import Inbound
from edge.spin import SpinLead

#: At most this many more queued items are taken in one wake-up.
DRAIN_MAX = 8


def precise_next(action_at: float | None, hardware_at: float | None) -> float | None:
    """The next deadline worth a spin: the earlier of an action's and a hardware
    follow-up's."""
    if action_at is None or (hardware_at is not None and hardware_at < action_at):
        return hardware_at
    return action_at


def wait(
    clock: Clock,
    inbox: queue.Queue[Inbound] | None,
    now: float,
    deadline: float,
    precise: float | None,
    max_wait_s: float,
    spin: SpinLead,
    fire_due: Callable[[float], None],
) -> list[Inbound]:
    """Wait from ``now`` for a message or ``deadline``: the items this wake-up took, in
    order (empty at the deadline, unless some were queued without waking it). When
    ``precise`` (see :func:`precise_next`) is the deadline, the wait ends ``spin``'s lead
    before it and spins to it, and ``fire_due`` fires what is due right after (and warms
    the path before the spin), before any item is handed out."""
    spinning = precise is not None and precise <= deadline and deadline < now + max_wait_s
    timeout = deadline - now - (spin.seconds if spinning else 0.0)
    item = clock.wait(inbox, timeout)
    items: list[Inbound] = []
    if item is not None:
        items.append(item)
        if inbox is not None:
            # What else is queued is taken in this wake-up too (an ack that woke nothing,
            # a frame behind it), in order; bounded, so a flood cannot hold deadlines back.
            for _ in range(DRAIN_MAX):
                try:
                    items.append(inbox.get_nowait())
                except queue.Empty:
                    break
    woke = clock.monotonic()
    if items and not (spinning and woke >= now + timeout):
        return items
    # The deadline came. Items queued without waking the wait (acks, time responses) are
    # handed out when it ends: the spin and the action come first, else their step would
    # run where the spin should (0.1-0.5 ms, the action that much late).
    if timeout > 0:
        spin.woke(woke - (now + timeout))
    if spinning:
        gc_was = gc.isenabled()
        gc.disable()  # no collection between the spin and the write
        try:
            fire_due(woke)  # warm the path (or fire, if the wake was late)
            clock.spin_until(deadline)
            fire_due(clock.monotonic())
        finally:
            if gc_was:
                gc.enable()
    return items
