"""The sync simulator itself (edge.testing.sync_sim): its truth, its network and its
percentile, so the follower's tests and benchmark measure against something checked."""

from __future__ import annotations

import math

import pytest

from edge.messages import PHASES
from edge.testing.sync_sim import Network, Pulse, percentile, simulate, uniform


def test_the_pulse_truth_spaces_phases_by_the_tempo_and_the_ppm() -> None:
    pulse = Pulse(beats=4, tempo=lambda i: 60.0, ppm=100.0, start=10.0)
    frames = pulse.frames()
    assert [f.beat_index for _, f, _ in frames] == [1000, 1001, 1002, 1003]
    assert {f.phase for _, f, _ in frames} == {"plan"}  # one frame a beat by default
    scale = 1.0 / (1.0 + 100.0 * 1e-6)  # a fast Pulse clock: local time runs short
    assert pulse.truth[(1000, 0)] == pytest.approx(10.0)
    assert pulse.truth[(1000, 1)] == pytest.approx(10.0 + (1 / 3) * scale)
    assert pulse.truth[(1003, 2)] == pytest.approx(10.0 + (3 + 2 / 3) * scale)
    assert pulse.order[:3] == [(1000, 0), (1000, 1), (1000, 2)]
    assert [f.downbeat for _, f, _ in frames] == [True, False, False, False]


def test_per_phase_pulses_send_every_phase_and_jumps_renumber() -> None:
    pulse = Pulse(beats=4, per_phase=True, jump_at=2, jump_to=7)
    frames = pulse.frames()
    assert [(f.beat_index, f.phase) for _, f, _ in frames] == [
        (b, p) for b in (1000, 1001, 7, 8) for p in PHASES
    ]


def test_a_still_network_delivers_every_frame_after_the_base_delay() -> None:
    pulse = Pulse(beats=20)
    run = simulate(pulse, Network(base=0.002))
    sent = {f.beat_index: t for t, f, _ in Pulse(beats=20).frames()}
    assert len(run.arrivals) == 20
    assert all(at == pytest.approx(sent[f.beat_index] + 0.002) for at, f in run.arrivals)


def test_loss_duplicates_and_silence_shape_the_arrivals() -> None:
    lossy = simulate(Pulse(beats=400), Network(loss=0.25, seed=3))
    assert 0.6 * 400 < len(lossy.arrivals) < 0.9 * 400
    doubled = simulate(Pulse(beats=400), Network(duplicate=0.25, seed=3))
    assert 1.1 * 400 < len(doubled.arrivals) < 1.4 * 400
    quiet = simulate(Pulse(beats=60, start=100.0), Network(silence=(110.0, 130.0)))
    sent = [at - 0.0005 for at, _ in quiet.arrivals]  # the default base delay, no jitter
    assert len(sent) == 40 and not any(110.0 <= t < 130.0 for t in sent)


def test_the_same_seed_gives_the_same_run() -> None:
    def arrivals(seed: int) -> list[float]:
        net = Network(jitter=uniform(), loss=0.1, seed=seed)
        return [at for at, _ in simulate(Pulse(beats=50), net).arrivals]

    assert arrivals(4) == arrivals(4)
    assert arrivals(4) != arrivals(5)


def test_errors_compare_emitted_starts_with_the_truth_from_a_beat_on() -> None:
    run = simulate(Pulse(beats=30), Network(base=0.001))
    phases = run.phases()
    assert phases, "the follower emitted no phase starts"
    late = run.errors(after=1010)
    assert late and len(late) < len(run.errors())
    assert all(abs(e) < 0.01 for e in late)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isnan(percentile([], 50))
