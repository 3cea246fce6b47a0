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

*Outliers.* A frame earlier than the line by more than ``early_tolerance_s`` (or three
error bounds) is held back: one early frame must not pull the line. If
``relock_after_frames`` frames in a row are early, or later than ``jitter_tolerance_s``
and consistent with each other, the timeline really moved and the window restarts from
them. A frame far outside the timeline (index jump, Pulse restart or fail-over, or a very
late replay) is held as pending; if the next frame continues it at the right spacing the
follower re-anchors on the pair (emitting BeatJumped if the beat index jumped), else the
pending frame is rejected (``stale`` when it was late). When both frames of the pair sit
on our own boundaries (the Pulse renumbered but kept its timing) the timeline is relabelled
instead, keeping the whole fit; either way BeatJumped is emitted and tick() then emits the
jumped-to beat under its new number (late, with its true start) and every beat after it.

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
distance between downbeats (a multiple of the known length is taken as lost frames).
Until two downbeats are seen, :meth:`BeatFollower.is_downbeat` answers None.

*Parts.* Each concern is its own module, and each part renumbers and restarts itself:
:mod:`~edge.sync.tempo` (the tempo map), :mod:`~edge.sync.envelope` (the fit and its
window), :mod:`~edge.sync.correction` (the published correction),
:mod:`~edge.sync.wall` (the wall-clock learner), :mod:`~edge.sync.bars` (bars and
windows), :mod:`~edge.sync.accepted` (duplicate memory), :mod:`~edge.sync.states` (the
transition table). This module classifies frames and drives them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TypeAlias

from edge.messages import PHASES, BeatFrame, Phase
from edge.sync.accepted import Accepted
from edge.sync.bars import BarTracker
from edge.sync.config import SyncConfig
from edge.sync.correction import Correction
from edge.sync.envelope import Admission, Envelope, Point, median
from edge.sync.events import (
    BeatJumped,
    BeatStarted,
    FrameRejected,
    PhaseStarted,
    Position,
    SyncEvent,
    SyncLost,
    SyncRegained,
    TempoChanged,
)
from edge.sync.states import SyncState, Trigger, next_state
from edge.sync.tempo import Key, TempoMap, next_key, prev_key
from edge.sync.wall import WallClock

_Pending: TypeAlias = tuple[BeatFrame, float, float | None, float]  # frame, arrival, wall, r

