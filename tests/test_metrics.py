"""Tempo metrics, alerts and tempo rules, fed hand-built beats and samples."""

from __future__ import annotations

import math

import pytest
from machine_samples import quiet_sample

from edge.guard import Sample
from edge.metrics import (
    Alert,
    AlertRules,
    CapacityProfile,
    Metrics,
    TempoMetrics,
    adjusted_tempo,
    capacity_tempo,
    clamp_tempo,
    coordination_tempo,
    recommend_tempo,
    sustainable_tempo,
    task_duration_tempo,
)


def sample(at: float = 0.0, **readings: float | int | None) -> Sample:
    return quiet_sample(at, **{"cpu_percent": 20.0, **readings})


def beat(
    m: Metrics,
    index: int,
    *,
    processing_s: float = 0.1,
    phase_seconds: float = 1.0,
    on_time: bool = True,
    tasks: int = 2,
    drift_ms: float = 0.0,
    actions: int = 0,
    misses: int = 0,
    duration_s: float = 0.01,
) -> None:
    for i in range(actions):
        m.record_action("led.on", duration_s, 0.0, missed=i < misses, now=index * 3.0)
    m.record_beat(index, phase_seconds, processing_s, on_time, tasks, drift_ms, now=index * 3.0)


# --------------------------------------------------------------------------- snapshot


def test_empty_snapshot_is_calm_and_says_what_it_does_not_know() -> None:
    snap = Metrics().snapshot(0.0)
    assert snap.beats == 0 and snap.actions == 0
    assert snap.deadline_miss_rate == 0.0 and snap.phase_completion_rate == 1.0
    assert snap.cpu_utilisation is None and snap.temperature_c is None
    assert snap.mean_task_s is None and snap.network_bandwidth_bps == 0.0


def test_snapshot_computes_the_guide_metrics() -> None:
    m = Metrics(window_beats=10)
    # Beats every 3 s (20 BPM), 1 s phases.
    beat(m, 0, processing_s=0.2, tasks=2, actions=4, misses=0, duration_s=0.01)
    beat(m, 1, processing_s=0.4, tasks=4, actions=4, misses=1, duration_s=0.03)
    beat(m, 2, processing_s=0.6, on_time=False, tasks=0, drift_ms=-1.5)
    m.observe(sample(cpu_percent=30.0, memory_percent=50.0, temperature_c=60.0, throttled=0x4))
    m.observe(sample(cpu_percent=50.0, memory_percent=None, temperature_c=None, throttled=None))
    snap = m.snapshot(6.0)
    assert isinstance(snap, TempoMetrics)
    assert snap.beats == 3 and snap.actions == 8
    assert snap.beat_processing_latency_s == pytest.approx(0.4)
    assert snap.latency_max_s == pytest.approx(0.6)
    assert snap.phase_utilisation == pytest.approx(0.4)
    assert snap.phase_completion_rate == pytest.approx(2 / 3)
    assert snap.deadline_miss_rate == pytest.approx(1 / 8)
    assert snap.tasks_per_beat == pytest.approx(2.0)
    assert snap.beats_per_second == pytest.approx(1 / 3)
    assert snap.tempo_drift_ms == -1.5  # latest
    assert snap.cpu_utilisation == pytest.approx(0.4)
    assert snap.memory_utilisation == pytest.approx(0.5)  # the missing reading is skipped
    assert snap.temperature_c == 60.0 and snap.throttled == 0x4  # latest known
    assert snap.mean_task_s == pytest.approx(0.02)


def test_window_slides() -> None:
    m = Metrics(window_beats=3)
    beat(m, 0, actions=10, misses=10)
    for i in range(1, 4):
        beat(m, i, actions=10)
    snap = m.snapshot(12.0)
    assert snap.beats == 3 and snap.deadline_miss_rate == 0.0


def test_phase_utilisation_is_per_beat_so_tempo_changes_are_fair() -> None:
    m = Metrics()
    beat(m, 0, processing_s=0.5, phase_seconds=1.0)
    beat(m, 1, processing_s=0.05, phase_seconds=0.1)
    assert m.snapshot(3.0).phase_utilisation == pytest.approx(0.5)


def test_bytes_per_second_over_a_sliding_time_window() -> None:
    m = Metrics(window_s=10.0)
    for t in range(20):
        m.record_bytes(250, now=100.0 + t)
    assert m.snapshot(119.5).network_bandwidth_bps == pytest.approx(250.0, rel=0.15)
    # Quiet for a whole window: back to zero, and old buckets are dropped.
    assert m.snapshot(200.0).network_bandwidth_bps == 0.0


def test_bytes_at_start_are_not_divided_by_a_full_window() -> None:
    m = Metrics(window_s=60.0)
    m.record_bytes(1000, now=0.0)
    m.record_bytes(1000, now=2.0)
    assert m.snapshot(2.0).network_bandwidth_bps == pytest.approx(1000.0)


