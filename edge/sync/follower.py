"""The beat follower: a phase-locked local timeline of the cluster beat.

Theory of operation
-------------------
The Pulse announces each beat (or each phase of a beat) with a BeatFrame. A frame is sent
when the phase it names starts; it reaches us after a network delay ``d = d_min + jitter``,
where ``d_min`` is the fixed cost of the path and the jitter is positive, random and
sometimes large. The follower never reads a clock: the runner hands it each frame with the
local monotonic time it arrived, and asks it about a time ``now``.

*Beat time.* Every phase start has a position ``u`` on the Pulse's own timeline, in
nominal Pulse seconds since we started following: each beat lasts ``60 / tempo_bpm`` of
them at the tempo its frame carries, a phase a third of that. The tempo map (a list of
segments: first beat, tempo, ``u`` at that beat) turns ``(beat, phase)`` into ``u`` and
back, so tempo changes (1 to 600 BPM included) move only the beats after the change.

*The lower envelope.* Plotting arrival time ``a`` against ``u`` gives points that lie on or
above one straight line, ``a = t0 + s * (u - u0)``: frames that met no queue sit on it,
delayed ones float above it. The follower keeps the last ``filter_window_frames`` points
and fits that line from below (Moon, Skelly and Towsley's linear-programming skew
estimator: the edge of the lower convex hull under the points' mean ``u``). This is the
same idea as NTP's clock filter and Ableton Link's median of many measurements: the
earliest arrivals carry the least delay. A late frame sits above the line and moves
nothing. The slope ``s`` is local seconds per Pulse second, i.e. the rate difference of
the two clocks (tens to hundreds of ppm); it is estimated once the window spans
``rate_min_span_s`` and clamped to ``max_rate_ppm``, so boundaries stay right between frames
and through long silences.

*The fixed delay.* The envelope runs ``d_min`` behind the Pulse; nothing in arrival times
can tell how much. It is removed when known: a delay measured by someone else
(:meth:`BeatFollower.set_path_delay`) wins; else, when the wall clock agrees with the data,
``deadline_at`` gives each frame's one-way delay and their median offset from the envelope
is ``d_min``; else ``SyncConfig.path_delay_s`` (default 0). The wall clock is trusted only
when the last ``wall_trust_frames`` delays are plausible (between ``-wall_consistency_s`` and
``wall_max_bias_s``) and agree within ``wall_consistency_s``. A wall clock hours off never
passes; a wall clock that steps while in use (its offset from the monotonic clock jumps)
is not used again, and the delay learned before the step is kept, so a step changes
nothing. ``trust_wall_clock = true/false`` overrides the decision.

*Classification* (:mod:`~edge.sync.classify`, which spells the rules out). A frame much
earlier than the line is held back from the fit, and a run of early or late frames
restarts the window; a frame far off the timeline (index jump, Pulse restart, late
replay) or changing the tempo by more than ``max_tempo_step`` is held until later frames
confirm it (a run off the timeline only once the timeline has gone silent); a second
frame for an accepted beat and phase is a network copy or evidence of a second source,
and early copies never drag the timeline.

*Error bound.* See :meth:`BeatFollower.error_bound_at`: the spacing of the lowest residuals
tells how densely arrivals crowd the floor, hence how far above it the envelope may sit;
add the slope uncertainty times the reach from the window. With delay uniform over 50 ms no
estimator can be within 1 ms by beat 8 (the earliest of 7 arrivals is ~6 ms above the floor
on average); only a trusted wall clock (``deadline_at``) makes that possible.

*The published timeline.* The runner sees the model plus a correction that keeps the
beat position continuous whenever the model changes; the correction decays at
``slew_rate`` (seconds per second), so boundaries slide instead of jumping, unless the
error exceeds ``step_after_phases`` phases, when it steps. Events are emitted from tick()
by index, exactly once each and in order, whatever the model does.

*States* (table :data:`edge.sync.states.TRANSITIONS`): ACQUIRING until
``lock_after_frames`` frames are in; LOCKED; FREE_RUNNING after ``free_run_after_beats``
beats (plus the jitter tolerance) without a frame; LOST after
``max(lost_after_s, lost_after_beats beats)`` of silence (emits SyncLost). In every state
but ACQUIRING-before-the-first-frame the timeline keeps running on its model at the last
tempo. The first frames after LOST lock again and emit SyncRegained with the error they
revealed.

*Bars* are learnt from ``downbeat`` flags and ``window_id`` changes: the bar length is the
distance between downbeats (a multiple of the known length is taken as lost frames), and
changes only when two intervals agree on a new one. Until two downbeats are seen,
:meth:`BeatFollower.is_downbeat` answers None.

*Parts.* Each concern is its own module, and each part renumbers and restarts itself:
:mod:`~edge.sync.timeline` (where the phases start: the tempo map of
:mod:`~edge.sync.tempo`, the fit of :mod:`~edge.sync.envelope`, the fixed delay learnt by
:mod:`~edge.sync.wall` and the correction of :mod:`~edge.sync.correction`),
:mod:`~edge.sync.bars` (bars and windows), :mod:`~edge.sync.accepted` (duplicate memory),
:mod:`~edge.sync.conflict` (second sources), :mod:`~edge.sync.classify` (which frames are
accepted, held, followed or rejected, and the held frames) and :mod:`~edge.sync.states`
(the transition table). This module receives and ticks, acts on the classifier's
decisions, moves the states and emits the events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from edge.messages import PHASES, BeatFrame, Phase
from edge.sync.accepted import Accepted
from edge.sync.bars import BarTracker
from edge.sync.classify import Classifier, Pending
from edge.sync.config import SyncConfig
from edge.sync.conflict import ConflictWatch, SourceConflict
from edge.sync.events import (
    BeatJumped,
    BeatStarted,
    FrameRejected,
    FrameVerdict,
    PhaseStarted,
    Position,
    SyncEvent,
    SyncLost,
    SyncRegained,
    TempoChanged,
)
from edge.sync.states import SyncState, Trigger, next_state, silence_limits
from edge.sync.tempo import Key, next_key, prev_key
from edge.sync.timeline import Timeline

_MAX_EMIT = 10_000  # boundaries one tick() emits at most; the rest come on the next call
_DEFAULTS = SyncConfig()


class BeatFollower:
    """Follows one cluster's beat from frames and their local arrival times.

    Sans-I/O: :meth:`receive` and :meth:`tick` take the time as an argument and return
    events; nothing here reads a clock. Not thread-safe (the runner owns it).
    """

    def __init__(self, cluster_id: str, config: SyncConfig = _DEFAULTS) -> None:
        self._cluster = cluster_id
        self._cfg = config
        self._state = SyncState.ACQUIRING
        self._now = -math.inf
        self._have_model = False
        self._timeline = Timeline(config)
        self._bars = BarTracker()
        self._accepted = Accepted()
        self._conflict = ConflictWatch(config)
        self._classifier = Classifier(config, self._timeline, self._accepted, self._conflict, self)
        self._verdict = FrameVerdict.REJECTED
        self._cursor: Key = (0, 0)  # the last boundary tick() emitted
        self._last_arrival = 0.0
        self._lost_reported = False
        self._regain_error = 0.0
        # Counters.
        self.frames_accepted = 0
        self._rejected: dict[str, int] = {}
        self.outliers = 0
        self.reanchors = 0
        self.relabels = 0

    # ----------------------------------------------------------------- public answers

    @property
    def state(self) -> SyncState:
        return self._state

    @property
    def locked(self) -> bool:
        """True while LOCKED (frames arriving and fitting the model)."""
        return self._state is SyncState.LOCKED

    @property
    def tempo_bpm(self) -> float | None:
        """Tempo of the latest beat we know of; None before the first frame."""
        tempo = self._timeline.tempo
        return tempo.latest_bpm if tempo else None

    @property
    def rate_ppm(self) -> float:
        """Pulse clock rate minus local clock rate, in ppm (positive: the Pulse runs fast)."""
        return (1.0 / self._timeline.envelope.slope - 1.0) * 1e6

    @property
    def error_bound_s(self) -> float:
        """Error bound of boundary estimates at the latest time seen (see error_bound_at)."""
        return self.error_bound_at(self._now)

    @property
    def rejected(self) -> Mapping[str, int]:
        """Rejected frames by reason."""
        return MappingProxyType(self._rejected)

    @property
    def last_verdict(self) -> FrameVerdict:
        """What the latest :meth:`receive` did with its frame: ACCEPTED (it is part of the
        timeline), HELD (kept until later frames confirm it) or REJECTED (a FrameRejected
        said why). A caller merges a frame's HLC only when it was ACCEPTED."""
        return self._verdict

    @property
    def source_conflict(self) -> SourceConflict | None:
        """The source conflict in force (frames for the same beat and phase arriving at
        different times: see :mod:`edge.sync.conflict`), None when there is none."""
        return self._conflict.current

    @property
    def wall_steps(self) -> int:
        """Wall clock steps seen."""
        return self._timeline.wall.steps

    @property
    def wall_clock_trusted(self) -> bool:
        """Whether the wall clock is believed now (forced, or decided from the data).

        A delay learnt before a wall clock step stays in use after it (see the theory)."""
        return self._timeline.wall.trusted

    @property
    def wall_verified(self) -> bool:
        """Whether the wall readings given with frames are checked by a time exchange
        (then each is believed at once: :mod:`edge.sync.wall`)."""
        return self._timeline.wall.verified

    @wall_verified.setter
    def wall_verified(self, verified: bool) -> None:
        self._timeline.wall.verified = verified

    @property
    def path_delay_s(self) -> float:
        """The fixed path delay currently removed from the envelope."""
        return self._timeline.path_delay()

    def error_bound_at(self, t: float) -> float:
        """Bound (about 99%) on the error of a boundary predicted for local time ``t``
        (see :meth:`edge.sync.timeline.Timeline.error_bound_at`). Infinite before the
        first frame. O(1)."""
        if not self._have_model:
            return math.inf
        return self._timeline.error_bound_at(t)

    def beat_seconds(self) -> float:
        """Length of the current beat in local seconds (60 s before the first frame)."""
        if not self._timeline.tempo:
            return 60.0
        return self._timeline.beat_seconds()

    def phase_start(self, beat_index: int, phase: Phase) -> float:
        """Predicted local monotonic start of ``phase`` of ``beat_index`` (past or future).

        Raises RuntimeError before the first frame (there is no timeline yet).
        """
        if not self._have_model:
            raise RuntimeError("the beat follower has no timeline yet (no frame received)")
        return self._timeline.start((beat_index, PHASES.index(phase)))

    def position(self, now: float) -> Position | None:
        """Beat, phase and fraction of the phase at local time ``now``; None before a frame."""
        if not self._have_model:
            return None
        return self._timeline.position(now)

    def is_downbeat(self, beat_index: int) -> bool | None:
        """Whether the beat is the first of a bar; None while the bar is not known."""
        return self._bars.is_downbeat(beat_index)

    def bar_position(self, beat_index: int) -> int | None:
        """0-based position of the beat in its bar; None while the bar is not known."""
        return self._bars.bar_position(beat_index)

    @property
    def bar_length(self) -> int | None:
        """Beats per bar as learnt from downbeats; None until two downbeats were seen."""
        return self._bars.bar_length

    def tempo_drift_ms(self, now: float) -> float:
        """How far the published timeline runs behind the best model, in ms (upstream sign:
        positive = running behind, negative = ahead). Non-zero while a correction slews."""
        if not self._have_model:
            return 0.0
        return self._timeline.correction.at(now) * 1000.0

    def set_path_delay(self, seconds: float) -> None:
        """Use a measured fixed path delay (seconds >= 0); it wins over the wall clock.

        The timeline moves to the new value by slewing (or a step if it is large).
        Raises ValueError for a negative or non-finite value.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"path delay must be a finite number >= 0, got {seconds!r}")
        timeline = self._timeline
        if not self._have_model:
            timeline.explicit_delay = float(seconds)
            return
        now = self._now
        u_now = timeline.published_u(now)
        timeline.explicit_delay = float(seconds)
        timeline.commit(now, u_now, acquiring=self._state is SyncState.ACQUIRING)

    def next_deadline(self) -> float | None:
        """Local time of the next thing tick() would emit or decide; None before a frame."""
        if not self._have_model:
            return None
        times = [self._timeline.start(next_key(self._cursor))]
        times.extend(w.at for w in self._bars.due_windows(self._cursor[0]))
        free_at, lost_at = silence_limits(self._cfg, self._last_arrival, self.beat_seconds())
        if self._state is SyncState.LOCKED:
            times.append(free_at)
        if self._state is not SyncState.LOST:
            times.append(lost_at)
        clears_at = self._conflict.clears_at(self.beat_seconds())
        if clears_at is not None:
            times.append(clears_at)
        return min(times)

    # ----------------------------------------------------------------- tick

    def tick(self, now: float) -> list[SyncEvent]:
        """Emit boundary events due at or before ``now`` (each once, in order) and apply
        the silence rules (FREE_RUNNING, LOST with SyncLost)."""
        self._now = max(self._now, now)
        events: list[SyncEvent] = []
        if not self._have_model:
            return events
        bars = self._bars
        for _ in range(_MAX_EMIT):
            key = next_key(self._cursor)
            at = self._timeline.start(key)
            if at > now:
                break
            self._cursor = key
            if key[1] == 0:
                downbeat = bars.is_downbeat(key[0])
                events.append(BeatStarted(key[0], at, bool(downbeat), bars.window_for(key[0])))
            events.append(PhaseStarted(key[0], PHASES[key[1]], at))
            events.extend(bars.flush(self._cursor[0]))
        events.extend(bars.flush(self._cursor[0]))
        events.extend(self._silence(now))
        cleared = self._conflict.tick(now, self.beat_seconds())
        if cleared is not None:
            events.append(cleared)
        return events

    # ----------------------------------------------------------------- receive

    def receive(
        self, frame: BeatFrame, arrived_at: float, wall_at: float | None = None
    ) -> list[SyncEvent]:
        """Take one frame that arrived at local monotonic ``arrived_at``.

        ``wall_at`` is the wall clock read at arrival; it is used only to decide whether
        ``deadline_at`` can remove the fixed delay. Returns FrameRejected, TempoChanged,
        BeatJumped, BeatSourceConflict and SyncRegained events; boundary events come from
        tick(), which the runner calls after every receive. Bad frames are counted, never
        raised. :attr:`last_verdict` then says what became of this frame.
        """
        a = float(arrived_at)
        self._now = max(self._now, a)
        self._verdict = FrameVerdict.REJECTED
        if frame.cluster_id != self._cluster:
            return self._reject("wrong_cluster", frame, a)
        key: Key = (frame.beat_index, PHASES.index(frame.phase))
        self._classifier.evidence = self._classifier.spread(key, a)
        events: list[SyncEvent] = []
        self._classifier.take(frame, key, a, wall_at, events)
        raised = self._conflict.frame(a, self._classifier.evidence)
        if raised is not None:
            events.append(raised)
        return events

    def refused(self, reason: str, frame: BeatFrame, arrived_at: float) -> list[SyncEvent]:
        """Count a frame the caller refused before the follower saw it (``hlc_ahead``,
        ``unsigned``, ``bad_signature``...), so :attr:`rejected` holds every reason in one
        place. The frame changes nothing else; returns its FrameRejected."""
        self._verdict = FrameVerdict.REJECTED
        return self._reject(reason, frame, float(arrived_at))

    # ----------------------------------------------------------------- internals: acting

    def _reject(self, reason: str, frame: BeatFrame, at: float) -> list[SyncEvent]:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return [FrameRejected(reason, frame.beat_index, at)]

    def _accept_copy(
        self,
        frame: BeatFrame,
        key: Key,
        a: float,
        wall_at: float | None,
        residual: float,
        early_tol: float,
    ) -> None:
        """A later copy of a frame held back as early fits: its arrival enters the fit
        (the classifier rejected the early one)."""
        timeline = self._timeline
        u_now = timeline.published_u(a)
        self._classifier.enter_fit(key, a, residual, acquiring=False, early_tol=early_tol)
        self.frames_accepted += 1
        self._last_arrival = max(self._last_arrival, a)
        if wall_at is not None:
            timeline.wall.learn(frame, a, wall_at, timeline.env_at)
        timeline.commit(a, u_now, acquiring=False)
        self._verdict = FrameVerdict.ACCEPTED

    def _acquire(
        self, frame: BeatFrame, a: float, wall_at: float | None, events: list[SyncEvent]
    ) -> None:
        """Start a fresh timeline from one frame (the first ever)."""
        self._start_timeline([(frame, a, wall_at)])
        self._transition(Trigger.RESTART)
        self._after_accept(frame, a, wall_at, events)
        self._verdict = FrameVerdict.ACCEPTED

    def _start_timeline(self, frames: list[tuple[BeatFrame, float, float | None]]) -> None:
        """Restart every part on these frames."""
        self._accepted.reset()
        self._bars.reset()
        self._conflict.reset()
        self._timeline.restart([(frame, a) for frame, a, _ in frames])
        self._have_model = True
        last = frames[-1][0]
        self._cursor = prev_key((last.beat_index, PHASES.index(last.phase)))

    def _reanchor(self, held: list[Pending], events: list[SyncEvent]) -> None:
        """Consistent frames outside the timeline: restart the timeline on them."""
        first, (frame, a, _, _) = held[0], held[-1]
        timeline = self._timeline
        expected = timeline.tempo.key_at(timeline.published_u(a - self._cfg.jitter_tolerance_s))
        old_cursor = self._cursor
        self.reanchors += 1
        self._regain_error = first[3]
        frames = [(f, at, wall) for f, at, wall, _ in held]
        self._start_timeline(frames)
        jumped = abs(frame.beat_index - expected[0]) > self._cfg.jump_after_beats
        if jumped:
            first_beat = first[0].beat_index
            events.append(BeatJumped(expected[0] - (frame.beat_index - first_beat), first_beat, a))
            # The runner hears every beat of the new numbering, from the first frame on
            # (already past: tick() emits it at once, with its true start).
            self._cursor = prev_key((first_beat, PHASES.index(first[0].phase)))
        elif old_cursor > self._cursor:
            self._cursor = old_cursor  # same beats, moved in time: never emit one twice
        self._transition(Trigger.RESTART)
        for f, at, wall in frames:
            self._after_accept(f, at, wall, events)

    def _relabel(self, shift: int, held: list[Pending], events: list[SyncEvent]) -> None:
        """Renumber the timeline by ``shift`` beats, keeping the fit (and its precision)."""
        first = (held[0][0].beat_index, PHASES.index(held[0][0].phase))
        self.relabels += 1
        self._timeline.renumber(shift)
        self._accepted.renumber(shift)
        self._bars.renumber(shift)
        self._conflict.reset()
        events.append(BeatJumped(first[0] - shift, first[0], held[-1][1]))
        # The jumped-to beat was already emitted under its old number; the runner hears
        # it again under the new one (at its true, past start) and every beat after.
        self._cursor = min((self._cursor[0] + shift, self._cursor[1]), prev_key(first))
        for f, at, wall, _ in held:
            residual = self._timeline.residual(f, at)
            self._accept(f, at, wall, None, residual, events)

    def _accept(
        self,
        frame: BeatFrame,
        a: float,
        wall_at: float | None,
        change_at: int | None,
        residual: float,
        events: list[SyncEvent],
    ) -> None:
        timeline = self._timeline
        u_now = timeline.published_u(a)
        key = (frame.beat_index, PHASES.index(frame.phase))
        if change_at is not None:
            old = timeline.tempo.latest_bpm
            timeline.add_segment(change_at, frame.tempo_bpm)
            at = timeline.model_start((change_at, 0))
            events.append(TempoChanged(change_at, old, frame.tempo_bpm, at))
        acquiring = self._state is SyncState.ACQUIRING
        held_back = self._classifier.enter_fit(key, a, residual, acquiring)
        self._after_accept(frame, a, wall_at, events, held_back)
        timeline.commit(a, u_now, acquiring=self._state is SyncState.ACQUIRING)
        self._verdict = FrameVerdict.ACCEPTED
        if self._state in (SyncState.FREE_RUNNING, SyncState.LOST):
            self._regain_error = timeline.correction.last_shift
            self._transition(Trigger.FRAME)
            self._regained(a, events)

    def _after_accept(
        self,
        frame: BeatFrame,
        a: float,
        wall_at: float | None,
        events: list[SyncEvent],
        held_back: bool = False,
    ) -> None:
        """Bookkeeping common to every accepted frame: counters, bars, wall, lock."""
        self.frames_accepted += 1
        key = (frame.beat_index, PHASES.index(frame.phase))
        prev_beat = self._accepted.add(key, held_back)
        self._last_arrival = max(self._last_arrival, a)
        if self._bars.learn(frame, prev_beat, self._timeline.beat_start):
            # The frame's timing is taken; its downbeat flag is not (not yet).
            events.extend(self._reject("bar_unconfirmed", frame, a))
        if wall_at is not None:
            self._timeline.wall.learn(frame, a, wall_at, self._timeline.env_at)
        locking = self._accepted.count >= self._cfg.lock_after_frames
        if self._state is SyncState.ACQUIRING and locking:
            self._transition(Trigger.LOCKED)
            self._regained(a, events)

    def _regained(self, at: float, events: list[SyncEvent]) -> None:
        if self._lost_reported and self._state is SyncState.LOCKED:
            self._lost_reported = False
            events.append(SyncRegained(at, self._regain_error))

    # ----------------------------------------------------------------- states

    def _transition(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _silence(self, now: float) -> list[SyncEvent]:
        free_at, lost_at = silence_limits(self._cfg, self._last_arrival, self.beat_seconds())
        events: list[SyncEvent] = []
        if self._state is SyncState.LOCKED and now >= free_at:
            self._transition(Trigger.SILENT)
        if self._state is not SyncState.LOST and now >= lost_at:
            self._transition(Trigger.LOST)
            self._lost_reported = True
            events.append(SyncLost(lost_at, lost_at - self._last_arrival))
        return events
