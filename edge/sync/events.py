"""What the follower tells its caller: positions on the timeline and the events it emits."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from edge.messages import Phase


class FrameVerdict(enum.Enum):
    """What :meth:`~edge.sync.follower.BeatFollower.receive` did with the frame it was given."""

    ACCEPTED = "accepted"  # it passed every check and is part of the timeline
    HELD = "held"  # kept until the next frames confirm it (a large tempo change, a jump)
    REJECTED = "rejected"  # refused: a FrameRejected says why


@dataclass(frozen=True, slots=True)
class Position:
    """Where the timeline is at some local time: beat, phase, its bounds, 0..1 within it."""

    beat_index: int
    phase: Phase
    phase_start: float
    phase_end: float
    fraction: float


@dataclass(frozen=True, slots=True)
class BeatStarted:
    beat_index: int
    at: float
    downbeat: bool
    window_id: str | None


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    beat_index: int
    phase: Phase
    at: float


@dataclass(frozen=True, slots=True)
class NewWindow:
    beat_index: int
    window_id: str
    at: float


@dataclass(frozen=True, slots=True)
class TempoChanged:
    beat_index: int
    old_bpm: float
    new_bpm: float
    at: float


@dataclass(frozen=True, slots=True)
class BeatJumped:
    from_beat: int
    to_beat: int
    at: float


@dataclass(frozen=True, slots=True)
class FrameRejected:
    reason: str
    beat_index: int
    at: float


@dataclass(frozen=True, slots=True)
class BeatSourceConflict:
    """Frames for the same beat and phase keep arriving at different times: two sources
    (see :mod:`edge.sync.conflict`); ``spread_ms``: how far apart they arrive."""

    at: float
    spread_ms: float


@dataclass(frozen=True, slots=True)
class BeatSourceConflictCleared:
    """No more evidence of a second source for the quiet period."""

    at: float


@dataclass(frozen=True, slots=True)
class SyncLost:
    at: float
    silent_s: float


@dataclass(frozen=True, slots=True)
class SyncRegained:
    at: float
    error_s: float


SyncEvent: TypeAlias = (
    BeatStarted
    | PhaseStarted
    | NewWindow
    | TempoChanged
    | BeatJumped
    | FrameRejected
    | BeatSourceConflict
    | BeatSourceConflictCleared
    | SyncLost
    | SyncRegained
)
