"""The time exchange's clock filter and request schedule: the pulse's wall clock, locally.

Theory of operation
-------------------
An exchange is NTP's four timestamps: the agent sends a request at local monotonic ``t1``,
the responder receives it at ``t2`` and answers at ``t3`` (its wall clock, the one its
frames' ``deadline_at`` is written in, integer ns), the answer arrives at monotonic ``t4``.
Its round-trip *delay* is ``(t4 - t1) - (t3 - t2)`` and its *offset* (pulse wall minus
local monotonic, at the exchange's middle ``(t1 + t4) / 2``) is
``((t2 + t3) - (t1 + t4)) / 2``. However the delay splits between the two ways, the true
offset is within ``delay / 2`` of that: the lower the delay, the tighter the bound, so the
filter keeps the last ``window`` exchanges and uses the one with the smallest bound
(NTP's clock filter, over a longer window).

*Rate.* The two clocks run at slightly different rates (tens of ppm), so an offset ages:
it is carried forward at the rate measured between the lowest-delay exchange of the older
half of the window and that of the newer half, once they are ``min_rate_span_s`` apart,
with the uncertainty their two bounds give over that span (``rate_prior_ppm`` before);
a measurement replaces the rate in use only when it is more certain than that one is now
(its uncertainty grown by ``rate_drift_ppm_per_s`` since), and the rate is clamped to
``max_rate_ppm``. A kept exchange's bound at time ``t`` is
``delay / 2 + precision + rate_error * |t - middle|``; the one with the smallest bound
now is the *best*; since every bound grows at the same rate, the best changes only when
an exchange comes in or leaves the window.

*Outliers and steps.* An exchange whose offset disagrees with the model by more than both
bounds allow cannot be explained by delay: it is held back (``outlier``). When
``step_confirm`` of them in a row agree with each other, the responder's wall clock has
stepped (or a different responder answers): the window restarts on them (``steps``).
Exchanges slower than ``max_delay_s`` or with a negative delay are refused.

*Schedule.* Requests go out every ``acquire_interval_s`` until the mapping is locked and
``acquire_samples`` exchanges are in, then every ``track_interval_s``; after
``idle_after`` requests in a row without an answer (no responder), every
``idle_interval_s``. At most ``max_in_flight`` are outstanding (when a new one is due
the oldest is given up); one unanswered for ``timeout_s`` is lost. Each request has a new
id; a response to an id not outstanding is ignored and counted (``stale``: it was lost,
or answered already; ``unknown``: never sent).

*Locked* means a model exists and its bound now is at most ``lock_bound_s``; then
:meth:`TimeExchange.to_local` maps a ``deadline_at`` onto the local monotonic clock and
:meth:`TimeExchange.pulse_wall_at` says what the pulse's wall clock reads at a local time.

Pure: every time is an argument.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from edge.timewire import MAX_ID, TimeResponse

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    """The clock filter's and the schedule's parameters (see the module's theory)."""

    acquire_interval_s: float = 0.25
    track_interval_s: float = 1.0
    idle_interval_s: float = 5.0
    acquire_samples: int = 16
    idle_after: int = 8
    max_in_flight: int = 4
    timeout_s: float = 2.0
    window: int = 128
    max_delay_s: float = 1.0
    lock_bound_s: float = 0.002
    min_samples: int = 2
    min_rate_span_s: float = 8.0
    rate_prior_ppm: float = 200.0
    max_rate_ppm: float = 500.0
    rate_drift_ppm_per_s: float = 0.05
    step_confirm: int = 3
    precision_s: float = 2e-6


@dataclass(frozen=True, slots=True)
class Exchange:
    """One answered request: its middle (local monotonic s), offset relative to the
    filter's base (s) and round-trip delay (s)."""

    mid: float
    offset: float
    delay: float


class ClockFilter:
    """The lowest-delay exchanges, the rate, and the pulse wall clock they give."""

    def __init__(self, config: ExchangeConfig) -> None:
        self._cfg = config
        #: Offsets are kept relative to this (pulse wall ns - local monotonic ns), so floats
        #: keep sub-microsecond precision.
        self.base_ns: int | None = None
        self._window: deque[Exchange] = deque(maxlen=max(config.window, 2))
        self._suspects: list[Exchange] = []
        self.rate = 0.0  # d(offset)/d(local time): pulse wall clock rate minus ours
        self.rate_error = config.rate_prior_ppm * 1e-6
        self._rate_at = -math.inf  # when the rate in use was measured (-inf: the prior)
        self._best: Exchange | None = None
        # Counters.
        self.used = 0
        self.steps = 0
        self.rejected: dict[str, int] = {}

    # ------------------------------------------------------------------ answers

    @property
    def samples(self) -> int:
        return len(self._window)

    def bound_at(self, t: float) -> float:
        """Bound on the error of the pulse wall clock read at local ``t`` (inf: no model)."""
        best = self._best
        if best is None or len(self._window) < self._cfg.min_samples:
            return math.inf
        return self._bound(best, t)

    def offset_at(self, t: float) -> float:
        """Pulse wall minus local monotonic at ``t``, in seconds relative to ``base_ns``."""
        best = self._best
        if best is None:
            raise RuntimeError("the clock filter has no exchange yet")
        return best.offset + self.rate * (t - best.mid)

    def pulse_wall_ns_at(self, t: float) -> int:
        """The pulse's wall clock (ns) at local monotonic ``t``."""
        assert self.base_ns is not None
        return self.base_ns + round((t + self.offset_at(t)) * _NS)

    def to_local(self, wall_ns: int) -> float:
        """The local monotonic time at which the pulse's wall clock reads ``wall_ns``."""
        best = self._best
        if best is None or self.base_ns is None:
            raise RuntimeError("the clock filter has no exchange yet")
        w = (wall_ns - self.base_ns) / _NS
        # w = t + best.offset + rate * (t - best.mid), solved for t.
        return (w - best.offset + self.rate * best.mid) / (1.0 + self.rate)

    # ------------------------------------------------------------------ input

    def add(self, t1: float, t2: int, t3: int, t4: float) -> str:
        """Take one exchange; returns what became of it: ``used``, ``step`` (it confirmed a
        responder clock step: the window restarted), or the reason it was refused
        (``negative_delay``, ``slow``, ``outlier``), which is also counted."""
        cfg = self._cfg
        delay = (t4 - t1) - (t3 - t2) / _NS
        if delay < -cfg.precision_s:
            return self._refuse("negative_delay")
        if delay > cfg.max_delay_s:
            return self._refuse("slow")
        mid = (t1 + t4) / 2.0
        offset_ns = (t2 + t3) // 2 - round(mid * _NS)
        if self.base_ns is None:
            self.base_ns = offset_ns
        sample = Exchange(mid, (offset_ns - self.base_ns) / _NS, max(delay, 0.0))
        if self._best is not None and not self._fits(sample):
            self._suspects.append(sample)
            if len(self._suspects) >= cfg.step_confirm and self._agree(self._suspects):
                self.steps += 1
                self._window.clear()
                self._window.extend(self._suspects)
                self._suspects.clear()
                self.rate, self.rate_error = 0.0, cfg.rate_prior_ppm * 1e-6
                self._rate_at = -math.inf
                self._update()
                self.used += 1
                return "step"
            if len(self._suspects) >= cfg.step_confirm:
                self._suspects.pop(0)  # they do not agree: the oldest is a plain outlier
            return self._refuse("outlier")
        self._suspects.clear()
        self._window.append(sample)
        self._update()
        self.used += 1
        return "used"

    # ------------------------------------------------------------------ internals

    def _refuse(self, reason: str) -> str:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def _bound(self, sample: Exchange, t: float) -> float:
        return sample.delay / 2.0 + self._cfg.precision_s + self.rate_error * abs(t - sample.mid)

    def _fits(self, sample: Exchange) -> bool:
        """Whether ``sample`` can be the model's clock seen through its delay."""
        best = self._best
        assert best is not None
        predicted = best.offset + self.rate * (sample.mid - best.mid)
        allowed = self._bound(best, sample.mid) + sample.delay / 2.0 + self._cfg.precision_s
        return abs(sample.offset - predicted) <= allowed

    def _agree(self, samples: list[Exchange]) -> bool:
        slack = self._cfg.rate_prior_ppm * 1e-6
        for a in samples:
            for b in samples:
                allowed = (a.delay + b.delay) / 2.0 + slack * abs(a.mid - b.mid) + 1e-5
                if abs(a.offset - b.offset) > allowed:
                    return False
        return True

    def _update(self) -> None:
        cfg = self._cfg
        window = list(self._window)
        half = len(window) // 2
        if half >= 1:
            older = min(window[:half], key=lambda s: s.delay)
            newer = min(window[half:], key=lambda s: s.delay)
            span = newer.mid - older.mid
            if span >= cfg.min_rate_span_s:
                limit = cfg.max_rate_ppm * 1e-6
                error = (older.delay + newer.delay) / 2.0 / span + 2 * cfg.precision_s / span
                # A rate measured well is kept until a better one comes, or until the drift
                # it may have had since (temperature: rate_drift_ppm_per_s) makes it worse.
                aged = self.rate_error + cfg.rate_drift_ppm_per_s * 1e-6 * (
                    newer.mid - self._rate_at
                )
                if error <= aged:
                    self.rate = max(-limit, min(limit, (newer.offset - older.offset) / span))
                    self.rate_error = max(error, 1e-7)
                    self._rate_at = newer.mid
        # The bounds all grow at rate_error: the smallest now is the smallest later too.
        latest = window[-1].mid
        self._best = min(window, key=lambda s: self._bound(s, latest))


class TimeExchange:
    """The schedule of requests, their ids, and the clock filter their answers feed."""

    def __init__(self, config: ExchangeConfig | None = None, first_id: int = 0) -> None:
        self.config = config or ExchangeConfig()
        self.filter = ClockFilter(self.config)
        self._next_id = first_id % (MAX_ID + 1)
        self._in_flight: dict[int, float] = {}  # id -> t1
        self._done: deque[int] = deque(maxlen=256)  # ids answered or lost lately
        self._next_at = -math.inf
        self._unanswered = 0  # requests in a row that got no answer
        self.answered = False  # whether any response was ever used
        # Counters.
        self.sent = 0
        self.lost = 0
        self.ignored: dict[str, int] = {}

    # ------------------------------------------------------------------ answers

    def locked_at(self, t: float) -> bool:
        return self.filter.bound_at(t) <= self.config.lock_bound_s

    def bound_at(self, t: float) -> float:
        return self.filter.bound_at(t)

    def to_local(self, wall_ns: int) -> float:
        """Local monotonic time of a pulse wall time (a ``deadline_at``); needs a model."""
        return self.filter.to_local(wall_ns)

    def pulse_wall_at(self, t: float) -> float:
        """The pulse's wall clock (s since 1970) at local monotonic ``t``; needs a model."""
        return self.filter.pulse_wall_ns_at(t) / _NS

    @property
    def rejected(self) -> dict[str, int]:
        """Every response not used, by reason (filter refusals and ignored ids)."""
        out = dict(self.filter.rejected)
        for reason, count in self.ignored.items():
            out[reason] = out.get(reason, 0) + count
        if self.lost:
            out["lost"] = self.lost
        return out

    # ------------------------------------------------------------------ schedule

    def next_at(self) -> float:
        """Local time of the next request (or of the next time-out to apply)."""
        times = [self._next_at]
        if self._in_flight:
            times.append(min(self._in_flight.values()) + self.config.timeout_s)
        return min(times)

    def _interval(self, now: float) -> float:
        cfg = self.config
        if self._unanswered >= cfg.idle_after:
            return cfg.idle_interval_s
        if self.filter.samples < cfg.acquire_samples or not self.locked_at(now):
            return cfg.acquire_interval_s
        return cfg.track_interval_s

    def poll(self, now: float) -> int | None:
        """Expire what timed out; the id of a request to send now, or None. The caller
        sends it at once and may give the exact send time with :meth:`sent_at`."""
        self._expire(now)
        if now < self._next_at:
            return None
        if len(self._in_flight) >= self.config.max_in_flight:
            # Full: the oldest is given up as lost (a responder that appears is heard at
            # once, not after the time-outs of requests nobody was there to answer).
            oldest = min(self._in_flight, key=lambda i: self._in_flight[i])
            del self._in_flight[oldest]
            self._lose(oldest)
        request_id = self._next_id
        self._next_id = (self._next_id + 1) % (MAX_ID + 1)
        self._in_flight[request_id] = now
        self.sent += 1
        self._next_at = now + self._interval(now)
        return request_id

    def sent_at(self, request_id: int, t1: float) -> None:
        """The monotonic time the request actually left (read right before sending)."""
        if request_id in self._in_flight:
            self._in_flight[request_id] = t1

    def _expire(self, now: float) -> None:
        timeout = self.config.timeout_s
        for request_id, t1 in list(self._in_flight.items()):
            if now - t1 >= timeout:
                del self._in_flight[request_id]
                self._lose(request_id)

    def _lose(self, request_id: int) -> None:
        self._done.append(request_id)
        self.lost += 1
        self._unanswered += 1

    def response(self, response: TimeResponse, t4: float) -> str:
        """Take a response that arrived at monotonic ``t4``; returns what became of it
        (see :meth:`ClockFilter.add`, plus ``stale`` / ``unknown`` for ids not awaited)."""
        t1 = self._in_flight.pop(response.id, None)
        if t1 is None:
            reason = "stale" if response.id in self._done else "unknown"
            self.ignored[reason] = self.ignored.get(reason, 0) + 1
            return reason
        self._done.append(response.id)
        self._unanswered = 0
        was_idle = self._next_at - t1 > self.config.track_interval_s
        verdict = self.filter.add(t1, response.t2, response.t3, t4)
        if verdict in ("used", "step"):
            self.answered = True
        if was_idle:  # a responder appeared: ask at the acquiring pace again
            self._next_at = min(self._next_at, t4 + self.config.acquire_interval_s)
        return verdict
