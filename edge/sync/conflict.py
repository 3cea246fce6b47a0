"""The source-conflict watch: frames for the same beat and phase arriving at different times.

One Pulse sends each phase once; the network may deliver a copy twice, but both copies
arrive within the jitter tolerance of each other. When the same (beat, phase) keeps
arriving at two different times (a second publisher, or an attacker copying each frame
and sending it early), or its first arrival sat earlier than the timeline allows while
a later one fits it, that is evidence of two sources. ``conflict_after_frames`` pieces
of evidence among the last ``2 * conflict_after_frames`` frames raise the conflict (one
:class:`~edge.sync.events.BeatSourceConflict`); it clears (one
:class:`~edge.sync.events.BeatSourceConflictCleared`) after a quiet period without
evidence: ``max(conflict_quiet_s, 4 beats)``.

This only watches and reports; what the follower does with the frames is its own
business (it keeps following the source consistent with its timeline).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from edge.sync.config import SyncConfig
from edge.sync.events import BeatSourceConflict, BeatSourceConflictCleared
from edge.sync.tempo import Key

_FIRST_ARRIVALS = 256  # keys whose first arrival is remembered
_QUIET_BEATS = 4.0  # the quiet period is never shorter than this many beats


@dataclass(frozen=True, slots=True)
class SourceConflict:
    """A conflict in force: since when, the latest evidence, how far apart the sources
    arrive (the largest spread seen during the conflict, ms) and the evidence so far."""

    since: float
    last_at: float
    spread_ms: float
    evidence: int


class ConflictWatch:
    """First arrivals of recent keys, the evidence window and the conflict in force."""

    def __init__(self, config: SyncConfig) -> None:
        self._cfg = config
        self._first: dict[Key, float] = {}
        self._window: deque[float | None] = deque(maxlen=2 * config.conflict_after_frames)
        self._last_evidence = 0.0
        self.current: SourceConflict | None = None
        self.evidence = 0  # pieces of evidence seen, ever

    def first_arrival(self, key: Key) -> float | None:
        """When ``key`` first arrived (None if not seen recently)."""
        return self._first.get(key)

    def arrived(self, key: Key, a: float) -> None:
        """Remember the first arrival of ``key``."""
        if key not in self._first:
            self._first[key] = a
            if len(self._first) > _FIRST_ARRIVALS:
                del self._first[next(iter(self._first))]

    def reset(self) -> None:
        """A new timeline: its numbers may reuse old ones, so forget the arrivals."""
        self._first.clear()

    def renumber(self, shift: int) -> None:
        self._first = {(k + shift, p): a for (k, p), a in self._first.items()}

    def frame(self, at: float, spread_s: float | None) -> BeatSourceConflict | None:
        """One frame was received at ``at``; ``spread_s`` is the evidence it brought (how
        far from another arrival of the same key, seconds) or None. Returns the event
        when this raises the conflict."""
        self._window.append(spread_s)
        if spread_s is None:
            return None
        self.evidence += 1
        self._last_evidence = at
        spread_ms = abs(spread_s) * 1000.0
        current = self.current
        if current is not None:
            self.current = SourceConflict(
                current.since, at, max(current.spread_ms, spread_ms), current.evidence + 1
            )
            return None
        recent = [s for s in self._window if s is not None]
        if len(recent) < self._cfg.conflict_after_frames:
            return None
        spread_ms = max(abs(s) for s in recent) * 1000.0
        self.current = SourceConflict(at, at, spread_ms, len(recent))
        return BeatSourceConflict(at, spread_ms)

    def clears_at(self, beat_seconds: float) -> float | None:
        """When the conflict in force clears if no more evidence comes (None: none)."""
        if self.current is None:
            return None
        return self._last_evidence + max(self._cfg.conflict_quiet_s, _QUIET_BEATS * beat_seconds)

    def tick(self, now: float, beat_seconds: float) -> BeatSourceConflictCleared | None:
        """Clear the conflict once the quiet period has passed; the event if it did."""
        at = self.clears_at(beat_seconds)
        if at is None or now < at:
            return None
        self.current = None
        self._window.clear()
        return BeatSourceConflictCleared(at)
