"""The follower's settings: :class:`SyncConfig` and the ``[sync]`` table reader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edge.errors import ConfigProblems
from edge.settings import Section, choice, integer, number


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Every knob of the beat follower; the defaults suit a LAN and 0.1..1000 BPM.

    jitter_tolerance_s: frames later than the envelope by more than this count as late
        (upstream SDK default 50 ms); three times it bounds "belongs to this timeline".
    lock_after_frames: frames needed after (re)acquisition before LOCKED.
    free_run_after_beats: beats without a frame (plus the jitter tolerance) before
        FREE_RUNNING.
    lost_after_s, lost_after_beats: silence before LOST is the larger of the two.
    filter_window_frames: arrivals kept for the envelope fit. The envelope's error falls
        as 1 / frames (with delay uniform over 50 ms: ~1 ms p99 after ~250 frames, ~0.5 ms
        after ~1000), so the window is long; it assumes the clock rate difference is
        steady over it (17 min at 60 BPM). Cost is linear: ~0.35 ms of CPU per frame on a
        desktop at 1024, some 3-5x that on a Raspberry Pi; lower it for 600 BPM per-phase
        frames on a slow board.
    max_rate_ppm: largest believable clock rate difference; the fit is clamped to it.
    rate_min_span_s, rate_min_frames: the window must span this long and hold this many
        frames before the rate is estimated (a few jittered points give a wild slope).
    rate_max_uncertainty_ppm: ...and the estimate's own uncertainty (twice the noise
        near the floor over the span) must be below this; until then the slope is held.
    early_tolerance_s: frames earlier than the envelope by more than this are held back.
    relock_after_frames: consecutive early (or consistent late) frames that move the
        timeline.
    slew_rate: largest speed at which a correction is applied (0.02 = 20 ms per second).
    step_after_phases: a correction larger than this many phases is stepped, not slewed.
    jump_after_beats: an index more than this many beats from the expected one is a jump.
    jump_after_silent_beats: frames off the timeline (a new numbering or new timing) are
        followed only once the timeline itself has been silent this many beats (plus the
        jitter tolerance): a pair slipped between the real frames renumbers nothing.
    max_tempo_step: a tempo change larger than this fraction of the current tempo (the
        upstream limit, 10 %) takes effect only once the next frame confirms it.
    conflict_after_frames: evidence of a second source (see :mod:`edge.sync.conflict`)
        among the last twice this many frames that raises a source conflict.
    conflict_quiet_s: a source conflict clears after this long without evidence (at
        least 4 beats).
    trust_wall_clock: None = decide from the data; True/False force it.
    wall_trust_frames: consistent frames needed before the wall clock is trusted.
    wall_max_bias_s: largest fixed path delay believed from the wall clock.
    wall_consistency_s: how closely wall-clock delay estimates must agree.
    wall_step_s: a jump of wall-minus-monotonic larger than this is a wall clock step.
    path_delay_s: fixed path delay removed when nothing better is known.
    """

    jitter_tolerance_s: float = 0.050
    lock_after_frames: int = 4
    free_run_after_beats: float = 3.0
    lost_after_s: float = 10.0
    lost_after_beats: float = 8.0
    filter_window_frames: int = 1024
    max_rate_ppm: float = 500.0
    rate_min_span_s: float = 5.0
    rate_min_frames: int = 6
    rate_max_uncertainty_ppm: float = 100.0
    early_tolerance_s: float = 0.001
    relock_after_frames: int = 4
    slew_rate: float = 0.02
    step_after_phases: float = 0.5
    jump_after_beats: int = 2
    jump_after_silent_beats: float = 2.0
    max_tempo_step: float = 0.10
    conflict_after_frames: int = 3
    conflict_quiet_s: float = 10.0
    trust_wall_clock: bool | None = None
    wall_trust_frames: int = 8
    wall_max_bias_s: float = 0.010
    wall_consistency_s: float = 0.002
    wall_step_s: float = 0.005
    path_delay_s: float = 0.0


def _auto_is_none(value: object) -> object:
    return None if value == "auto" else value


#: Every key of SyncConfig and what it takes (TOML has no null: "auto" stands for None).
_SECTION = Section(
    SyncConfig,
    (
        number("jitter_tolerance_s", 0.0, 10.0, low_inclusive=False),
        integer("lock_after_frames", 1, 1000),
        number("free_run_after_beats", 1.0, 1e6),
        number("lost_after_s", 0.0, 1e7, low_inclusive=False),
        number("lost_after_beats", 1.0, 1e6),
        integer("filter_window_frames", 4, 100_000),
        number("max_rate_ppm", 0.0, 100_000.0),
        number("rate_min_span_s", 0.0, 1e7),
        integer("rate_min_frames", 4, 100_000),
        number("rate_max_uncertainty_ppm", 0.0, 100_000.0, low_inclusive=False),
        number("early_tolerance_s", 0.0, 10.0),
        integer("relock_after_frames", 2, 1000),
        number("slew_rate", 0.0, 0.5, low_inclusive=False),
        number("step_after_phases", 0.0, 1e6),
        integer("jump_after_beats", 1, 1_000_000),
        number("jump_after_silent_beats", 0.0, 1e6),
        number("max_tempo_step", 0.0, 100.0),
        integer("conflict_after_frames", 1, 1000),
        number("conflict_quiet_s", 0.0, 1e7),
        choice("trust_wall_clock", True, False, "auto", convert=_auto_is_none),
        integer("wall_trust_frames", 1, 10_000),
        number("wall_max_bias_s", 0.0, 10.0),
        number("wall_consistency_s", 0.0, 10.0, low_inclusive=False),
        number("wall_step_s", 0.0, 3600.0, low_inclusive=False),
        number("path_delay_s", 0.0, 10.0),
    ),
)


def parse_sync(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "sync"
) -> SyncConfig:
    """Read the ``[sync]`` TOML table into a :class:`SyncConfig`.

    Every problem (unknown key, wrong type, out of range, not finite) is added to
    ``problems`` with its place (``sync.slew_rate``), worded as :mod:`edge.settings` words
    them; a bad value keeps its default so parsing goes on. ``trust_wall_clock`` takes
    ``true``, ``false`` or ``"auto"``. Never raises for bad input.
    """
    return _SECTION.read(raw, problems, where)
