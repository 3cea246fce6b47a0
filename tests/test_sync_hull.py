"""The sliding window's lower hull (edge.sync.hull) against the hull built from scratch."""

from __future__ import annotations

import random
from collections import deque

import pytest

from edge.sync import SyncConfig
from edge.sync.envelope import Envelope, Point, lower_envelope_slope
from edge.sync.hull import LowerHull, Vertex


def scratch(points: list[Vertex]) -> list[Vertex]:
    hull = LowerHull()
    hull.rebuild(points)
    return hull.vertices


def points(seed: int, n: int) -> list[Vertex]:
    """x in order with repeats now and then; y a line plus heavy-tailed delays."""
    rng = random.Random(seed)
    out, x = [], 0.0
    for _ in range(n):
        x += 0.0 if rng.random() < 0.05 else rng.choice((1.0, 1.0, 2.0))
        delay = min(0.05, 0.0003 * (rng.random() ** (-1 / 1.5) - 1.0))
        out.append((x, 100.0 + x * (1 + 40e-6) + delay))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("size", [2, 3, 7, 64])
def test_the_kept_hull_is_the_hull_from_scratch_at_every_step(seed: int, size: int) -> None:
    window: deque[Vertex] = deque()
    hull = LowerHull()
    rebuilt = 0
    for x, y in points(seed, 400):
        if len(window) >= size:
            window.popleft()
            hull.drop_first(iter(window))
        window.append((x, y))
        hull.append(x, y)
        if not hull.valid:  # allowed, but then it must say so
            rebuilt += 1
            hull.rebuild(window)
        assert hull.vertices == scratch(list(window))
    assert rebuilt <= 40  # the kept path, not a rebuild every time


def test_a_point_out_of_order_makes_the_hull_say_it_is_invalid() -> None:
    hull = LowerHull()
    hull.append(0.0, 0.0)
    hull.append(2.0, 0.0)
    hull.append(1.0, -1.0)
    assert not hull.valid


def test_the_slope_is_that_of_the_edge_under_the_mean() -> None:
    hull = LowerHull()
    hull.rebuild([(0.0, 1.0), (1.0, 0.0), (3.0, 1.0), (4.0, 3.0)])
    assert hull.vertices == [(0.0, 1.0), (1.0, 0.0), (3.0, 1.0), (4.0, 3.0)]
    assert hull.slope_under(0.5) == -1.0
    assert hull.slope_under(2.0) == 0.5
    assert hull.slope_under(9.0) == 2.0  # past the last vertex: the last edge
    assert LowerHull().slope_under(0.0) is None


@pytest.mark.parametrize("reorder", [0.0, 0.05])
def test_the_envelope_rate_from_its_kept_hull_is_the_rate_from_scratch(reorder: float) -> None:
    # A small window, so frames leave it; with reordering some arrive out of u order and
    # the envelope takes the hull from scratch while they are in the window.
    env = Envelope(SyncConfig(filter_window_frames=32))
    rng = random.Random(5)
    pending: list[Point] = []
    checked = unordered = 0
    for i in range(600):
        a = 10.0 + i * (1 + 40e-6) + rng.uniform(0.0, 0.02)
        pending.append((i, 0, a, float(i)))
        if rng.random() < reorder and len(pending) == 1:
            continue  # held back, it arrives after the next one
        for point in reversed(pending) if len(pending) > 1 else pending:
            env.add(point)
        pending = []
        window = list(env._window)
        last = window[-1]
        xs = [p[3] - last[3] for p in window]
        ys = [p[2] - last[2] for p in window]
        unordered += env._descents > 0
        if len(window) >= 2:
            kept = env._hull_slope(xs, ys, last[3])
            fresh = lower_envelope_slope(xs, ys)
            assert kept is not None and fresh is not None
            assert kept == pytest.approx(fresh, rel=1e-9)
            checked += 1
    assert checked > 500
    assert (unordered > 0) == (reorder > 0)
