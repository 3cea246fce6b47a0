"""The intake: every inbound item of the link, checked and handed to its owner.

A beat frame (stamped with its local arrival time by the link) is decoded; when beat keys
are configured it must pass the trust stage (``edge.trust``: a frame without a good
signature reaches neither the follower nor the HLC); then plausibility (a stamp more than
``agent.hlc_max_ahead_s`` ahead of our wall clock is refused, ``hlc_ahead``), the follower,
and the HLC, which merges only frames the follower accepted. With a time exchange
(``edge.timesync``) its responses go to it, and frames are followed with the wall reading
it gives (the pulse's clock as the exchange maps it) instead of the local wall clock.
An acknowledgement and a (dis)connect go to the claim publisher. A malformed frame is counted
(``metadata.frames_rejected["malformed"]``) and logged at a bounded rate
(``edge.loglimit``), an untrusted one is counted under its reason; neither is fatal.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from edge.counters import Counters
from edge.errors import FrameError
from edge.hlc import HlcAheadError, HybridLogicalClock
from edge.inbox import Inbound
from edge.loglimit import LogLimiter
from edge.messages import BeatFrame, decode_bar_report, decode_beat_frame_with_map
from edge.metrics import Metrics
from edge.publisher import ClaimPublisher
from edge.sync import BeatFollower, FrameVerdict, SyncEvent
from edge.timesync import TimeSync
from edge.topics import Topics
from edge.trust import BeatTrust

log = logging.getLogger(__name__)

#: With signed beats, a frame whose stamp (HLC, whole seconds) lags what the newest frame
#: followed plus the local time since would give by more than this (plus REPLAY_RATE of the
#: time since, for clock rates) is a replay (``replayed``): honest reordering is far shorter.
REPLAY_TOLERANCE_S = 2.0
REPLAY_RATE = 0.01
_REPLAY_TOLERANCE = timedelta(seconds=REPLAY_TOLERANCE_S)


class Intake:
    """Decodes, checks and routes inbound items; counts and logs what it refuses."""

    def __init__(
        self,
        topics: Topics,
        follower: BeatFollower,
        hlc: HybridLogicalClock,
        trust: BeatTrust | None,
        publisher: ClaimPublisher,
        metrics: Metrics,
        counters: Counters,
        bad_input: LogLimiter,
    ) -> None:
        self.topics = topics
        self.follower = follower
        self.hlc = hlc
        #: Between decoding and the follower when beat keys are configured (edge.trust).
        self.trust = trust
        self.publisher = publisher
        self.metrics = metrics
        self.counters = counters
        #: Bad input of one kind is logged once per quiet period, then counted.
        self.bad_input = bad_input
        #: The HLC wall second (unwrapped) of the newest frame the follower accepted, and
        #: when it arrived (local monotonic).
        self._newest: tuple[int, float] | None = None
        #: With signed beats: frames due before this are replays, whatever else was
        #: followed (after a reboot, from the newest a previous run followed: edge.beatmark).
        self.replay_floor: datetime | None = None
        #: Told every signed frame followed: deadline, stamp, arrival (edge.beatmark).
        self.on_followed: Callable[[datetime, int, float], None] | None = None
        #: The time exchange (edge.timesync), when the agent runs one: its responses, and
        #: the wall reading a frame is followed with.
        self.timesync: TimeSync | None = None

    def resume(self, stamped: int, arrived_at: float, deadline: datetime, same_boot: bool) -> None:
        """Go on from the newest signed frame a previous run followed (edge.beatmark): on
        the same boot the local monotonic clock ran on, so the freshness check goes on as if
        there had been no restart; after a reboot frames due up to the replay tolerance
        after it are refused (a reboot takes longer, so the real pulse is past that)."""
        if same_boot:
            self._newest = (stamped, arrived_at)
        else:
            self.replay_floor = deadline + _REPLAY_TOLERANCE

    def receive(self, item: Inbound, now: float) -> list[SyncEvent] | None:
        """Take ``item``; the follower's events if it was a beat frame the follower saw
        (then the plan is to be re-timed), else None."""
        if item.kind == "message":
            self.metrics.record_bytes(len(item.payload), now)
            if item.topic == self.topics.beat:
                self.counters.frames += 1
                try:
                    frame, data = decode_beat_frame_with_map(item.payload)
                except FrameError as exc:
                    self.counters.frames_bad += 1
                    self._bad_input("beat frame", item.topic, exc, self.counters.frames_bad, now)
                    return None
                if self.trust is not None and not self._trusted(frame, data, now):
                    return None
                wall_at: float | None = item.wall_at
                if self.timesync is not None:
                    wall_at = self.timesync.wall_for(item.arrived_at, item.wall_at)
                    self.follower.wall_verified = self.timesync.wall_verified
                return self._follow(frame, item.arrived_at, wall_at, now)
            if self.timesync is not None and self.timesync.handles(item.topic):
                self.timesync.receive(item)
                return None
            if item.topic == self.topics.bar:
                try:
                    decode_bar_report(item.payload)
                    self.counters.bar_reports += 1
                except FrameError as exc:
                    self.counters.bar_reports_bad += 1
                    self._bad_input(
                        "bar report", item.topic, exc, self.counters.bar_reports_bad, now
                    )
        elif item.kind == "ack":
            self.publisher.acked(item.mid)
        elif item.kind == "connected":
            log.info("broker connected")
            self.publisher.connected(now)
        elif item.kind == "disconnected":
            log.warning("broker connection lost (%s); free-running on the local model", item.reason)
        return None

    def _follow(
        self, frame: BeatFrame, arrived_at: float, wall_at: float | None, now: float
    ) -> list[SyncEvent]:
        """Plausibility, then the follower; the HLC merges only frames the follower took.

        A stamp too far ahead of our wall clock is refused before the follower sees the
        frame (``hlc_ahead``); a frame for another cluster, a spoof or a duplicate never
        moves the claims' HLC.
        """
        try:
            stamped = self.hlc.check(frame.hlc)
        except HlcAheadError as exc:
            self.bad_input.note("hlc_ahead", f"beat frame {frame.beat_index}: {exc}", now)
            return self.follower.refused(exc.reason, frame, arrived_at)
        if (
            self.trust is not None
            and self.replay_floor is not None
            and frame.deadline_at < self.replay_floor
        ):
            behind = (self.replay_floor - frame.deadline_at).total_seconds()
            self.bad_input.note(
                "replayed",
                f"beat frame {frame.beat_index}: due {behind:.0f} s before a fresh frame could "
                "be after the reboot (sent again, or the pulse's clock was set back: see the "
                "beat mark's line at start)",
                now,
            )
            return self.follower.refused("replayed", frame, arrived_at)
        if self.trust is not None and self._newest is not None:
            # Well signed is not fresh: the stamp must have moved on about as far as our
            # monotonic clock has since the newest frame followed. A frame sent again later
            # (say a recorded pair while the pulse is silent, which the follower would take
            # as a restart) is older than that; a signature proves who, the stamp says when.
            wall, at = self._newest
            elapsed = max(0.0, arrived_at - at)
            behind = wall + elapsed - stamped
            if behind > REPLAY_TOLERANCE_S + REPLAY_RATE * elapsed:
                self.bad_input.note(
                    "replayed",
                    f"beat frame {frame.beat_index}: stamped {behind:.0f} s before a fresh "
                    "frame would be (sent again)",
                    now,
                )
                return self.follower.refused("replayed", frame, arrived_at)
        events = self.follower.receive(frame, arrived_at, wall_at)
        if self.follower.last_verdict is FrameVerdict.ACCEPTED:
            with contextlib.suppress(HlcAheadError):  # the wall clock stepped in between
                self.hlc.merge(frame.hlc)
            if self._newest is None or stamped >= self._newest[0]:
                self._newest = (stamped, arrived_at)
            if self.trust is not None and self.on_followed is not None:
                self.on_followed(frame.deadline_at, stamped, arrived_at)
        return events

    def _trusted(self, frame: BeatFrame, data: dict[str, object], now: float) -> bool:
        """The trust stage: False (counted, logged at a bounded rate) for a frame that
        must reach neither the follower nor the HLC."""
        assert self.trust is not None
        reason = self.trust.check(data)
        if reason is None:
            return True
        if self.trust.should_log(reason, now):
            log.warning(
                "rejected beat frame %d %s (%s): %d %s so far",
                frame.beat_index,
                frame.phase,
                reason,
                self.trust.rejected[reason],
                reason,
            )
        return False

    def _bad_input(self, what: str, topic: str, exc: FrameError, so_far: int, now: float) -> None:
        # Once per kind and quiet period, then a count: a flood must not flood the log.
        self.bad_input.note(
            f"malformed {what}s on {topic}",
            f"dropped malformed {what} on {topic}: {exc} ({so_far} so far)",
            now,
        )

    def frames_rejected(self) -> dict[str, int]:
        """The refusals by reason: the follower's, the trust stage's, and the frames that
        did not decode (``malformed``)."""
        rejected = dict(self.follower.rejected)
        if self.trust is not None:
            for reason, count in self.trust.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        if self.counters.frames_bad:
            rejected["malformed"] = rejected.get("malformed", 0) + self.counters.frames_bad
        if self.counters.bar_reports_bad:  # not beat frames, but refused input all the same
            rejected["malformed_bar_report"] = self.counters.bar_reports_bad
        return rejected