def test_bad_numbers_are_dropped_and_counted() -> None:
    m = Metrics()
    m.record_action("x", float("nan"), 0.0, missed=False, now=0.0)
    m.record_bytes(-5, now=0.0)
    m.record_beat(0, 1.0, float("inf"), True, 1, float("nan"), now=0.0)
    snap = m.snapshot(0.0)
    assert m.invalid == 4  # the duration, the byte count, the beat's time and its drift
    assert math.isfinite(snap.beat_processing_latency_s) and math.isfinite(snap.tempo_drift_ms)
    assert snap.actions == 1 and snap.mean_task_s is None


# --------------------------------------------------------------------------- alerts


def names(alerts: list[Alert]) -> list[str]:
    return [a.name for a in alerts]


def test_no_alerts_when_calm() -> None:
    m = Metrics()
    beat(m, 0, actions=5)
    m.observe(sample())
    assert m.check_alerts(0.0) == ([], [])
    assert m.active_alerts() == []


def test_latency_alert_starts_once_and_clears_once() -> None:
    m = Metrics(window_beats=2)
    beat(m, 0, processing_s=0.95)
    started, cleared = m.check_alerts(0.0)
    assert names(started) == ["latency_high"] and cleared == []
    alert = started[0]
    assert alert.level == "warning"
    assert alert.message == "Beat processing approaching deadline: 95% of the phase"
    assert alert.recommendation == "Consider reducing tempo or optimizing processing"
    beat(m, 1, processing_s=0.9)  # mean 0.925: still on, reported nothing new
    assert m.check_alerts(3.0) == ([], [])
    assert m.active_alerts() == [alert]
    beat(m, 2, processing_s=0.8)  # mean 0.85: inside the band, held
    assert m.check_alerts(6.0) == ([], [])
    beat(m, 3, processing_s=0.5)  # mean 0.65: cleared
    assert m.check_alerts(9.0) == ([], [alert])
    assert m.active_alerts() == []
    assert m.check_alerts(12.0) == ([], [])


def test_miss_rate_alert_is_critical_above_five_percent() -> None:
    m = Metrics(window_beats=5)
    beat(m, 0, actions=20, misses=1)  # exactly 5%: not above
    assert m.check_alerts(0.0) == ([], [])
    beat(m, 1, actions=20, misses=2)  # 3 / 40 = 7.5%
    started, _ = m.check_alerts(3.0)
    assert [(a.name, a.level) for a in started] == [("miss_rate_high", "critical")]
    assert started[0].message == "High deadline miss rate: 7.5%"
    assert started[0].recommendation == "Reduce tempo immediately or scale resources"
    for i in range(2, 7):
        beat(m, i, actions=20)
    assert names(m.check_alerts(20.0)[1]) == ["miss_rate_high"]


def test_cpu_alert_above_ninety_percent() -> None:
    m = Metrics(window_beats=2)
    m.observe(sample(cpu_percent=95.0))
    started, _ = m.check_alerts(0.0)
    assert names(started) == ["cpu_high"]
    assert started[0].message == "High CPU utilization: 95%"
    assert started[0].recommendation == "Scale up or reduce workload per beat"
    m.observe(sample(cpu_percent=50.0))
    m.observe(sample(cpu_percent=50.0))
    assert names(m.check_alerts(1.0)[1]) == ["cpu_high"]


def test_memory_alert() -> None:
    m = Metrics(window_beats=1)
    m.observe(sample(memory_percent=93.0))
    assert names(m.check_alerts(0.0)[0]) == ["memory_high"]
    m.observe(sample(memory_percent=60.0))
    assert names(m.check_alerts(1.0)[1]) == ["memory_high"]


def test_temperature_alerts_warning_then_critical_then_clear() -> None:
    m = Metrics()
    m.observe(sample(temperature_c=82.0))
    started, _ = m.check_alerts(0.0)
    assert [(a.name, a.level) for a in started] == [("temperature_high", "warning")]
    assert started[0].message == "SoC temperature high: 82.0 C"
    m.observe(sample(temperature_c=86.0))
    started, _ = m.check_alerts(1.0)
    assert [(a.name, a.level) for a in started] == [("temperature_critical", "critical")]
    m.observe(sample(temperature_c=79.0))  # below critical's exit, above high's
    assert names(m.check_alerts(2.0)[1]) == ["temperature_critical"]
    assert names(m.active_alerts()) == ["temperature_high"]
    m.observe(sample(temperature_c=None))  # a light sample keeps the last reading
    assert m.check_alerts(3.0) == ([], [])
    m.observe(sample(temperature_c=70.0))
    assert names(m.check_alerts(4.0)[1]) == ["temperature_high"]


def test_throttling_alert_uses_current_flags_only() -> None:
    m = Metrics()
    m.observe(sample(throttled=0x50000))  # happened since boot, not now
    assert m.check_alerts(0.0) == ([], [])
    m.observe(sample(throttled=0x50005))
    started, _ = m.check_alerts(1.0)
    assert names(started) == ["throttled"]
    assert started[0].message == "Firmware reports throttling: flags 0x50005"
    m.observe(sample(throttled=0x50000))
    assert names(m.check_alerts(2.0)[1]) == ["throttled"]


