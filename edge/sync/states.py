"""The follower's states, the one table that moves between them, and its silence limits.

Transitions are data: :data:`TRANSITIONS` maps ``(state, trigger)`` to the next state, and
:func:`next_state` refuses a pair the table does not know (as h11's ``_state.py`` does):
the follower asks only for pairs it knows are valid, so an unknown one is our bug.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from edge.sync.config import SyncConfig


class SyncState(enum.Enum):
    ACQUIRING = "acquiring"
    LOCKED = "locked"
    FREE_RUNNING = "free_running"
    LOST = "lost"


class Trigger(enum.Enum):
    """What happened to the timeline."""

    LOCKED = "locked"  # enough frames since (re)acquisition
    FRAME = "frame"  # a frame that fits the timeline, after a silence
    SILENT = "silent"  # the free-run limit passed without a frame
    LOST = "lost"  # the lost limit passed without a frame
    RESTART = "restart"  # re-anchored on a new timeline


class TransitionError(RuntimeError):
    """A (state, trigger) pair the table does not know was applied: a bug in the follower.

    Not an :class:`edge.errors.EdgeError`: those report bad input and are survived; this
    is the "we have a bug" kind, which nothing catches.
    """

    def __init__(self, state: SyncState, trigger: Trigger) -> None:
        super().__init__(f"no transition from {state.name} on {trigger.name}")
        self.state = state
        self.trigger = trigger


_S = SyncState
_T = Trigger
TRANSITIONS: Mapping[tuple[SyncState, Trigger], SyncState] = MappingProxyType(
    {
        (_S.ACQUIRING, _T.LOCKED): _S.LOCKED,
        (_S.ACQUIRING, _T.LOST): _S.LOST,
        (_S.ACQUIRING, _T.RESTART): _S.ACQUIRING,
        (_S.LOCKED, _T.SILENT): _S.FREE_RUNNING,
        (_S.LOCKED, _T.LOST): _S.LOST,
        (_S.LOCKED, _T.RESTART): _S.ACQUIRING,
        (_S.FREE_RUNNING, _T.FRAME): _S.LOCKED,
        (_S.FREE_RUNNING, _T.LOST): _S.LOST,
        (_S.FREE_RUNNING, _T.RESTART): _S.ACQUIRING,
        (_S.LOST, _T.FRAME): _S.LOCKED,
        (_S.LOST, _T.RESTART): _S.ACQUIRING,
    }
)


def next_state(state: SyncState, trigger: Trigger) -> SyncState:
    """The state ``trigger`` leads to from ``state``; TransitionError if there is none."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise TransitionError(state, trigger) from None


def silence_limits(
    config: SyncConfig, last_arrival: float, beat_seconds: float
) -> tuple[float, float]:
    """Local times at which silence since ``last_arrival`` means FREE_RUNNING and LOST."""
    free_at = last_arrival + config.free_run_after_beats * beat_seconds + config.jitter_tolerance_s
    lost_at = last_arrival + max(config.lost_after_s, config.lost_after_beats * beat_seconds)
    return free_at, lost_at