_MAX_EMIT = 10_000  # boundaries one tick() emits at most; the rest come on the next call
_MAX_TEMPO_CANDIDATES = 64
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
        self._tempo = TempoMap()
        # Envelope: local monotonic arrival of Pulse time u (without the fixed delay).
        self._envelope = Envelope(config)
        self._correction = Correction(config.slew_rate)
        self._wall = WallClock(config)
        self._bars = BarTracker()
        self._accepted = Accepted()
        self._pending: _Pending | None = None
        self._cursor: Key = (0, 0)  # the last boundary tick() emitted
        self._last_arrival = 0.0
        self._lost_reported = False
        self._regain_error = 0.0
        self._explicit_delay: float | None = None
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
        return self._tempo.latest_bpm if self._tempo else None

    @property
    def rate_ppm(self) -> float:
        """Pulse clock rate minus local clock rate, in ppm (positive: the Pulse runs fast)."""
        return (1.0 / self._envelope.slope - 1.0) * 1e6

    @property
    def error_bound_s(self) -> float:
        """Error bound of boundary estimates at the latest time seen (see error_bound_at)."""
        return self.error_bound_at(self._now)

    @property
    def rejected(self) -> Mapping[str, int]:
        """Rejected frames by reason."""
        return MappingProxyType(self._rejected)

    @property
    def wall_steps(self) -> int:
        """Wall clock steps seen."""
        return self._wall.steps

    @property
    def wall_clock_trusted(self) -> bool:
        """Whether the wall clock is believed now (forced, or decided from the data).

        A delay learnt before a wall clock step stays in use after it (see the theory)."""
        return self._wall.trusted

    @property
    def path_delay_s(self) -> float:
        """The fixed path delay currently removed from the envelope."""
        return self._bias()

    def error_bound_at(self, t: float) -> float:
        """Bound (about 99%) on the error of a boundary predicted for local time ``t``.

        The envelope sits on the lowest arrival in the window; the true floor is below it
        by an unknown gap. Near the floor the arrivals' spacing tells the density of delays
        there (``s``: mean gap between the lowest residuals, so ``s`` ~ 1 / (frames x
        density)), and the gap is then about exponential with mean ``s``: its 99th
        percentile is ~4.6 s; ``_OFFSET_Z`` adds room for the estimate of ``s`` itself.
        To that adds the slope uncertainty (``_RATE_Z * s / span``, ``max_rate_ppm``
        while the rate is unknown) times the distance of ``t`` from the far end of the
        window (the lowest true arrival may sit anywhere in it), so the bound shrinks as
        frames accumulate and grows in silence; plus the
        correction still being slewed and, when used, the spread of the wall-clock delay.
        Without a trusted wall clock or a given path delay the boundaries are also late by
        the unknown fixed path delay, which no bound built from arrival times can see.
        Assumes the delay density does not vanish at its floor (true of queueing delay).
        Infinite before the first frame. O(1).
        """
        if not self._have_model:
            return math.inf
        bound = self._envelope.bound_at(t) + abs(self._correction.at(t))
        if self.wall_clock_trusted and self._explicit_delay is None:
            bound += self._wall.spread
        return bound

    def beat_seconds(self) -> float:
        """Length of the current beat in local seconds (60 s before the first frame)."""
        if not self._tempo:
            return 60.0
        return 60.0 / self._tempo.latest_bpm * self._envelope.slope

    def phase_start(self, beat_index: int, phase: Phase) -> float:
        """Predicted local monotonic start of ``phase`` of ``beat_index`` (past or future).

        Raises RuntimeError before the first frame (there is no timeline yet).
        """
        self._need_model()
        return self._start((beat_index, PHASES.index(phase)))

    def position(self, now: float) -> Position | None:
        """Beat, phase and fraction of the phase at local time ``now``; None before a frame."""
        if not self._have_model:
            return None
        key = self._tempo.key_at(self._published_u(now))
        # Float rounding may put us one phase off at an exact boundary: settle it.
        for _ in range(4):
            start = self._start(key)
            if start > now:
                key = prev_key(key)
                continue
            end = self._start(next_key(key))
            if end <= now:
                key = next_key(key)
                continue
            break
        start, end = self._start(key), self._start(next_key(key))
        span = end - start
        fraction = min(max((now - start) / span, 0.0), 1.0) if span > 0 else 0.0
        return Position(key[0], PHASES[key[1]], start, end, fraction)

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
        return self._correction.at(now) * 1000.0

    def set_path_delay(self, seconds: float) -> None:
        """Use a measured fixed path delay (seconds >= 0); it wins over the wall clock.

        The timeline moves to the new value by slewing (or a step if it is large).
        Raises ValueError for a negative or non-finite value.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"path delay must be a finite number >= 0, got {seconds!r}")
        if not self._have_model:
            self._explicit_delay = float(seconds)
            return
        now = self._now
        u_now = self._published_u(now)
        self._explicit_delay = float(seconds)
        self._commit(now, u_now)

    def next_deadline(self) -> float | None:
        """Local time of the next thing tick() would emit or decide; None before a frame."""
        if not self._have_model:
            return None
        times = [self._start(next_key(self._cursor))]
        times.extend(w.at for w in self._bars.due_windows(self._cursor[0]))
        free_at, lost_at = self._silence_limits()
        if self._state is SyncState.LOCKED:
            times.append(free_at)
        if self._state is not SyncState.LOST:
            times.append(lost_at)
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
            at = self._start(key)
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
        return events

    # ----------------------------------------------------------------- receive

    def receive(
        self, frame: BeatFrame, arrived_at: float, wall_at: float | None = None
    ) -> list[SyncEvent]:
        """Take one frame that arrived at local monotonic ``arrived_at``.

        ``wall_at`` is the wall clock read at arrival; it is used only to decide whether
        ``deadline_at`` can remove the fixed delay. Returns FrameRejected, TempoChanged,
        BeatJumped and SyncRegained events; boundary events come from tick(), which the
        runner calls after every receive. Bad frames are counted, never raised.
        """
        a = float(arrived_at)
        self._now = max(self._now, a)
        events: list[SyncEvent] = []
        key: Key = (frame.beat_index, PHASES.index(frame.phase))
        if frame.cluster_id != self._cluster:
            return self._reject("wrong_cluster", frame, a)
        if key in self._accepted and self._same_moment(key, a):
            return self._reject("duplicate", frame, a)
        if not self._have_model:
            self._acquire(frame, a, wall_at, events)
            return events

        fit = self._fit_frame(frame, a)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if fit is None and self._confirms(pending, frame, a):
                shift = self._relabel_shift(pending, frame, a)
                if shift is not None:
                    self._relabel(shift, pending, (frame, a, wall_at, 0.0), events)
                else:
                    self._reanchor(pending, (frame, a, wall_at, 0.0), events)
                return events
            reason = "stale" if pending[3] > 0 else "unconfirmed_jump"
            events.extend(self._reject(reason, pending[0], pending[1]))
        if key <= self._accepted.latest:
            if fit is not None:
                events.extend(self._reject("out_of_order", frame, a))
            else:
                self._hold(frame, a, wall_at)
            return events
        if fit is None:
            self._hold(frame, a, wall_at)
            return events
        change_at, residual = fit
        self._accept(frame, a, wall_at, change_at, residual, events)
        return events

    # ----------------------------------------------------------------- internals: model

    def _need_model(self) -> None:
        if not self._have_model:
            raise RuntimeError("the beat follower has no timeline yet (no frame received)")

    def _env_at(self, beat: int, phase: int) -> float:
        """The envelope's arrival time of a phase start (the fixed delay not removed)."""
        return self._envelope.at(self._tempo.u(beat, phase))

    def _bias(self) -> float:
        if self._explicit_delay is not None:
            return self._explicit_delay
        learnt = self._wall.delay
        if learnt is not None:
            return learnt
        return self._cfg.path_delay_s

    def _model_start(self, key: Key) -> float:
        return self._env_at(*key) - self._bias()

    def _start(self, key: Key) -> float:
        return self._correction.published(self._model_start(key))

    def _beat_start(self, beat: int) -> float:
        return self._start((beat, 0))

    def _published_u(self, t: float) -> float:
        model_t = t - self._correction.at(t)
        return self._envelope.u_at(model_t + self._bias())

    def _phase_seconds(self) -> float:
        return self.beat_seconds() / 3.0

    def _commit(self, now: float, u_now: float) -> None:
        """Keep the published position at ``now`` where it was (``u_now``) by setting a
        correction to slew away; step instead when acquiring or when it is large."""
        shift = now - (self._envelope.at(u_now) - self._bias())
        large = abs(shift) > self._cfg.step_after_phases * self._phase_seconds()
        self._correction.start(now, shift, step=self._state is SyncState.ACQUIRING or large)

    def _add_segment(self, beat: int, bpm: float) -> None:
        if self._tempo.add(beat, bpm):
            self._envelope.retime(self._tempo.u)

    # ----------------------------------------------------------------- internals: frames

    def _reject(self, reason: str, frame: BeatFrame, at: float) -> list[SyncEvent]:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return [FrameRejected(reason, frame.beat_index, at)]

    def _same_moment(self, key: Key, a: float) -> bool:
        """A seen index is a duplicate only if it arrives near where that beat was; far
        from it, a restarted Pulse is reusing old numbers (held as a possible jump)."""
        if not self._have_model:
            return True
        horizon = max(4.0 * 60.0 / self._tempo.latest_bpm, self._band())
        return abs(a - self._model_start(key)) <= horizon

    def _band(self) -> float:
        """How far (either way) from the envelope a frame may arrive and still belong."""
        cfg = self._cfg
        return 3.0 * max(cfg.jitter_tolerance_s, self.error_bound_at(self._now))

    def _fit_frame(self, frame: BeatFrame, a: float) -> tuple[int | None, float] | None:
        """Does the frame belong to the current timeline? (change_at, residual) or None.

        ``change_at`` is the beat where the frame's new tempo takes effect (None if the
        tempo is unchanged); frames between the last one we saw and this one were lost, so
        the most plausible beat is chosen by the arrival time.
        """
        k, p = frame.beat_index, PHASES.index(frame.phase)
        band = self._band()
        if frame.tempo_bpm == self._tempo.bpm_at(k):
            r = a - self._env_at(k, p)
            return (None, r) if -band <= r <= band else None
        last = self._accepted.latest[0]
        if k <= last:
            candidates: Iterable[int] = (k,)
        else:
            candidates = range(max(last + 1, k - _MAX_TEMPO_CANDIDATES), k + 1)
        residuals = self._envelope.residuals()
        typical = median(residuals) if residuals else 0.0
        best: tuple[float, int, float] | None = None
        for j in candidates:
            u = self._tempo.u(j, 0) + ((k - j) * 3 + p) * 20.0 / frame.tempo_bpm
            r = a - self._envelope.at(u)
            score = abs(r - typical)
            if best is None or score < best[0]:
                best = (score, j, r)
        if best is None or not -band <= best[2] <= band:
            return None
        return (best[1], best[2])

    def _hold(self, frame: BeatFrame, a: float, wall_at: float | None) -> None:
        """Keep a frame that does not fit, until the next frame confirms or refutes it."""
        r = a - self._env_at(frame.beat_index, PHASES.index(frame.phase))
        self._pending = (frame, a, wall_at, r)

    def _confirms(self, pending: _Pending, frame: BeatFrame, a: float) -> bool:
        """Does ``frame`` continue ``pending`` at the spacing its tempo implies?"""
        first = pending[0]
        k1, p1 = first.beat_index, PHASES.index(first.phase)
        k2, p2 = frame.beat_index, PHASES.index(frame.phase)
        if first.cluster_id != frame.cluster_id or (k2, p2) <= (k1, p1):
            return False
        steps = (k2 - k1) * 3 + (p2 - p1)
        expected = steps * 20.0 / first.tempo_bpm * self._envelope.slope
        return abs((a - pending[1]) - expected) <= 2.0 * self._cfg.jitter_tolerance_s

    def _acquire(
        self, frame: BeatFrame, a: float, wall_at: float | None, events: list[SyncEvent]
    ) -> None:
        """Start a fresh timeline from one frame (the first ever)."""
        self._start_timeline([(frame, a, wall_at)])
        self._transition(Trigger.RESTART)
        self._after_accept(frame, a, wall_at, events)

    def _start_timeline(self, frames: list[tuple[BeatFrame, float, float | None]]) -> None:
        """Restart every part on these frames (the fit keeps its rate)."""
        first = frames[0][0]
        self._tempo.reset(first.beat_index, first.tempo_bpm)
        self._envelope.reset()
        self._wall.reset()
        self._accepted.reset()
        self._bars.reset()
        for frame, a, _ in frames:
            k, p = frame.beat_index, PHASES.index(frame.phase)
            if frame.tempo_bpm != self._tempo.latest_bpm and k > self._tempo.last_start:
                self._add_segment(k, frame.tempo_bpm)
            self._envelope.add((k, p, a, self._tempo.u(k, p)))
        self._have_model = True
        self._envelope.refit()
        self._correction.reset(frames[-1][1])
        last = frames[-1][0]
        self._cursor = prev_key((last.beat_index, PHASES.index(last.phase)))

    def _reanchor(
        self,
        pending: _Pending,
        current: _Pending,
        events: list[SyncEvent],
    ) -> None:
        """Two consistent frames outside the timeline: restart the timeline on them."""
        frame, a = current[0], current[1]
        expected = self._tempo.key_at(self._published_u(a - self._cfg.jitter_tolerance_s))[0]
        old_cursor = self._cursor
        self.reanchors += 1
        self._regain_error = pending[3]
        pair = [(pending[0], pending[1], pending[2]), (frame, a, current[2])]
        self._start_timeline(pair)
        jumped = abs(frame.beat_index - expected) > self._cfg.jump_after_beats
        if jumped:
            first = pending[0].beat_index
            events.append(BeatJumped(expected - (frame.beat_index - first), first, a))
            # The runner hears every beat of the new numbering, from the first frame on
            # (already past: tick() emits it at once, with its true start).
            self._cursor = prev_key((first, PHASES.index(pending[0].phase)))
        elif old_cursor > self._cursor:
            self._cursor = old_cursor  # same beats, moved in time: never emit one twice
        self._transition(Trigger.RESTART)
        for f, at, wall in pair:
            self._after_accept(f, at, wall, events)

    def _relabel_shift(self, pending: _Pending, frame: BeatFrame, a: float) -> int | None:
        """The index shift if both frames land on boundaries of the current timeline.

        A Pulse that renumbers its beats but keeps its timing (fail-over to a standby
        with another count, an operator reset) sends frames that sit on our boundaries
        with other labels: each must arrive at the start of a local phase of its own
        phase name and tempo (early by at most three error bounds, late by at most the
        jitter tolerance plus one), and both must imply the same shift. None when the
        timing changed too (or the tolerance would not tell neighbouring phases apart).
        """
        cfg = self._cfg
        bound = self.error_bound_at(a)
        early, late = cfg.early_tolerance_s + 3.0 * bound, cfg.jitter_tolerance_s + bound
        if early + late >= self._phase_seconds():
            return None
        shifts: set[int] = set()
        for f, at in ((pending[0], pending[1]), (frame, a)):
            if f.tempo_bpm != self._tempo.latest_bpm:
                return None
            p = PHASES.index(f.phase)
            near = self._tempo.key_at(self._envelope.u_at(at))
            hits = [
                key
                for key in (near, next_key(near))
                if key[1] == p and -early <= at - self._env_at(*key) <= late
            ]
            if not hits:
                return None
            shifts.add(f.beat_index - hits[0][0])
        return shifts.pop() if len(shifts) == 1 else None

    def _relabel(
        self,
        shift: int,
        pending: _Pending,
        current: _Pending,
        events: list[SyncEvent],
    ) -> None:
        """Renumber the timeline by ``shift`` beats, keeping the fit (and its precision)."""
        first = (pending[0].beat_index, PHASES.index(pending[0].phase))
        self.relabels += 1
        self._tempo.renumber(shift)
        self._envelope.renumber(shift)
        self._wall.renumber(shift)
        self._accepted.renumber(shift)
        self._bars.renumber(shift)
        events.append(BeatJumped(first[0] - shift, first[0], current[1]))
        # The jumped-to beat was already emitted under its old number; the runner hears
        # it again under the new one (at its true, past start) and every beat after.
        self._cursor = min((self._cursor[0] + shift, self._cursor[1]), prev_key(first))
        for f, at, wall, _ in (pending, current):
            k, p = f.beat_index, PHASES.index(f.phase)
            residual = at - self._env_at(k, p)
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
        u_now = self._published_u(a)
        k, p = frame.beat_index, PHASES.index(frame.phase)
        if change_at is not None:
            old = self._tempo.latest_bpm
            self._add_segment(change_at, frame.tempo_bpm)
            events.append(
                TempoChanged(change_at, old, frame.tempo_bpm, self._model_start((change_at, 0)))
            )
        point: Point = (k, p, a, self._tempo.u(k, p))
        if self._state is SyncState.ACQUIRING:
            self._envelope.add(point)
        else:
            early_tol = max(self._cfg.early_tolerance_s, 3.0 * self.error_bound_at(a))
            admission = self._envelope.admit(point, residual, early_tol)
            if admission is not Admission.FIT:
                self.outliers += 1
            if admission is Admission.RESTARTED:
                self.reanchors += 1
        self._envelope.refit()
        self._after_accept(frame, a, wall_at, events)
        self._commit(a, u_now)
        if self._state in (SyncState.FREE_RUNNING, SyncState.LOST):
            self._regain_error = self._correction.last_shift
            self._transition(Trigger.FRAME)
            self._regained(a, events)

    def _after_accept(
        self,
        frame: BeatFrame,
        a: float,
        wall_at: float | None,
        events: list[SyncEvent],
    ) -> None:
        """Bookkeeping common to every accepted frame: counters, bars, wall, lock."""
        self.frames_accepted += 1
        prev_beat = self._accepted.add((frame.beat_index, PHASES.index(frame.phase)))
        self._last_arrival = max(self._last_arrival, a)
        self._bars.learn(frame, prev_beat, self._beat_start)
        if wall_at is not None:
            self._wall.learn(frame, a, wall_at, self._env_at)
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

    def _silence_limits(self) -> tuple[float, float]:
        cfg = self._cfg
        beat = self.beat_seconds()
        free_at = self._last_arrival + cfg.free_run_after_beats * beat + cfg.jitter_tolerance_s
        lost_at = self._last_arrival + max(cfg.lost_after_s, cfg.lost_after_beats * beat)
        return free_at, lost_at

    def _silence(self, now: float) -> list[SyncEvent]:
        free_at, lost_at = self._silence_limits()
        events: list[SyncEvent] = []
        if self._state is SyncState.LOCKED and now >= free_at:
            self._transition(Trigger.SILENT)
        if self._state is not SyncState.LOST and now >= lost_at:
            self._transition(Trigger.LOST)
            self._lost_reported = True
            events.append(SyncLost(lost_at, lost_at - self._last_arrival))
        return events
