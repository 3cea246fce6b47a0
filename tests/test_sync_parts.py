"""The parts of the beat follower (edge.sync.*), each driven alone with plain values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import edge.sync
from edge.messages import BeatFrame
from edge.sync.accepted import Accepted
from edge.sync.bars import BarTracker
from edge.sync.config import SyncConfig
from edge.sync.conflict import ConflictWatch
from edge.sync.correction import Correction
from edge.sync.envelope import Admission, Envelope, Point
from edge.sync.events import BeatSourceConflict, BeatSourceConflictCleared, NewWindow
from edge.sync.states import (
    TRANSITIONS,
    SyncState,
    TransitionError,
    Trigger,
    next_state,
    silence_limits,
)
from edge.sync.tempo import TempoMap, next_key, prev_key
from edge.sync.wall import WallClock

WALL0 = 1_767_225_600.0


def frame(beat: int, downbeat: bool = False, window: int = 1, deadline: float = WALL0) -> BeatFrame:
    return BeatFrame(
        cluster_id="c1",
        beat_index=beat,
        downbeat=downbeat,
        phase="plan",
        hlc="0001:0000:beef",
        deadline_at=datetime.fromtimestamp(deadline, UTC),
        tempo_bpm=60.0,
        window_id=f"{window:032x}",
    )


# --------------------------------------------------------------------------- package


def test_the_package_exports_the_names_edge_sync_had() -> None:
    names = [
        *("BeatFollower", "BeatJumped", "BeatStarted", "FrameRejected", "Key", "NewWindow"),
        *("PhaseStarted", "Position", "SyncConfig", "SyncEvent", "SyncLost", "SyncRegained"),
        *("SyncState", "TempoChanged", "lower_envelope_slope", "parse_sync"),
    ]
    missing = [n for n in names if not hasattr(edge.sync, n)]
    assert not missing
    added = ("BeatSourceConflict", "BeatSourceConflictCleared", "FrameVerdict", "SourceConflict")
    assert all(hasattr(edge.sync, n) for n in added)
    assert sorted(edge.sync.__all__) == sorted({*names, "TransitionError", "Trigger", *added})


# --------------------------------------------------------------------------- states


def test_the_table_moves_between_states() -> None:
    assert next_state(SyncState.ACQUIRING, Trigger.LOCKED) is SyncState.LOCKED
    assert next_state(SyncState.LOCKED, Trigger.SILENT) is SyncState.FREE_RUNNING
    assert next_state(SyncState.FREE_RUNNING, Trigger.LOST) is SyncState.LOST
    assert next_state(SyncState.LOST, Trigger.FRAME) is SyncState.LOCKED
    for state in SyncState:
        assert next_state(state, Trigger.RESTART) is SyncState.ACQUIRING
    assert len(TRANSITIONS) == 11


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (SyncState.LOCKED, Trigger.LOCKED),
        (SyncState.ACQUIRING, Trigger.FRAME),
        (SyncState.ACQUIRING, Trigger.SILENT),
        (SyncState.LOST, Trigger.LOST),
        (SyncState.FREE_RUNNING, Trigger.SILENT),
    ],
)
def test_a_pair_the_table_does_not_know_raises(state: SyncState, trigger: Trigger) -> None:
    assert (state, trigger) not in TRANSITIONS
    with pytest.raises(TransitionError, match=f"from {state.name} on {trigger.name}") as info:
        next_state(state, trigger)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.state, info.value.trigger) == (state, trigger)


def test_the_table_cannot_be_edited() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(SyncState.LOST, Trigger.LOST)] = SyncState.LOCKED  # type: ignore[index]


def test_silence_limits_take_the_larger_of_seconds_and_beats() -> None:
    cfg = SyncConfig(free_run_after_beats=3.0, jitter_tolerance_s=0.05, lost_after_s=10.0)
    assert silence_limits(cfg, 100.0, 1.0) == pytest.approx((103.05, 110.0))
    # At 6 s a beat, 8 beats (48 s) outlast the 10 s floor.
    assert silence_limits(cfg, 100.0, 6.0) == pytest.approx((118.05, 148.0))


# --------------------------------------------------------------------------- tempo map


def test_keys_step_through_phases_and_beats() -> None:
    assert next_key((5, 0)) == (5, 1)
    assert next_key((5, 2)) == (6, 0)
    assert prev_key((6, 0)) == (5, 2)
    assert prev_key(next_key((7, 1))) == (7, 1)


def test_the_tempo_map_turns_beats_into_pulse_time_and_back() -> None:
    tempo = TempoMap()
    assert not tempo
    tempo.reset(100, 60.0)
    assert tempo and tempo.latest_bpm == 60.0
    assert tempo.u(100, 0) == 0.0
    assert tempo.u(101, 0) == pytest.approx(1.0)
    assert tempo.u(100, 1) == pytest.approx(1.0 / 3.0)
    assert tempo.add(110, 120.0) is False
    assert tempo.u(110, 0) == pytest.approx(10.0)
    assert tempo.u(111, 0) == pytest.approx(10.5)  # half a second a beat from 110 on
    assert tempo.key_at(10.26) == (110, 1)
    assert tempo.key_at(9.9) == (109, 2)
    assert (tempo.bpm_at(105), tempo.bpm_at(115)) == (60.0, 120.0)


def test_renumbering_the_tempo_map_keeps_every_time() -> None:
    tempo = TempoMap()
    tempo.reset(100, 60.0)
    tempo.add(110, 120.0)
    before = [tempo.u(b, p) for b in range(100, 115) for p in range(3)]
    tempo.renumber(-95)
    assert tempo.last_start == 15
    assert [tempo.u(b, p) for b in range(5, 20) for p in range(3)] == before
    assert tempo.key_at(10.26) == (15, 1)
    assert (tempo.bpm_at(10), tempo.bpm_at(15)) == (60.0, 120.0)


def test_the_same_beat_announced_again_changes_the_last_segment() -> None:
    tempo = TempoMap()
    tempo.reset(0, 60.0)
    tempo.add(10, 120.0)
    assert tempo.add(10, 90.0) is True
    assert tempo.latest_bpm == 90.0
    assert tempo.u(11, 0) == pytest.approx(10.0 + 60.0 / 90.0)


# --------------------------------------------------------------------------- envelope

RATE = 1.0 + 100e-6  # local seconds per Pulse second


def line_points(n: int = 50) -> list[Point]:
    """Arrivals on ``a = 10 + RATE * u`` every 7th frame, 1..5 ms above it otherwise."""
    return [
        (i, 0, 10.0 + RATE * i + (0.0 if i % 7 == 0 else 0.001 * (i % 5 + 1)), float(i))
        for i in range(n)
    ]


def test_the_envelope_fits_the_line_under_the_points() -> None:
    env = Envelope(SyncConfig(rate_min_span_s=1.0))
    for point in line_points():
        env.add(point)
    env.refit()
    assert env.slope == pytest.approx(RATE, abs=1e-9)
    assert env.at(7.0) == pytest.approx(10.0 + RATE * 7, abs=1e-9)
    assert env.u_at(env.at(12.5)) == pytest.approx(12.5)
    residuals = env.residuals()
    assert min(residuals) == pytest.approx(0.0, abs=1e-9)
    assert min(residuals) >= -1e-9
    assert max(residuals) == pytest.approx(0.005, abs=1e-9)


def test_the_error_bound_grows_away_from_the_window() -> None:
    env = Envelope(SyncConfig(rate_min_span_s=1.0))
    points = line_points()
    for point in points:
        env.add(point)
    env.refit()
    last = points[-1][2]
    near = env.bound_at(last)
    # The 12 lowest offsets are 8 zeros and 4 of 1 ms: mean spacing 1 ms / 11; the bound
    # is 6 spacings plus (20 spacings / span + 1 ppm) times the reach (here the span).
    spacing, span = 0.001 / 11, last - points[0][2]
    assert near == pytest.approx(6 * spacing + (20 * spacing / span + 1e-6) * span, rel=1e-6)
    assert env.bound_at(last + 100.0) > near + 100.0 * 1e-6  # at least the 1 ppm floor
    # The bound counts from the far end of the window: inside it, it is smallest.
    assert env.bound_at(points[25][2]) < near


def fitted(config: SyncConfig, points: list[Point]) -> Envelope:
    """An envelope with ``points`` in its window, refitted."""
    env = Envelope(config)
    for point in points:
        env.add(point)
    env.refit()
    return env


def assert_rate_unknown(env: Envelope, points: list[Point]) -> None:
    """The slope is held and the bound grows at max_rate_ppm (500 here) with the reach."""
    assert env.slope == 1.0
    last = points[-1][2]
    assert env.bound_at(last + 10.0) - env.bound_at(last) == pytest.approx(500e-6 * 10.0)


def test_the_rate_is_held_until_the_window_spans_long_enough() -> None:
    points = line_points()
    assert_rate_unknown(
        fitted(SyncConfig(rate_min_span_s=1000.0, max_rate_ppm=500.0), points), points
    )


def test_a_rate_reading_past_max_rate_is_no_reading() -> None:
    # Frames on a line 3000 ppm steep: no pair of real clocks is that far apart, so it is
    # the delays' noise; the slope is not held at the limit as if it were known.
    points: list[Point] = [(i, 0, 10.0 + (1.0 + 3000e-6) * i, float(i)) for i in range(20)]
    assert_rate_unknown(fitted(SyncConfig(rate_min_span_s=5.0, max_rate_ppm=500.0), points), points)


def test_the_two_points_under_the_line_do_not_make_a_few_frames_certain() -> None:
    # Seven frames, 6 s: the line rests on two of them (residual 0 by construction) and a
    # third sits 10 us above it; the other four are 6-9 ms up. The density near the floor
    # comes from the points the line does not rest on, so the rate is not known yet (with
    # the two zeros counted, a 5 us spacing made a slope from seven noisy frames certain:
    # seen under 0-20 ms of jitter, a 3400 ppm reading held at the limit for a minute).
    delays = [0.0, 0.006, 0.00001, 0.007, 0.009, 0.0, 0.008]
    points: list[Point] = [(i, 0, 10.0 + i + d, float(i)) for i, d in enumerate(delays)]
    config = SyncConfig(rate_min_span_s=5.0, rate_min_frames=6, max_rate_ppm=500.0)
    assert_rate_unknown(fitted(config, points), points)


def test_early_frames_are_held_back_until_a_run_restarts_the_window() -> None:
    env = Envelope(SyncConfig(relock_after_frames=3))
    for point in line_points(10):
        env.add(point)
    assert env.admit((10, 0, 20.0, 10.0), -0.01, 0.001) is Admission.OUTLIER
    assert len(env.residuals()) == 10  # held back, not in the window
    assert env.admit((11, 0, 21.0, 11.0), -0.01, 0.001) is Admission.OUTLIER
    assert env.admit((12, 0, 22.0, 12.0), -0.01, 0.001) is Admission.RESTARTED
    assert len(env.residuals()) == 3  # the window is the run


def test_a_fitting_frame_breaks_a_run_of_outliers() -> None:
    env = Envelope(SyncConfig(relock_after_frames=3))
    for point in line_points(10):
        env.add(point)
    env.admit((10, 0, 20.0, 10.0), -0.01, 0.001)
    env.admit((11, 0, 21.0, 11.0), -0.01, 0.001)
    assert env.admit((12, 0, 22.0, 12.0), 0.0, 0.001) is Admission.FIT
    assert env.admit((13, 0, 23.0, 13.0), -0.01, 0.001) is Admission.OUTLIER
    assert len(env.residuals()) == 11


def test_late_frames_restart_the_window_only_when_they_agree() -> None:
    cfg = SyncConfig(relock_after_frames=3, jitter_tolerance_s=0.05)
    env = Envelope(cfg)
    for point in line_points(10):
        env.add(point)
    results = [
        env.admit((10 + i, 0, 20.0 + i, 10.0 + i), r, 0.001) for i, r in enumerate((0.06, 0.5, 0.2))
    ]
    assert results == [Admission.OUTLIER] * 3  # spread 0.44 s: no restart
    assert len(env.residuals()) == 13  # late frames do enter the window
    results = [env.admit((13 + i, 0, 23.0 + i, 13.0 + i), 0.2, 0.001) for i in range(3)]
    assert results == [Admission.OUTLIER, Admission.OUTLIER, Admission.RESTARTED]
    assert len(env.residuals()) == 3


def test_renumbering_the_envelope_moves_every_point() -> None:
    env = Envelope(SyncConfig())
    env.add((5, 0, 1.0, 0.0))
    env.add((6, 2, 2.0, 1.0))
    env.renumber(10)
    seen: list[tuple[int, int]] = []

    def record(beat: int, phase: int) -> float:
        seen.append((beat, phase))
        return 0.0

    env.retime(record)
    assert seen == [(15, 0), (16, 2)]
    env.reset()
    assert env.residuals() == []


# --------------------------------------------------------------------------- correction


def test_a_correction_slews_away_at_the_slew_rate() -> None:
    corr = Correction(0.02)
    assert corr.at(5.0) == 0.0
    corr.start(10.0, 0.01, step=False)
    assert corr.last_shift == 0.01
    assert corr.at(9.0) == 0.01
    assert corr.at(10.25) == pytest.approx(0.005)
    assert corr.at(10.5) == 0.0
    assert corr.at(20.0) == 0.0
    corr.start(10.0, -0.01, step=False)
    assert corr.at(10.25) == pytest.approx(-0.005)


@pytest.mark.parametrize("shift", [0.01, -0.01])
def test_a_published_time_solves_t_equals_m_plus_corr_t(shift: float) -> None:
    corr = Correction(0.02)
    corr.start(10.0, shift, step=False)
    for m in (9.0, 10.1, 10.4, 11.0):
        t = corr.published(m)
        assert t == pytest.approx(m + corr.at(t), abs=1e-12)


def test_a_stepped_correction_is_none() -> None:
    corr = Correction(0.02)
    corr.start(10.0, 0.3, step=True)
    assert corr.last_shift == 0.3
    assert corr.at(10.0) == 0.0 and corr.published(11.0) == 11.0
    corr.start(10.0, 0.01, step=False)
    corr.reset(12.0)
    assert corr.at(12.0) == 0.0 and corr.last_shift == 0.0


# --------------------------------------------------------------------------- wall clock

DELAY = 0.004


def feed_wall(wall: WallClock, beats: range, offset: float = 0.0) -> None:
    """Frames of beat k sent at Pulse wall time WALL0 + k, arriving DELAY later at
    monotonic 100 + k + DELAY; the envelope runs exactly on those arrivals."""
    for k in beats:
        sent = WALL0 + k
        f = frame(k, deadline=sent + 1.0 / 3.0)
        a = 100.0 + k + DELAY
        wall.learn(f, a, sent + DELAY + offset, lambda beat, _p: 100.0 + beat + DELAY)


def test_a_consistent_wall_clock_gives_the_path_delay() -> None:
    wall = WallClock(SyncConfig(wall_trust_frames=8))
    feed_wall(wall, range(7))
    assert wall.delay is None and not wall.trusted
    feed_wall(wall, range(7, 8))
    assert wall.trusted
    assert wall.delay == pytest.approx(DELAY, abs=1e-6)
    assert wall.spread == pytest.approx(0.0, abs=1e-6)


def test_a_wall_clock_hours_off_is_never_trusted() -> None:
    wall = WallClock(SyncConfig(wall_trust_frames=8))
    feed_wall(wall, range(30), offset=3 * 3600.0)
    assert wall.delay is None and not wall.trusted and wall.steps == 0


def test_a_wall_clock_step_keeps_the_delay_learnt_before_it() -> None:
    wall = WallClock(SyncConfig(wall_trust_frames=8))
    feed_wall(wall, range(10))
    feed_wall(wall, range(10, 30), offset=-7.5)
    assert wall.steps == 1
    assert not wall.trusted
    assert wall.delay == pytest.approx(DELAY, abs=1e-6)  # frozen, still removed


def test_a_forced_off_wall_clock_gives_no_delay() -> None:
    wall = WallClock(SyncConfig(wall_trust_frames=8, trust_wall_clock=False))
    feed_wall(wall, range(20))
    assert wall.delay is None and not wall.trusted


def test_a_restart_forgets_the_samples_and_renumbering_keeps_them() -> None:
    wall = WallClock(SyncConfig(wall_trust_frames=8))
    feed_wall(wall, range(5))
    wall.renumber(1000)
    seen: list[int] = []
    f = frame(5, deadline=WALL0 + 5 + 1.0 / 3.0)

    def envelope_at(beat: int, _phase: int) -> float:
        seen.append(beat)
        return 100.0 + (beat - 1000 if beat >= 1000 else beat) + DELAY

    wall.learn(f, 100.0 + 5 + DELAY, WALL0 + 5 + DELAY, envelope_at)
    assert seen == []  # 6 samples: not enough to decide yet
    wall.learn(frame(6, deadline=WALL0 + 6 + 1 / 3), 106.004, WALL0 + 6.004, envelope_at)
    wall.learn(frame(7, deadline=WALL0 + 7 + 1 / 3), 107.004, WALL0 + 7.004, envelope_at)
    assert seen == [1000, 1001, 1002, 1003, 1004, 5, 6, 7]
    assert wall.delay == pytest.approx(DELAY, abs=1e-6)
    wall.reset()
    seen.clear()
    feed_wall(wall, range(100, 107))
    assert seen == []  # the samples before the restart are gone


# --------------------------------------------------------------------------- bars


def learn_beats(bars: BarTracker, beats: list[int], bar: int = 4) -> None:
    prev: int | None = None
    for k in beats:
        bars.learn(frame(k, downbeat=k % bar == 0, window=k // bar), prev, float)
        prev = k


def test_the_bar_is_learnt_from_two_downbeats() -> None:
    bars = BarTracker()
    learn_beats(bars, [0, 1, 2, 3])
    assert bars.bar_length is None and bars.bar_position(2) is None
    assert bars.is_downbeat(0) is True and bars.is_downbeat(50) is None
    learn_beats(bars, [4])
    assert bars.bar_length == 4
    assert bars.is_downbeat(8) is True and bars.is_downbeat(9) is False
    assert bars.bar_position(10) == 2


def test_lost_downbeats_keep_the_bar_and_a_new_distance_changes_it() -> None:
    bars = BarTracker()
    for k in (0, 4, 12):  # 8 = two bars: downbeat 8 was lost
        bars.learn(frame(k, downbeat=True), None, float)
    assert bars.bar_length == 4
    bars.learn(frame(15, downbeat=True), None, float)
    assert bars.bar_length == 4  # one interval of 3 is not yet a new bar ...
    bars.learn(frame(18, downbeat=True), None, float)
    assert bars.bar_length == 3  # ... two in a row are
    assert bars.is_downbeat(21) is True and bars.is_downbeat(20) is False


def learn_bars(bars: BarTracker, flags: dict[int, bool]) -> None:
    prev: int | None = None
    for k in sorted(flags):
        bars.learn(frame(k, downbeat=flags[k]), prev, float)
        prev = k


def test_one_stray_downbeat_changes_nothing() -> None:
    bars = BarTracker()
    flags = {k: k % 4 == 0 for k in range(40)}
    flags[22] = True  # a spoofed downbeat half way through a bar
    learn_bars(bars, {k: v for k, v in flags.items() if k < 22})
    assert bars.learn(frame(22, downbeat=True), 21, float) is True  # not taken: reported
    learn_bars(bars, {k: v for k, v in flags.items() if k > 22})
    assert bars.bar_length == 4
    assert [k for k in range(40, 60) if bars.is_downbeat(k)] == [40, 44, 48, 52, 56]
    assert bars.is_downbeat(22) is False  # the grid answers, not the stray flag


def test_a_bar_learnt_over_a_lost_downbeat_is_put_right_at_once() -> None:
    bars = BarTracker()
    learn_bars(bars, {k: k % 4 == 0 for k in range(20) if k != 4})  # downbeat 4 lost
    assert bars.bar_length == 4  # 0 -> 8 gave 8, tentative; 12 put it right at once
    bars = BarTracker()
    flags = {k: k % 4 == 0 for k in range(20) if k not in (4, 5, 6, 7)}
    prev = None
    for k in sorted(flags):
        assert bars.learn(frame(k, downbeat=flags[k]), prev, float) is False  # none stray
        prev = k
    assert bars.bar_length == 4


def test_one_stray_missing_downbeat_changes_nothing() -> None:
    bars = BarTracker()
    flags = {k: k % 4 == 0 for k in range(40)}
    flags[20] = False  # a downbeat flag dropped on a real downbeat
    learn_bars(bars, {k: v for k, v in flags.items() if k < 20})
    assert bars.learn(frame(20), 19, float) is True
    learn_bars(bars, {k: v for k, v in flags.items() if k > 20})
    assert bars.bar_length == 4 and bars.is_downbeat(44) is True


@pytest.mark.parametrize("new", [2, 3, 6, 8])
def test_a_real_change_of_bar_is_followed_after_two_of_its_bars(new: int) -> None:
    bars = BarTracker()
    change = 20
    flags = {k: k % 4 == 0 for k in range(change)}
    flags.update({k: (k - change) % new == 0 for k in range(change, change + 4 * new)})
    prev: int | None = None
    adopted = None
    for k in sorted(flags):
        bars.learn(frame(k, downbeat=flags[k]), prev, float)
        prev = k
        if adopted is None and bars.bar_length == new:
            adopted = k
        if adopted is None and k >= 4:
            assert bars.bar_length == 4
    assert bars.bar_length == new
    assert adopted is not None and adopted <= change + 3 * new
    assert bars.is_downbeat(change + 10 * new) is True
    assert bars.bar_position(change + 10 * new + 1) == 1


def test_new_windows_come_out_once_when_their_beat_is_reached() -> None:
    bars = BarTracker()
    learn_beats(bars, list(range(6)))
    assert bars.flush(3) == [NewWindow(0, f"{0:032x}", 0.0)]
    assert [w.beat_index for w in bars.due_windows(4)] == [4]
    assert bars.flush(4) == [NewWindow(4, f"{1:032x}", 4.0)]
    assert bars.flush(4) == []
    assert bars.window_for(5) == f"{1:032x}"
    assert bars.window_for(8) is None  # the next bar's window is not known yet
    assert bars.window_for(3) is None


def test_renumbering_the_bars_moves_every_beat_and_reset_forgets() -> None:
    bars = BarTracker()
    learn_beats(bars, list(range(6)))
    bars.renumber(100)
    assert bars.is_downbeat(104) is True and bars.is_downbeat(105) is False
    assert bars.bar_position(106) == 2
    assert [w.beat_index for w in bars.flush(200)] == [100, 104]
    bars.reset()
    assert bars.bar_length is None and bars.is_downbeat(104) is None
    assert bars.flush(1000) == [] and bars.window_for(105) is None


# --------------------------------------------------------------------------- accepted


def test_accepted_keys_remember_duplicates_and_the_latest() -> None:
    seen = Accepted()
    assert seen.add((5, 0)) is None
    assert seen.add((5, 1)) == 5
    assert seen.add((4, 2)) == 5  # late: the latest stays (5, 1)
    assert seen.latest == (5, 1) and seen.count == 3
    assert (4, 2) in seen and (6, 0) not in seen
    seen.renumber(10)
    assert seen.latest == (15, 1) and (15, 0) in seen and (5, 0) not in seen
    seen.reset()
    assert seen.count == 0 and (15, 0) not in seen
    assert seen.add((1, 0)) is None and seen.latest == (1, 0)


# --------------------------------------------------------------------------- conflicts


def test_a_conflict_is_raised_by_enough_evidence_among_the_last_frames() -> None:
    watch = ConflictWatch(SyncConfig(conflict_after_frames=3, conflict_quiet_s=10.0))
    # Evidence now and then (an honest network reordering a copy) raises nothing.
    for i in range(30):
        assert watch.frame(float(i), 0.2 if i % 10 == 0 else None) is None
    assert watch.current is None
    got = [watch.frame(30.0 + i, 0.14 + 0.01 * i if i % 2 else None) for i in range(6)]
    assert got[:5] == [None] * 5 and got[5] == BeatSourceConflict(35.0, pytest.approx(190.0))  # type: ignore[arg-type]
    current = watch.current
    assert current is not None and current.since == 35.0 and current.evidence == 3
    assert watch.frame(36.0, -0.5) is None  # raised once; the spread grows
    assert watch.current is not None and watch.current.spread_ms == 500.0


def test_a_conflict_clears_after_a_quiet_period_of_at_least_four_beats() -> None:
    watch = ConflictWatch(SyncConfig(conflict_after_frames=1, conflict_quiet_s=10.0))
    watch.frame(5.0, 0.1)
    assert watch.clears_at(beat_seconds=1.0) == 15.0
    assert watch.clears_at(beat_seconds=6.0) == 29.0  # slow beat: four beats
    assert watch.tick(14.9, 1.0) is None and watch.current is not None
    assert watch.tick(15.0, 1.0) == BeatSourceConflictCleared(15.0)
    assert watch.current is None and watch.clears_at(1.0) is None
    assert watch.evidence == 1


def test_first_arrivals_are_remembered_renumbered_and_forgotten() -> None:
    watch = ConflictWatch(SyncConfig())
    watch.arrived((5, 0), 1.0)
    watch.arrived((5, 0), 2.0)  # only the first counts
    assert watch.first_arrival((5, 0)) == 1.0 and watch.first_arrival((6, 0)) is None
    watch.renumber(10)
    assert watch.first_arrival((15, 0)) == 1.0 and watch.first_arrival((5, 0)) is None
    watch.reset()
    assert watch.first_arrival((15, 0)) is None
