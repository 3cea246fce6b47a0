"""The bench pulse's pure schedule: tempo limits, bars, window ids, valid frames."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.broker import Mosquitto
from edge.harness import read_trace, start_pulse, wait_until
from edge.messages import decode_beat_frame, encode
from edge.pulse import PulseSchedule, limit_change, snap_tempo


def test_tempo_snaps_to_the_contract_grid_and_range() -> None:
    assert snap_tempo(72.04) == 72.0
    assert snap_tempo(2.26) == 2.3
    assert snap_tempo(0.01) == 0.1
    assert snap_tempo(5000) == 1000.0


@pytest.mark.parametrize(
    ("current", "requested", "force", "applied"),
    [
        (120.0, 132.0, False, 132.0),  # +10 %: allowed
        (120.0, 200.0, False, 132.0),  # limited to +10 %
        (120.0, 60.0, False, 108.0),  # limited to -10 %
        (1.0, 600.0, True, 600.0),  # forced
        (118.8, 1000.0, False, 130.6),  # 130.68 would snap to 130.7, past +10 %: inwards
        (130.7, 1.0, False, 117.7),  # 117.63 would snap to 117.6, past -10 %: inwards
    ],
)
def test_a_change_moves_at_most_ten_percent_unless_forced(
    current: float, requested: float, force: bool, applied: float
) -> None:
    assert limit_change(current, requested, force) == applied
    if not force:  # what a follower takes from one frame (sync.max_tempo_step = 0.10)
        assert abs(applied - current) <= 0.1 * current * (1 + 1e-9)


def test_beats_follow_each_other_at_the_tempo_in_force() -> None:
    s = PulseSchedule("bench", 120, bar=4, start_mono=100.0, start_wall=1_800_000_000.0)
    first, second = s.advance(), s.advance()
    assert (first.beat_index, first.start_mono) == (0, 100.0)
    assert second.start_mono == pytest.approx(100.5)
    s.request_tempo(132)  # takes effect at the next beat boundary
    third, fourth = s.advance(), s.advance()
    assert third.start_mono == pytest.approx(101.0) and third.tempo_bpm == 132.0
    assert fourth.start_mono == pytest.approx(101.0 + 60 / 132)


def test_frames_are_valid_with_downbeats_windows_and_deadlines() -> None:
    s = PulseSchedule("bench", 60, bar=3, start_mono=0.0, start_wall=1_800_000_000.0, first_beat=42)
    frames = []
    for _ in range(7):
        slot = s.advance()
        for phase in range(3):
            frames.append(s.frame(slot, phase, "0001:0000:beef"))
    for frame in frames:  # every frame survives the strict decoder in both formats
        assert decode_beat_frame(encode(frame, "json")) == frame
        assert decode_beat_frame(encode(frame, "cbor")) == frame
    plans = [f for f in frames if f.phase == "plan"]
    assert [f.downbeat for f in plans] == [True, False, False, True, False, False, True]
    windows = [f.window_id for f in plans]
    assert windows[0] == windows[1] == windows[2] != windows[3] == windows[5] != windows[6]
    # deadline_at is the wall-clock end of the announced phase
    execute = next(f for f in frames if f.phase == "execute")
    assert execute.deadline_at == datetime.fromtimestamp(1_800_000_000.0 + 2 / 3, UTC)


def test_a_bar_needs_a_beat() -> None:
    with pytest.raises(ValueError, match="bar"):
        PulseSchedule("bench", 60, bar=0, start_mono=0.0, start_wall=0.0)


@pytest.mark.broker
@pytest.mark.slow
def test_signals_change_the_running_pulse_by_ten_percent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    trace = tmp_path / "pulse.jsonl"
    pulse = start_pulse(mosquitto.url, "bench", 300, trace, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(read_trace(trace)) >= 3, 15), pulse.log()
        pulse.signal(signal.SIGUSR1)  # +10 %
        assert wait_until(lambda: any(r["tempo_bpm"] == 330.0 for r in read_trace(trace)), 15), (
            pulse.log()
        )
        pulse.signal(signal.SIGUSR2)  # -10 % of that
        assert wait_until(lambda: any(r["tempo_bpm"] == 297.0 for r in read_trace(trace)), 15), (
            pulse.log()
        )
    finally:
        assert pulse.stop() == 0
    tempos = [r["tempo_bpm"] for r in read_trace(trace)]
    # each change takes effect at a beat boundary and sticks: 300 ... 330 ... 297
    assert tempos == sorted(tempos, key=lambda t: (t != 300.0, t != 330.0))
