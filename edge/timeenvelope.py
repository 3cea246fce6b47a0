"""The two one-sided envelopes of the time exchange: the lines the pulse's offset lies between.

Every exchange bounds the offset ``theta(t)`` (pulse wall minus local monotonic) twice,
each bound holding whatever the other way's delay was: the request says
``theta(t1) <= t2 - t1`` (it cannot have arrived before it left) and the response says
``theta(t4) >= t3 - t4``. With ``theta`` a line of slope ``r`` (the rate difference of the
two clocks), the *upper* points ``(t1, t2 - t1)`` all lie on or above it and the *lower*
points ``(t4, t3 - t4)`` on or below it. Only the lower convex hull of the upper points
and the upper convex hull of the lower points can ever bind, so the fit works on those
(a few vertices out of the window).

:func:`slope_interval` gives the slopes some line between the two point sets has (empty
when none has: the window holds exchanges no single line explains). :func:`levels` gives,
for one slope, the lowest upper envelope and the highest lower envelope; the estimate is
their midpoint, and :func:`bounds_at` the interval the offset at ``t`` is proven to be in
when the slope is known only within ``rate_error`` and may drift by ``drift`` per second.

Pure: every time is an argument (seconds, relative to whatever origin the caller uses).
"""

from __future__ import annotations

import math

from edge.sync.hull import edge_slope, floor_spacing

Point = tuple[float, float]  # (local monotonic time, offset bound)

_QUIET_MIN_POINTS = 16  # fewer: the spacings themselves are too noisy to compare
_TINY = 1e-18  # s^2: two spacings of 0 weigh the same
_SLOPE_Z = 20.0  # an envelope slope's spread, in spacings per span (edge.sync.envelope's)


def slope_interval(uppers: list[Point], lowers: list[Point], limit: float) -> tuple[float, float]:
    """The slopes within ``[-limit, limit]`` of the lines under every upper point and over
    every lower point (hull vertices suffice); ``lo > hi`` when there is none.

    A line of slope ``r`` fits iff ``low_j - r * x_j <= up_i - r * x_i`` for every pair,
    i.e. ``r >= (low_j - up_i) / (x_j - x_i)`` for a lower point after an upper one and
    ``r <= (up_i - low_j) / (x_i - x_j)`` for one before it."""
    lo, hi = -limit, limit
    for xu, yu in uppers:
        for xl, yl in lowers:
            dx = xl - xu
            if dx > 0.0:
                lo = max(lo, (yl - yu) / dx)
            elif dx < 0.0:
                hi = min(hi, (yu - yl) / -dx)
            elif yl > yu:
                return math.inf, -math.inf
    return lo, hi


def levels(uppers: list[Point], lowers: list[Point], rate: float) -> tuple[float, float]:
    """For lines of slope ``rate``, the values at time 0 of the highest one under every
    upper point and of the lowest one over every lower point (the two envelopes)."""
    top = min(y - rate * x for x, y in uppers)
    bottom = max(y - rate * x for x, y in lowers)
    return top, bottom


def bounds_at(
    uppers: list[Point],
    lowers: list[Point],
    t: float,
    rate: float,
    rate_error: float,
    drift: float,
    span: float,
) -> tuple[float, float]:
    """The interval the offset at ``t`` is proven to be in: each point bounds it, carried
    from its time at ``rate`` give or take ``rate_error``, plus what a rate drifting by up
    to ``drift`` (1/s) may have added since the window (``span`` long) measured it."""

    def slack(x: float) -> float:
        age = abs(t - x)
        return rate_error * age + drift * age * (span + age)

    high = min(y + rate * (t - x) + slack(x) for x, y in uppers)
    low = max(y + rate * (t - x) - slack(x) for x, y in lowers)
    return low, high


def quiet_side_slope(
    ups: list[Point],
    lows: list[Point],
    uppers: list[Point],
    lowers: list[Point],
    quiet_ratio: float,
) -> tuple[float, float] | None:
    """The rate from the envelopes alone, when one way is much quieter than the other
    (its points crowd its envelope ``1 / quiet_ratio`` times closer, as requests do on a
    path that queues only the answers), and how far off it may be (one sigma, 1/s): each
    envelope's own slope (:func:`edge.sync.hull.edge_slope`), weighted by the inverse square of its
    spacing; the spread is ``_SLOPE_Z`` spacings over the window's span. None when neither
    way is that quiet (then the middle of :func:`slope_interval` is better: it uses the
    pairs across the whole window) or an envelope has too few points. ``ups``/``lows``:
    all the points (sorted by time); ``uppers``/``lowers``: their hulls."""
    if min(len(ups), len(lows)) < _QUIET_MIN_POINTS:
        return None
    su = edge_slope(uppers, sum(x for x, _ in ups) / len(ups))
    sl = edge_slope(lowers, sum(x for x, _ in lows) / len(lows))
    if su is None or sl is None:
        return None
    # Above the envelope's own slope two residuals are 0 by construction: the spacing is
    # taken over six at least, so those two do not make a noisy way look quiet.
    gu = floor_spacing([y - su * x for x, y in ups], at_least=6)
    gl = floor_spacing([sl * x - y for x, y in lows], at_least=6)
    span = max(ups[-1][0], lows[-1][0]) - min(ups[0][0], lows[0][0])
    if not math.isfinite(gu) or not math.isfinite(gl) or span <= 0.0:
        return None
    if min(gu, gl) > quiet_ratio * max(gu, gl):
        return None
    wu, wl = 1.0 / (gu * gu + _TINY), 1.0 / (gl * gl + _TINY)
    slope = (su * wu + sl * wl) / (wu + wl)
    return slope, _SLOPE_Z / math.sqrt(wu + wl) / span
