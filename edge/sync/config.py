"""The follower's settings: :class:`SyncConfig` and the ``[sync]`` table reader."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from edge.errors import ConfigProblems


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


# name -> (kind, low, high, low_inclusive); kind "f" float, "i" int.
_LIMITS: dict[str, tuple[str, float, float, bool]] = {
    "jitter_tolerance_s": ("f", 0.0, 10.0, False),
    "lock_after_frames": ("i", 1, 1000, True),
    "free_run_after_beats": ("f", 1.0, 1e6, True),
    "lost_after_s": ("f", 0.0, 1e7, False),
    "lost_after_beats": ("f", 1.0, 1e6, True),
    "filter_window_frames": ("i", 4, 100_000, True),
    "max_rate_ppm": ("f", 0.0, 100_000.0, True),
    "rate_min_span_s": ("f", 0.0, 1e7, True),
    "rate_min_frames": ("i", 4, 100_000, True),
    "rate_max_uncertainty_ppm": ("f", 0.0, 100_000.0, False),
    "early_tolerance_s": ("f", 0.0, 10.0, True),
    "relock_after_frames": ("i", 2, 1000, True),
    "slew_rate": ("f", 0.0, 0.5, False),
    "step_after_phases": ("f", 0.0, 1e6, True),
    "jump_after_beats": ("i", 1, 1_000_000, True),
    "jump_after_silent_beats": ("f", 0.0, 1e6, True),
    "max_tempo_step": ("f", 0.0, 100.0, True),
    "conflict_after_frames": ("i", 1, 1000, True),
    "conflict_quiet_s": ("f", 0.0, 1e7, True),
    "wall_trust_frames": ("i", 1, 10_000, True),
    "wall_max_bias_s": ("f", 0.0, 10.0, True),
    "wall_consistency_s": ("f", 0.0, 10.0, False),
    "wall_step_s": ("f", 0.0, 3600.0, False),
    "path_delay_s": ("f", 0.0, 10.0, True),
}


def parse_sync(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "sync"
) -> SyncConfig:
    """Read the ``[sync]`` TOML table into a :class:`SyncConfig`.

    Every problem (unknown key, wrong type, out of range) is added to ``problems`` with its
    place (``sync.slew_rate``); a bad value falls back to its default so parsing goes on.
    ``trust_wall_clock`` takes ``true``, ``false`` or ``"auto"`` (TOML has no null).
    Never raises for bad input.
    """
    known = {f.name for f in fields(SyncConfig)}
    values: dict[str, object] = {}
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a table, got {type(raw).__name__}")
        return SyncConfig()
    for key, value in raw.items():
        place = f"{where}.{key}"
        if key not in known:
            problems.add(place, f"is not a sync setting (known: {', '.join(sorted(known))})")
            continue
        if key == "trust_wall_clock":
            if isinstance(value, bool):
                values[key] = value
            elif value == "auto":
                values[key] = None
            else:
                problems.add(place, f'must be true, false or "auto", got {value!r}')
            continue
        kind, low, high, low_inclusive = _LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(place, f"must be a number, got {value!r}")
            continue
        if kind == "i" and not isinstance(value, int):
            problems.add(place, f"must be an integer, got {value!r}")
            continue
        if not math.isfinite(value):
            problems.add(place, f"must be a finite number, got {value!r}")
            continue
        too_low = value < low or (value == low and not low_inclusive)
        if too_low or value > high:
            bracket = "[" if low_inclusive else "("
            problems.add(place, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
            continue
        values[key] = int(value) if kind == "i" else float(value)
    return SyncConfig(**values)  # type: ignore[arg-type]
