"""The lost-beat safe state: when the outputs go safe, and what may fire until the beat returns.

Outputs go to their safe state once the beat has been lost for ``agent.safe_after_lost_s``
(0 by default: at once), but those of the devices whose profile says
``keep_running_when_lost``. Until the beat returns only those devices may fire; a
regained beat lifts it (asked of the follower's state itself, so the first beat after a
regained one is planned whole).
"""

from __future__ import annotations

import json
import logging

from edge.config import Config
from edge.hardware import Hardware
from edge.plan import BeatPlan
from edge.sync import SyncState

log = logging.getLogger(__name__)


class LostBeat:
    """Watches the follower's state for a lost beat and applies the safe state once."""

    def __init__(self) -> None:
        #: When the beat was first seen lost (None while it is not).
        self.since: float | None = None
        #: The outputs were put in their safe state for this loss.
        self.applied = False

    def deadline(self, config: Config) -> float | None:
        """When the safe state is due, if it is still to come."""
        if self.since is None or self.applied:
            return None
        return self.since + config.agent.safe_after_lost_s

    def may_fire(self, state: SyncState, config: Config) -> bool:
        """Fire on a locked or free-running timeline, and on a lost one until the safe
        state (then only on the devices that keep running when lost); never while still
        acquiring (the timeline is not known well enough yet)."""
        if state in (SyncState.LOCKED, SyncState.FREE_RUNNING):
            return True
        if state is not SyncState.LOST:
            return False
        return not self.applied or bool(config.profile.keep_running_when_lost)

    def outputs_safe(self, state: SyncState) -> bool:
        """The beat is lost and the outputs were put in their safe state: until it
        returns, only the devices that keep running when lost may fire."""
        return self.applied and state is SyncState.LOST

    def watch(
        self, state: SyncState, now: float, config: Config, hardware: Hardware, plan: BeatPlan
    ) -> bool:
        """Apply the safe state when it is due; True if it was applied now."""
        if state is not SyncState.LOST:
            self.since = None
            self.applied = False
            return False
        if self.since is None:
            self.since = now
        if self.applied or now - self.since < config.agent.safe_after_lost_s:
            return False
        keep = config.profile.keep_running_when_lost
        # Its killed commands report no end.
        hardware.safe_state("beat lost", keep=keep)
        self.applied = True
        plan.cancel(keep=keep)
        # One line with the local monotonic time and the pins read back: what the
        # end-to-end tests (edge.harness.safe_states) and an operator check.
        log.warning(
            "outputs in their safe state (beat lost) at monotonic %.6f: %s",
            now,
            json.dumps(hardware.check_states()),
        )
        return True
