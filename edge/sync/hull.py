"""The lower convex hull of a sliding window of points, kept as points come and go.

The envelope's rate is the slope of the lower hull's edge under the window's mean ``x``
(:func:`edge.sync.envelope.lower_envelope_slope`). Built from scratch that is a pass over
the whole window at every frame, most of a full window's refit (~0.7 ms of 1.2 ms for
1024 frames here). Kept instead: a point appended on the right is one step of the same
monotone chain; the leftmost point, dropped, is always the hull's first vertex, and only
the points before the second vertex can take its place (every other vertex stays one,
since dropping a point only uncovers points under the edge it ended). So the work per
frame is the chain step plus the points up to the second vertex, and the vertices are
those the scan from scratch finds.

Points come in ``x`` order (non-decreasing). A point out of order (a frame reordered on
the network) makes the kept hull invalid; :attr:`LowerHull.valid` says so.
:class:`WindowHull` is what the follower's envelope and the time exchange's clock filter
keep: the hull with its window's order counted, so that while a disorder is in the window
the hull is scanned from the points sorted, and once the window is in order again it is
rebuilt once and kept from there.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator

Vertex = tuple[float, float]

#: At most this many of the lowest residuals tell how densely points crowd their envelope.
SPACING_ORDER = 16


def chain_step(hull: list[Vertex], x: float, y: float) -> None:
    """Add ``(x, y)`` (``x`` not below the last vertex's) to the lower chain ``hull``:
    pop the vertices it makes non-convex (collinear ones too), then keep the lower of
    two points at one ``x``."""
    while len(hull) >= 2:
        (ox, oy), (ax, ay) = hull[-2], hull[-1]
        if (ax - ox) * (y - oy) - (ay - oy) * (x - ox) <= 0.0:
            hull.pop()
        else:
            break
    if hull and x <= hull[-1][0]:
        if y < hull[-1][1]:
            hull[-1] = (x, y)
        return
    hull.append((x, y))


class LowerHull:
    """The lower hull of the points of a window, in ``x`` order."""

    __slots__ = ("valid", "vertices")

    def __init__(self) -> None:
        self.vertices: list[Vertex] = []
        #: False after a point out of ``x`` order: :meth:`rebuild` before use.
        self.valid = True

    def rebuild(self, points: Iterable[Vertex]) -> None:
        """The hull of ``points`` (in ``x`` order), from scratch."""
        self.vertices = lower_hull(points)
        self.valid = True

    def append(self, x: float, y: float) -> None:
        """A point joins the window on the right."""
        if not self.valid:
            return
        if self.vertices and x < self.vertices[-1][0]:
            self.valid = False
            return
        chain_step(self.vertices, x, y)

    def drop_first(self, rest: Iterator[Vertex]) -> None:
        """The window's leftmost point left; ``rest`` yields the points still in the
        window, in order (only those up to the second vertex are read)."""
        if not self.valid or not self.vertices:
            return
        old = self.vertices
        if len(old) < 2:
            self.rebuild(rest)
            return
        second = old[1]
        left: list[Vertex] = []
        for x, y in rest:
            chain_step(left, x, y)
            if x >= second[0]:
                break
        # The chain up to the second vertex ends on it (nothing in the window is under
        # it), so the old hull carries on from there.
        if left and left[-1] == second:
            self.vertices = left + old[2:]
        else:  # only if the window changed some other way: start again
            self.valid = False

    def slope_under(self, mean_x: float) -> float | None:
        """:func:`edge_slope` of this hull."""
        return edge_slope(self.vertices, mean_x)


class WindowHull:
    """The lower hull of a sliding window whose points may come out of ``x`` order.

    The owner keeps the window and tells of each point that joins it on the right
    (:meth:`append`) or leaves it on the left (:meth:`drop_first`), with the ``x`` of its
    neighbour there. The count of neighbours out of order says whether the kept
    :class:`LowerHull` can be trusted: :meth:`vertices` answers from it while the window is
    in order and scans the sorted points while it is not.
    """

    __slots__ = ("_descents", "_hull")

    def __init__(self) -> None:
        self._hull = LowerHull()
        self._descents = 0  # neighbours in the window with x below the one before

    @property
    def in_order(self) -> bool:
        return self._descents == 0

    def restart(self) -> None:
        """The window was emptied: the points appended next are all of it."""
        self._descents = 0
        self._hull.rebuild(())

    def append(self, x: float, y: float, before_x: float | None) -> None:
        """``(x, y)`` joined the window on the right, after a point at ``before_x`` (None:
        the window was empty)."""
        if before_x is not None and x < before_x:
            self._descents += 1
        self._hull.append(x, y)

    def drop_first(
        self, gone_x: float, next_x: float | None, rest: Callable[[], Iterator[Vertex]]
    ) -> None:
        """The leftmost point (at ``gone_x``) left; ``next_x`` is the new leftmost's (None:
        the window is empty) and ``rest()`` yields the points still in it, in order."""
        if next_x is not None and next_x < gone_x:
            self._descents -= 1
        if self._descents == 0:
            self._hull.drop_first(rest())
        else:
            self._hull.valid = False

    def vertices(self, points: Callable[[], Iterable[Vertex]]) -> list[Vertex]:
        """The hull of the window (``points()``: its points, in window order): the kept one
        while the window is in order (rebuilt once after a disorder has left it), from
        scratch over the sorted points while one is in it (made only then)."""
        if self._descents:
            return lower_hull(sorted(points()))
        if not self._hull.valid:
            self._hull.rebuild(points())
        return self._hull.vertices


def lower_hull(points: Iterable[Vertex]) -> list[Vertex]:
    """The lower hull of ``points`` (in ``x`` order), from scratch."""
    hull: list[Vertex] = []
    for x, y in points:
        chain_step(hull, x, y)
    return hull


def edge_slope(hull: list[Vertex], mean_x: float) -> float | None:
    """The slope of the hull's edge spanning ``mean_x`` (the last edge if none does: the
    one-sided envelope closest to the points on average, Moon, Skelly and Towsley's
    estimator); None with fewer than two vertices."""
    if len(hull) < 2:
        return None
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if x2 >= mean_x:
            return (y2 - y1) / (x2 - x1)
    (x1, y1), (x2, y2) = hull[-2], hull[-1]
    return (y2 - y1) / (x2 - x1)


def floor_spacing(residuals: Iterable[float], at_least: int = 3, resting: int = 0) -> float:
    """Mean gap between the lowest of ``residuals`` (heights above an envelope line): the
    lowest quarter, ``at_least`` to ``SPACING_ORDER`` of them, how densely the points crowd
    the line; inf with fewer than ``at_least``. The lowest ``resting`` are left out: the
    points a hull's own edge rests on, 0 by construction, say nothing of that density."""
    values = list(residuals)
    n = len(values) - resting
    if n < at_least:
        return math.inf
    lowest = heapq.nsmallest(min(SPACING_ORDER, max(at_least, n // 4)) + resting, values)
    lowest = lowest[resting:]
    return (lowest[-1] - lowest[0]) / (len(lowest) - 1)
