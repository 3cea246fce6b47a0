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

*States* (table ``_TRANSITIONS``): ACQUIRING until ``lock_after_frames`` frames are in;
LOCKED; FREE_RUNNING after ``free_run_after_beats`` beats (plus the jitter tolerance)
without a frame; LOST after ``max(lost_after_s, lost_after_beats beats)`` of silence (emits
SyncLost). In every state but ACQUIRING-before-the-first-frame the timeline keeps running
on its model at the last tempo. The first frames after LOST lock again and emit
SyncRegained with the error they revealed.

*Bars* are learnt from ``downbeat`` flags and ``window_id`` changes: the bar length is the
distance between downbeats (a multiple of the known length is taken as lost frames).
Until two downbeats are seen, :meth:`BeatFollower.is_downbeat` answers None.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TypeAlias

from edge.errors import ConfigProblems
from edge.messages import PHASES, BeatFrame, Phase

# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Every knob of the beat follower; the defaults suit a LAN and 0.1..1000 BPM.

    jitter_tolerance_s: frames later than the envelope by more than this count as late
        (upstream SDK default 50 ms); three times it bounds "belongs to this timeline".
    lock_after_frames: frames needed after (re)acquisition before LOCKED.
    free_run_after_beats: beats without a frame (plus the jitter tolerance) before
        FREE_RUNNING.
    lost_after_s, lost_after_beats: silence before LOST is the larger of the two.
    filter_window_frames: arrivals kept for the envelope fit. The envelope's error falls
        as 1 / frames (with delay uniform over 50 ms: ~1 ms p99 after ~250 frames, ~0.5 ms
        after ~1000), so the window is long; it assumes the clock rate difference is
        steady over it (17 min at 60 BPM). Cost is linear: ~0.35 ms of CPU per frame on a
        desktop at 1024, some 3-5x that on a Raspberry Pi; lower it for 600 BPM per-phase
        frames on a slow board.
    max_rate_ppm: largest believable clock rate difference; the fit is clamped to it.
    rate_min_span_s, rate_min_frames: the window must span this long and hold this many
        frames before the rate is estimated (a few jittered points give a wild slope).
    rate_max_uncertainty_ppm: ...and the estimate's own uncertainty (twice the noise
        near the floor over the span) must be below this; until then the slope is held.
    early_tolerance_s: frames earlier than the envelope by more than this are held back.
    relock_after_frames: consecutive early (or consistent late) frames that move the
        timeline.
    slew_rate: largest speed at which a correction is applied (0.02 = 20 ms per second).
    step_after_phases: a correction larger than this many phases is stepped, not slewed.
    jump_after_beats: an index more than this many beats from the expected one is a jump.
    trust_wall_clock: None = decide from the data; True/False force it.
    wall_trust_frames: consistent frames needed before the wall clock is trusted.
    wall_max_bias_s: largest fixed path delay believed from the wall clock.
    wall_consistency_s: how closely wall-clock delay estimates must agree.
    wall_step_s: a jump of wall-minus-monotonic larger than this is a wall clock step.
    path_delay_s: fixed path delay removed when nothing better is known.
    """

    jitter_tolerance_s: float = 0.050
    lock_after_frames: int = 4
    free_run_after_beats: float = 3.0
    lost_after_s: float = 10.0
    lost_after_beats: float = 8.0
    filter_window_frames: int = 1024
    max_rate_ppm: float = 500.0
    rate_min_span_s: float = 5.0
    rate_min_frames: int = 6
    rate_max_uncertainty_ppm: float = 100.0
    early_tolerance_s: float = 0.001
    relock_after_frames: int = 4
    slew_rate: float = 0.02
    step_after_phases: float = 0.5
    jump_after_beats: int = 2
    trust_wall_clock: bool | None = None
    wall_trust_frames: int = 8
    wall_max_bias_s: float = 0.010
    wall_consistency_s: float = 0.002
    wall_step_s: float = 0.005
    path_delay_s: float = 0.0


# name -> (kind, low, high, low_inclusive); kind "f" float, "i" int.
_LIMITS: dict[str, tuple[str, float, float, bool]] = {
    "jitter_tolerance_s": ("f", 0.0, 10.0, False),
    "lock_after_frames": ("i", 1, 1000, True),
    "free_run_after_beats": ("f", 1.0, 1e6, True),
    "lost_after_s": ("f", 0.0, 1e7, False),
    "lost_after_beats": ("f", 1.0, 1e6, True),
    "filter_window_frames": ("i", 4, 100_000, True),
    "max_rate_ppm": ("f", 0.0, 100_000.0, True),
    "rate_min_span_s": ("f", 0.0, 1e7, True),
    "rate_min_frames": ("i", 4, 100_000, True),
    "rate_max_uncertainty_ppm": ("f", 0.0, 100_000.0, False),
    "early_tolerance_s": ("f", 0.0, 10.0, True),
    "relock_after_frames": ("i", 2, 1000, True),
    "slew_rate": ("f", 0.0, 0.5, False),
    "step_after_phases": ("f", 0.0, 1e6, True),
    "jump_after_beats": ("i", 1, 1_000_000, True),
    "wall_trust_frames": ("i", 1, 10_000, True),
    "wall_max_bias_s": ("f", 0.0, 10.0, True),
    "wall_consistency_s": ("f", 0.0, 10.0, False),
    "wall_step_s": ("f", 0.0, 3600.0, False),
    "path_delay_s": ("f", 0.0, 10.0, True),
}


def parse_sync(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "sync"
) -> SyncConfig:
    """Read the ``[sync]`` TOML table into a :class:`SyncConfig`.

    Every problem (unknown key, wrong type, out of range) is added to ``problems`` with its
    place (``sync.slew_rate``); a bad value falls back to its default so parsing goes on.
    ``trust_wall_clock`` takes ``true``, ``false`` or ``"auto"`` (TOML has no null).
    Never raises for bad input.
    """
    known = {f.name for f in fields(SyncConfig)}
    values: dict[str, object] = {}
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a table, got {type(raw).__name__}")
        return SyncConfig()
    for key, value in raw.items():
        place = f"{where}.{key}"
        if key not in known:
            problems.add(place, f"is not a sync setting (known: {', '.join(sorted(known))})")
            continue
        if key == "trust_wall_clock":
            if isinstance(value, bool):
                values[key] = value
            elif value == "auto":
                values[key] = None
            else:
                problems.add(place, f'must be true, false or "auto", got {value!r}')
            continue
        kind, low, high, low_inclusive = _LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(place, f"must be a number, got {value!r}")
            continue
        if kind == "i" and not isinstance(value, int):
            problems.add(place, f"must be an integer, got {value!r}")
            continue
        if not math.isfinite(value):
            problems.add(place, f"must be a finite number, got {value!r}")
            continue
        too_low = value < low or (value == low and not low_inclusive)
        if too_low or value > high:
            bracket = "[" if low_inclusive else "("
            problems.add(place, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
            continue
        values[key] = int(value) if kind == "i" else float(value)
    return SyncConfig(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- values


class SyncState(enum.Enum):
    ACQUIRING = "acquiring"
    LOCKED = "locked"
    FREE_RUNNING = "free_running"
    LOST = "lost"


# (state, trigger) -> next state. Triggers: "locked" (enough frames since (re)acquisition),
# "frame" (a frame that fits the timeline), "silent" (free-run limit), "lost" (lost
# limit), "restart" (re-anchored on a new timeline).
_TRANSITIONS: dict[tuple[SyncState, str], SyncState] = {
    (SyncState.ACQUIRING, "locked"): SyncState.LOCKED,
    (SyncState.ACQUIRING, "lost"): SyncState.LOST,
    (SyncState.ACQUIRING, "restart"): SyncState.ACQUIRING,
    (SyncState.LOCKED, "silent"): SyncState.FREE_RUNNING,
    (SyncState.LOCKED, "lost"): SyncState.LOST,
    (SyncState.LOCKED, "restart"): SyncState.ACQUIRING,
    (SyncState.FREE_RUNNING, "frame"): SyncState.LOCKED,
    (SyncState.FREE_RUNNING, "lost"): SyncState.LOST,
    (SyncState.FREE_RUNNING, "restart"): SyncState.ACQUIRING,
    (SyncState.LOST, "frame"): SyncState.LOCKED,
    (SyncState.LOST, "restart"): SyncState.ACQUIRING,
}


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
    | SyncLost
    | SyncRegained
)

Key: TypeAlias = tuple[int, int]  # (beat index, phase index 0..2)
_Point: TypeAlias = tuple[int, int, float, float]  # (beat, phase index, arrival, u)
_Pending: TypeAlias = tuple[BeatFrame, float, float | None, float]  # frame, arrival, wall, r

_SEEN_KEYS = 512  # duplicate memory, in frames
_MAX_SEGMENTS = 512  # tempo segments kept (older ones are not needed by the window)
_MAX_EMIT = 10_000  # boundaries one tick() emits at most; the rest come on the next call
_MAX_TEMPO_CANDIDATES = 64
_NTP_SLEW = 500e-6  # the fastest a disciplined wall clock is slewed (ntpd/chrony limit)
_BOUND_FLOOR_S = 10e-6
_RATE_SMOOTHING = 1.0 / 16
_SPACING_ORDER = 16  # lowest residuals whose spacing estimates the delay density
_OFFSET_Z = 6.0  # envelope gap bound in mean spacings (p99 of an exponential: 4.6)
_RATE_Z = 20.0  # slope bound in mean spacings per window span
_RATE_FLOOR = 1e-6  # slope bound never below 1 ppm (smoothing, float and model error)


def _next(key: Key) -> Key:
    return (key[0], key[1] + 1) if key[1] < 2 else (key[0] + 1, 0)


def _prev(key: Key) -> Key:
    return (key[0], key[1] - 1) if key[1] > 0 else (key[0] - 1, 2)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _spacing(offsets: list[float]) -> float:
    """Mean gap between the lowest of ``offsets`` (at least 3 values): the lowest quarter,
    at most ``_SPACING_ORDER`` (only the region near the floor tells its density)."""
    lowest = heapq.nsmallest(min(_SPACING_ORDER, max(3, len(offsets) // 4)), offsets)
    return (lowest[-1] - lowest[0]) / (len(lowest) - 1)


def lower_envelope_slope(xs: list[float], ys: list[float]) -> float | None:
    """Slope of the lowest line under all points that is highest at their mean ``x``.

    That line is the edge of the lower convex hull spanning the mean (the linear program
    "maximise the sum of line heights subject to line <= every point"). ``xs`` must be
    increasing. None if fewer than two distinct ``x``.
    """
    hull: list[tuple[float, float]] = []
    for x, y in zip(xs, ys, strict=True):
        while len(hull) >= 2:
            (ox, oy), (ax, ay) = hull[-2], hull[-1]
            if (ax - ox) * (y - oy) - (ay - oy) * (x - ox) <= 0.0:
                hull.pop()
            else:
                break
        if hull and x <= hull[-1][0]:
            if y < hull[-1][1]:
                hull[-1] = (x, y)
            continue
        hull.append((x, y))
    if len(hull) < 2:
        return None
    mean = sum(xs) / len(xs)
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if x2 >= mean:
            return (y2 - y1) / (x2 - x1)
    (x1, y1), (x2, y2) = hull[-2], hull[-1]
    return (y2 - y1) / (x2 - x1)


# --------------------------------------------------------------------------- the follower


class BeatFollower:
    """Follows one cluster's beat from frames and their local arrival times.

    Sans-I/O: :meth:`receive` and :meth:`tick` take the time as an argument and return
    events; nothing here reads a clock. Not thread-safe (the runner owns it).
    """

    def __init__(self, cluster_id: str, config: SyncConfig = SyncConfig()) -> None:
        self._cluster = cluster_id
        self._cfg = config
        self._state = SyncState.ACQUIRING
        self._now = -math.inf
        # Tempo map: parallel lists of segment starts (beat), tempos and u at the start.
        self._seg_beat: list[int] = []
        self._seg_bpm: list[float] = []
        self._seg_u: list[float] = []
        # Envelope: T_env(u) = _t0 + _slope * (u - _u0), local monotonic seconds.
        self._have_model = False
        self._u0 = 0.0
        self._t0 = 0.0
        self._slope = 1.0
        self._rate_known = False
        self._rate_fits = 0
        self._rate_err = config.max_rate_ppm * 1e-6
        # Error-bound statistics of the last fit (see error_bound_at).
        self._fit_spacing = math.inf
        self._fit_ends = (0.0, 0.0)  # arrivals of the window's first and last frame
        self._window: deque[_Point] = deque(maxlen=config.filter_window_frames)
        self._early_run: list[_Point] = []
        self._late_run: list[tuple[_Point, float]] = []
        self._pending: _Pending | None = None
        # Published correction: corr(t) = _c0 decaying toward 0 at slew_rate from _ct0.
        self._c0 = 0.0
        self._ct0 = 0.0
        self._last_shift = 0.0
        self._cursor: Key = (0, 0)
        self._latest: Key = (0, 0)
        self._last_arrival = 0.0
        self._since_reset = 0
        self._lost_reported = False
        self._regain_error = 0.0
        self._seen: deque[Key] = deque()
        self._seen_set: set[Key] = set()
        # Fixed delay: explicit, or learned from the wall clock.
        self._explicit_delay: float | None = None
        self._wall_bias: float | None = None
        self._wall_bias_spread = 0.0
        self._wall_trusted = False
        self._wall_frozen = False
        self._wall_last: tuple[float, float] | None = None
        self._wall_samples: deque[tuple[int, int, float, float]] = deque(
            maxlen=max(config.wall_trust_frames, 1)
        )
        # Bars and windows.
        self._bar_len: int | None = None
        self._last_downbeat: int | None = None
        self._known_downbeat: dict[int, bool] = {}
        self._window_id: tuple[int, str] | None = None
        self._new_windows: list[NewWindow] = []
        # Counters.
        self.frames_accepted = 0
        self._rejected: dict[str, int] = {}
        self.outliers = 0
        self.reanchors = 0
        self.relabels = 0
        self.wall_steps = 0

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
        return self._seg_bpm[-1] if self._seg_bpm else None

    @property
    def rate_ppm(self) -> float:
        """Pulse clock rate minus local clock rate, in ppm (positive: the Pulse runs fast)."""
        return (1.0 / self._slope - 1.0) * 1e6

    @property
    def error_bound_s(self) -> float:
        """Error bound of boundary estimates at the latest time seen (see error_bound_at)."""
        return self.error_bound_at(self._now)

    @property
    def rejected(self) -> Mapping[str, int]:
        """Rejected frames by reason."""
        return MappingProxyType(self._rejected)

    @property
    def wall_clock_trusted(self) -> bool:
        """Whether the wall clock is believed now (forced, or decided from the data).

        A delay learnt before a wall clock step stays in use after it (see the theory)."""
        if self._cfg.trust_wall_clock is not None:
            return self._cfg.trust_wall_clock and self._wall_bias is not None
        return self._wall_trusted and not self._wall_frozen

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
        if math.isfinite(self._fit_spacing):
            base = max(_OFFSET_Z * self._fit_spacing, _BOUND_FLOOR_S)
        else:
            base = self._cfg.jitter_tolerance_s
        rate_err = self._rate_err if self._rate_known else self._cfg.max_rate_ppm * 1e-6
        first, last = self._fit_ends
        reach = max(abs(t - first), abs(t - last))
        bound = base + rate_err * reach + abs(self._corr(t))
        if self.wall_clock_trusted and self._explicit_delay is None:
            bound += self._wall_bias_spread
        return bound

    def beat_seconds(self) -> float:
        """Length of the current beat in local seconds (60 s before the first frame)."""
        if not self._seg_bpm:
            return 60.0
        return 60.0 / self._seg_bpm[-1] * self._slope

    def phase_start(self, beat_index: int, phase: Phase) -> float:
        """Predicted local monotonic start of ``phase`` of ``beat_index`` (past or future).

        Raises RuntimeError before the first frame (there is no timeline yet).
        """
        self._need_model()
        return self._published(self._model_start((beat_index, PHASES.index(phase))))

    def position(self, now: float) -> Position | None:
        """Beat, phase and fraction of the phase at local time ``now``; None before a frame."""
        if not self._have_model:
            return None
        model_t = now - self._corr(now)
        u = self._u0 + (model_t + self._bias() - self._t0) / self._slope
        key = self._key_at(u)
        # Float rounding may put us one phase off at an exact boundary: settle it.
        for _ in range(4):
            start = self._start(key)
            if start > now:
                key = _prev(key)
                continue
            end = self._start(_next(key))
            if end <= now:
                key = _next(key)
                continue
            break
        start, end = self._start(key), self._start(_next(key))
        span = end - start
        fraction = min(max((now - start) / span, 0.0), 1.0) if span > 0 else 0.0
        return Position(key[0], PHASES[key[1]], start, end, fraction)

    def is_downbeat(self, beat_index: int) -> bool | None:
        """Whether the beat is the first of a bar; None while the bar is not known."""
        if beat_index in self._known_downbeat:
            return self._known_downbeat[beat_index]
        if self._bar_len is None or self._last_downbeat is None:
            return None
        return (beat_index - self._last_downbeat) % self._bar_len == 0

    def bar_position(self, beat_index: int) -> int | None:
        """0-based position of the beat in its bar; None while the bar is not known."""
        if self._bar_len is None or self._last_downbeat is None:
            return None
        return (beat_index - self._last_downbeat) % self._bar_len

    @property
    def bar_length(self) -> int | None:
        """Beats per bar as learnt from downbeats; None until two downbeats were seen."""
        return self._bar_len

    def tempo_drift_ms(self, now: float) -> float:
        """How far the published timeline runs behind the best model, in ms (upstream sign:
        positive = running behind, negative = ahead). Non-zero while a correction slews."""
        if not self._have_model:
            return 0.0
        return self._corr(now) * 1000.0

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
        times = [self._start(_next(self._cursor))]
        times.extend(w.at for w in self._new_windows if w.beat_index <= self._cursor[0])
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
        for _ in range(_MAX_EMIT):
            key = _next(self._cursor)
            at = self._start(key)
            if at > now:
                break
            self._cursor = key
            if key[1] == 0:
                downbeat = self.is_downbeat(key[0])
                events.append(BeatStarted(key[0], at, bool(downbeat), self._window_for(key[0])))
            events.append(PhaseStarted(key[0], PHASES[key[1]], at))
            self._flush_windows(events)
        self._flush_windows(events)
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
        if key in self._seen_set and self._same_moment(key, a):
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
        if key <= self._latest:
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

    def _seg_index_for_beat(self, beat: int) -> int:
        return max(bisect_right(self._seg_beat, beat) - 1, 0)

    def _u(self, beat: int, phase: int) -> float:
        i = self._seg_index_for_beat(beat)
        phase_len = 20.0 / self._seg_bpm[i]
        return self._seg_u[i] + ((beat - self._seg_beat[i]) * 3 + phase) * phase_len

    def _key_at(self, u: float) -> Key:
        i = max(bisect_right(self._seg_u, u) - 1, 0)
        phase_len = 20.0 / self._seg_bpm[i]
        n = math.floor((u - self._seg_u[i]) / phase_len)
        return (self._seg_beat[i] + n // 3, n % 3)

    def _env(self, u: float) -> float:
        return self._t0 + self._slope * (u - self._u0)

    def _bias(self) -> float:
        if self._explicit_delay is not None:
            return self._explicit_delay
        if self._wall_bias is not None and self._cfg.trust_wall_clock is not False:
            return self._wall_bias
        return self._cfg.path_delay_s

    def _model_start(self, key: Key) -> float:
        return self._env(self._u(*key)) - self._bias()

    def _corr(self, t: float) -> float:
        c0 = self._c0
        if c0 == 0.0 or t <= self._ct0:
            return c0
        left = abs(c0) - self._cfg.slew_rate * (t - self._ct0)
        return math.copysign(left, c0) if left > 0 else 0.0

    def _published(self, m: float) -> float:
        """Local time of a point the model puts at ``m``: solve T = m + corr(T)."""
        c0, t0, slew = self._c0, self._ct0, self._cfg.slew_rate
        if c0 == 0.0 or m + c0 <= t0:
            return m + c0
        if c0 > 0:
            t = (m + c0 + slew * t0) / (1.0 + slew)
            return t if t - t0 < c0 / slew else m
        t = (m + c0 - slew * t0) / (1.0 - slew)
        return t if t - t0 < -c0 / slew else m

    def _start(self, key: Key) -> float:
        return self._published(self._model_start(key))

    def _published_u(self, t: float) -> float:
        model_t = t - self._corr(t)
        return self._u0 + (model_t + self._bias() - self._t0) / self._slope

    def _phase_seconds(self) -> float:
        return self.beat_seconds() / 3.0

    def _commit(self, now: float, u_now: float | None) -> None:
        """Keep the published position at ``now`` where it was (``u_now``) by setting a
        correction to slew away; step instead when acquiring or when it is large."""
        if u_now is None:
            self._c0, self._ct0, self._last_shift = 0.0, now, 0.0
            return
        shift = now - (self._env(u_now) - self._bias())
        self._last_shift = shift
        large = abs(shift) > self._cfg.step_after_phases * self._phase_seconds()
        if self._state is SyncState.ACQUIRING or large:
            shift = 0.0
        self._c0, self._ct0 = shift, now

    def _refit(self) -> None:
        """Fit the lower envelope to the window and refresh the error-bound statistics.

        The slope is re-estimated only once the window spans ``rate_min_span_s`` and the
        estimate's own uncertainty is below ``rate_max_uncertainty_ppm``; until then it is
        held (and its uncertainty is ``max_rate_ppm``). O(window) per call.
        """
        points = self._window
        if not points:
            return
        last = points[-1]
        u_ref, a_ref = last[3], last[2]
        xs = [pt[3] - u_ref for pt in points]
        ys = [pt[2] - a_ref for pt in points]
        cfg = self._cfg
        span = last[2] - points[0][2]
        slope = self._slope
        if len(points) >= cfg.rate_min_frames and span >= cfg.rate_min_span_s and span > 0:
            estimate = lower_envelope_slope(xs, ys)
            if estimate is not None:
                spacing = _spacing([y - estimate * x for x, y in zip(xs, ys, strict=True)])
                uncertainty = _RATE_Z * spacing / span
                if uncertainty <= cfg.rate_max_uncertainty_ppm * 1e-6:
                    limit = cfg.max_rate_ppm * 1e-6
                    estimate = min(max(estimate, 1.0 / (1.0 + limit)), 1.0 / (1.0 - limit))
                    # Successive windows share most points, so one hull edge is a noisy
                    # reading: average them (first readings count fully, later ones 1/16).
                    self._rate_fits += 1
                    weight = max(1.0 / self._rate_fits, _RATE_SMOOTHING)
                    slope = slope + (estimate - slope) * weight
                    # Honest: the window's own slope uncertainty, plus how far the smoothed
                    # slope still is from this reading (large while it catches up).
                    self._rate_err = min(
                        uncertainty + abs(slope - estimate) + _RATE_FLOOR, 2.0 * limit
                    )
                    self._rate_known = True
        offsets = [y - slope * x for x, y in zip(xs, ys, strict=True)]
        offset = min(offsets)
        self._slope = slope
        self._u0 = u_ref
        self._t0 = a_ref + offset
        self._fit_ends = (points[0][2], last[2])
        self._fit_spacing = _spacing(offsets) if len(offsets) >= 3 else math.inf

    def _window_residuals(self) -> list[float]:
        return [a - self._env(u) for _, _, a, u in self._window]

    # ----------------------------------------------------------------- internals: frames

    def _reject(self, reason: str, frame: BeatFrame, at: float) -> list[SyncEvent]:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return [FrameRejected(reason, frame.beat_index, at)]

    def _same_moment(self, key: Key, a: float) -> bool:
        """A seen index is a duplicate only if it arrives near where that beat was; far
        from it, a restarted Pulse is reusing old numbers (held as a possible jump)."""
        if not self._have_model:
            return True
        horizon = max(4.0 * 60.0 / self._seg_bpm[-1], self._band())
        return abs(a - self._model_start(key)) <= horizon

    def _remember(self, key: Key) -> None:
        self._seen.append(key)
        self._seen_set.add(key)
        while len(self._seen) > _SEEN_KEYS:
            self._seen_set.discard(self._seen.popleft())

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
        bpm_now = self._seg_bpm[self._seg_index_for_beat(k)]
        if frame.tempo_bpm == bpm_now:
            r = a - self._env(self._u(k, p))
            return (None, r) if -band <= r <= band else None
        last = self._latest[0]
        if k <= last:
            candidates: Iterable[int] = (k,)
        else:
            candidates = range(max(last + 1, k - _MAX_TEMPO_CANDIDATES), k + 1)
        residuals = self._window_residuals()
        typical = _median(residuals) if residuals else 0.0
        best: tuple[float, int, float] | None = None
        for j in candidates:
            u = self._u(j, 0) + ((k - j) * 3 + p) * 20.0 / frame.tempo_bpm
            r = a - self._env(u)
            score = abs(r - typical)
            if best is None or score < best[0]:
                best = (score, j, r)
        if best is None or not -band <= best[2] <= band:
            return None
        return (best[1], best[2])

    def _hold(self, frame: BeatFrame, a: float, wall_at: float | None) -> None:
        """Keep a frame that does not fit, until the next frame confirms or refutes it."""
        r = a - self._env(self._u(frame.beat_index, PHASES.index(frame.phase)))
        self._pending = (frame, a, wall_at, r)

    def _confirms(self, pending: _Pending, frame: BeatFrame, a: float) -> bool:
        """Does ``frame`` continue ``pending`` at the spacing its tempo implies?"""
        first = pending[0]
        k1, p1 = first.beat_index, PHASES.index(first.phase)
        k2, p2 = frame.beat_index, PHASES.index(frame.phase)
        if first.cluster_id != frame.cluster_id or (k2, p2) <= (k1, p1):
            return False
        steps = (k2 - k1) * 3 + (p2 - p1)
        expected = steps * 20.0 / first.tempo_bpm * self._slope
        return abs((a - pending[1]) - expected) <= 2.0 * self._cfg.jitter_tolerance_s

    def _acquire(
        self, frame: BeatFrame, a: float, wall_at: float | None, events: list[SyncEvent]
    ) -> None:
        """Start a fresh timeline from one frame (the first ever)."""
        self._start_timeline([(frame, a, wall_at)])
        self._transition("restart")
        self._after_accept(frame, a, wall_at, events)

    def _start_timeline(self, frames: list[tuple[BeatFrame, float, float | None]]) -> None:
        first = frames[0][0]
        self._seg_beat = [first.beat_index]
        self._seg_bpm = [first.tempo_bpm]
        self._seg_u = [0.0]
        self._window.clear()
        self._early_run.clear()
        self._late_run.clear()
        self._wall_samples.clear()
        self._wall_last = None
        self._seen.clear()
        self._seen_set.clear()
        self._bar_len = None
        self._last_downbeat = None
        self._known_downbeat.clear()
        self._window_id = None
        self._new_windows.clear()
        self._since_reset = 0
        for frame, a, _ in frames:
            k, p = frame.beat_index, PHASES.index(frame.phase)
            if frame.tempo_bpm != self._seg_bpm[-1] and k > self._seg_beat[-1]:
                self._add_segment(k, frame.tempo_bpm)
            self._window.append((k, p, a, self._u(k, p)))
        self._have_model = True
        self._refit()
        self._c0, self._ct0 = 0.0, frames[-1][1]
        last = frames[-1][0]
        self._cursor = _prev((last.beat_index, PHASES.index(last.phase)))

    def _reanchor(
        self,
        pending: _Pending,
        current: _Pending,
        events: list[SyncEvent],
    ) -> None:
        """Two consistent frames outside the timeline: restart the timeline on them."""
        frame, a = current[0], current[1]
        expected = self._key_at(self._published_u(a - self._cfg.jitter_tolerance_s))[0]
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
            self._cursor = _prev((first, PHASES.index(pending[0].phase)))
        elif old_cursor > self._cursor:
            self._cursor = old_cursor  # same beats, moved in time: never emit one twice
        self._transition("restart")
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
            if f.tempo_bpm != self._seg_bpm[-1]:
                return None
            p = PHASES.index(f.phase)
            near = self._key_at(self._u0 + (at - self._t0) / self._slope)
            hits = [
                key
                for key in (near, _next(near))
                if key[1] == p and -early <= at - self._env(self._u(*key)) <= late
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
        self._seg_beat = [b + shift for b in self._seg_beat]
        self._window = deque(
            ((k + shift, p, a, u) for k, p, a, u in self._window),
            maxlen=self._cfg.filter_window_frames,
        )
        self._early_run = [(k + shift, p, a, u) for k, p, a, u in self._early_run]
        self._late_run = [((k + shift, p, a, u), r) for (k, p, a, u), r in self._late_run]
        self._wall_samples = deque(
            ((k + shift, p, a, d) for k, p, a, d in self._wall_samples),
            maxlen=self._wall_samples.maxlen,
        )
        self._seen = deque((k + shift, p) for k, p in self._seen)
        self._seen_set = set(self._seen)
        self._latest = (self._latest[0] + shift, self._latest[1])
        if self._last_downbeat is not None:
            self._last_downbeat += shift
        self._known_downbeat = {k + shift: v for k, v in self._known_downbeat.items()}
        if self._window_id is not None:
            self._window_id = (self._window_id[0] + shift, self._window_id[1])
        self._new_windows = [
            NewWindow(w.beat_index + shift, w.window_id, w.at) for w in self._new_windows
        ]
        events.append(BeatJumped(first[0] - shift, first[0], current[1]))
        # The jumped-to beat was already emitted under its old number; the runner hears
        # it again under the new one (at its true, past start) and every beat after.
        self._cursor = min((self._cursor[0] + shift, self._cursor[1]), _prev(first))
        for f, at, wall, _ in (pending, current):
            k, p = f.beat_index, PHASES.index(f.phase)
            residual = at - self._env(self._u(k, p))
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
            old = self._seg_bpm[-1]
            self._add_segment(change_at, frame.tempo_bpm)
            events.append(
                TempoChanged(change_at, old, frame.tempo_bpm, self._model_start((change_at, 0)))
            )
        point: _Point = (k, p, a, self._u(k, p))
        cfg = self._cfg
        if self._state is SyncState.ACQUIRING:
            self._window.append(point)
        else:
            early_tol = max(cfg.early_tolerance_s, 3.0 * self.error_bound_at(a))
            if residual < -early_tol:
                self.outliers += 1
                self._late_run.clear()
                self._early_run.append(point)
                if len(self._early_run) >= cfg.relock_after_frames:
                    self._restart_window(self._early_run)
                    self._early_run = []
            elif residual > cfg.jitter_tolerance_s:
                self.outliers += 1
                self._early_run.clear()
                self._late_run.append((point, residual))
                self._window.append(point)
                if len(self._late_run) >= cfg.relock_after_frames:
                    spread = [r for _, r in self._late_run]
                    if max(spread) - min(spread) <= 2.0 * cfg.jitter_tolerance_s:
                        self._restart_window([pt for pt, _ in self._late_run])
                    self._late_run = []
            else:
                self._early_run.clear()
                self._late_run.clear()
                self._window.append(point)
        self._refit()
        self._after_accept(frame, a, wall_at, events)
        self._commit(a, u_now)
        if self._state in (SyncState.FREE_RUNNING, SyncState.LOST):
            self._regain_error = self._last_shift
            self._transition("frame")
            self._regained(a, events)

    def _restart_window(self, points: list[_Point]) -> None:
        """The timeline moved: refit from these recent points only (rate is kept)."""
        self.reanchors += 1
        self._window.clear()
        self._window.extend(points)

    def _after_accept(
        self,
        frame: BeatFrame,
        a: float,
        wall_at: float | None,
        events: list[SyncEvent],
    ) -> None:
        """Bookkeeping common to every accepted frame: counters, bars, wall, lock."""
        key = (frame.beat_index, PHASES.index(frame.phase))
        self.frames_accepted += 1
        self._since_reset += 1
        self._remember(key)
        prev_beat = self._latest[0] if self._since_reset > 1 else None
        self._latest = max(self._latest, key) if self._since_reset > 1 else key
        self._last_arrival = max(self._last_arrival, a)
        self._learn_bar(frame, prev_beat)
        if wall_at is not None:
            self._learn_wall(frame, a, wall_at)
            self._update_wall_bias()
        if self._state is SyncState.ACQUIRING and self._since_reset >= self._cfg.lock_after_frames:
            self._transition("locked")
            self._regained(a, events)

    def _regained(self, at: float, events: list[SyncEvent]) -> None:
        if self._lost_reported and self._state is SyncState.LOCKED:
            self._lost_reported = False
            events.append(SyncRegained(at, self._regain_error))

    def _add_segment(self, beat: int, bpm: float) -> None:
        if self._seg_beat and beat <= self._seg_beat[-1]:
            # The same beat announced again with another tempo: the later word wins.
            self._seg_bpm[-1] = bpm
            self._window = deque(
                ((k, p, a, self._u(k, p)) for k, p, a, _ in self._window),
                maxlen=self._cfg.filter_window_frames,
            )
            return
        u = self._u(beat, 0)
        self._seg_beat.append(beat)
        self._seg_bpm.append(bpm)
        self._seg_u.append(u)
        if len(self._seg_beat) > _MAX_SEGMENTS:
            del self._seg_beat[0], self._seg_bpm[0], self._seg_u[0]

    # ----------------------------------------------------------------- bars and windows

    def _learn_bar(self, frame: BeatFrame, prev_beat: int | None) -> None:
        """Learn bars from downbeat flags and window changes (``prev_beat``: the latest
        beat accepted before this frame, None on a fresh timeline)."""
        k = frame.beat_index
        current = self._window_id
        changed = current is not None and frame.window_id != current[1] and k >= current[0]
        # A window changes only at a bar line; if we saw the beat before, this is it.
        downbeat = frame.downbeat or (changed and prev_beat == k - 1)
        if k not in self._known_downbeat:
            self._known_downbeat[k] = downbeat
            if len(self._known_downbeat) > _SEEN_KEYS:
                del self._known_downbeat[next(iter(self._known_downbeat))]
        last = self._last_downbeat
        if downbeat and (last is None or k > last):
            if last is not None:
                diff = k - last
                # A multiple of the known length means downbeats were lost, not a new bar.
                if self._bar_len is None or diff % self._bar_len != 0:
                    self._bar_len = diff
            self._last_downbeat = k
        elif (
            not downbeat
            and self._bar_len is not None
            and last is not None
            and k > last
            and (k - last) % self._bar_len == 0
        ):
            self._bar_len = None  # the bar changed length: learn it again
        if current is None or changed:
            start = k
            position = self.bar_position(k)
            if not downbeat and position is not None:
                start = k - position
                if current is not None and start <= current[0]:
                    start = k
            self._window_id = (start, frame.window_id)
            self._new_windows.append(NewWindow(start, frame.window_id, self._start((start, 0))))

    def _window_for(self, beat: int) -> str | None:
        if self._window_id is None:
            return None
        start, wid = self._window_id
        if beat < start:
            return None
        if self._bar_len is not None and self._last_downbeat is not None:
            bar_start = start + (self._last_downbeat - start) % self._bar_len
            nxt = bar_start + self._bar_len if bar_start <= start else bar_start
            if beat >= nxt:
                return None
        return wid

    def _flush_windows(self, events: list[SyncEvent]) -> None:
        keep: list[NewWindow] = []
        for w in self._new_windows:
            if w.beat_index <= self._cursor[0]:
                events.append(w)
            else:
                keep.append(w)
        self._new_windows = keep

    # ----------------------------------------------------------------- wall clock

    def _learn_wall(self, frame: BeatFrame, a: float, wall_at: float) -> None:
        cfg = self._cfg
        offset = wall_at - a
        if self._wall_last is not None:
            last_offset, last_a = self._wall_last
            if abs(offset - last_offset) > cfg.wall_step_s + _NTP_SLEW * abs(a - last_a):
                self.wall_steps += 1
                self._wall_samples.clear()
                self._wall_trusted = False
                if self._wall_bias is not None:
                    self._wall_frozen = True
        self._wall_last = (offset, a)
        sent = frame.deadline_at.timestamp() - frame.phase_seconds
        self._wall_samples.append((frame.beat_index, PHASES.index(frame.phase), a, wall_at - sent))

    def _update_wall_bias(self) -> None:
        cfg = self._cfg
        if cfg.trust_wall_clock is False or (self._wall_frozen and cfg.trust_wall_clock is None):
            return
        samples = list(self._wall_samples)
        if len(samples) < cfg.wall_trust_frames:
            return
        biases = [d - (a - self._env(self._u(k, p))) for k, p, a, d in samples]
        low, high = min(biases), max(biases)
        plausible = (
            low >= -cfg.wall_consistency_s
            and high <= cfg.wall_max_bias_s
            and high - low <= cfg.wall_consistency_s
        )
        if cfg.trust_wall_clock or plausible:
            self._wall_bias = _median(biases)
            self._wall_bias_spread = high - low
            self._wall_trusted = True
        else:
            self._wall_trusted = False

    # ----------------------------------------------------------------- states

    def _transition(self, trigger: str) -> None:
        nxt = _TRANSITIONS.get((self._state, trigger))
        if nxt is not None:
            self._state = nxt

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
            self._transition("silent")
        if self._state is not SyncState.LOST and now >= lost_at:
            self._transition("lost")
            self._lost_reported = True
            events.append(SyncLost(lost_at, lost_at - self._last_arrival))
        return events
