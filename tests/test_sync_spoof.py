"""Spoofed frames against the beat follower, in fake time: each attack from issue 13 leaves
every emitted phase start within 2 ms of where the same run without the attacker puts it.

The attacker sees every frame the simulated Pulse sends and adds frames of its own; the
real frames keep their delays (same network seed), so the attacked run is compared with
the clean one boundary by boundary. Unsigned mode: the follower sees every frame.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from test_sync import assert_each_phase_once

from edge.messages import PHASES, BeatFrame
from edge.sync import (
    BeatFollower,
    BeatJumped,
    BeatSourceConflict,
    BeatSourceConflictCleared,
    BeatStarted,
    FrameRejected,
    FrameVerdict,
    PhaseStarted,
    SyncState,
    TempoChanged,
)
from edge.testing.sync_sim import Attacker, Network, Pulse, Run, Sent, heavy_tail, simulate

FIRST = 1000
BASE = 0.0005  # the simulated network's fixed delay
NET = Network(base=BASE, jitter=heavy_tail(), loss=0.1, seed=3)
AT = FIRST + 60  # the beat the attacks aim at (locked, the window well filled)


def verdict(f: BeatFollower) -> FrameVerdict:
    """The last verdict, read through a call so mypy does not keep an earlier narrowing."""
    return f.last_verdict


def runs(attacker: Attacker, net: Network = NET, **pulse: object) -> tuple[Run, Run]:
    """The same Pulse and network without and with the attacker."""
    options: dict[str, object] = {"beats": 160, **pulse}
    clean = simulate(Pulse(**options), net)  # type: ignore[arg-type]
    attacked = simulate(Pulse(**options), net, attacker=attacker)  # type: ignore[arg-type]
    return clean, attacked


def starts(run: Run) -> dict[tuple[int, str], float]:
    return {(e.beat_index, e.phase): e.at for e in run.phases()}


def beats(run: Run) -> list[tuple[int, bool]]:
    return [(e.beat_index, e.downbeat) for e in run.events if isinstance(e, BeatStarted)]


def assert_unmoved(clean: Run, attacked: Run, tolerance: float = 0.002) -> float:
    """Every phase once, the same phases and downbeats, each start within ``tolerance``."""
    assert_each_phase_once(attacked)
    before, after = starts(clean), starts(attacked)
    assert set(after) == set(before), "the attacker added or removed phases"
    assert beats(attacked) == beats(clean), "the attacker moved a downbeat"
    worst = max(abs(after[k] - before[k]) for k in before)
    assert worst <= tolerance, f"a phase start moved {worst * 1e3:.3f} ms"
    return worst


def real(sent: Sent, beat: int, phase: str = "plan") -> tuple[float, BeatFrame]:
    """The real frame for (beat, phase) and its send time."""
    for t, f, _ in sent:
        if f.beat_index == beat and f.phase == phase:
            return t, f
    raise AssertionError(f"the pulse sent no frame for {beat} {phase}")


def rejected(run: Run) -> dict[str, int]:
    return dict(run.follower.rejected)


# --------------------------------------------------------------------------- one frame


@pytest.mark.parametrize("bpm", [1000.0, 0.1])
def test_one_frame_with_a_wild_tempo_changes_nothing(bpm: float) -> None:
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        t, f = real(sent, AT)
        return [(t - 0.030 + BASE, dataclasses.replace(f, tempo_bpm=bpm))]  # 30 ms early

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert not [e for e in attacked.events if isinstance(e, TempoChanged)]
    assert rejected(attacked).get("tempo_unconfirmed") == 1
    assert attacked.follower.tempo_bpm == 60.0
    assert attacked.follower.state is SyncState.LOCKED


def test_one_frame_with_a_wild_tempo_for_the_next_beat_changes_nothing() -> None:
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        t, f = real(sent, AT + 1)  # a beat that has not come yet, sent early
        return [(t - 0.5, dataclasses.replace(f, tempo_bpm=1000.0))]

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert sum(rejected(attacked).values()) == sum(rejected(clean).values()) + 1


def test_one_stray_downbeat_changes_nothing() -> None:
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        t, f = real(sent, AT + 2)  # bar of 4 from FIRST: AT + 2 is mid-bar
        assert not f.downbeat
        return [(t - 0.010 + BASE, dataclasses.replace(f, downbeat=True))]

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert attacked.follower.bar_length == 4
    assert attacked.follower.is_downbeat(FIRST + 200) is True
    assert rejected(attacked).get("bar_unconfirmed") == 1  # its flag, not its timing
    assert "bar_unconfirmed" not in rejected(clean)


# --------------------------------------------------------------------------- index jumps


def test_an_index_jump_pair_on_our_boundaries_renumbers_nothing() -> None:
    # Two per-phase frames numbered +100000, sitting exactly on our execute and review
    # boundaries between two real frames: a relabel, were it followed.
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        t, f = real(sent, AT)
        jumped = dataclasses.replace(f, beat_index=AT + 100_000)
        return [
            (t + 1.0 / 3 + BASE, dataclasses.replace(jumped, phase="execute")),
            (t + 2.0 / 3 + BASE, dataclasses.replace(jumped, phase="review")),
        ]

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert not [e for e in attacked.events if isinstance(e, BeatJumped)]
    assert attacked.follower.relabels == 0 and attacked.follower.reanchors == 0
    assert rejected(attacked).get("unconfirmed_jump") == 2


def test_an_index_jump_pair_with_its_own_timing_renumbers_nothing() -> None:
    # Two frames at 600 BPM, 0.1 s apart, slipped between two real beats: a re-anchor.
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        t, f = real(sent, AT)
        fast = dataclasses.replace(f, beat_index=AT + 100_000, tempo_bpm=600.0)
        return [(t + 0.4, fast), (t + 0.5, dataclasses.replace(fast, beat_index=AT + 100_001))]

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert not [e for e in attacked.events if isinstance(e, BeatJumped)]
    assert attacked.follower.reanchors == 0


def test_index_jump_pairs_every_beat_renumber_nothing() -> None:
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        out = []
        for t, f, _ in sent:
            if AT <= f.beat_index < AT + 40:
                fake = dataclasses.replace(f, beat_index=f.beat_index + 100_000)
                out.append((t + 1.0 / 3 + BASE, dataclasses.replace(fake, phase="execute")))
                out.append((t + 2.0 / 3 + BASE, dataclasses.replace(fake, phase="review")))
        return out

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    assert attacked.follower.relabels == 0 and attacked.follower.reanchors == 0


# --------------------------------------------------------------------------- early copies


def early_copies(first: int, count: int, step: float = 0.140) -> Attacker:
    """A copy of every real frame of ``count`` beats from ``first``, sent early: ``step``
    more every 4 beats (issue 13: 1.4 s in 40 beats)."""

    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        out = []
        for t, f, _ in sent:
            n = f.beat_index - first
            if 0 <= n < count:
                out.append((t - step * (1 + n // 4) + BASE, f))
        return out

    return attacker


def test_early_copies_do_not_drag_the_timeline_and_raise_a_conflict() -> None:
    clean, attacked = runs(early_copies(AT, 40))
    assert_unmoved(clean, attacked)
    follower = attacked.follower
    raised = [e for e in attacked.receive_events if isinstance(e, BeatSourceConflict)]
    assert len(raised) == 1  # once, not once a frame
    truth = attacked.pulse.truth
    assert truth[(AT, 0)] < raised[0].at < truth[(AT + 4, 0)]  # within a few beats
    assert raised[0].spread_ms == pytest.approx(140.0, abs=60.0)
    cleared = [e for e in attacked.events if isinstance(e, BeatSourceConflictCleared)]
    assert len(cleared) == 1 and cleared[0].at > truth[(AT + 40, 0)]  # after the attack
    assert follower.source_conflict is None  # quiet since
    # Every copy is rejected, none silently: those that fitted the timeline's band until
    # their real frame came (source_conflict), those beyond it as a jump nothing confirmed.
    extra = {k: v - rejected(clean).get(k, 0) for k, v in rejected(attacked).items()}
    assert set(extra) <= {"source_conflict", "unconfirmed_jump"} and extra["source_conflict"] >= 4
    assert sum(extra.values()) == 40
    assert follower.state is SyncState.LOCKED
    assert not [e for e in attacked.events if isinstance(e, BeatJumped)]


def test_the_conflict_is_queryable_while_the_copies_come() -> None:
    clean, attacked = runs(early_copies(AT, 40), beats=AT - FIRST + 30)
    assert_unmoved(clean, attacked)
    conflict = attacked.follower.source_conflict
    assert conflict is not None  # the run ends mid-attack
    assert conflict.spread_ms > 140.0 * 7 - 60.0  # 7 steps of 140 ms by beat 28
    assert conflict.evidence >= 20


def test_early_copies_of_per_phase_frames_do_not_drag_the_timeline() -> None:
    clean, attacked = runs(early_copies(AT, 40), per_phase=True)
    assert_unmoved(clean, attacked)
    assert attacked.follower.source_conflict is None
    assert [e for e in attacked.receive_events if isinstance(e, BeatSourceConflict)]


@pytest.mark.parametrize("offset", [-0.080, 0.080])
def test_a_constant_second_publisher_is_seen_and_not_followed(offset: float) -> None:
    def attacker(sent: Sent) -> list[tuple[float, BeatFrame]]:
        return [(t + offset + BASE, f) for t, f, _ in sent if f.beat_index >= AT]

    clean, attacked = runs(attacker)
    assert_unmoved(clean, attacked)
    conflict = attacked.follower.source_conflict
    assert conflict is not None and conflict.spread_ms == pytest.approx(80.0, abs=50.0)


def test_honest_duplicates_raise_no_conflict() -> None:
    run = simulate(Pulse(beats=300), Network(jitter=heavy_tail(), duplicate=0.2, seed=5))
    assert not [e for e in run.events if isinstance(e, BeatSourceConflict)]
    assert run.follower.rejected["duplicate"] > 30
    assert "source_conflict" not in run.follower.rejected


# --------------------------------------------------------------------------- restarts


def restart_errors(run: Run) -> list[float]:
    """Emitted phase start minus truth, for every phase after the jump (new numbering)."""
    cut = next(i for i, e in enumerate(run.events) if isinstance(e, BeatJumped))
    truth = run.pulse.truth
    keyed = [
        (e, (e.beat_index, PHASES.index(e.phase)))
        for e in run.events[cut:]
        if isinstance(e, PhaseStarted)
    ]
    return [e.at - truth[key] for e, key in keyed if key in truth]


@pytest.mark.parametrize("late", [0.030, -0.030, 0.010])
def test_a_pulse_restarted_off_our_boundaries_is_followed_at_its_own_timing(late: float) -> None:
    # tests/test_agent_e2e.py::test_agent_survives_pulse_stop_and_restart in fake time: a
    # pulse at 120 BPM stops, and 2.5 s later a new one counts from 1000 again, some ms
    # off the old boundaries. Relabelled onto the old fit, the timeline fired ~29 ms early.
    pulse = Pulse(
        beats=80, tempo=lambda i: 120.0, per_phase=True, jump_at=40, jump_to=FIRST,
        jump_gap_s=2.5 + late,
    )  # fmt: skip
    run = simulate(pulse, Network(base=BASE, jitter=heavy_tail(0.004), seed=2))
    follower = run.follower
    assert follower.reanchors == 1 and follower.relabels == 0
    errors = restart_errors(run)
    assert len(errors) >= 39 * 3
    worst = max(abs(e - BASE) for e in errors)
    assert worst < 0.002, f"{worst * 1e3:.1f} ms off the restarted pulse"
    assert follower.state is SyncState.LOCKED


def test_a_pulse_restarted_on_our_boundaries_keeps_the_fit() -> None:
    pulse = Pulse(beats=80, tempo=lambda i: 120.0, per_phase=True, jump_at=40, jump_to=FIRST)
    run = simulate(pulse, Network(base=BASE, jitter=heavy_tail(0.004), seed=2))
    assert run.follower.relabels == 1 and run.follower.reanchors == 0
    assert max(abs(e - BASE) for e in restart_errors(run)) < 0.001


def test_a_renumbered_pulse_is_followed_once_its_old_numbers_stop() -> None:
    run = simulate(
        Pulse(beats=300, jump_at=150, jump_to=5), Network(base=BASE, jitter=heavy_tail(), seed=1)
    )
    jumps = [e for e in run.events if isinstance(e, BeatJumped)]
    assert [(j.from_beat, j.to_beat) for j in jumps] == [(FIRST + 150, 5)]
    # Two beats of silence on the old numbering: the third frame of the new one follows.
    assert run.pulse.truth[(6, 0)] < jumps[0].at <= run.pulse.truth[(7, 0)] + 0.06
    assert_each_phase_once(run)


# --------------------------------------------------------------------------- plain values


def frame(beat: int, bpm: float = 60.0, phase: str = "plan") -> BeatFrame:
    return BeatFrame(
        cluster_id="c1",
        beat_index=beat,
        downbeat=beat % 4 == 0,
        phase=phase,  # type: ignore[arg-type]
        hlc="0001:0000:beef",
        deadline_at=datetime(2026, 1, 1, tzinfo=UTC),
        tempo_bpm=bpm,
        window_id=f"{beat // 4:032x}",
    )


def locked(beats: int = 20) -> BeatFollower:
    f = BeatFollower("c1")
    for i in range(beats):
        f.receive(frame(FIRST + i), 100.0 + i)
        f.tick(100.0 + i)
    return f


def test_a_large_tempo_change_waits_for_the_next_frame() -> None:
    f = locked()
    assert f.receive(frame(FIRST + 20, bpm=120.0), 120.0) == []
    assert f.last_verdict is FrameVerdict.HELD
    assert f.tempo_bpm == 60.0  # nothing applied yet
    events = f.receive(frame(FIRST + 21, bpm=120.0), 120.5)
    assert verdict(f) is FrameVerdict.ACCEPTED
    assert [
        (e.beat_index, e.old_bpm, e.new_bpm) for e in events if isinstance(e, TempoChanged)
    ] == [(FIRST + 20, 60.0, 120.0)]
    assert f.phase_start(FIRST + 24, "plan") == pytest.approx(122.0, abs=1e-6)


def test_a_small_tempo_change_takes_effect_from_one_frame() -> None:
    f = locked()
    events = f.receive(frame(FIRST + 20, bpm=66.0), 120.0)  # +10 %: the limit
    assert f.last_verdict is FrameVerdict.ACCEPTED
    assert [e.new_bpm for e in events if isinstance(e, TempoChanged)] == [66.0]


def test_an_unconfirmed_tempo_change_is_rejected_by_the_next_frame() -> None:
    f = locked()
    f.receive(frame(FIRST + 20, bpm=1000.0), 119.97)
    events = f.receive(frame(FIRST + 20), 120.0)
    assert FrameRejected("tempo_unconfirmed", FIRST + 20, 119.97) in events
    assert f.last_verdict is FrameVerdict.ACCEPTED and f.tempo_bpm == 60.0
    assert f.rejected == {"tempo_unconfirmed": 1}


def test_a_copy_of_a_held_frame_is_a_duplicate_and_keeps_it_held() -> None:
    f = locked()
    f.receive(frame(FIRST + 20, bpm=120.0), 120.0)
    assert f.receive(frame(FIRST + 20, bpm=120.0), 120.01) == [
        FrameRejected("duplicate", FIRST + 20, 120.01)
    ]
    f.receive(frame(FIRST + 21, bpm=120.0), 120.5)
    assert f.tempo_bpm == 120.0


def test_a_jump_is_held_while_the_timeline_keeps_arriving() -> None:
    f = locked()  # the last real frame, beat 1019, arrived at 119.0
    assert f.receive(frame(7), 119.5) == [] and f.last_verdict is FrameVerdict.HELD
    assert f.receive(frame(8), 120.5) == []  # consistent, but only 1.5 s of silence
    assert f.last_verdict is FrameVerdict.HELD
    events = f.receive(frame(9), 121.5)  # 2.5 s of silence: the new numbering is real
    assert [e for e in events if isinstance(e, BeatJumped)] == [BeatJumped(FIRST + 19, 7, 121.5)]
    assert verdict(f) is FrameVerdict.ACCEPTED and f.reanchors == 1
    assert f.phase_start(10, "plan") == pytest.approx(122.5, abs=1e-6)


def test_a_real_frame_refutes_a_held_jump() -> None:
    f = locked()
    f.receive(frame(7), 119.5)
    f.receive(frame(8), 120.5)
    events = f.receive(frame(FIRST + 20), 120.03)  # on our numbering and timing
    assert {e.beat_index for e in events if isinstance(e, FrameRejected)} == {7, 8}
    assert {e.reason for e in events if isinstance(e, FrameRejected)} <= {
        "stale",
        "unconfirmed_jump",
    }
    assert f.last_verdict is FrameVerdict.ACCEPTED and f.reanchors == 0
    assert f.phase_start(FIRST + 30, "plan") == pytest.approx(130.0, abs=1e-6)


def test_a_frame_refused_by_the_caller_is_counted_with_the_others() -> None:
    f = locked()
    before = f.phase_start(FIRST + 30, "plan")
    events = f.refused("hlc_ahead", frame(FIRST + 20, bpm=1000.0), 119.99)
    assert events == [FrameRejected("hlc_ahead", FIRST + 20, 119.99)]
    assert f.rejected == {"hlc_ahead": 1} and f.last_verdict is FrameVerdict.REJECTED
    assert f.phase_start(FIRST + 30, "plan") == before and f.tempo_bpm == 60.0


def test_the_verdict_of_rejected_frames() -> None:
    f = locked()
    f.receive(frame(FIRST + 19), 119.0)
    assert f.last_verdict is FrameVerdict.REJECTED
    f.receive(dataclasses.replace(frame(FIRST + 20), cluster_id="other"), 120.0)
    assert f.last_verdict is FrameVerdict.REJECTED
