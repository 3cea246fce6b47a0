"""The beat client's callback thread: at each phase boundary the program asked for, run its
callbacks and resume its ``sync()`` waiters, on time.

Theory of operation
-------------------
The thread asks its *forecast* (the client's view of the beat follower, read under the
client's lock) for the next boundary anybody wants: a beat start for ``on_beat``, a
downbeat for ``on_downbeat``, a phase start for ``on_phase``, or the boundary a waiter of
``sync()`` waits for. It sleeps on the clock seam (``Clock.wait``, woken early when a waiter
registers or the client stops) until ~4 ms before it, asks again (a frame may have moved
the timeline a little), sleeps to a little before it (the runner's spin lead,
``edge.spin``) and spins the rest (``Clock.spin_until``), so the callbacks start within
tens of microseconds of the boundary, not on the receipt of a frame and never on paho's
thread. Only this thread spins: the client's beat loop sleeps instead of spinning
(``edge.client``), so the two never fight over the GIL at the boundary.

One thread runs every callback, in registration order. A callback that is still running
at the end of its phase *overran*; the boundaries that passed meanwhile are *skipped*, not
queued (a boundary is still run late within the first ``LATE_FRACTION`` of its phase).
Both are counted and logged at a bounded rate, as is a callback that raised (``errors``),
and the client puts the counts in its claims (``metadata.client``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edge.clock import Clock
from edge.loglimit import LogLimiter
from edge.messages import PHASES, Phase
from edge.spin import SpinLead

log = logging.getLogger(__name__)

#: Ask the forecast again this long before a boundary (a frame may have moved it).
APPROACH_S = 0.004
#: Longest sleep without asking the forecast again.
IDLE_S = 0.05
#: A boundary reached later than this fraction of its phase is skipped, not run late.
LATE_FRACTION = 0.25
#: How many callback start latencies the late_ms figures of the claims summarise.
LATE_WINDOW = 64


@dataclass(frozen=True, slots=True)
class Tick:
    """One phase boundary, as a callback or ``sync()`` sees it.

    ``at`` is the boundary's local monotonic time (the follower's timeline), ``deadline``
    the end of the phase, ``started`` when this boundary's callbacks began (``late_s`` is
    how late that was). ``downbeat`` is False while the bar is not known yet."""

    beat_index: int
    phase: Phase
    downbeat: bool
    bar_position: int | None
    tempo_bpm: float
    at: float
    deadline: float
    sync_state: str
    started: float = 0.0

    @property
    def late_s(self) -> float:
        return self.started - self.at

    @property
    def beat_seconds(self) -> float:
        return 60.0 / self.tempo_bpm


Callback = Callable[[Tick], object]


@dataclass(frozen=True, slots=True)
class Interest:
    """Who wants a boundary: what callbacks and waiters ask for (see ``wants``)."""

    beat: bool
    downbeat: bool
    phases: frozenset[Phase]
    waiters: tuple[tuple[Phase, int], ...]

    def wants(self, beat_index: int, phase: Phase, downbeat: bool) -> bool:
        if phase in self.phases:
            return True
        if phase == "plan" and (self.beat or (self.downbeat and downbeat)):
            return True
        return any(p == phase and beat_index % every == 0 for p, every in self.waiters)


#: The forecast: at ``now``, the next boundary after local time ``after`` that ``interest``
#: wants (None if none within the look-ahead), and when to look again at the latest.
Forecast = Callable[[float, float, Interest], tuple[Tick | None, float | None]]
#: How many boundaries ``interest`` wants strictly after ``tick`` and before ``until``.
Passed = Callable[[Tick, float, Interest], int]


@dataclass(eq=False)
class Waiter:
    """One ``await client.sync(...)``: resumed at the first wanted boundary after ``after``."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Tick]
    phase: Phase
    every: int
    after: float


@dataclass
class DispatchCounts:
    """What the callback thread did, for claims (``metadata.client``) and tests."""

    boundaries: int = 0
    callbacks: int = 0
    errors: int = 0
    overran: int = 0
    skipped: int = 0
    resumed: int = 0
    late_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATE_WINDOW))

    def as_metadata(self) -> dict[str, object]:
        late = sorted(self.late_ms)
        figures: dict[str, object] = {}
        if late:
            figures = {"p50": round(statistics.median(late), 3), "max": round(late[-1], 3)}
        return {
            "boundaries": self.boundaries,
            "callbacks": self.callbacks,
            "errors": self.errors,
            "overran": self.overran,
            "skipped": self.skipped,
            "late_ms": figures,
        }


def _matches(kind: str, tick: Tick) -> bool:
    """Whether a callback registered for ``kind`` runs at ``tick``."""
    if kind == tick.phase:
        return True
    return tick.phase == "plan" and (kind == "beat" or (kind == "downbeat" and tick.downbeat))


def _resume(future: asyncio.Future[Tick], tick: Tick) -> None:
    if not future.done():  # cancelled meanwhile
        future.set_result(tick)


