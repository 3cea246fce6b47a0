"""Frame classification: whether a frame of our cluster is accepted, held, re-anchored on,
relabelled onto or rejected, and the frames held until later ones confirm them.

This module decides, the follower acts: every acceptance, restart and renumbering is a
call back into it (the ``host``, a :class:`~edge.sync.follower.BeatFollower`). The rest of
the theory of operation is in :mod:`edge.sync.follower`.

*Outliers.* A frame earlier than the line by more than ``early_tolerance_s`` (or three
error bounds) is held back: one early frame must not pull the line. If
``relock_after_frames`` frames in a row are early, or later than ``jitter_tolerance_s``
and consistent with each other, the timeline really moved and the window restarts from
them. A frame far outside the timeline (index jump, Pulse restart or fail-over, or a very
late replay) is held; frames continuing it at the right spacing join it, any other frame
refutes it (``stale`` when it was late, else ``unconfirmed_jump``). The held run is
followed only once the timeline itself has been silent ``jump_after_silent_beats`` beats
(plus the jitter tolerance): a real Pulse restart or renumbering stops the old frames,
while a pair slipped between real frames by someone else is refuted by the next real one.
Followed, the follower re-anchors on the run (emitting BeatJumped if the beat index
jumped); when every frame sits on our own boundaries and the earliest on our timing
within the early tolerance (the Pulse renumbered but kept its timing) the timeline is
relabelled instead, keeping the whole fit. A Pulse restarted some ms off our boundaries
is re-anchored: relabelled, the old points would keep it early by that much. Either way
BeatJumped is emitted and tick() then emits the jumped-to beat under its new number
(late, with its true start) and every beat after it.

*Plausibility.* A tempo change within ``max_tempo_step`` (10 %, the upstream limit) of
the current tempo takes effect from its frame; a larger one is held the same way until
the next frame continues it at the new tempo, else rejected (``tempo_unconfirmed``): one
frame saying 1000 BPM moves nothing. The bar length changes only after two downbeat
intervals agree (:mod:`~edge.sync.bars`).

*Conflicting sources.* A second frame for a beat and phase already accepted is a network
copy when it arrives within the jitter of the first (``duplicate``). Otherwise it is
evidence of a second source (:mod:`~edge.sync.conflict`: BeatSourceConflict,
:attr:`~edge.sync.follower.BeatFollower.source_conflict`). What the follower does,
signed or not: it keeps following the source its timeline already agrees with. A copy
sent early is held back by the envelope like any early frame; when the real frame then
arrives and fits, its arrival enters the fit and the copy is rejected
(``source_conflict``); copies earlier than the band are held as a jump and refuted by
the real frames. So early copies never drag the timeline, and the state stays what the
real source makes it; the conflict is reported for the operator (unsigned, the follower
cannot tell which source is genuine, only which one agrees with the beat it was locked
on; signed frames settle it before the follower sees them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from edge.messages import PHASES, BeatFrame
from edge.sync.accepted import Accepted
from edge.sync.config import SyncConfig
from edge.sync.conflict import ConflictWatch
from edge.sync.envelope import Admission, Point
from edge.sync.events import FrameVerdict, SyncEvent
from edge.sync.states import SyncState
from edge.sync.tempo import Key
from edge.sync.timeline import Timeline

if TYPE_CHECKING:  # the follower it calls back into; typed only, so no import cycle
    from edge.sync.follower import BeatFollower as Host

Pending: TypeAlias = tuple[BeatFrame, float, float | None, float]  # frame, arrival, wall, r

_MAX_HELD = 64  # frames held off the timeline at most (the oldest is rejected beyond)


class Classifier:
    """Classifies each frame of our cluster and keeps the frames held off the timeline."""

    def __init__(
        self,
        config: SyncConfig,
        timeline: Timeline,
        accepted: Accepted,
        conflict: ConflictWatch,
        host: Host,
    ) -> None:
        self._cfg = config
        self._timeline = timeline
        self._accepted = accepted
        self._conflict = conflict
        self._host = host
        # Frames held until later ones confirm them: a run off the timeline (a jump, a
        # restart) or, with _held_tempo, one frame announcing a large tempo change.
        self._held: list[Pending] = []
        self._held_tempo = False
        self.evidence: float | None = None  # what the frame being received showed

    # ----------------------------------------------------------------- tolerances

    def band(self) -> float:
        """How far (either way) from the envelope a frame may arrive and still belong."""
        cfg = self._cfg
        return 3.0 * max(cfg.jitter_tolerance_s, self._host.error_bound_at(self._host._now))

    def early_tolerance(self, a: float) -> float:
        """How much earlier than the envelope a frame may arrive and still enter the fit."""
        return max(self._cfg.early_tolerance_s, 3.0 * self._host.error_bound_at(a))

    def _horizon(self) -> float:
        """How far from where a beat was a frame for it may arrive and still be that beat
        (farther, a restarted Pulse is reusing old numbers)."""
        return max(4.0 * 60.0 / self._timeline.tempo.latest_bpm, self.band())

    def _same_moment(self, key: Key, a: float) -> bool:
        """A seen index is a duplicate only if it arrives near where that beat was; far
        from it, a restarted Pulse is reusing old numbers (held as a possible jump)."""
        if not self._host._have_model:
            return True
        return abs(a - self._timeline.model_start(key)) <= self._horizon()

    def _copy_of_held(self, held: Pending, frame: BeatFrame, a: float) -> bool:
        """Is ``frame`` at ``a`` a network copy of the held frame (the same frame, within
        the jitter of it)?"""
        return held[0] == frame and abs(a - held[1]) <= self._cfg.jitter_tolerance_s

    def spread(self, key: Key, a: float) -> float | None:
        """Evidence of a second source: how much later than the first arrival of ``key``
        this one is, if farther apart than the network's jitter (and not so far that the
        number is being reused); None otherwise. Remembers the first arrival."""
        first = self._conflict.first_arrival(key)
        self._conflict.arrived(key, a)
        if first is None or not self._host._have_model:
            return None
        spread = a - first
        if self._cfg.jitter_tolerance_s < abs(spread) <= self._horizon():
            return spread
        return None

    def _plausible_tempo(self, bpm: float) -> bool:
        """Is a change to ``bpm`` small enough (``max_tempo_step``) to take from one frame?"""
        old = self._timeline.tempo.latest_bpm
        return abs(bpm - old) <= self._cfg.max_tempo_step * old * (1.0 + 1e-9)

    def _silent_for_jump(self, a: float) -> bool:
        """Has the timeline itself been silent long enough to follow frames off it? While
        its frames keep coming, a run off it is someone else's (or stale)."""
        cfg = self._cfg
        silence = cfg.jump_after_silent_beats * self._host.beat_seconds() + cfg.jitter_tolerance_s
        return a - self._host._last_arrival >= silence

    # ----------------------------------------------------------------- classification

    def take(
        self, frame: BeatFrame, key: Key, a: float, wall_at: float | None, events: list[SyncEvent]
    ) -> None:
        """Classify one frame of our cluster: accept, hold, or reject it."""
        host = self._host
        if not host._have_model:
            host._acquire(frame, a, wall_at, events)
            return
        if key in self._accepted and self._same_moment(key, a):
            self._duplicate(frame, key, a, wall_at, events)
            return
        if any(self._copy_of_held(h, frame, a) for h in self._held):
            events.extend(host._reject("duplicate", frame, a))
            return
        timeline = self._timeline
        fit = timeline.fit(frame, a, self.band(), self._accepted.latest[0])
        if self._held:
            last = self._held[-1]
            continues = timeline.continues(last[0], last[1], frame, a)
            if self._held_tempo and continues and frame.tempo_bpm == last[0].tempo_bpm:
                self._confirm_tempo(events)
                fit = timeline.fit(frame, a, self.band(), self._accepted.latest[0])
            elif not self._held_tempo and fit is None and continues:
                self._held.append((frame, a, wall_at, timeline.residual(frame, a)))
                host._verdict = FrameVerdict.HELD
                if self._silent_for_jump(a):
                    self._follow_held(events)
                elif len(self._held) > _MAX_HELD:
                    old = self._held.pop(0)
                    events.extend(host._reject("unconfirmed_jump", old[0], old[1]))
                return
            else:
                self._refute(events)
        if key <= self._accepted.latest:
            if fit is not None:
                events.extend(host._reject("out_of_order", frame, a))
            else:
                self._hold(frame, a, wall_at, tempo=False)
            return
        if fit is None:
            self._hold(frame, a, wall_at, tempo=False)
            return
        change_at, residual = fit
        if change_at is not None and not self._plausible_tempo(frame.tempo_bpm):
            self._hold(frame, a, wall_at, tempo=True)
            return
        host._accept(frame, a, wall_at, change_at, residual, events)

    def _duplicate(
        self, frame: BeatFrame, key: Key, a: float, wall_at: float | None, events: list[SyncEvent]
    ) -> None:
        """A second frame for a key already accepted, near where that beat was.

        A network copy arrives within the jitter of the first and changes nothing. But
        when the first arrived too early to enter the fit (held back) and this one fits,
        the first was a copy sent early by someone else: this one is the timeline's own
        source, its arrival enters the fit, the early one is rejected (``source_conflict``)
        and the pair is evidence of a conflict. Far from the first, it is evidence too.
        """
        host = self._host
        first = self._conflict.first_arrival(key)
        if self._accepted.held_back(key) and host._state is not SyncState.ACQUIRING:
            r = self._timeline.residual(frame, a)
            early_tol = self.early_tolerance(a)
            if -early_tol <= r <= self.band():
                self._accepted.settle(key)
                if first is not None:
                    if self.evidence is None:
                        self.evidence = a - first
                    events.extend(host._reject("source_conflict", frame, first))
                host._accept_copy(frame, key, a, wall_at, r, early_tol)
                return
        # Far from the first it is evidence; named a conflict once one is in force (an
        # honest network reorders a copy now and then).
        in_conflict = self.evidence is not None and self._conflict.current is not None
        reason = "source_conflict" if in_conflict else "duplicate"
        events.extend(host._reject(reason, frame, a))

    # ----------------------------------------------------------------- the fit

    def enter_fit(
        self, key: Key, a: float, residual: float, acquiring: bool, early_tol: float | None = None
    ) -> bool:
        """An accepted frame's point enters the envelope (while acquiring, always; else
        unless it is an outlier) and the line is refitted; True if it was held back as
        early. ``early_tol`` defaults to :meth:`early_tolerance` now."""
        timeline = self._timeline
        point: Point = (key[0], key[1], a, timeline.tempo.u(*key))
        held_back = False
        if acquiring:
            timeline.envelope.add(point)
        else:
            tol = self.early_tolerance(a) if early_tol is None else early_tol
            held_back = self._admit(point, residual, tol)
        timeline.envelope.refit()
        return held_back

    def _admit(self, point: Point, residual: float, early_tol: float) -> bool:
        """Offer a point to the envelope (locked); True if it was held back as early."""
        admission = self._timeline.envelope.admit(point, residual, early_tol)
        if admission is not Admission.FIT:
            self._host.outliers += 1
        if admission is Admission.RESTARTED:
            self._host.reanchors += 1
        return admission is Admission.OUTLIER and residual < -early_tol

    # ----------------------------------------------------------------- held frames

    def _hold(self, frame: BeatFrame, a: float, wall_at: float | None, tempo: bool) -> None:
        """Keep a frame that does not fit (or changes the tempo by more than the limit)
        until the next frames confirm or refute it."""
        self._held = [(frame, a, wall_at, self._timeline.residual(frame, a))]
        self._held_tempo = tempo
        self._host._verdict = FrameVerdict.HELD

    def _refute(self, events: list[SyncEvent]) -> None:
        """A frame that does not continue the held ones: they were strays, reject them."""
        held, self._held = self._held, []
        for f, at, _, r in held:
            if self._held_tempo:
                reason = "tempo_unconfirmed"
            else:
                reason = "stale" if r > 0 else "unconfirmed_jump"
            events.extend(self._host._reject(reason, f, at))

    def _confirm_tempo(self, events: list[SyncEvent]) -> None:
        """The next frame continues a held large tempo change at its new tempo: take it."""
        held, self._held = self._held, []
        for f, at, wall, _ in held:
            fit = self._timeline.fit(f, at, self.band(), self._accepted.latest[0])
            if fit is None or (f.beat_index, PHASES.index(f.phase)) <= self._accepted.latest:
                events.extend(self._host._reject("tempo_unconfirmed", f, at))
                continue
            self._host._accept(f, at, wall, fit[0], fit[1], events)

    def _follow_held(self, events: list[SyncEvent]) -> None:
        """The held run is consistent and the timeline went silent: follow the run, by
        renumbering if it kept our timing, else by re-anchoring on it."""
        held, self._held = self._held, []
        last_at = held[-1][1]
        shift = self._timeline.relabel_shift([(f, at) for f, at, _, _ in held], last_at)
        if shift is not None:
            self._host._relabel(shift, held, events)
        else:
            self._host._reanchor(held, events)
        self._host._verdict = FrameVerdict.ACCEPTED
