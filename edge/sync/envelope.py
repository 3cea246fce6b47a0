"""The lower-envelope fit: the line under the arrivals, its rate, its error statistics.

Arrival time ``a`` plotted against Pulse time ``u`` lies on or above one straight line
``a = t0 + slope * (u - u0)``; the window of the last ``filter_window_frames`` arrivals is
fitted from below (see the theory in :mod:`edge.sync.follower`). This module also decides
which arrivals enter the window: early or late outliers are held back until enough of
them in a row say the timeline really moved.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

from edge.sync.config import SyncConfig
from edge.sync.hull import LowerHull, Vertex, WindowHull, edge_slope, floor_spacing

Point: TypeAlias = tuple[int, int, float, float]  # (beat, phase index, arrival, u)

_BOUND_FLOOR_S = 10e-6
_RATE_SMOOTHING = 1.0 / 16
_OFFSET_Z = 6.0  # envelope gap bound in mean spacings (p99 of an exponential: 4.6)
_RATE_Z = 20.0  # slope bound in mean spacings per window span
_RATE_FLOOR = 1e-6  # slope bound never below 1 ppm (smoothing, float and model error)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def lower_envelope_slope(xs: list[float], ys: list[float]) -> float | None:
    """Slope of the lowest line under all points that is highest at their mean ``x``.

    That line is the edge of the lower convex hull spanning the mean (the linear program
    "maximise the sum of line heights subject to line <= every point"). ``xs`` must be
    increasing. None if fewer than two distinct ``x``. From scratch; the envelope keeps
    its window's hull as frames come and go (:mod:`edge.sync.hull`).
    """
    hull = LowerHull()
    hull.rebuild(zip(xs, ys, strict=True))
    return hull.slope_under(sum(xs) / len(xs))


class Admission(enum.Enum):
    """What :meth:`Envelope.admit` did with a point."""

    FIT = "fit"  # within the tolerances: in the window
    OUTLIER = "outlier"  # early (held back) or late (in the window, counted)
    RESTARTED = "restarted"  # an outlier that completed a run: the window restarted


class Envelope:
    """The window of arrivals and the line fitted under it.

    ``at(u)`` is the envelope's local time for Pulse time ``u``; ``u_at(t)`` its inverse.
    Before the first :meth:`refit` the line is ``a = u`` (slope 1, no offset).
    """

    def __init__(self, config: SyncConfig) -> None:
        self._cfg = config
        self.u0 = 0.0
        self.t0 = 0.0
        self.slope = 1.0
        self._rate_known = False
        self._rate_fits = 0
        self._rate_err = config.max_rate_ppm * 1e-6
        # Error-bound statistics of the last fit (see bound_at).
        self._fit_spacing = math.inf
        self._fit_ends = (0.0, 0.0)  # arrivals of the window's first and last frame
        self._window: deque[Point] = deque()
        # The window's lower hull in (u, arrival), and how many neighbours in the window
        # are out of u order (a frame reordered on the network): with any, the hull is
        # taken from scratch (see edge.sync.hull).
        self._hull = WindowHull()
        self._early_run: list[Point] = []
        self._late_run: list[tuple[Point, float]] = []

    def at(self, u: float) -> float:
        return self.t0 + self.slope * (u - self.u0)

    def u_at(self, t: float) -> float:
        return self.u0 + (t - self.t0) / self.slope

    def reset(self) -> None:
        """Forget every point (a new timeline); the line and the rate are kept."""
        self._replace([])
        self._early_run.clear()
        self._late_run.clear()

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to the beat index of every point kept."""
        self._window = deque((k + shift, p, a, u) for k, p, a, u in self._window)
        self._early_run = [(k + shift, p, a, u) for k, p, a, u in self._early_run]
        self._late_run = [((k + shift, p, a, u), r) for (k, p, a, u), r in self._late_run]

    def retime(self, u_of: Callable[[int, int], float]) -> None:
        """The tempo map changed under the window: recompute each point's ``u``."""
        self._replace([(k, p, a, u_of(k, p)) for k, p, a, _ in self._window])

    def add(self, point: Point) -> None:
        """Put a point in the window as it is (while acquiring)."""
        self._append(point)

    def _append(self, point: Point) -> None:
        """A point joins the window on the right; past ``filter_window_frames`` the oldest
        leaves on the left."""
        window = self._window
        if len(window) >= self._cfg.filter_window_frames:
            gone = window.popleft()
            self._hull.drop_first(
                gone[3], window[0][3] if window else None, lambda: _hull_points(window)
            )
        self._hull.append(point[3], point[2], window[-1][3] if window else None)
        window.append(point)

    def _replace(self, points: list[Point]) -> None:
        """The window becomes ``points`` (the newest kept), its hull and order counted anew."""
        self._window = deque()
        self._hull.restart()
        for point in points[-self._cfg.filter_window_frames :]:
            self._append(point)

    def admit(self, point: Point, residual: float, early_tolerance: float) -> Admission:
        """Put a point with this residual from the line in the window, unless it is early.

        A point earlier than ``early_tolerance`` is held back; later than the jitter
        tolerance it enters but counts as late. ``relock_after_frames`` early ones in a
        row, or late ones consistent with each other, restart the window from them.
        """
        cfg = self._cfg
        if residual < -early_tolerance:
            self._late_run.clear()
            self._early_run.append(point)
            if len(self._early_run) >= cfg.relock_after_frames:
                self._restart(self._early_run)
                self._early_run = []
                return Admission.RESTARTED
            return Admission.OUTLIER
        if residual > cfg.jitter_tolerance_s:
            self._early_run.clear()
            self._late_run.append((point, residual))
            self._append(point)
            if len(self._late_run) >= cfg.relock_after_frames:
                spread = [r for _, r in self._late_run]
                restart = max(spread) - min(spread) <= 2.0 * cfg.jitter_tolerance_s
                if restart:
                    self._restart([pt for pt, _ in self._late_run])
                self._late_run = []
                if restart:
                    return Admission.RESTARTED
            return Admission.OUTLIER
        self._early_run.clear()
        self._late_run.clear()
        self._append(point)
        return Admission.FIT

    def _restart(self, points: list[Point]) -> None:
        """The timeline moved: refit from these recent points only (rate is kept)."""
        self._replace(points)

    def residuals(self) -> list[float]:
        """Each kept arrival minus the line."""
        return [a - self.at(u) for _, _, a, u in self._window]

    def bound_at(self, t: float) -> float:
        """The fit's own part of the error bound at local time ``t`` (see
        :meth:`edge.sync.follower.BeatFollower.error_bound_at`): the envelope's gap above
        the true floor plus the slope uncertainty times the reach from the window."""
        if math.isfinite(self._fit_spacing):
            base = max(_OFFSET_Z * self._fit_spacing, _BOUND_FLOOR_S)
        else:
            base = self._cfg.jitter_tolerance_s
        rate_err = self._rate_err if self._rate_known else self._cfg.max_rate_ppm * 1e-6
        first, last = self._fit_ends
        reach = max(abs(t - first), abs(t - last))
        return base + rate_err * reach

    def _hull_slope(self, mean_u: float) -> float | None:
        """:func:`lower_envelope_slope` of the window, whose mean ``u`` is ``mean_u``."""
        window = self._window
        return edge_slope(self._hull.vertices(lambda: _hull_points(window)), mean_u)

    def refit(self) -> None:
        """Fit the lower envelope to the window and refresh the error-bound statistics.

        The slope is re-estimated only once the window spans ``rate_min_span_s`` and the
        estimate's own uncertainty is below ``rate_max_uncertainty_ppm``; until then it is
        held (and its uncertainty is ``max_rate_ppm``). O(window) per call.
        """
        points = self._window
        if not points:
            return
        last = points[-1]
        u_ref, a_ref = last[3], last[2]
        xs = [pt[3] - u_ref for pt in points]
        ys = [pt[2] - a_ref for pt in points]
        cfg = self._cfg
        span = last[2] - points[0][2]
        slope = self.slope
        if len(points) >= cfg.rate_min_frames and span >= cfg.rate_min_span_s and span > 0:
            estimate = self._hull_slope(sum(xs) / len(xs) + u_ref)
            limit = cfg.max_rate_ppm * 1e-6
            # A reading past max_rate_ppm is not the clocks' rate but the delays' noise (a
            # few frames with large jitter): it is no reading at all, rather than one held
            # at the limit.
            if estimate is not None and 1.0 / (1.0 + limit) <= estimate <= 1.0 / (1.0 - limit):
                # The hull's line rests on two of the points by construction: their zero
                # residuals say nothing of how dense the delays are near the floor, and with
                # few points they made a noisy slope look certain.
                gap = floor_spacing(
                    (y - estimate * x for x, y in zip(xs, ys, strict=True)), resting=2
                )
                uncertainty = _RATE_Z * gap / span
                if uncertainty <= cfg.rate_max_uncertainty_ppm * 1e-6:
                    # Successive windows share most points, so one hull edge is a noisy
                    # reading: average them (first readings count fully, later ones 1/16).
                    self._rate_fits += 1
                    weight = max(1.0 / self._rate_fits, _RATE_SMOOTHING)
                    slope = slope + (estimate - slope) * weight
                    # Honest: the window's own slope uncertainty, plus how far the smoothed
                    # slope still is from this reading (large while it catches up).
                    self._rate_err = min(
                        uncertainty + abs(slope - estimate) + _RATE_FLOOR, 2.0 * limit
                    )
                    self._rate_known = True
        offsets = [y - slope * x for x, y in zip(xs, ys, strict=True)]
        offset = min(offsets)
        self.slope = slope
        self.u0 = u_ref
        self.t0 = a_ref + offset
        self._fit_ends = (points[0][2], last[2])
        self._fit_spacing = floor_spacing(offsets)


def _hull_points(window: Iterable[Point]) -> Iterator[Vertex]:
    """A window's points as the hull sees them: ``(u, arrival)``."""
    return ((u, a) for _, _, a, u in window)
