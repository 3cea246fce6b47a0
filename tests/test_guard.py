"""The load guard, fed hand-built samples and histories (no psutil anywhere)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from machine_samples import quiet_sample

from edge.errors import ConfigProblems
from edge.guard import (
    SHED_DECIMATED,
    SHED_ESSENTIAL_ONLY,
    SHED_INVALID,
    SHED_LEVEL,
    SHED_OVER_BUDGET,
    SHED_QUEUE_FULL,
    SHED_TOO_LATE,
    Admission,
    Guard,
    GuardConfig,
    Level,
    Verdict,
    parse_guard,
)
from edge.score import Action, ScheduledAction

# Raw CPU readings, no hold: the simplest guard to reason about in a test.
RAW = GuardConfig(cpu_smoothing=1.0, recover_hold_s=0.0)


sample = quiet_sample


@dataclass(frozen=True, slots=True)
class Act:
    name: str
    priority: int = 0
    essential: bool = False
    cost_s: float = 0.01


@dataclass(frozen=True, slots=True)
class Cand:
    beat_index: int
    at: float
    deadline: float
    action: Act


def cand(
    name: str, *, at: float = 10.0, deadline: float = 20.0, beat: int = 0, **kw: object
) -> Cand:
    return Cand(beat, at, deadline, Act(name, **kw))  # type: ignore[arg-type]


def names(admission: Admission[Cand]) -> list[str]:
    return [c.action.name for c in admission.admitted]


def shed_reasons(admission: Admission[Cand]) -> dict[str, str]:
    return {c.action.name: reason for c, reason in admission.shed}


# --------------------------------------------------------------------------- purity


# --------------------------------------------------------------------------- verdicts


def test_quiet_machine_is_full_ok() -> None:
    guard = Guard(RAW)
    guard.observe(sample())
    assert guard.advance(0.0) == Verdict(Level.FULL, "ok")


@pytest.mark.parametrize(
    ("readings", "level", "reason"),
    [
        ({"cpu_percent": 90.0}, Level.ESSENTIAL, "cpu_high"),
        ({"memory_percent": 88.0}, Level.ESSENTIAL, "memory_high"),
        ({"memory_percent": 96.0}, Level.SHED, "memory_critical"),
        ({"swap_percent": 85.0}, Level.ESSENTIAL, "swap_high"),
        ({"temperature_c": 81.0}, Level.ESSENTIAL, "temperature_high"),
        ({"temperature_c": 86.0}, Level.SHED, "temperature_critical"),
        ({"throttled": 0x4}, Level.ESSENTIAL, "throttled"),
        ({"throttled": 0x1}, Level.ESSENTIAL, "throttled"),  # under-voltage now
    ],
)
def test_each_condition_sets_its_level_and_reason(
    readings: dict[str, float], level: Level, reason: str
) -> None:
    guard = Guard(RAW)
    guard.observe(sample(**readings))
    assert guard.advance(0.0) == Verdict(level, reason)


def test_sticky_throttle_bits_alone_do_not_degrade() -> None:
    # 0x50000: under-voltage and throttling *happened* since boot, but not now.
    guard = Guard(RAW)
    guard.observe(sample(throttled=0x50000))
    assert guard.advance(0.0) == Verdict(Level.FULL, "ok")


def test_most_severe_condition_wins() -> None:
    guard = Guard(RAW)
    guard.observe(sample(cpu_percent=99.0, temperature_c=90.0))
    assert guard.advance(0.0) == Verdict(Level.SHED, "temperature_critical")


def test_miss_rate_above_five_percent_goes_essential_only() -> None:
    guard = Guard(RAW)
    for beat in range(20):
        guard.record("led.on", 0.001, 0.0, missed=False)
        guard.end_beat(beat)
    # The 20-beat window now holds one miss in 20 actions: 5%, which is not above 5%.
    guard.record("led.on", 0.001, 0.02, missed=True)
    guard.end_beat(20)
    assert guard.miss_rate() == pytest.approx(1 / 20)
    assert guard.advance(20.0) == Verdict(Level.FULL, "ok")
    guard.record("led.on", 0.001, 0.02, missed=True)
    guard.end_beat(21)
    assert guard.miss_rate() == pytest.approx(2 / 20)
    assert guard.advance(21.0) == Verdict(Level.ESSENTIAL, "miss_rate_high")


def test_miss_rate_needs_enough_actions_to_raise() -> None:
    guard = Guard(RAW)
    guard.record("led.on", 0.001, 0.01, missed=True)
    guard.end_beat(0)
    assert guard.miss_rate() == 1.0
    assert guard.advance(1.0).level is Level.FULL  # 1 of 1 is not evidence yet


def test_miss_rate_clears_through_shed_beats() -> None:
    # Only non-essential work: at ESSENTIAL nothing fires, and empty beats must let it clear.
    guard = Guard(replace(RAW, window_beats=4, miss_min_actions=2))
    for beat in range(2):
        guard.record("fan.set", 0.001, 0.01, missed=True)
        guard.end_beat(beat)
    assert guard.advance(2.0).reason == "miss_rate_high"
    for beat in range(2, 6):
        guard.end_beat(beat)
    assert guard.advance(6.0) == Verdict(Level.FULL, "ok")


# --------------------------------------------------------------------------- hysteresis


def test_cpu_hysteresis_holds_inside_the_band() -> None:
    guard = Guard(RAW)
    seen = []
    for at, cpu in enumerate([60, 86, 80, 75, 71, 84, 70, 60]):
        guard.observe(sample(at=at, cpu_percent=cpu))
        seen.append(guard.advance(float(at)).level)
    E, F = Level.ESSENTIAL, Level.FULL
    # Raised above 85, held while 70 < cpu <= 85, cleared at 70.
    assert seen == [F, E, E, E, E, E, F, F]
    assert guard.verdict_changes == 2


def test_temperature_hysteresis_does_not_flap_around_the_threshold() -> None:
    guard = Guard(RAW)
    levels = []
    for at, temp in enumerate([79.0, 80.5, 79.5, 80.5, 79.0, 80.2, 76.0]):
        guard.observe(sample(at=at, temperature_c=temp))
        levels.append(guard.advance(float(at)).level)
    assert levels.count(Level.FULL) == 1  # only the first reading
    assert guard.verdict_changes == 1


def test_recovery_waits_for_the_hold_time() -> None:
    guard = Guard(replace(RAW, recover_hold_s=5.0))
    guard.observe(sample(at=0.0, cpu_percent=95.0))
    assert guard.advance(0.0) == Verdict(Level.ESSENTIAL, "cpu_high")
    guard.observe(sample(at=1.0, cpu_percent=20.0))
    assert guard.advance(1.0) == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.advance(4.9) == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.advance(5.0) == Verdict(Level.FULL, "ok")


def test_recovery_steps_down_one_rung_at_a_time() -> None:
    guard = Guard(replace(RAW, recover_hold_s=5.0))
    guard.observe(sample(at=0.0, temperature_c=90.0))
    assert guard.advance(0.0) == Verdict(Level.SHED, "temperature_critical")
    guard.observe(sample(at=1.0, temperature_c=60.0))
    assert guard.advance(5.0) == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.advance(9.0).level is Level.ESSENTIAL
    assert guard.advance(10.0) == Verdict(Level.FULL, "ok")
    assert guard.verdict_changes == 3


def test_reading_the_verdict_changes_nothing() -> None:
    # The demo view reads the verdict every frame: reading must not move the recovery on.
    guard = Guard(replace(RAW, recover_hold_s=5.0))
    assert guard.verdict == Verdict(Level.FULL, "ok")  # nothing decided yet
    guard.observe(sample(at=0.0, temperature_c=90.0))
    assert guard.verdict == Verdict(Level.FULL, "ok")  # a sample alone decides nothing
    assert guard.advance(0.0) == Verdict(Level.SHED, "temperature_critical")
    guard.observe(sample(at=1.0, temperature_c=60.0))
    for _ in range(3):
        assert guard.verdict == Verdict(Level.SHED, "temperature_critical")
    assert (guard.level, guard.verdict_changes) == (Level.SHED, 1)
    # ...and the steps that follow are the ones an unread guard takes.
    assert guard.advance(5.0) == guard.verdict == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.verdict == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.advance(9.0) == Verdict(Level.ESSENTIAL, "recovering")
    assert guard.advance(10.0) == guard.verdict == Verdict(Level.FULL, "ok")
    assert guard.verdict_changes == 3


def test_admit_advances_and_the_verdict_reads_what_it_decided() -> None:
    guard = Guard(replace(RAW, recover_hold_s=5.0))
    guard.observe(sample(at=0.0, cpu_percent=95.0))
    admission = guard.admit(0, [cand("x")], phase_seconds=1.0, now=0.0)
    assert shed_reasons(admission) == {"x": "essential_only"}
    assert guard.verdict == Verdict(Level.ESSENTIAL, "cpu_high")
    disabled = Guard(replace(RAW, enabled=False))
    assert disabled.verdict == disabled.advance(0.0) == Verdict(Level.FULL, "disabled")


def test_worse_level_is_taken_at_once_even_while_recovering() -> None:
    guard = Guard(replace(RAW, recover_hold_s=5.0))
    guard.observe(sample(at=0.0, cpu_percent=95.0))
    guard.advance(0.0)
    guard.observe(sample(at=1.0, cpu_percent=10.0, memory_percent=97.0))
    assert guard.advance(1.0) == Verdict(Level.SHED, "memory_critical")


def test_cpu_is_smoothed_so_one_spike_does_not_degrade() -> None:
    guard = Guard(replace(RAW, cpu_smoothing=0.5))
    guard.observe(sample(at=0.0, cpu_percent=20.0))
    guard.observe(sample(at=1.0, cpu_percent=100.0))  # EWMA 60
    assert guard.advance(1.0).level is Level.FULL
    guard.observe(sample(at=2.0, cpu_percent=100.0))  # 80
    guard.observe(sample(at=3.0, cpu_percent=100.0))  # 90
    assert guard.advance(3.0) == Verdict(Level.ESSENTIAL, "cpu_high")


def test_missing_reading_keeps_state_until_stale() -> None:
    guard = Guard(replace(RAW, stale_after_s=30.0))
    guard.observe(sample(at=0.0, temperature_c=82.0))
    assert guard.advance(0.0).reason == "temperature_high"
    guard.observe(sample(at=10.0, temperature_c=None))  # a light sample or lost sensor
    assert guard.advance(10.0).reason == "temperature_high"
    guard.observe(sample(at=30.0, temperature_c=None))
    assert guard.advance(30.0) == Verdict(Level.FULL, "ok")


def test_missing_sensor_never_raises_a_condition() -> None:
    guard = Guard(RAW)
    guard.observe(
        sample(
            cpu_percent=None,
            memory_percent=None,
            temperature_c=None,
            throttled=None,
            swap_percent=None,
        )
    )
    assert guard.advance(0.0) == Verdict(Level.FULL, "ok")
    assert guard.active_conditions == ()


def test_disabled_guard_always_full_and_admits_everything() -> None:
    guard = Guard(replace(RAW, enabled=False))
    guard.observe(sample(temperature_c=95.0))
    assert guard.advance(0.0) == Verdict(Level.FULL, "disabled")
    many = [cand(f"a{i}", cost_s=1.0) for i in range(100)]
    admission = guard.admit(0, many, phase_seconds=1.0, now=0.0)
    assert len(admission.admitted) == 100 and admission.shed == ()


# --------------------------------------------------------------------------- admission


def test_admission_orders_essential_then_priority_then_deadline() -> None:
    guard = Guard(RAW)
    cands = [
        cand("low", priority=1, cost_s=0.2),
        cand("late", priority=5, deadline=20.0, cost_s=0.2),
        cand("soon", priority=5, deadline=19.0, cost_s=0.2),
        cand("must", priority=0, essential=True, cost_s=0.2),
    ]
    # phase 1 s at 80% = 0.8 s: room for four 0.2 s actions, the fifth would not fit.
    admission = guard.admit(0, [*cands, cand("extra", priority=0, cost_s=0.2)], 1.0, now=0.0)
    assert sorted(names(admission)) == ["late", "low", "must", "soon"]
    assert shed_reasons(admission) == {"extra": SHED_OVER_BUDGET}
    # Tighten to 0.5 s (0.4 s of budget): essential first, then priority 5 by deadline.
    admission = Guard(RAW).admit(0, cands, 0.5, now=0.0)
    assert sorted(names(admission)) == ["must", "soon"]
    assert shed_reasons(admission) == {"late": SHED_OVER_BUDGET, "low": SHED_OVER_BUDGET}


def test_admitted_come_back_in_firing_order() -> None:
    guard = Guard(RAW)
    cands = [
        cand("b", at=12.0, priority=9),
        cand("a", at=11.0, priority=0),
        cand("c", at=12.0, priority=1),
    ]
    assert names(guard.admit(0, cands, 3.0, now=0.0)) == ["a", "b", "c"]


def test_admission_uses_learned_duration_not_configured_cost() -> None:
    guard = Guard(RAW)
    assert guard.estimate("relay.pulse", 0.01) == 0.01  # seeded with the configured cost
    for _ in range(6):
        guard.record("relay.pulse", 0.5, 0.0, missed=False)
    assert guard.estimate("relay.pulse", 0.01) > 0.45
    # 1 s phase -> 0.8 s budget: one 0.5 s pulse fits, not two.
    cands = [cand("relay.pulse", at=10.0), cand("relay.pulse", at=10.5)]
    admission = guard.admit(0, cands, 1.0, now=0.0)
    assert len(admission.admitted) == 1
    assert [r for _, r in admission.shed] == [SHED_OVER_BUDGET]


def test_estimate_learns_overruns_fast_and_speedups_slowly() -> None:
    guard = Guard(RAW)
    guard.admit(0, [cand("x", cost_s=0.1)], 1.0, now=0.0)  # seeds 0.1
    guard.record("x", 0.3, 0.0, missed=False)
    assert guard.estimate("x", 0.1) == pytest.approx(0.2)  # alpha up 0.5
    guard.record("x", 0.0, 0.0, missed=False)
    assert guard.estimate("x", 0.1) == pytest.approx(0.18)  # alpha down 0.1


def test_essential_is_admitted_even_over_budget_and_takes_the_budget_first() -> None:
    guard = Guard(RAW)
    cands = [
        cand("opt", priority=99, cost_s=0.1),
        cand("must1", essential=True, cost_s=0.6),
        cand("must2", essential=True, cost_s=0.6),
    ]
    admission = guard.admit(0, cands, 1.0, now=0.0)  # 0.8 s budget, 1.2 s essential
    assert sorted(names(admission)) == ["must1", "must2"]
    assert shed_reasons(admission) == {"opt": SHED_OVER_BUDGET}


def test_one_slow_outlier_does_not_starve_an_action_for_good() -> None:
    guard = Guard(RAW)
    guard.admit(0, [cand("fan.set", cost_s=0.05)], 1.0, now=0.0)
    guard.record("fan.set", 3.0, 0.0, missed=True)  # one hiccup: estimate jumps to 1.5 s
    assert guard.estimate("fan.set", 0.05) > 0.8
    admitted_at = None
    for beat in range(1, 60):
        if guard.admit(beat, [cand("fan.set", cost_s=0.05)], 1.0, now=0.0).admitted:
            admitted_at = beat
            break
    # Shed while the estimate is above the 0.8 s budget, then given another chance.
    assert admitted_at is not None and admitted_at > 1
    assert guard.estimate("fan.set", 0.05) <= 0.8


def test_essential_with_a_broken_cost_still_runs() -> None:
    guard = Guard(RAW)
    admission = guard.admit(0, [cand("must", essential=True, cost_s=float("nan"))], 1.0, 0.0)
    assert names(admission) == ["must"]


def test_bad_durations_are_counted_not_learned() -> None:
    guard = Guard(RAW)
    guard.record("x", 0.1, 0.0, missed=False)
    guard.record("x", float("nan"), 0.0, missed=False)
    guard.record("x", -1.0, 0.0, missed=False)
    assert guard.estimate("x", 9.0) == 0.1
    assert guard.invalid_records == 2


def test_a_dropped_action_is_counted_not_learned() -> None:
    guard = Guard(RAW)
    guard.record("sh.command", 0.06, 0.0, missed=False)
    guard.count_dropped("sh.command", "rate_limit")
    guard.count_dropped("sh.command", "isolated")
    guard.count_dropped("sh.command", "busy", missed=True)
    assert guard.estimate("sh.command", 0.001) == 0.06  # not pulled toward 0 s
    assert guard.dropped == {"rate_limit": 1, "isolated": 1, "busy": 1}
    guard.end_beat(0)
    # Only the busy drop is load: one action and one miss besides the recorded run.
    assert guard.miss_rate() == pytest.approx(1 / 2)


def test_busy_drops_back_off_optional_work() -> None:
    guard = Guard(RAW)
    for beat in range(3):
        guard.record("sh.command", 0.06, 0.0, missed=False)
        guard.count_dropped("sh.command", "busy", missed=True)
        guard.end_beat(beat)
    assert guard.work_factor == pytest.approx(0.8**3)
    assert guard.estimate("sh.command", 0.001) == 0.06


def test_drops_that_are_not_load_leave_the_miss_rate_alone() -> None:
    guard = Guard(replace(RAW, miss_min_actions=1))
    for beat in range(5):
        guard.record("relay.on", 0.001, 0.0, missed=False)
        guard.count_dropped("relay.on", "rate_limit")
        guard.end_beat(beat)
    assert guard.miss_rate() == 0.0 and guard.work_factor == 1.0
    assert guard.advance(5.0) == Verdict(Level.FULL, "ok")


def test_invalid_cost_is_shed() -> None:
    guard = Guard(RAW)
    admission = guard.admit(0, [cand("x", cost_s=float("inf"))], 1.0, now=0.0)
    assert shed_reasons(admission) == {"x": SHED_INVALID}


def test_non_essential_that_cannot_meet_its_deadline_is_shed_essential_is_kept() -> None:
    guard = Guard(RAW)
    cands = [
        cand("opt", at=10.0, deadline=10.05, cost_s=0.1),
        cand("must", at=10.0, deadline=10.05, cost_s=0.1, essential=True),
    ]
    admission = guard.admit(0, cands, 1.0, now=0.0)
    assert names(admission) == ["must"]
    assert shed_reasons(admission) == {"opt": SHED_TOO_LATE}


def test_queue_is_bounded_and_rejections_counted() -> None:
    guard = Guard(replace(RAW, queue_bound=3))
    cands = [cand(f"n{i}", priority=i, cost_s=0.0) for i in range(5)]
    cands.append(cand("must", essential=True, cost_s=0.0))
    admission = guard.admit(0, cands, 10.0, now=0.0)
    assert sorted(names(admission)) == ["must", "n3", "n4"]
    assert shed_reasons(admission) == {
        "n0": SHED_QUEUE_FULL,
        "n1": SHED_QUEUE_FULL,
        "n2": SHED_QUEUE_FULL,
    }
    assert guard.rejected == 3
    assert guard.shed[SHED_QUEUE_FULL] == 3


def test_essential_only_sheds_non_essential() -> None:
    guard = Guard(RAW)
    guard.observe(sample(cpu_percent=99.0))
    cands = [cand("must", essential=True), cand("nice", priority=100)]
    admission = guard.admit(0, cands, 1.0, now=0.0)
    assert names(admission) == ["must"]
    assert shed_reasons(admission) == {"nice": SHED_ESSENTIAL_ONLY}
    assert guard.shed == {SHED_ESSENTIAL_ONLY: 1}


def test_shed_level_admits_nothing() -> None:
    guard = Guard(RAW)
    guard.observe(sample(temperature_c=90.0))
    cands = [cand("must", essential=True), cand("nice")]
    admission = guard.admit(0, cands, 1.0, now=0.0)
    assert admission.admitted == ()
    assert shed_reasons(admission) == {"must": SHED_LEVEL, "nice": SHED_LEVEL}


def test_admission_accepts_score_scheduled_actions() -> None:
    action = Action(device="led", do="on", cost_s=0.001, priority=3, essential=True)
    scheduled = ScheduledAction(beat_index=7, at=10.0, deadline=10.5, action=action, rule=0)
    admission = Guard(RAW).admit(7, [scheduled], 1.0, now=9.0)
    assert admission.admitted == (scheduled,)


# --------------------------------------------------------------------------- backoff


def miss_beat(guard: Guard, beat: int, fired: int = 2, missed: int = 1) -> None:
    for i in range(fired):
        guard.record("work", 0.001, 0.0, missed=i < missed)
    guard.end_beat(beat)


def test_backoff_is_progressive_times_point_eight() -> None:
    guard = Guard(RAW)
    factors = []
    for beat in range(4):
        miss_beat(guard, beat)
        factors.append(guard.work_factor)
    assert factors == pytest.approx([0.8, 0.64, 0.512, 0.4096])
    assert guard.backoffs == 4


def test_backoff_has_a_floor() -> None:
    guard = Guard(replace(RAW, min_work_factor=0.3))
    for beat in range(20):
        miss_beat(guard, beat)
    assert guard.work_factor == pytest.approx(0.3)


def test_recovery_is_gradual_after_clean_beats() -> None:
    guard = Guard(RAW)
    miss_beat(guard, 0)
    miss_beat(guard, 1)
    assert guard.work_factor == pytest.approx(0.64)
    trace = []
    for beat in range(2, 14):
        guard.record("work", 0.001, 0.0, missed=False)
        guard.end_beat(beat)
        trace.append(round(guard.work_factor, 4))
    # +0.1 after every 3 clean beats, capped at 1.0.
    assert trace == [0.64, 0.64, 0.74, 0.74, 0.74, 0.84, 0.84, 0.84, 0.94, 0.94, 0.94, 1.0]


def test_a_miss_while_the_window_rate_is_low_does_not_back_off() -> None:
    guard = Guard(RAW)
    for beat in range(20):
        for _ in range(10):
            guard.record("work", 0.001, 0.0, missed=False)
        guard.end_beat(beat)
    miss_beat(guard, 20, fired=10, missed=1)  # 1 in 200: 0.5%
    assert guard.work_factor == 1.0


def test_repeated_end_beat_is_ignored() -> None:
    guard = Guard(RAW)
    miss_beat(guard, 5)
    guard.end_beat(5)
    guard.end_beat(4)
    assert guard.work_factor == pytest.approx(0.8)
    assert guard.miss_rate() == pytest.approx(0.5)


def test_backoff_shrinks_the_non_essential_budget_only() -> None:
    guard = Guard(replace(RAW, decimate_every=1))
    for beat in range(3):
        miss_beat(guard, beat)  # factor 0.512
    # Budget 0.8 s; optional work may use 0.8 * 0.512 = 0.41 s in total.
    cands = [
        cand("must1", essential=True, cost_s=0.3),
        cand("must2", essential=True, cost_s=0.3),
        cand("opt", cost_s=0.1),
    ]
    admission = guard.admit(3, cands, 1.0, now=0.0)
    assert sorted(names(admission)) == ["must1", "must2"]  # 0.6 + 0.1 > 0.41
    assert shed_reasons(admission) == {"opt": SHED_OVER_BUDGET}
    admission = guard.admit(3, [cand("opt", cost_s=0.1)], 1.0, now=0.0)
    assert names(admission) == ["opt"]


# --------------------------------------------------------------------------- decimation


def test_decimation_runs_non_essential_every_nth_beat_while_backing_off() -> None:
    guard = Guard(replace(RAW, decimate_every=3))
    ran_before = sum(
        bool(guard.admit(b, [cand("blink", beat=b)], 1.0, now=0.0).admitted) for b in range(9)
    )
    assert ran_before == 9
    miss_beat(guard, 100)
    assert guard.work_factor < 1.0
    ran = [bool(guard.admit(b, [cand("blink", beat=b)], 1.0, now=0.0).admitted) for b in range(9)]
    assert sum(ran) == 3
    # Exactly one slot in each run of three beats, the same slot each time.
    assert ran[0:3] == ran[3:6] == ran[6:9]
    assert guard.shed[SHED_DECIMATED] == 6


def test_decimation_never_touches_essential_work() -> None:
    guard = Guard(replace(RAW, decimate_every=4))
    miss_beat(guard, 0)
    optional_ran = 0
    for b in range(8):
        admission = guard.admit(b, [cand("must", essential=True), cand("blink", beat=b)], 1.0, 0.0)
        assert "must" in names(admission)
        optional_ran += "blink" in names(admission)
    assert optional_ran == 2  # decimation was on: the optional action ran one beat in four


def test_decimation_staggers_actions_across_beats() -> None:
    guard = Guard(replace(RAW, decimate_every=4))
    miss_beat(guard, 0)
    per_beat = []
    for b in range(4):
        cands = [cand(f"act{i}", beat=b) for i in range(40)]
        per_beat.append(len(guard.admit(b, cands, 10.0, now=0.0).admitted))
    assert sum(per_beat) == 40  # each action exactly once in four beats
    assert max(per_beat) < 40  # ...and not all on the same beat


def test_decimation_stops_after_recovery() -> None:
    guard = Guard(replace(RAW, decimate_every=2, recovery_step=1.0, recovery_beats=1))
    miss_beat(guard, 0)
    assert guard.work_factor < 1.0  # backing off: decimating
    guard.end_beat(1)
    assert guard.work_factor == 1.0
    ran = [bool(guard.admit(b, [cand("blink")], 1.0, now=0.0).admitted) for b in range(4)]
    assert all(ran)


def test_batch_size_follows_phase_utilisation_and_backoff() -> None:
    guard = Guard(RAW)
    assert guard.batch_size("read", 0.01, phase_seconds=1.0) == 64  # bounded by the queue
    assert guard.batch_size("read", 0.1, phase_seconds=1.0) == 8
    miss_beat(guard, 0)
    assert guard.batch_size("read", 0.1, phase_seconds=1.0) == 6  # 0.8 * 0.8 / 0.1


# --------------------------------------------------------------------------- config


def test_parse_guard_defaults_from_empty_table() -> None:
    problems = ConfigProblems()
    assert parse_guard({}, problems) == GuardConfig()
    assert not problems


def test_pi_defaults_are_sane() -> None:
    c = GuardConfig()
    assert (c.cpu_enter, c.cpu_exit) == (85.0, 70.0)
    assert (c.temperature_enter, c.temperature_exit) == (80.0, 75.0)
    assert c.miss_rate_enter == 0.05 and c.target_utilisation == 0.8 and c.backoff_factor == 0.8


def test_parse_guard_reads_values() -> None:
    problems = ConfigProblems()
    config = parse_guard(
        {
            "cpu_enter": 90,
            "cpu_exit": 60.5,
            "queue_bound": 8,
            "throttle_mask": 0x5,
            "enabled": False,
        },
        problems,
    )
    assert not problems
    assert config.cpu_enter == 90.0 and isinstance(config.cpu_enter, float)
    assert config.cpu_exit == 60.5 and config.queue_bound == 8 and config.throttle_mask == 5
    assert config.enabled is False


def test_parse_guard_reports_every_problem_with_its_place() -> None:
    problems = ConfigProblems()
    config = parse_guard(
        {
            "cpu_enter": "high",
            "memory_enter": 120,
            "queue_bound": 2.5,
            "target_utilisation": 0,
            "temperature_enter": 80,
            "temperature_exit": 85,
            "enabled": "yes",
            "cpu_exitt": 3,
            "decimate_every": True,
            "temperature_critical_enter": 70,
            "temperature_critical_exit": 65,
        },
        problems,
        where="devices.pi.guard",
    )
    text = "\n".join(problems.items)
    for spot in (
        "devices.pi.guard.cpu_enter: must be a number between 0 and 100, got 'high'",
        "devices.pi.guard.memory_enter: must be a number between 0 and 100, got 120",
        "devices.pi.guard.queue_bound: must be an integer between 1 and 1000000, got 2.5",
        "devices.pi.guard.target_utilisation: must be a number greater than 0 and at most 1, got 0",
        "devices.pi.guard.temperature_exit: must be below temperature_enter (80), got 85",
        "devices.pi.guard.enabled: must be true or false, got 'yes'",
        "devices.pi.guard.cpu_exitt: is not a known key (known: backoff_factor,",
        "devices.pi.guard.decimate_every: must be an integer between 1 and 100000, got true",
        "devices.pi.guard.temperature_critical_enter: must not be below temperature_enter (80),"
        " got 70",
    ):
        assert spot in text, spot
    assert len(problems.items) == 9
    # Bad keys keep their defaults; the result is still usable.
    assert config.cpu_enter == 85.0 and config.queue_bound == 64
    assert (config.temperature_enter, config.temperature_exit) == (80.0, 75.0)


def test_parse_guard_refuses_a_non_table() -> None:
    problems = ConfigProblems()
    assert parse_guard(["cpu"], problems) == GuardConfig()  # type: ignore[arg-type]
    assert problems.items == ["guard: must be a table, got ['cpu']"]
