"""The sliding window's lower hull (edge.sync.hull) against the hull built from scratch."""

from __future__ import annotations

import random
from collections import deque

import pytest

from edge.sync import SyncConfig
from edge.sync.envelope import Envelope, Point, lower_envelope_slope
from edge.sync.hull import LowerHull, Vertex, WindowHull
from edge.timefilter import ClockFilter, ExchangeConfig


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


def test_a_window_hull_is_the_scan_of_its_sorted_points_in_order_or_not() -> None:
    # A sliding window of 24 whose points now and then come one before the other: the
    # kept hull (in order) and the scan (while a disorder is in the window) are both the
    # hull of the points sorted, and the window is seen in order again once it is.
    rng = random.Random(3)
    source = points(9, 400)
    window: deque[Vertex] = deque()
    hull = WindowHull()
    in_order = out_of_order = 0
    i = 0
    while i < len(source):
        batch = [source[i]]
        if i + 1 < len(source) and rng.random() < 0.04:
            batch = [source[i + 1], source[i]]  # swapped on the way
        i += len(batch)
        for x, y in batch:
            if len(window) >= 24:
                gone = window.popleft()
                hull.drop_first(gone[0], window[0][0] if window else None, lambda: iter(window))
            hull.append(x, y, window[-1][0] if window else None)
            window.append((x, y))
            ordered = all(a[0] <= b[0] for a, b in zip(window, list(window)[1:], strict=False))
            assert hull.in_order == ordered
            in_order += ordered
            out_of_order += not ordered
            assert hull.vertices(lambda: iter(window)) == scratch(sorted(window))
    assert in_order > 150 and out_of_order > 150
    hull.restart()
    assert hull.in_order and hull.vertices(lambda: iter(())) == []


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
        unordered += not env._hull.in_order
        if len(window) >= 2:
            kept = env._hull_slope(sum(xs) / len(xs) + last[3])
            # From scratch the hull is the points' in u order (not the window's order).
            by_u = sorted(zip(xs, ys, strict=True))
            fresh = lower_envelope_slope([x for x, _ in by_u], [y for _, y in by_u])
            assert kept is not None and fresh is not None
            assert kept == pytest.approx(fresh, rel=1e-9)
            checked += 1
    assert checked > 500
    assert (unordered > 0) == (reorder > 0)


def test_the_clock_filter_keeps_the_hulls_a_scan_from_scratch_finds() -> None:
    # A small window, so exchanges leave it; some responses overtake the one before
    # (requests then out of t1 order), the responder's clock steps once and its rate
    # changes once (the window is pruned): at every step the kept hulls are the scan's.
    cfg = ExchangeConfig(window=64)
    f = ClockFilter(cfg)
    rng = random.Random(11)
    base = 1_767_225_600 * 10**9
    p = cfg.precision_s
    pending: list[tuple[float, int, int, float]] = []
    checked = unordered = 0
    for i in range(500):
        t1 = 100.0 + i
        # Continuous where the rate changes by 20 ppm (at t1 = 400 s); a 2 s step at 250.
        pulse = t1 * (1 + 30e-6) + max(0.0, t1 - 400.0) * 20e-6 + (2.0 if i >= 150 else 0.0)
        wall = base + round(pulse * 1e9)
        d1, d2 = (1e-4 + 2e-4 * rng.random() + 3e-3 * (rng.random() < 0.05) for _ in "ab")
        t2 = wall + round(d1 * 1e9)
        exchange = (t1, t2, t2 + 40_000, t1 + d1 + d2 + 40e-6)
        if rng.random() < 0.01 and not pending:
            pending.append(exchange)  # overtaken: it arrives after the next one
            continue
        for t1_, t2_, t3_, t4_ in [exchange, *pending]:
            f.add(t1_, t2_, t3_, t4_)
        pending.clear()
        window = list(f._window)
        unordered += not f._up_hull.in_order
        ref = f._ref
        ups = scratch(sorted((s.t1, s.up + p) for s in window))
        lows = scratch(sorted((s.t4, p - s.low) for s in window))
        assert f._uppers == [(x - ref, y) for x, y in ups]
        assert f._lowers == [(x - ref, -y) for x, y in lows]
        checked += 1
    assert checked > 400
    # Both ways were checked: kept while in order, from scratch while not.
    assert 0 < unordered < checked - 100
    assert f.steps >= 1 and f.pruned > 0