def _fail(future: asyncio.Future[Tick], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Dispatcher:
    """The callback thread (see the module doc). ``forecast`` and ``passed`` read the
    follower under the client's lock; everything else here has its own lock."""

    def __init__(
        self, clock: Clock, forecast: Forecast, passed: Passed, quiet_s: float = 10.0
    ) -> None:
        self.clock = clock
        self._forecast = forecast
        self._passed = passed
        self._lock = threading.Lock()
        self._beat: list[Callback] = []
        self._downbeat: list[Callback] = []
        self._phases: dict[Phase, list[Callback]] = {}
        self._order: list[tuple[str, Callback]] = []  # every registration, in order
        self._waiters: list[Waiter] = []
        self._wake: queue.Queue[None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problems = LogLimiter(log, quiet_s=quiet_s)
        self.counts = DispatchCounts()
        #: How long before a boundary the wait ends and the spin starts: the runner's
        #: rule (the recent peak wake-up lateness, 0.1-1 ms).
        self.spin = SpinLead()
        #: Local time of the last boundary run (or skipped past).
        self.last_at = float("-inf")

    # ------------------------------------------------------------------ registration

    def add(self, kind: str, callback: Callback) -> None:
        """Register ``callback`` for ``kind``: ``"beat"``, ``"downbeat"`` or a phase name."""
        with self._lock:
            if kind == "beat":
                self._beat.append(callback)
            elif kind == "downbeat":
                self._downbeat.append(callback)
            elif kind in PHASES:
                self._phases.setdefault(kind, []).append(callback)
            else:
                raise ValueError(f"kind must be beat, downbeat or one of {PHASES}, got {kind!r}")
            self._order.append((kind, callback))
        self._wake.put(None)

    def wait_for(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.append(waiter)
        self._wake.put(None)

    def forget(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def interest(self) -> Interest:
        with self._lock:
            return Interest(
                beat=bool(self._beat),
                downbeat=bool(self._downbeat),
                phases=frozenset(p for p, cbs in self._phases.items() if cbs),
                waiters=tuple((w.phase, w.every) for w in self._waiters),
            )

    def _due(self, tick: Tick) -> tuple[list[Callback], list[Waiter]]:
        with self._lock:
            callbacks = [cb for kind, cb in self._order if _matches(kind, tick)]
            ready = [
                w
                for w in self._waiters
                if w.phase == tick.phase and tick.beat_index % w.every == 0 and tick.at > w.after
            ]
            for w in ready:
                self._waiters.remove(w)
        return callbacks, ready

    # ------------------------------------------------------------------ the thread

    def start(self, prepare: Callable[[], None] = lambda: None) -> None:
        """Start the thread; it calls ``prepare`` first (the client lowers its timer slack)."""
        self._thread = threading.Thread(
            target=self._run, args=(prepare,), name="beat-callbacks", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float, reason: BaseException) -> bool:
        """Stop the thread (waiting ``timeout`` for a running callback) and fail every
        waiter with ``reason``; whether the thread ended in time."""
        self._stop.set()
        self._wake.put(None)
        ended = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            if not ended:
                log.warning("a beat callback was still running %.1f s after stop", timeout)
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            self._call_soon(w, _fail, reason)
        self._problems.flush(self.clock.monotonic())
        return ended

    def _run(self, prepare: Callable[[], None]) -> None:
        try:
            prepare()
            while not self._stop.is_set():
                self._once()
        except Exception:  # a bug here must be seen, and must not end the client silently
            log.exception("the beat callback thread failed")

    def _once(self) -> None:
        clock = self.clock
        now = clock.monotonic()
        tick, look_again = self._forecast(now, self.last_at, self.interest())
        if tick is None:
            until = IDLE_S if look_again is None else min(max(look_again - now, 0.0), IDLE_S)
            clock.wait(self._wake, until)
            return
        lead = self.spin.seconds
        if tick.at - now > APPROACH_S + lead:  # (the margin: a fake clock's float steps)
            clock.wait(self._wake, min(tick.at - now - APPROACH_S, IDLE_S))
            return
        timeout = tick.at - now - lead
        if clock.wait(self._wake, timeout) is not None:
            return  # woken: someone registered; look again
        if timeout > 0:
            self.spin.woke(clock.monotonic() - (now + timeout))
        clock.spin_until(tick.at)
        if self._stop.is_set():
            return
        self._dispatch(tick)

    def _dispatch(self, tick: Tick) -> None:
        started = self.clock.monotonic()
        tick = replace(tick, started=started)
        self.last_at = tick.at
        counts = self.counts
        counts.boundaries += 1
        counts.late_ms.append(tick.late_s * 1000.0)
        callbacks, ready = self._due(tick)
        for waiter in ready:
            self._call_soon(waiter, _resume, tick)
        for callback in callbacks:
            counts.callbacks += 1
            try:
                callback(tick)
            except Exception as exc:  # the program's bug: counted and logged, never fatal
                counts.errors += 1
                name = getattr(callback, "__qualname__", repr(callback))
                self._problems.note(
                    f"callback error {name}",
                    f"beat callback {name} raised at beat {tick.beat_index} {tick.phase}: "
                    f"{type(exc).__name__}: {exc}",
                    self.clock.monotonic(),
                )
        ended = self.clock.monotonic()
        if ended > tick.deadline:
            counts.overran += 1
            skipped = self._passed(tick, ended, self.interest())
            counts.skipped += skipped
            self._problems.note(
                "callback overrun",
                f"beat callbacks of beat {tick.beat_index} {tick.phase} ran "
                f"{(ended - started) * 1000:.1f} ms, past the end of the phase; "
                f"{skipped} boundaries skipped (not queued)",
                ended,
            )
        self._problems.tick(ended)

    def _call_soon(
        self,
        waiter: Waiter,
        fn: Callable[[asyncio.Future[Tick], object], None] | Callable[..., None],
        arg: object,
    ) -> None:
        try:
            waiter.loop.call_soon_threadsafe(fn, waiter.future, arg)
            if fn is _resume:
                self.counts.resumed += 1
        except RuntimeError:  # the waiter's event loop is closed: nobody to resume
            pass
