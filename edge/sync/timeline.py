"""The timeline: where each phase starts, and where a frame sits relative to it.

It combines the tempo map (beat to Pulse time ``u``), the envelope (``u`` to local arrival
time), the fixed path delay (explicit, learnt from the wall clock, or configured) and the
published correction (which keeps the runner's timeline continuous when the model moves).
The follower decides what to do with a frame; this answers the geometry it asks about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edge.messages import PHASES, BeatFrame
from edge.sync.config import SyncConfig
from edge.sync.correction import Correction
from edge.sync.envelope import Envelope, median
from edge.sync.events import Position
from edge.sync.tempo import Key, TempoMap, next_key, prev_key
from edge.sync.wall import WallClock

_MAX_TEMPO_CANDIDATES = 64


class Timeline:
    """The model of the Pulse's timeline; valid once :meth:`restart` has run."""

    def __init__(self, config: SyncConfig) -> None:
        self._cfg = config
        self.tempo = TempoMap()
        # Envelope: local monotonic arrival of Pulse time u (the fixed delay not removed).
        self.envelope = Envelope(config)
        self.correction = Correction(config.slew_rate)
        self.wall = WallClock(config)
        self.explicit_delay: float | None = None  # a measured path delay: wins

    # ----------------------------------------------------------------- parts together

    def restart(self, frames: list[tuple[BeatFrame, float]]) -> None:
        """A new timeline on these frames and arrivals (the fit keeps its rate)."""
        first = frames[0][0]
        self.tempo.reset(first.beat_index, first.tempo_bpm)
        self.envelope.reset()
        self.wall.reset()
        for frame, a in frames:
            k, p = frame.beat_index, PHASES.index(frame.phase)
            if frame.tempo_bpm != self.tempo.latest_bpm and k > self.tempo.last_start:
                self.add_segment(k, frame.tempo_bpm)
            self.envelope.add((k, p, a, self.tempo.u(k, p)))
        self.envelope.refit()
        self.correction.reset(frames[-1][1])

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to every beat index, keeping the fit."""
        self.tempo.renumber(shift)
        self.envelope.renumber(shift)
        self.wall.renumber(shift)

    def add_segment(self, beat: int, bpm: float) -> None:
        """The tempo becomes ``bpm`` from ``beat`` on."""
        if self.tempo.add(beat, bpm):
            self.envelope.retime(self.tempo.u)

    def commit(self, now: float, u_now: float, acquiring: bool) -> None:
        """Keep the published position at ``now`` where it was (``u_now``) by setting a
        correction to slew away; step instead when acquiring or when it is large."""
        shift = now - (self.envelope.at(u_now) - self.path_delay())
        large = abs(shift) > self._cfg.step_after_phases * self.phase_seconds()
        self.correction.start(now, shift, step=acquiring or large)

    # ----------------------------------------------------------------- times

    def path_delay(self) -> float:
        """The fixed path delay removed from the envelope."""
        if self.explicit_delay is not None:
            return self.explicit_delay
        learnt = self.wall.delay
        if learnt is not None:
            return learnt
        return self._cfg.path_delay_s

    def env_at(self, beat: int, phase: int) -> float:
        """The envelope's arrival time of a phase start (the fixed delay not removed)."""
        return self.envelope.at(self.tempo.u(beat, phase))

    def model_start(self, key: Key) -> float:
        """The best model's local start of a phase."""
        return self.env_at(*key) - self.path_delay()

    def start(self, key: Key) -> float:
        """The published local start of a phase (the model plus the correction)."""
        return self.correction.published(self.model_start(key))

    def beat_start(self, beat: int) -> float:
        return self.start((beat, 0))

    def published_u(self, t: float) -> float:
        """Pulse time ``u`` the published timeline is at, at local time ``t``."""
        model_t = t - self.correction.at(t)
        return self.envelope.u_at(model_t + self.path_delay())

    def beat_seconds(self) -> float:
        """Length of the current beat in local seconds."""
        return 60.0 / self.tempo.latest_bpm * self.envelope.slope

    def phase_seconds(self) -> float:
        return self.beat_seconds() / 3.0

    def error_bound_at(self, t: float) -> float:
        """Bound (about 99%) on the error of a boundary predicted for local time ``t``.

        The envelope sits on the lowest arrival in the window; the true floor is below it
        by an unknown gap. Near the floor the arrivals' spacing tells the density of delays
        there (``s``: mean gap between the lowest residuals, so ``s`` ~ 1 / (frames x
        density)), and the gap is then about exponential with mean ``s``: its 99th
        percentile is ~4.6 s; ``_OFFSET_Z`` (in :mod:`edge.sync.envelope`) adds room for
        the estimate of ``s`` itself. To that adds the slope uncertainty
        (``_RATE_Z * s / span``, ``max_rate_ppm`` while the rate is unknown) times the
        distance of ``t`` from the far end of the window (the lowest true arrival may sit
        anywhere in it), so the bound shrinks as frames accumulate and grows in silence;
        plus the correction still being slewed and, when used, the spread of the
        wall-clock delay. Without a trusted wall clock or a given path delay the
        boundaries are also late by the unknown fixed path delay, which no bound built
        from arrival times can see. Assumes the delay density does not vanish at its
        floor (true of queueing delay).
        O(1).
        """
        bound = self.envelope.bound_at(t) + abs(self.correction.at(t))
        if self.wall.trusted and self.explicit_delay is None:
            bound += self.wall.spread
        return bound

    def position(self, now: float) -> Position:
        """Beat, phase and fraction of the phase at local time ``now``."""
        key = self.tempo.key_at(self.published_u(now))
        # Float rounding may put us one phase off at an exact boundary: settle it.
        for _ in range(4):
            start = self.start(key)
            if start > now:
                key = prev_key(key)
                continue
            end = self.start(next_key(key))
            if end <= now:
                key = next_key(key)
                continue
            break
        start, end = self.start(key), self.start(next_key(key))
        span = end - start
        fraction = min(max((now - start) / span, 0.0), 1.0) if span > 0 else 0.0
        return Position(key[0], PHASES[key[1]], start, end, fraction)

    # ----------------------------------------------------------------- frames

    def residual(self, frame: BeatFrame, a: float) -> float:
        """How much later than the envelope a frame arrived at ``a``."""
        return a - self.env_at(frame.beat_index, PHASES.index(frame.phase))

    def fit(
        self, frame: BeatFrame, a: float, band: float, latest_beat: int
    ) -> tuple[int | None, float] | None:
        """Does the frame sit within ``band`` of the timeline? (change_at, residual) or None.

        ``change_at`` is the beat where the frame's new tempo takes effect (None if the
        tempo is unchanged); frames between the latest beat accepted and this one were
        lost, so the most plausible beat is chosen by the arrival time.
        """
        k, p = frame.beat_index, PHASES.index(frame.phase)
        if frame.tempo_bpm == self.tempo.bpm_at(k):
            r = a - self.env_at(k, p)
            return (None, r) if -band <= r <= band else None
        if k <= latest_beat:
            candidates: Iterable[int] = (k,)
        else:
            candidates = range(max(latest_beat + 1, k - _MAX_TEMPO_CANDIDATES), k + 1)
        residuals = self.envelope.residuals()
        typical = median(residuals) if residuals else 0.0
        best: tuple[float, int, float] | None = None
        for j in candidates:
            u = self.tempo.u(j, 0) + ((k - j) * 3 + p) * 20.0 / frame.tempo_bpm
            r = a - self.envelope.at(u)
            score = abs(r - typical)
            if best is None or score < best[0]:
                best = (score, j, r)
        if best is None or not -band <= best[2] <= band:
            return None
        return (best[1], best[2])

    def continues(self, first: BeatFrame, first_at: float, frame: BeatFrame, a: float) -> bool:
        """Does ``frame`` (at ``a``) follow ``first`` at the spacing its tempo implies?"""
        k1, p1 = first.beat_index, PHASES.index(first.phase)
        k2, p2 = frame.beat_index, PHASES.index(frame.phase)
        if first.cluster_id != frame.cluster_id or (k2, p2) <= (k1, p1):
            return False
        steps = (k2 - k1) * 3 + (p2 - p1)
        expected = steps * 20.0 / first.tempo_bpm * self.envelope.slope
        return abs((a - first_at) - expected) <= 2.0 * self._cfg.jitter_tolerance_s

    def relabel_shift(self, frames: Sequence[tuple[BeatFrame, float]], a: float) -> int | None:
        """The index shift if every (frame, arrival) of ``frames`` lands on a boundary.

        A Pulse that renumbers its beats but keeps its timing (fail-over to a standby
        with another count, an operator reset) sends frames that sit on our boundaries
        with other labels: each must arrive at the start of a local phase of its own
        phase name and tempo (early by at most three error bounds at ``a``, late by at
        most the jitter tolerance plus one), all must imply the same shift, and the
        earliest of them, as the envelope would take it, must sit on our timing within
        the early tolerance: a Pulse restarted a few ms off our boundaries has new timing,
        and keeping the old fit would fire early by that much for as long as the old
        points stay in the window. None when the timing changed too (or the tolerance
        would not tell neighbouring phases apart).
        """
        cfg = self._cfg
        bound = self.error_bound_at(a)
        early, late = cfg.early_tolerance_s + 3.0 * bound, cfg.jitter_tolerance_s + bound
        if early + late >= self.phase_seconds():
            return None
        shifts: set[int] = set()
        lowest = late
        for f, at in frames:
            if f.tempo_bpm != self.tempo.latest_bpm:
                return None
            p = PHASES.index(f.phase)
            near = self.tempo.key_at(self.envelope.u_at(at))
            hits = [
                key
                for key in (near, next_key(near))
                if key[1] == p and -early <= at - self.env_at(*key) <= late
            ]
            if not hits:
                return None
            shifts.add(f.beat_index - hits[0][0])
            lowest = min(lowest, at - self.env_at(*hits[0]))
        if lowest > early:
            return None
        return shifts.pop() if len(shifts) == 1 else None
