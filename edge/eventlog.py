"""What the follower's events say in the agent's log: tempo changes, jumps, loss, conflicts.

The runner hands every event the follower emits to :func:`log_event` before acting on it;
beat and phase starts say nothing (they come every beat), the rest get one line each.
"""

from __future__ import annotations

import logging

from edge.review import SOURCE_CONFLICT_ALERT
from edge.sync import (
    BeatJumped,
    BeatSourceConflict,
    BeatSourceConflictCleared,
    SyncEvent,
    SyncLost,
    SyncRegained,
    TempoChanged,
)

log = logging.getLogger(__name__)


def log_event(event: SyncEvent, signed: bool) -> None:
    """Log ``event`` (``signed``: the beat's frames are checked against beat keys)."""
    if isinstance(event, TempoChanged):
        log.info(
            "tempo %.1f -> %.1f BPM at beat %d", event.old_bpm, event.new_bpm, event.beat_index
        )
    elif isinstance(event, BeatJumped):
        log.warning(
            "beat index jumped %d -> %d (pulse restart or failover)",
            event.from_beat,
            event.to_beat,
        )
    elif isinstance(event, SyncLost):
        log.warning("beat lost after %.1f s of silence", event.silent_s)
    elif isinstance(event, SyncRegained):
        log.info("beat regained (error %.2f ms)", event.error_s * 1000)
    elif isinstance(event, BeatSourceConflict):
        log.warning(
            "alert %s started: frames for the same beats arrive %.1f ms apart "
            "(a second publisher, or copies sent early); following the source the "
            "timeline agrees with%s",
            SOURCE_CONFLICT_ALERT,
            event.spread_ms,
            "" if signed else " (sign the beat: [security] beat_keys)",
        )
    elif isinstance(event, BeatSourceConflictCleared):
        log.info("alert %s cleared", SOURCE_CONFLICT_ALERT)
