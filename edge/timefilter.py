"""The time exchange's clock filter and request schedule: the pulse's wall clock, locally.

Theory of operation
-------------------
An exchange is NTP's four timestamps: the agent sends a request at local monotonic ``t1``,
the responder receives it at ``t2`` and answers at ``t3`` (its wall clock, the one its
frames' ``deadline_at`` is written in, integer ns), the answer arrives at monotonic ``t4``.
Its round-trip *delay* is ``(t4 - t1) - (t3 - t2)``. The *offset* (pulse wall minus local
monotonic) is bounded twice, each bound whatever the other way's delay was: it was at
most ``t2 - t1`` at ``t1`` (the request cannot arrive before it left) and at least
``t3 - t4`` at ``t4``. NTP pairs the two per exchange (the middle, within ``delay / 2``)
and keeps the lowest-delay one; this filter keeps them apart (:mod:`edge.timeenvelope`):
the offset is a line (its slope, the *rate*: the two clocks' rates differ by tens of ppm)
under every request's bound and over every response's, so the best request and the best
response of the window count even when they are not of the same exchange, and the rate
comes from the whole window.

*The fit.* The window holds the last ``window`` exchanges of the last ``window_s``. The
rates of the lines between the two point sets form an interval (within ``max_rate_ppm``):
the rate in use is its middle, or, when one way is much quieter than the other (its points
crowd their envelope ``1 / quiet_ratio`` times closer: requests on a path that queues only
the answers), the quieter envelope's own slope (Moon, Skelly and Towsley's estimator, as
:mod:`edge.sync.envelope` fits the frames), kept inside the interval. The estimate is the
middle between the two envelopes of that rate. Its *bound* at ``t`` is the interval every
point proves there, each carried from its time at the rate give or take how far the rate
may be off inside its interval, plus what a rate drifting by ``rate_drift_ppm_per_s`` may
have added: honest whatever the delays, tight when both ways had a fast exchange lately,
growing in silence. When no line explains the whole window (the rate changed), the oldest
exchanges go (``pruned``).
The two hulls are kept as exchanges come and go (:class:`edge.sync.hull.WindowHull`)
rather than scanned anew at every response.

*Outliers and steps.* An exchange whose request says the offset was below what the model
proves, or whose response says it was above, cannot be explained by delay: it is held
back (``outlier``). When ``step_confirm`` of them in a row agree with each other, the
responder's wall clock has stepped (or a different responder answers): the window
restarts on them (``steps``).
Exchanges slower than ``max_delay_s`` or with a negative delay are refused.

*Schedule.* Requests go out every ``acquire_interval_s`` until the mapping is locked,
``acquire_samples`` exchanges are in and the bound is down to ``tight_bound_s`` (or the
lock is ``acquire_max_s`` old: a path that never gets that fast is not asked at the
acquiring pace for ever), then every ``track_interval_s``; after ``idle_after`` requests
in a row without an answer (no responder yet), each one more doubles the interval, up to
``idle_interval_s``. At most ``max_in_flight`` are outstanding (when a new one is due
the oldest is given up); one unanswered for ``timeout_s`` is lost. Each request has a new
id; a response to an id not outstanding is ignored and counted (``stale``: it was lost,
or answered already; ``unknown``: never sent).

*Locked* means a model exists and its bound now is at most ``lock_bound_s`` (5 ms: over a
path jittery enough to need that long, a reading that good already beats what the frames'
arrival times give, and the agent's follower takes each new reading as it improves); then
:meth:`TimeExchange.to_local` maps a ``deadline_at`` onto the local monotonic clock and
:meth:`TimeExchange.pulse_wall_at` says what the pulse's wall clock reads at a local time.

Pure: every time is an argument.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edge.sync.hull import WindowHull
from edge.timeenvelope import (
    Point,
    bounds_at,
    levels,
    quiet_side_slope,
    slope_interval,
)
from edge.timewire import MAX_ID, TimeResponse

_NS = 1_000_000_000
_SQRT12 = math.sqrt(12.0)  # a uniform's width over its standard deviation


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    """The clock filter's and the schedule's parameters (see the module's theory)."""

    acquire_interval_s: float = 0.1
    track_interval_s: float = 1.0
    idle_interval_s: float = 5.0
    acquire_samples: int = 16
    tight_bound_s: float = 0.25e-3
    acquire_max_s: float = 10.0
    idle_after: int = 20
    max_in_flight: int = 4
    timeout_s: float = 2.0
    window: int = 128
    window_s: float = 120.0
    max_delay_s: float = 1.0
    lock_bound_s: float = 0.005
    min_samples: int = 2
    rate_prior_ppm: float = 200.0
    max_rate_ppm: float = 500.0
    rate_drift_ppm_per_s: float = 0.05
    quiet_ratio: float = 0.25
    step_confirm: int = 3
    precision_s: float = 2e-6


@dataclass(frozen=True, slots=True)
class Exchange:
    """One answered request: when it left and when its answer came (local monotonic s),
    and the two bounds on the offset it gives, relative to the filter's base (s):
    ``offset(t1) <= up`` and ``offset(t4) >= low``."""

    t1: float
    t4: float
    up: float
    low: float

    @property
    def mid(self) -> float:
        return (self.t1 + self.t4) / 2.0

    @property
    def offset(self) -> float:
        """NTP's offset estimate, at :attr:`mid`."""
        return (self.up + self.low) / 2.0

    @property
    def delay(self) -> float:
        """The round trip minus the responder's turnaround."""
        return self.up - self.low


class ClockFilter:
    """The window of exchanges, the two envelopes over it, and the pulse wall clock."""

    def __init__(self, config: ExchangeConfig) -> None:
        self._cfg = config
        #: Offsets are kept relative to this (pulse wall ns - local monotonic ns), so floats
        #: keep sub-microsecond precision.
        self.base_ns: int | None = None
        self._window: deque[Exchange] = deque()
        self._suspects: list[Exchange] = []
        # The window's two hulls, kept as exchanges come and go (edge.sync.hull) in local
        # monotonic time: the requests' lower hull, and the responses' upper hull negated
        # (a lower one). Descents: neighbours in the window out of time order (a response
        # overtaken by a later one); with any, that hull is taken from scratch.
        self._up_hull = WindowHull()  # the requests': (t1, up + precision)
        self._low_hull = WindowHull()  # the responses': (t4, precision - low)
        # bound_at's last answer, for the fit it was made for (callers ask it several
        # times at one instant: the lock, then the reading).
        self._bound_memo: tuple[float, float] | None = None
        self.rate = 0.0  # d(offset)/d(local time): pulse wall clock rate minus ours
        self.rate_error = config.max_rate_ppm * 1e-6
        # The fit: the estimate is level + rate * (t - ref); the hull vertices of the two
        # envelopes (times relative to ref) bound it; span: the window's length.
        self._ref = 0.0
        self._level = 0.0
        self._uppers: list[Point] = []
        self._lowers: list[Point] = []
        self._span = 0.0
        # Counters.
        self.used = 0
        self.steps = 0
        self.pruned = 0  # old exchanges dropped because no line explained the window
        self.rejected: dict[str, int] = {}

    # ------------------------------------------------------------------ answers

    @property
    def samples(self) -> int:
        return len(self._window)

    def interval_at(self, t: float) -> tuple[float, float]:
        """The interval the offset at ``t`` is proven to be in (relative to ``base_ns``)."""
        cfg = self._cfg
        low, high = bounds_at(
            self._uppers,
            self._lowers,
            t - self._ref,
            self.rate,
            self.rate_error,
            cfg.rate_drift_ppm_per_s * 1e-6,
            self._span,
        )
        return low - cfg.precision_s, high + cfg.precision_s

    def bound_at(self, t: float) -> float:
        """Bound on the error of the pulse wall clock read at local ``t`` (inf: no model)."""
        memo = self._bound_memo
        if memo is not None and memo[0] == t:
            return memo[1]
        if not self._uppers or len(self._window) < self._cfg.min_samples:
            return math.inf
        low, high = self.interval_at(t)
        estimate = self.offset_at(t)
        bound = max(high - estimate, estimate - low)
        self._bound_memo = (t, bound)
        return bound

    def offset_at(self, t: float) -> float:
        """Pulse wall minus local monotonic at ``t``, in seconds relative to ``base_ns``."""
        if not self._uppers:
            raise RuntimeError("the clock filter has no exchange yet")
        return self._level + self.rate * (t - self._ref)

    def pulse_wall_ns_at(self, t: float) -> int:
        """The pulse's wall clock (ns) at local monotonic ``t``."""
        assert self.base_ns is not None
        return self.base_ns + round((t + self.offset_at(t)) * _NS)

    def to_local(self, wall_ns: int) -> float:
        """The local monotonic time at which the pulse's wall clock reads ``wall_ns``."""
        if not self._uppers or self.base_ns is None:
            raise RuntimeError("the clock filter has no exchange yet")
        w = (wall_ns - self.base_ns) / _NS
        # w = t + level + rate * (t - ref), solved for t.
        return (w - self._level + self.rate * self._ref) / (1.0 + self.rate)

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
        if self.base_ns is None:
            self.base_ns = t2 - round(t1 * _NS)
        up = (t2 - self.base_ns - round(t1 * _NS)) / _NS
        low = (t3 - self.base_ns - round(t4 * _NS)) / _NS
        sample = Exchange(t1, t4, up, min(low, up))
        if self._uppers and not self._fits(sample):
            self._suspects.append(sample)
            if len(self._suspects) >= cfg.step_confirm and self._agree(self._suspects):
                self.steps += 1
                self._restart(self._suspects)
                self._suspects.clear()
                self._update()
                self.used += 1
                return "step"
            if len(self._suspects) >= cfg.step_confirm:
                self._suspects.pop(0)  # they do not agree: the oldest is a plain outlier
            return self._refuse("outlier")
        self._suspects.clear()
        self._append(sample)
        self._update()
        self.used += 1
        return "used"

    # ------------------------------------------------------------------ internals

    def _append(self, sample: Exchange) -> None:
        window = self._window
        last = window[-1] if window else None
        p = self._cfg.precision_s
        self._up_hull.append(sample.t1, sample.up + p, None if last is None else last.t1)
        self._low_hull.append(sample.t4, p - sample.low, None if last is None else last.t4)
        window.append(sample)

    def _pop_oldest(self) -> None:
        window = self._window
        gone = window.popleft()
        first = window[0] if window else None
        self._up_hull.drop_first(gone.t1, None if first is None else first.t1, self._up_points)
        self._low_hull.drop_first(gone.t4, None if first is None else first.t4, self._low_points)

    def _restart(self, samples: list[Exchange]) -> None:
        """The window becomes ``samples``; the hulls are rebuilt when next needed."""
        self._window.clear()
        self._up_hull.restart()
        self._low_hull.restart()
        for sample in samples:
            self._append(sample)

    def _up_points(self) -> Iterator[Point]:
        p = self._cfg.precision_s
        return ((s.t1, s.up + p) for s in self._window)

    def _low_points(self) -> Iterator[Point]:
        p = self._cfg.precision_s
        return ((s.t4, p - s.low) for s in self._window)

    def _hulls(self, ref: float) -> tuple[list[Point], list[Point]]:
        """The requests' lower hull and the responses' upper hull, times relative to
        ``ref``."""
        ups = self._up_hull.vertices(self._up_points)
        lows = self._low_hull.vertices(self._low_points)
        return [(x - ref, y) for x, y in ups], [(x - ref, -y) for x, y in lows]

    def _refuse(self, reason: str) -> str:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def _fits(self, sample: Exchange) -> bool:
        """Whether ``sample`` can be the model's clock seen through some delay: its request
        does not say the offset was below what the model proves, nor its response above."""
        slack = 2.0 * self._cfg.precision_s
        low, _ = self.interval_at(sample.t1)
        _, high = self.interval_at(sample.t4)
        return sample.up >= low - slack and sample.low <= high + slack

    def _agree(self, samples: list[Exchange]) -> bool:
        slack = self._cfg.rate_prior_ppm * 1e-6
        for a in samples:
            for b in samples:
                allowed = (a.delay + b.delay) / 2.0 + slack * abs(a.mid - b.mid) + 1e-5
                if abs(a.offset - b.offset) > allowed:
                    return False
        return True

    def _update(self) -> None:
        """Refit the envelopes to the window (the newest ``window`` exchanges of the last
        ``window_s``); while no line of a plausible rate explains it all (the rate changed,
        or a slow step), the oldest exchange goes."""
        cfg = self._cfg
        window = self._window
        newest = window[-1].t4 if self._low_hull.in_order else max(s.t4 for s in window)
        while len(window) > max(cfg.window, 1) or (
            len(window) > 1 and newest - window[0].t4 > cfg.window_s
        ):
            self._pop_oldest()
        self._bound_memo = None
        limit = cfg.max_rate_ppm * 1e-6
        while True:
            ref = newest if self._low_hull.in_order else max(s.t4 for s in window)
            uppers, lowers = self._hulls(ref)
            lo, hi = slope_interval(uppers, lowers, limit)
            if lo <= hi or len(window) == 1:
                break
            # The clock's rate changed inside the window: the older half goes (one at a
            # time would keep the oldest that still fit, and the fit would straddle the
            # change for a whole window).
            for _ in range(max(1, len(window) // 2)):
                self._pop_oldest()
                self.pruned += 1
        if lo > hi:  # one exchange whose own bounds conflict (not after the checks above)
            lo, hi = -limit, limit
        # The rate: the interval's middle (its spread that of a uniform over it), the
        # quieter way's envelope slope when one way is much quieter, and the prior (0 give
        # or take rate_prior_ppm), each weighed by the inverse of its variance; inside the
        # interval, and its error is the farther end (the bound stays proven).
        estimates = [((lo + hi) / 2.0, max((hi - lo) / _SQRT12, 1e-9))]
        estimates.append((0.0, cfg.rate_prior_ppm * 1e-6))
        p = cfg.precision_s
        ups = sorted((s.t1 - ref, s.up + p) for s in window)
        lows = sorted((s.t4 - ref, s.low - p) for s in window)
        quiet = quiet_side_slope(ups, lows, uppers, lowers, cfg.quiet_ratio)
        if quiet is not None:
            estimates.append((quiet[0], max(quiet[1], 1e-9)))
        weights = [1.0 / (sigma * sigma) for _, sigma in estimates]
        rate = sum(r * w for (r, _), w in zip(estimates, weights, strict=True)) / sum(weights)
        self.rate = min(max(rate, lo), hi)
        self.rate_error = max(hi - self.rate, self.rate - lo, 1e-9)
        self._ref = ref
        self._uppers, self._lowers = uppers, lowers
        self._span = ref - min(s.t1 for s in window)
        # The estimate now is the middle of what every line the window allows says now
        # (old points count as far as the rate is known: a rate barely known makes the
        # newest exchanges bind); it runs on at the middle rate.
        top, bottom = levels(uppers, lowers, self.rate)
        self._level = (top + bottom) / 2.0


def _system_ids() -> int:
    """A request id from the system's random source (see :class:`TimeExchange`)."""
    return secrets.randbits(64)


class TimeExchange:
    """The schedule of requests, their ids, and the clock filter their answers feed."""

    def __init__(
        self, config: ExchangeConfig | None = None, ids: Callable[[], int] | None = None
    ) -> None:
        self.config = config or ExchangeConfig()
        self.filter = ClockFilter(self.config)
        # Each request's id is drawn at random, never counted up: a response is signed over
        # its id, times and nothing else, so an id that can be guessed lets anyone on the
        # broker ask the responder for it early (under another name) and play that answer
        # as this one's, an exchange that seems to have taken no time, ahead of the real
        # one: the timeline moves by the lead. A random id can be asked only once it is
        # seen, and that answer is later than the responder's own.
        self._ids = ids or _system_ids
        self._in_flight: dict[int, float] = {}  # id -> t1
        self._done: deque[int] = deque(maxlen=256)  # ids answered or lost lately
        self._next_at = -math.inf
        self._unanswered = 0  # requests in a row that got no answer
        self._locked_since: float | None = None  # when the lock in force began
        self._tracking = False  # whether acquiring is over for this lock
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
            # Backing off, each unanswered request doubling the interval up to the idle
            # pace: a responder that starts a few seconds after us is heard within a
            # second or so, not at the next idle request.
            doublings = min(self._unanswered - cfg.idle_after + 1, 60)
            return min(cfg.idle_interval_s, cfg.acquire_interval_s * 2.0**doublings)
        if not self.locked_at(now):
            self._locked_since, self._tracking = None, False
            return cfg.acquire_interval_s
        if self._locked_since is None:
            self._locked_since = now
        if self.filter.samples < cfg.acquire_samples:
            return cfg.acquire_interval_s
        if not self._tracking:
            # Once tight (or long enough at it), tracking until the lock is lost: the bound
            # breathes between answers, and the pace should not follow it.
            self._tracking = (
                self.bound_at(now) <= cfg.tight_bound_s
                or now - self._locked_since >= cfg.acquire_max_s
            )
            if not self._tracking:
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
        request_id = self._ids() & MAX_ID
        while request_id in self._in_flight or request_id in self._done:
            request_id = self._ids() & MAX_ID  # ids match answers: never one in use
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
            if t1 + timeout <= now:  # as next_at() says, so a wake-up then expires it
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
        if was_idle or verdict == "outlier":
            # A responder appeared, or one disagrees with the model (its clock stepped or
            # changed rate?): ask at the acquiring pace again, to hear which soon.
            self._next_at = min(self._next_at, t4 + self.config.acquire_interval_s)
        return verdict