def test_several_alerts_start_together_in_rule_order() -> None:
    m = Metrics(rules=AlertRules(cpu_enter=0.5, cpu_exit=0.4))
    beat(m, 0, processing_s=0.99, actions=2, misses=2)
    m.observe(sample(cpu_percent=60.0, temperature_c=90.0, throttled=1))
    started, cleared = m.check_alerts(0.0)
    assert names(started) == [
        "latency_high",
        "miss_rate_high",
        "cpu_high",
        "temperature_high",
        "temperature_critical",
        "throttled",
    ]
    assert cleared == []
    assert names(m.active_alerts()) == names(started)


# --------------------------------------------------------------------------- tempo rules


def test_rule_1_five_second_tasks_give_4_bpm() -> None:
    assert task_duration_tempo(5.0) == 4.0
    assert recommend_tempo(task_s=5.0) == 4.0


def test_rule_2_sync_every_two_minutes_gives_half_a_bpm() -> None:
    assert coordination_tempo(120.0) == 0.5
    assert recommend_tempo(sync_interval_s=120.0) == 0.5


def test_rule_3_ten_second_task_five_second_recovery_gives_4_bpm() -> None:
    assert sustainable_tempo(10.0, 5.0) == 4.0
    # Rule 1 for a 10 s task is 2 BPM, which is the tighter ceiling when both apply.
    assert recommend_tempo(task_s=10.0, recovery_s=5.0) == 2.0


def test_recommendation_takes_the_lowest_ceiling() -> None:
    assert recommend_tempo(task_s=5.0, sync_interval_s=120.0) == 0.5
    assert recommend_tempo(task_s=1.0, sync_interval_s=10.0, recovery_s=60.0) == pytest.approx(
        0.9
    )  # 60 / 61 = 0.98 rounds down
    assert recommend_tempo() is None


def test_clamp_and_round_down_onto_the_grid() -> None:
    assert clamp_tempo(0.01) == 0.1
    assert clamp_tempo(5000.0) == 1000.0
    assert clamp_tempo(math.inf) == 1000.0
    assert clamp_tempo(28.5714) == 28.5
    assert clamp_tempo(60 / 200.00000000000003) == 0.3  # float noise stays on 0.3
    assert clamp_tempo(3.99999) == 3.9
    with pytest.raises(ValueError, match="nan"):
        clamp_tempo(math.nan)


def test_instant_tasks_recommend_the_maximum() -> None:
    assert recommend_tempo(task_s=0.0) == 1000.0


def test_recommended_tempo_from_measured_task_durations() -> None:
    m = Metrics()
    assert m.recommended_tempo() is None
    beat(m, 0, actions=2, duration_s=4.0)
    beat(m, 1, actions=2, duration_s=6.0)  # mean 5 s -> 4 BPM
    assert m.recommended_tempo() == 4.0
    assert m.recommended_tempo(sync_interval_s=120.0) == 0.5
    assert m.recommended_tempo(task_s=10.0, recovery_s=5.0) == 2.0


def test_capacity_planner_takes_the_tightest_resource() -> None:
    profile = CapacityProfile(
        cpu_s_per_beat=5.0,  # 60 / 15 = 4 BPM
        memory_mb_per_beat=64.0,
        memory_mb_per_minute=512.0,  # 8 BPM
        io_ops_per_beat=300.0,
        iops=10.0,  # 600 ops a minute / 300 = 2 BPM
    )
    assert capacity_tempo(profile) == 2.0
    assert capacity_tempo(CapacityProfile(cpu_s_per_beat=5.0)) == 4.0
    memory_only = CapacityProfile(memory_mb_per_beat=64.0, memory_mb_per_minute=512.0)
    assert capacity_tempo(memory_only) == 8.0
    assert capacity_tempo(CapacityProfile(memory_mb_per_beat=64.0)) is None  # half a constraint
    assert capacity_tempo(CapacityProfile(cpu_s_per_beat=10_000.0)) == 0.1


def snapshot_with(miss: float, completion: float, cpu: float | None) -> TempoMetrics:
    return TempoMetrics(
        beat_processing_latency_s=0.1,
        phase_completion_rate=completion,
        deadline_miss_rate=miss,
        cpu_utilisation=cpu,
        memory_utilisation=0.3,
        network_bandwidth_bps=0.0,
        tasks_per_beat=1.0,
        beats_per_second=1.0,
        tempo_drift_ms=0.0,
        beats=10,
        actions=10,
        phase_utilisation=0.1,
        latency_max_s=0.1,
        mean_task_s=0.01,
        temperature_c=None,
        throttled=None,
    )


def test_adaptive_tempo_controller_slows_speeds_and_holds() -> None:
    assert adjusted_tempo(60.0, snapshot_with(0.05, 0.9, 0.5)) == 54.0
    assert adjusted_tempo(60.0, snapshot_with(0.0, 1.0, 0.5)) == 66.0
    assert adjusted_tempo(60.0, snapshot_with(0.0, 1.0, 0.8)) == 60.0
    assert adjusted_tempo(60.0, snapshot_with(0.0, 1.0, None)) == 60.0
    assert adjusted_tempo(0.1, snapshot_with(0.5, 0.0, 0.9)) == 0.1
