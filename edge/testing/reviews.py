"""Sample beat reviews, what a status claim is built from, for the tests and benchmarks: a
quiet beat (locked, no trouble) and a busy one (free-running, shedding, with alerts)."""

from __future__ import annotations

from edge.status import BeatReview


def quiet_review(beat: int) -> BeatReview:
    """A locked beat with nothing to report; four actions fired per beat so far."""
    return BeatReview(
        beat_index=beat,
        state="reviewing",
        sync_state="locked",
        error_bound_ms=0.84,
        late_ms_p50=0.052,
        late_ms_max=0.31,
        fired=4 * beat,
        missed=0,
        shed={},
        dropped_by_limit=0,
        frames_rejected={},
        guard_level="admit",
        guard_reason="",
        recommended_tempo=None,
        cpu_percent=11.3,
        memory_mb=28.4,
        temperature_c=51.2,
        backlog=0,
        outbox_dropped=0,
    )


def busy_review(beat: int) -> BeatReview:
    """A free-running beat under load: misses, shedding, rejected frames and two alerts,
    so every optional part of a claim is there."""
    return BeatReview(
        beat_index=beat,
        state="executing",
        sync_state="free_running",
        error_bound_ms=12.5,
        late_ms_p50=0.41,
        late_ms_max=7.9,
        fired=4 * beat,
        missed=37,
        shed={"cpu": 12, "thermal": 3},
        dropped_by_limit=5,
        frames_rejected={"bad_tempo": 2, "stale": 9},
        guard_level="essential_only",
        guard_reason="cpu 94% > 85% for 5 samples",
        recommended_tempo=54.0,
        cpu_percent=94.1,
        memory_mb=31.0,
        temperature_c=78.6,
        backlog=412,
        outbox_dropped=18,
        alerts=("deadline miss rate 3.1% > 2%", "sync lost 4 beats ago"),
    )
