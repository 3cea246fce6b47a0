"""The beat follower, one concern a module; this package keeps the names ``edge.sync`` had.

:mod:`edge.sync.follower` holds the theory of operation and :class:`BeatFollower`.
"""

from edge.sync.config import SyncConfig, parse_sync
from edge.sync.conflict import SourceConflict
from edge.sync.envelope import lower_envelope_slope
from edge.sync.events import (
    BeatJumped,
    BeatSourceConflict,
    BeatSourceConflictCleared,
    BeatStarted,
    FrameRejected,
    FrameVerdict,
    NewWindow,
    PhaseStarted,
    Position,
    SyncEvent,
    SyncLost,
    SyncRegained,
    TempoChanged,
)
from edge.sync.follower import BeatFollower
from edge.sync.states import SyncState, TransitionError, Trigger
from edge.sync.tempo import Key

__all__ = [
    "BeatFollower",
    "BeatJumped",
    "BeatSourceConflict",
    "BeatSourceConflictCleared",
    "BeatStarted",
    "FrameRejected",
    "FrameVerdict",
    "Key",
    "NewWindow",
    "PhaseStarted",
    "Position",
    "SourceConflict",
    "SyncConfig",
    "SyncEvent",
    "SyncLost",
    "SyncRegained",
    "SyncState",
    "TempoChanged",
    "TransitionError",
    "Trigger",
    "lower_envelope_slope",
    "parse_sync",
]
