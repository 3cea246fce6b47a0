"""The hybrid logical clock: format, now(), merge(), monotonicity, the 16-bit wall wrap."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from edge.clock import FakeClock
from edge.errors import FrameError
from edge.hlc import (
    DEFAULT_MAX_AHEAD_S,
    HlcAheadError,
    HybridLogicalClock,
    Timestamp,
    compare,
    node_id,
    parse,
    unwrap,
)

WIRE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{4}:[0-9a-f]{4}")
WRAP = 0x10000


def hlc_at(wall: float, node: int = 0xBEEF) -> tuple[FakeClock, HybridLogicalClock]:
    clock = FakeClock(monotonic=0.0, wall=wall)
    return clock, HybridLogicalClock(clock, node)


def test_now_wire_is_three_groups_of_four_lowercase_hex_digits() -> None:
    _, hlc = hlc_at(0x12345 + 0.75)
    text = hlc.now_wire()
    assert WIRE.fullmatch(text)
    assert text == "2345:0000:beef"  # low 16 bits of the wall second, logical 0, node


def test_logical_counts_within_a_second_and_resets_when_the_wall_moves() -> None:
    clock, hlc = hlc_at(100.0)
    assert [hlc.now_wire() for _ in range(3)] == [
        "0064:0000:beef",
        "0064:0001:beef",
        "0064:0002:beef",
    ]
    clock.advance(0.5)  # same second
    assert hlc.now_wire() == "0064:0003:beef"
    clock.advance(0.5)
    assert hlc.now_wire() == "0065:0000:beef"


def test_now_is_monotonic_when_the_wall_clock_steps_back() -> None:
    clock, hlc = hlc_at(10_000.0)
    stamps = [hlc.now()]
    clock.step_wall(-3600.0)  # NTP pulls the wall clock back an hour
    for _ in range(5):
        stamps.append(hlc.now())
        clock.advance(1.0)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(s.wall == 10_000 for s in stamps)  # it waits for physical time to catch up
    assert [s.logical for s in stamps] == [0, 1, 2, 3, 4, 5]
    wires = [s.wire() for s in stamps]
    assert all(compare(a, b) == -1 for a, b in itertools.pairwise(wires))


def test_merge_takes_a_received_time_from_the_future() -> None:
    _, hlc = hlc_at(100.0)
    hlc.now()
    got = hlc.merge("00c8:0007:0001")  # wall 200 > our 100
    assert (got.wall, got.logical, got.node) == (200, 8, 0xBEEF)
    assert hlc.now() == Timestamp(200, 9, 0xBEEF)


def test_merge_keeps_our_time_when_the_received_one_is_older() -> None:
    _, hlc = hlc_at(100.0)
    hlc.now()
    hlc.now()
    got = hlc.merge("0032:0009:0001")  # wall 50 < our 100
    assert (got.wall, got.logical) == (100, 2)


def test_merge_with_equal_walls_goes_one_past_the_larger_logical() -> None:
    _, hlc = hlc_at(100.0)
    hlc.now()
    assert hlc.merge("0064:0005:0001") == Timestamp(100, 6, 0xBEEF)
    assert hlc.merge("0064:0002:0001") == Timestamp(100, 7, 0xBEEF)


def test_merge_resets_logical_when_physical_time_is_ahead_of_both() -> None:
    clock, hlc = hlc_at(100.0)
    hlc.now()
    clock.advance(10.0)
    assert hlc.merge("0064:0009:0001") == Timestamp(110, 0, 0xBEEF)


def test_merge_reads_uppercase_and_refuses_malformed_timestamps() -> None:
    _, hlc = hlc_at(0xFFF0)
    assert hlc.merge("FFF0:000A:BEEF") == Timestamp(0xFFF0, 11, 0xBEEF)
    for bad in ("fff0:000a", "fff0:000a:beef:1", "fffg:0000:0000", "", " fff0:000a:beef"):
        with pytest.raises(FrameError, match="hlc must be"):
            hlc.merge(bad)
    with pytest.raises(FrameError):
        parse(123)  # type: ignore[arg-type]


def test_merged_timestamps_stay_ordered_after_every_receive() -> None:
    clock, hlc = hlc_at(1_000.0)
    previous = hlc.now()
    for received in ("03e8:0004:0002", "03e9:0000:0003", "03e7:ffff:0004", "03f0:0001:0005"):
        current = hlc.merge(received)
        assert current > previous
        assert compare(current.wire(), received) == 1  # a receive follows the send
        previous = current
        clock.advance(0.25)


# --------------------------------------------------------------------------- the wall wrap


def test_unwrap_picks_the_nearest_second_with_those_low_bits() -> None:
    assert unwrap(0x0001, near=5 * WRAP - 1) == 5 * WRAP + 1  # just after the wrap
    assert unwrap(0xFFFF, near=5 * WRAP + 1) == 5 * WRAP - 1  # just before it
    assert unwrap(0x1234, near=5 * WRAP + 0x1234) == 5 * WRAP + 0x1234
    assert unwrap(0x7FFF, near=0) == 0x7FFF  # half a cycle ahead still reads as ahead
    assert unwrap(0x8000, near=0) == -0x8000  # beyond half a cycle reads as behind


def test_the_wire_wall_wraps_every_65536_seconds_and_stays_ordered() -> None:
    clock, hlc = hlc_at(3 * WRAP - 1.0)
    before = hlc.now_wire()
    clock.advance(1.0)
    after = hlc.now_wire()
    assert (before, after) == ("ffff:0000:beef", "0000:0000:beef")
    assert compare(before, after) == -1 and compare(after, before) == 1
    assert hlc.now().wall == 3 * WRAP  # internally the count of seconds goes on


def test_merge_across_the_wrap_moves_forward_not_back_eighteen_hours() -> None:
    _, hlc = hlc_at(3 * WRAP - 2.0)  # our wire wall is fffe
    hlc.now()
    got = hlc.merge("0002:0003:0001")  # the sender has already wrapped
    assert got.wall == 3 * WRAP + 2 and got.logical == 4
    assert got.wire() == "0002:0004:beef"


def test_compare_orders_correctly_up_to_nine_hours_apart_across_the_wrap() -> None:
    nine_hours = 9 * 3600
    a = Timestamp(3 * WRAP - 100, 0, 1).wire()
    b = Timestamp(3 * WRAP - 100 + nine_hours, 0, 1).wire()
    assert compare(a, b) == -1 and compare(b, a) == 1
    assert compare(a, a) == 0
    # Beyond half a cycle (about 9.1 hours) the order is ambiguous by design: documented.
    c = Timestamp(3 * WRAP - 100 + 10 * 3600, 0, 1).wire()
    assert compare(a, c) == 1


def test_compare_breaks_ties_by_logical_then_node() -> None:
    assert compare("0001:0001:0000", "0001:0002:0000") == -1
    assert compare("0001:0002:0001", "0001:0002:0002") == -1
    assert compare("0001:0002:0002", "0001:0002:0002") == 0
    assert compare("0001:0002:00AA", "0001:0002:00aa") == 0


def test_logical_overflow_borrows_the_next_second() -> None:
    _, hlc = hlc_at(500.0)
    last = hlc.now()
    for _ in range(0xFFFF):
        last = hlc.now()
    assert (last.wall, last.logical) == (500, 0xFFFF)
    nxt = hlc.now()
    assert (nxt.wall, nxt.logical) == (501, 0) and nxt > last
    assert hlc.merge("01f5:ffff:0001") == Timestamp(502, 0, 0xBEEF)  # 501:ffff + 1 borrows too


# --------------------------------------------------------------------------- node ids


def test_node_id_is_a_stable_16_bit_value() -> None:
    assert node_id("edge:pi-07") == node_id("edge:pi-07")
    assert 0 <= node_id("edge:pi-07") <= 0xFFFF
    assert node_id("edge:pi-07") != node_id("edge:pi-08")
    assert len({node_id(f"edge:pi-{i:02d}") for i in range(50)}) >= 48
    _, hlc = hlc_at(1.0, node=node_id("edge:pi-07"))
    assert hlc.node == node_id("edge:pi-07")
    assert hlc.now_wire().endswith(f":{node_id('edge:pi-07'):04x}")


@pytest.mark.parametrize("node", [-1, 0x10000])
def test_node_must_fit_in_16_bits(node: int) -> None:
    with pytest.raises(ValueError, match="node must be between 0 and 65535"):
        HybridLogicalClock(FakeClock(), node)


# --------------------------------------------------------------------------- the bound


def bounded_at(wall: float, bound: float = DEFAULT_MAX_AHEAD_S) -> HybridLogicalClock:
    return HybridLogicalClock(FakeClock(monotonic=0.0, wall=wall), 0xBEEF, max_ahead_s=bound)


def test_the_agent_default_bound_is_a_minute() -> None:
    assert DEFAULT_MAX_AHEAD_S == 60.0
    assert bounded_at(1.0).max_ahead_s == 60.0
    assert HybridLogicalClock(FakeClock(), 1).max_ahead_s is None  # no bound unless asked


def test_merge_refuses_a_timestamp_beyond_the_bound_and_keeps_the_clock() -> None:
    hlc = bounded_at(100_000.0)
    before = hlc.now()
    far = Timestamp(100_000 + 9 * 3600, 3, 1).wire()  # another cluster's clock, 9 hours on
    with pytest.raises(HlcAheadError, match=r"32400 s ahead .*at most 60 s") as caught:
        hlc.merge(far)
    assert caught.value.reason == "hlc_ahead" and caught.value.field == "hlc"
    assert caught.value.ahead_s == 9 * 3600
    assert isinstance(caught.value, FrameError)  # counted like any bad frame
    assert hlc.now() == Timestamp(before.wall, before.logical + 1, 0xBEEF)


def test_merge_takes_a_timestamp_up_to_the_bound() -> None:
    hlc = bounded_at(100_000.0)
    got = hlc.merge(Timestamp(100_060, 7, 1).wire())  # exactly 60 s ahead: allowed
    assert (got.wall, got.logical) == (100_060, 8)
    with pytest.raises(HlcAheadError, match="61 s ahead"):
        hlc.merge(Timestamp(100_061, 0, 1).wire())


def test_the_bound_is_from_the_wall_clock_not_from_our_last_merge() -> None:
    # A chain of merges each 60 s past the last would walk the clock away; it cannot.
    hlc = bounded_at(100_000.0)
    hlc.merge(Timestamp(100_050, 0, 1).wire())
    with pytest.raises(HlcAheadError):
        hlc.merge(Timestamp(100_100, 0, 1).wire())  # 50 s past our clock, 100 s past the wall
    assert hlc.now().wall == 100_050


def test_check_refuses_without_merging() -> None:
    hlc = bounded_at(100_000.0)
    hlc.check(Timestamp(100_010, 0, 1).wire())  # fine, and nothing merged:
    assert hlc.now() == Timestamp(100_000, 0, 0xBEEF)
    with pytest.raises(HlcAheadError):
        hlc.check(Timestamp(100_000 + 3600, 0, 1).wire())
    with pytest.raises(FrameError, match="hlc must be"):
        hlc.check("nope")


def test_the_bound_holds_across_the_wall_wrap() -> None:
    hlc = bounded_at(3 * WRAP - 10.0)
    assert hlc.merge("0005:0000:0001").wall == 3 * WRAP + 5  # 15 s ahead, wrapped: fine
    with pytest.raises(HlcAheadError):
        hlc.merge("0100:0000:0001")  # 266 s ahead across the wrap


def test_a_past_timestamp_is_never_refused() -> None:
    hlc = bounded_at(100_000.0, bound=0.0)
    assert hlc.merge(Timestamp(90_000, 0, 1).wire()).wall == 100_000


@pytest.mark.parametrize("bound", [-1.0, math.inf, math.nan])
def test_the_bound_must_be_finite_and_not_negative(bound: float) -> None:
    with pytest.raises(ValueError, match="max_ahead_s"):
        bounded_at(1.0, bound)


def test_a_followed_wall_source_sets_the_bound_and_the_stamps() -> None:
    """An agent whose wall clock is hours behind follows the pulse's clock (the time
    exchange's): a stamp near that clock passes the bound and the stamps move with it."""
    behind = 1_800_000_000.0 - 3 * 3600.0
    hlc = HybridLogicalClock(FakeClock(monotonic=0.0, wall=behind), 0xBEEF, max_ahead_s=60.0)
    pulse = Timestamp(1_800_000_000, 0, 0x0001).wire()
    with pytest.raises(HlcAheadError):
        hlc.check(pulse)
    hlc.follow(lambda: 1_800_000_000.5)
    hlc.check(pulse)  # within the bound of the followed clock
    wall16, _, _ = parse(hlc.now().wire())
    assert unwrap(wall16, 1_800_000_000) == 1_800_000_000
    hlc.follow(None)  # the clock's own wall again
    with pytest.raises(HlcAheadError):
        hlc.check(Timestamp(1_800_000_100, 0, 0x0001).wire())
