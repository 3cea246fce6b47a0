"""The hand-over from the network thread to the loop: :class:`Inbound` items on one
:class:`LinkInbox` with two lanes (a bounded one for frames, a control lane for acks and
connection events that is never full and is read first). See :mod:`edge.mqtt_link`.
"""

from __future__ import annotations

import queue
from collections import deque
from dataclasses import dataclass
from typing import Literal

InboundKind = Literal["message", "ack", "connected", "disconnected", "wake"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One thing handed from the network thread to the loop."""

    kind: InboundKind
    arrived_at: float  # local monotonic time, stamped in the callback
    wall_at: float = 0.0
    topic: str = ""
    payload: bytes = b""
    mid: int = 0
    reason: str = ""


class LinkInbox(queue.Queue[Inbound]):
    """The hand-over queue, with a bounded lane for frames and a control lane (acks,
    connection events) that is never full and is read first.

    ``offer`` puts a frame if the frame lane has room (False if not: the caller counts the
    drop); ``put_control`` always puts. ``get``/``get_nowait``/``qsize`` see both lanes,
    so the loop still waits on one queue. ``frame_limit`` is the frame lane's bound.
    """

    def __init__(self, frame_limit: int) -> None:
        if frame_limit < 1:
            raise ValueError(f"frame_limit must be at least 1, got {frame_limit}")
        super().__init__(maxsize=0)  # put() never blocks; offer() applies the bound
        self.frame_limit = frame_limit
        self._control: deque[Inbound] = deque()

    def offer(self, item: Inbound, wake: bool = True) -> bool:
        """Queue a message unless ``frame_limit`` are waiting; True if queued. With
        ``wake=False`` a waiting ``get`` is not woken (as for :meth:`put_control`)."""
        with self.not_full:
            if len(self.queue) >= self.frame_limit:
                return False
            self.queue.append(item)
            self.unfinished_tasks += 1
            if wake:
                self.not_empty.notify()
        return True

    def put_control(self, item: Inbound, wake: bool = True) -> None:
        """Queue an acknowledgement or connection event, ahead of any waiting frame.
        With ``wake=False`` a waiting ``get`` is not woken: the item is taken at the next
        ``get`` (a later wake-up), which costs no wake-up of its own."""
        with self.not_full:
            self._control.append(item)
            self.unfinished_tasks += 1
            if wake:
                self.not_empty.notify()

    def nudge(self, now: float) -> bool:
        """Wake a waiting ``get`` with a ``wake`` item (it carries nothing), if the lock
        is free at this instant; False if not (the waiter then sees its time-out). Never
        blocks, so a signal handler may call it: the thread it interrupts may hold the
        lock, and a blocking acquire would then never return."""
        if not self.mutex.acquire(blocking=False):
            return False
        try:
            self._control.append(Inbound("wake", now))
            self.unfinished_tasks += 1
            self.not_empty.notify()
        finally:
            self.mutex.release()
        return True

    @property
    def frames_waiting(self) -> int:
        with self.mutex:
            return len(self.queue)

    # queue.Queue's storage hooks, called under its mutex.
    def _qsize(self) -> int:
        return len(self.queue) + len(self._control)

    def _get(self) -> Inbound:
        return self._control.popleft() if self._control else self.queue.popleft()
