"""The clock seam: the fake clock moves only when told and never backwards."""

from __future__ import annotations

import math
import queue
import time

import pytest

from edge.clock import Clock, FakeClock, SystemClock


def read(clock: Clock) -> tuple[float, float]:
    return clock.monotonic(), clock.wall()


def test_fake_clock_starts_where_told_and_stands_still() -> None:
    clock = FakeClock(monotonic=5.0, wall=1_000.0)
    assert read(clock) == (5.0, 1_000.0)
    assert read(clock) == (5.0, 1_000.0)


def test_fake_clock_defaults_to_a_plausible_wall_time() -> None:
    clock = FakeClock()
    assert clock.monotonic() == 1000.0
    assert clock.wall() == 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_advance_moves_both_readings_together() -> None:
    clock = FakeClock(monotonic=0.0, wall=100.0)
    clock.advance(1.5)
    clock.advance(0.0)
    assert read(clock) == (1.5, 101.5)


def test_advance_refuses_to_go_backwards() -> None:
    clock = FakeClock(monotonic=10.0, wall=100.0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-0.001)
    assert read(clock) == (10.0, 100.0)


def test_set_moves_forward_to_an_absolute_time() -> None:
    clock = FakeClock(monotonic=10.0, wall=100.0)
    clock.set(12.5)
    assert read(clock) == (12.5, 102.5)
    clock.set(12.5)  # already there: nothing happens
    assert read(clock) == (12.5, 102.5)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.set(12.0)
    assert read(clock) == (12.5, 102.5)


def test_step_wall_moves_only_the_wall_clock_either_way() -> None:
    clock = FakeClock(monotonic=10.0, wall=100.0)
    clock.step_wall(-3600.0)  # NTP pulls the wall clock back an hour
    assert read(clock) == (10.0, -3500.0)
    clock.step_wall(7200.0)
    assert read(clock) == (10.0, 3700.0)


def test_a_hundred_thousand_small_steps_add_up_without_reading_real_time() -> None:
    clock = FakeClock(monotonic=0.0, wall=0.0)
    for _ in range(100_000):
        clock.advance(0.001)
    assert clock.monotonic() == pytest.approx(100.0)
    assert clock.wall() == pytest.approx(100.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_advance_refuses_non_finite_steps(bad: float) -> None:
    clock = FakeClock(monotonic=1.0, wall=2.0)
    with pytest.raises(ValueError):
        clock.advance(bad)
    assert read(clock) == (1.0, 2.0)


def test_system_clock_reads_this_machine() -> None:
    clock: Clock = SystemClock()
    first = clock.monotonic()
    second = clock.monotonic()
    assert second >= first
    # The same clock time.time() reads (loose bound: only the source is checked here).
    assert abs(clock.wall() - time.time()) < 60.0


def test_step_wall_refuses_non_finite_steps() -> None:
    clock = FakeClock(monotonic=1.0, wall=2.0)
    with pytest.raises(ValueError, match="finite"):
        clock.step_wall(math.nan)
    assert read(clock) == (1.0, 2.0)


# --------------------------------------------------------------------------- waiting


def test_fake_wait_takes_a_queued_item_without_moving() -> None:
    clock = FakeClock(monotonic=1.0, wall=2.0)
    inbox: queue.Queue[str] = queue.Queue()
    inbox.put("frame")
    assert clock.wait(inbox, 0.05) == "frame"
    assert read(clock) == (1.0, 2.0)


def test_fake_wait_with_nothing_queued_moves_by_the_timeout() -> None:
    clock = FakeClock(monotonic=1.0, wall=2.0)
    inbox: queue.Queue[str] = queue.Queue()
    assert clock.wait(inbox, 0.05) is None
    assert read(clock) == pytest.approx((1.05, 2.05))
    assert clock.wait(None, 0.25) is None
    assert clock.monotonic() == pytest.approx(1.3)
    assert clock.wait(inbox, -0.1) is None and clock.wait(None, 0.0) is None  # a poll
    assert clock.monotonic() == pytest.approx(1.3)


def test_fake_spin_lands_on_the_deadline_and_never_goes_back() -> None:
    clock = FakeClock(monotonic=1.0, wall=2.0)
    clock.spin_until(1.0006)
    assert clock.monotonic() == 1.0006
    clock.spin_until(0.5)  # passed already: returns at once
    assert clock.monotonic() == 1.0006


def test_system_wait_returns_an_item_or_none_after_the_timeout() -> None:
    clock = SystemClock()
    inbox: queue.Queue[int] = queue.Queue()
    inbox.put(7)
    assert clock.wait(inbox, 1.0) == 7
    assert clock.wait(inbox, 0.0) is None  # a poll of an empty inbox
    start = time.monotonic()
    assert clock.wait(inbox, 0.01) is None
    assert clock.wait(None, 0.01) is None
    assert time.monotonic() - start >= 0.02
    deadline = time.monotonic() + 0.002
    clock.spin_until(deadline)
    assert time.monotonic() >= deadline
