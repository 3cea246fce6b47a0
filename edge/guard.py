"""The load guard: machine samples and the runner's own history in, a verdict and a plan out.

Theory of operation
-------------------
A Raspberry Pi runs hot, shares its CPU with other services and has little memory. The
agent's one promise is that *essential* actions fire on time; everything else is optional.
The guard protects that promise in three layers, from mild to drastic:

1. **Admission (every beat).** In the plan phase the runner offers the beat's candidates
   (:class:`Candidate`, i.e. ``edge.score.ScheduledAction``). The guard learns how long each
   action really takes (an asymmetric EWMA per action name, seeded with the configured
   ``cost_s``: overruns are learned fast, speed-ups slowly, because under-estimating costs a
   deadline while over-estimating only costs idle time). Essential work is always admitted
   and its cost reserved first; then, by highest priority and earliest deadline, only the
   optional work that still fits in ``phase_seconds * target_utilisation`` (the guide's
   80% rule). An action shed for its estimate drifts back toward its configured cost, so
   one slow outlier cannot starve it for good. The per-beat queue is bounded
   (``queue_bound``); the overflow is rejected and counted.

2. **Progressive backoff (every beat).** When a beat ends with deadline misses while the
   miss rate over the recent window is above ``backoff_miss_rate``, the budget for
   non-essential work is multiplied by ``backoff_factor`` (0.8, as the guide says), down to
   ``min_work_factor``. Each run of ``recovery_beats`` clean beats adds ``recovery_step``
   back, up to 1.0: multiplicative decrease, additive increase, so it backs off quickly and
   recovers gradually. While backing off, non-essential actions are also *decimated*: each
   runs only every ``decimate_every``-th beat, staggered by a stable hash of its name so the
   remaining work is spread over the beats instead of piling onto the same one. Essential
   work is never touched by the budget, backoff or decimation: only the SHED level stops it.

3. **Levels (graceful degradation).** Conditions latch with hysteresis: each raises when its
   value goes *above* ``*_enter`` and clears only when it falls to ``*_exit`` or below. The
   most severe raised condition sets the level:

   ============================  ==========  ====================================
   condition (reason code)       level       signal
   ============================  ==========  ====================================
   ``temperature_critical``      SHED        SoC temperature, deg C
   ``memory_critical``           SHED        system memory in use, percent
   ``throttled``                 ESSENTIAL   firmware flags & ``throttle_mask``
   ``temperature_high``          ESSENTIAL   SoC temperature, deg C
   ``memory_high``               ESSENTIAL   system memory in use, percent
   ``swap_high``                 ESSENTIAL   swap in use, percent
   ``cpu_high``                  ESSENTIAL   system CPU, percent (EWMA-smoothed)
   ``miss_rate_high``            ESSENTIAL   missed / fired actions over the window
   ============================  ==========  ====================================

   FULL admits as above; ESSENTIAL_ONLY sheds all non-essential work; SHED admits nothing
   (driving outputs to their safe state is the runner's call, not the guard's). A worse
   level is taken at once. A better one is taken one rung at a time (SHED -> ESSENTIAL ->
   FULL), each rung only after ``recover_hold_s`` without pressure at the current rung, so
   the verdict does not flap. While the level is held above what the conditions ask for,
   the reason is ``"recovering"``.

Readings that are ``None`` (a missing sensor, or one a light sample skipped) leave their
condition as it is; a condition whose signal has been missing for ``stale_after_s`` clears,
so a sensor that vanished while hot cannot hold the agent down for ever. ``miss_rate_high``
needs ``miss_min_actions`` fired actions in the window to raise, but may clear on fewer
(beats where everything was shed count as clean), so it cannot deadlock itself.

With ``enabled = false`` the guard still learns and counts but always answers FULL and
admits every candidate: the same runner code then runs unguarded, for comparisons.

The guard is pure: no clock, no psutil; time enters as ``now`` and samples as values.

Use from the runner, once per beat::

    guard.observe(probe.sample(now, full=...))          # whenever a sample is taken
    plan = guard.admit(beat, score.due(beat, timeline), execute_phase_s, now)  # plan
    ...fire plan.admitted at their times...
    guard.record(action.name, took_s, late_s, missed)     # each fired action
    guard.count_dropped(action.name, reason, missed=...)  # each one that did not run
    guard.end_beat(beat)                                  # review

Only what ran teaches a duration: an action dropped (a busy device, a rate limit, an
isolated pin, a command that could not start, a deadline already passed) took no time
worth learning, and recording it as ~0 s would pull the estimate down exactly when the
device is struggling. ``count_dropped`` counts it by reason instead and, when the drop is
itself a sign of load (``missed=True``), as a missed action in the miss rate.
"""

from __future__ import annotations

import enum
import math
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from edge.errors import ConfigProblems
from edge.settings import Section, check_order, flag, integer, number

# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the machine, as ``edge.probe.Probe`` takes it.

    Every reading is optional: ``None`` means missing (no such sensor, unreadable, or not
    read by a light sample), never zero. Units: percentages 0..100 (``process_cpu_percent``
    is of one CPU, as ``top`` shows it, so it may exceed 100 on several cores), MiB,
    degrees Celsius. ``throttled`` is the raw firmware bit field (Raspberry Pi
    ``get_throttled``). ``at`` is local monotonic seconds; ``cost_s`` what taking the
    sample cost.
    """

    at: float
    cpu_percent: float | None
    process_cpu_percent: float | None
    process_rss_mb: float | None
    memory_percent: float | None
    swap_percent: float | None
    load1: float | None
    temperature_c: float | None
    throttled: int | None
    disk_free_mb: float | None
    cost_s: float


class Level(enum.Enum):
    """How much work the guard lets through, from all of it to none."""

    FULL = "full"
    ESSENTIAL = "essential_only"
    SHED = "shed"


_SEVERITY: Mapping[Level, int] = MappingProxyType(
    {Level.FULL: 0, Level.ESSENTIAL: 1, Level.SHED: 2}
)
# Recovery is one rung at a time: the transition table for getting better.
_STEP_DOWN: Mapping[Level, Level] = MappingProxyType(
    {Level.SHED: Level.ESSENTIAL, Level.ESSENTIAL: Level.FULL, Level.FULL: Level.FULL}
)

#: Reason codes of a verdict, besides the condition names in the module docstring.
REASON_OK = "ok"
REASON_RECOVERING = "recovering"
REASON_DISABLED = "disabled"

#: Reason codes of a shed candidate.
SHED_LEVEL = "level_shed"
SHED_ESSENTIAL_ONLY = "essential_only"
SHED_DECIMATED = "decimated"
SHED_OVER_BUDGET = "over_budget"
SHED_TOO_LATE = "too_late"
SHED_QUEUE_FULL = "queue_full"
SHED_INVALID = "invalid_cost"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer for a beat: a level and the reason code that set it."""

    level: Level
    reason: str


class ActionLike(Protocol):
    """What the guard reads of an action (``edge.score.Action`` matches)."""

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def essential(self) -> bool: ...
    @property
    def cost_s(self) -> float: ...


class Candidate(Protocol):
    """An action due in a beat (``edge.score.ScheduledAction`` matches)."""

    @property
    def beat_index(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def action(self) -> ActionLike: ...


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Admission(Generic[C]):
    """The plan for one beat: what runs (in firing order) and what was shed, with why.

    Generic in the candidate type, so ``admit`` given ``ScheduledAction``s hands back
    ``ScheduledAction``s (the same objects) with no cast.
    """

    admitted: tuple[C, ...]
    shed: tuple[tuple[C, str], ...]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Guard thresholds; the defaults suit a Raspberry Pi 4/5 that shares its CPU.

    ``*_enter`` / ``*_exit`` pairs form hysteresis bands (raise above enter, clear at or
    below exit; exit < enter). Temperatures follow the Pi firmware, which starts soft
    throttling at 80 deg C and hard throttling at 85. ``throttle_mask`` selects the
    "happening now" bits of ``get_throttled`` (under-voltage, frequency capped, throttled,
    soft temperature limit); the sticky "has happened" bits 16-19 are ignored by default.
    """

    enabled: bool = True
    cpu_enter: float = 85.0
    cpu_exit: float = 70.0
    #: weight of the newest CPU reading in its EWMA (1.0 = no smoothing).
    cpu_smoothing: float = 0.5
    memory_enter: float = 85.0
    memory_exit: float = 75.0
    memory_critical_enter: float = 95.0
    memory_critical_exit: float = 90.0
    swap_enter: float = 80.0
    swap_exit: float = 60.0
    temperature_enter: float = 80.0
    temperature_exit: float = 75.0
    temperature_critical_enter: float = 85.0
    temperature_critical_exit: float = 80.0
    throttle_mask: int = 0x000F
    miss_rate_enter: float = 0.05
    miss_rate_exit: float = 0.02
    miss_min_actions: int = 10
    #: beats in the sliding window the miss rate is taken over.
    window_beats: int = 20
    backoff_miss_rate: float = 0.02
    backoff_factor: float = 0.8
    min_work_factor: float = 0.1
    recovery_step: float = 0.1
    recovery_beats: int = 3
    decimate_every: int = 2
    target_utilisation: float = 0.8
    queue_bound: int = 64
    recover_hold_s: float = 5.0
    stale_after_s: float = 60.0
    estimate_alpha_up: float = 0.5
    estimate_alpha_down: float = 0.1


#: The range every key of GuardConfig must lie in; percentages are 0..100, rates 0..1.
_SECTION = Section(
    GuardConfig,
    (
        flag("enabled"),
        number("cpu_enter", 0.0, 100.0),
        number("cpu_exit", 0.0, 100.0),
        number("cpu_smoothing", 0.0, 1.0, low_inclusive=False),
        number("memory_enter", 0.0, 100.0),
        number("memory_exit", 0.0, 100.0),
        number("memory_critical_enter", 0.0, 100.0),
        number("memory_critical_exit", 0.0, 100.0),
        number("swap_enter", 0.0, 100.0),
        number("swap_exit", 0.0, 100.0),
        number("temperature_enter", -40.0, 150.0),
        number("temperature_exit", -40.0, 150.0),
        number("temperature_critical_enter", -40.0, 150.0),
        number("temperature_critical_exit", -40.0, 150.0),
        integer("throttle_mask", 0, 0xFFFFFFFF),
        number("miss_rate_enter", 0.0, 1.0),
        number("miss_rate_exit", 0.0, 1.0),
        integer("miss_min_actions", 1, 1_000_000),
        integer("window_beats", 1, 100_000),
        number("backoff_miss_rate", 0.0, 1.0),
        number("backoff_factor", 0.0, 1.0, low_inclusive=False),
        number("min_work_factor", 0.0, 1.0, low_inclusive=False),
        number("recovery_step", 0.0, 1.0, low_inclusive=False),
        integer("recovery_beats", 1, 100_000),
        integer("decimate_every", 1, 100_000),
        number("target_utilisation", 0.0, 1.0, low_inclusive=False),
        integer("queue_bound", 1, 1_000_000),
        number("recover_hold_s", 0.0, 86_400.0),
        number("stale_after_s", 0.0, 86_400.0, low_inclusive=False),
        number("estimate_alpha_up", 0.0, 1.0, low_inclusive=False),
        number("estimate_alpha_down", 0.0, 1.0, low_inclusive=False),
    ),
)
_BANDS: tuple[tuple[str, str], ...] = (
    ("cpu_enter", "cpu_exit"),
    ("memory_enter", "memory_exit"),
    ("memory_critical_enter", "memory_critical_exit"),
    ("swap_enter", "swap_exit"),
    ("temperature_enter", "temperature_exit"),
    ("temperature_critical_enter", "temperature_critical_exit"),
    ("miss_rate_enter", "miss_rate_exit"),
)


def parse_guard(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "guard"
) -> GuardConfig:
    """Build a :class:`GuardConfig` from the ``[guard]`` TOML table.

    Every problem (unknown key, wrong type, out of range, an exit threshold not below its
    enter threshold, a critical band below its high band) is added to ``problems`` with its
    place (``guard.cpu_enter``), worded as :mod:`edge.settings` words them; a bad key keeps
    its default, and a band whose exit is not below its enter falls back to the default
    band. Never raises.
    """
    config = _SECTION.read(raw, problems, where)
    defaults = GuardConfig()
    for enter, leave in _BANDS:
        if not check_order(config, leave, enter, problems, where, strict=True, blame="lower"):
            config = replace(
                config, **{enter: getattr(defaults, enter), leave: getattr(defaults, leave)}
            )
    for band, critical in (
        ("memory_enter", "memory_critical_enter"),
        ("temperature_enter", "temperature_critical_enter"),
    ):
        check_order(config, band, critical, problems, where, strict=False, blame="upper")
    return config


# --------------------------------------------------------------------------- hysteresis


class Hysteresis:
    """A latch on one signal: raises above ``enter``, clears at or below ``leave``.

    ``update(None, at)`` keeps the state; once no value has been seen for ``stale_after_s``
    the latch clears. ``update`` returns whether the state changed.
    """

    __slots__ = ("active", "enter", "leave", "seen_at", "stale_after_s")

    def __init__(self, enter: float, leave: float, stale_after_s: float = math.inf) -> None:
        self.enter = enter
        self.leave = leave
        self.stale_after_s = stale_after_s
        self.active = False
        self.seen_at: float | None = None

    def update(self, value: float | None, at: float, may_raise: bool = True) -> bool:
        before = self.active
        if value is None or math.isnan(value):
            if self.active and self.seen_at is not None and at - self.seen_at >= self.stale_after_s:
                self.active = False
            return self.active != before
        self.seen_at = at
        if self.active:
            if value <= self.leave:
                self.active = False
        elif value > self.enter and may_raise:
            self.active = True
        return self.active != before


# --------------------------------------------------------------------------- the guard


@dataclass(slots=True)
class _BeatTally:
    actions: int = 0
    misses: int = 0


class Guard:
    """The load policy. See the module docstring for how it decides.

    Call order each beat: ``observe`` (whenever a sample is taken), ``admit`` in the plan
    phase (it calls ``advance``), ``record`` once per fired action, ``end_beat`` in review.
    The inputs and ``advance`` change the guard; ``verdict`` and the counters only read.
    Nothing here raises on bad numbers: a non-finite or negative duration is ignored and
    counted in ``invalid_records``.
    """

    def __init__(self, config: GuardConfig = GuardConfig()) -> None:
        c = config
        self.config = config
        stale = c.stale_after_s
        # Order matters: it breaks ties between conditions of the same severity.
        self._latches: dict[str, tuple[Level, Hysteresis]] = {
            "temperature_critical": (
                Level.SHED,
                Hysteresis(c.temperature_critical_enter, c.temperature_critical_exit, stale),
            ),
            "memory_critical": (
                Level.SHED,
                Hysteresis(c.memory_critical_enter, c.memory_critical_exit, stale),
            ),
            "throttled": (Level.ESSENTIAL, Hysteresis(0.0, 0.0, stale)),
            "temperature_high": (
                Level.ESSENTIAL,
                Hysteresis(c.temperature_enter, c.temperature_exit, stale),
            ),
            "memory_high": (Level.ESSENTIAL, Hysteresis(c.memory_enter, c.memory_exit, stale)),
            "swap_high": (Level.ESSENTIAL, Hysteresis(c.swap_enter, c.swap_exit, stale)),
            "cpu_high": (Level.ESSENTIAL, Hysteresis(c.cpu_enter, c.cpu_exit, stale)),
            "miss_rate_high": (
                Level.ESSENTIAL,
                Hysteresis(c.miss_rate_enter, c.miss_rate_exit),
            ),
        }
        self._cpu_ewma: float | None = None
        self._level = Level.FULL
        self._reason = REASON_DISABLED if not c.enabled else REASON_OK
        self._pressed_at: float | None = None
        self._estimates: dict[str, float] = {}
        self._beat = _BeatTally()
        self._window: deque[_BeatTally] = deque(maxlen=c.window_beats)
        self._last_closed: int | None = None
        self._work_factor = 1.0
        self._clean_streak = 0
        self._shed: dict[str, int] = {}
        self._rejected = 0
        self._verdict_changes = 0
        self._backoffs = 0
        self._invalid_records = 0
        self._dropped: dict[str, int] = {}
        self._last_sample: Sample | None = None

    # ----------------------------------------------------------------- inputs

    def observe(self, sample: Sample) -> None:
        """Take a machine sample: update each condition's latch (``None`` keeps it)."""
        c = self.config
        self._last_sample = sample
        at = sample.at
        cpu = sample.cpu_percent
        if cpu is not None and math.isfinite(cpu):
            prev = self._cpu_ewma
            self._cpu_ewma = cpu if prev is None else prev + c.cpu_smoothing * (cpu - prev)
            cpu = self._cpu_ewma
        throttled = None
        if sample.throttled is not None:
            throttled = 1.0 if sample.throttled & c.throttle_mask else 0.0
        readings: dict[str, float | None] = {
            "temperature_critical": sample.temperature_c,
            "memory_critical": sample.memory_percent,
            "throttled": throttled,
            "temperature_high": sample.temperature_c,
            "memory_high": sample.memory_percent,
            "swap_high": sample.swap_percent,
            "cpu_high": cpu,
        }
        for name, value in readings.items():
            self._latches[name][1].update(value, at)

    def record(self, name: str, duration_s: float, late_s: float, missed: bool) -> None:
        """Record one fired action: learn its duration, count it (and a miss) in this beat.

        ``late_s`` is accepted for symmetry with the metrics; lateness that mattered shows
        up as ``missed``.
        """
        del late_s
        self._beat.actions += 1
        if missed:
            self._beat.misses += 1
        if not math.isfinite(duration_s) or duration_s < 0:
            self._invalid_records += 1
            return
        prev = self._estimates.get(name)
        if prev is None:
            self._estimates[name] = duration_s
            return
        c = self.config
        alpha = c.estimate_alpha_up if duration_s > prev else c.estimate_alpha_down
        self._estimates[name] = prev + alpha * (duration_s - prev)

    def count_dropped(self, name: str, reason: str, *, missed: bool = False) -> None:
        """Count an action that did not run, by ``reason``, learning nothing of its cost.

        With ``missed`` it also counts in this beat as an action that missed its deadline,
        so the miss rate, backoff and ``miss_rate_high`` see it: pass it when the drop
        means load (a command device still busy with earlier runs) or a deadline passed.
        Without it the drop is only counted (``dropped``): a rate limit or an isolated pin
        is the device's rule or fault, not load, and neither raises nor dilutes the miss
        rate. ``name`` is accepted so the runner can hand every outcome the same way.
        """
        del name
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        if missed:
            self._beat.actions += 1
            self._beat.misses += 1

    def end_beat(self, beat_index: int) -> None:
        """Close the beat: slide the miss-rate window, back off or recover the work factor.

        Closing a beat index that is not after the last one closed is ignored (the tallies
        then carry into the next beat), so a repeated call cannot double-count.
        """
        if self._last_closed is not None and beat_index <= self._last_closed:
            return
        self._last_closed = beat_index
        beat, self._beat = self._beat, _BeatTally()
        self._window.append(beat)
        c = self.config
        rate = self.miss_rate()
        enough = sum(b.actions for b in self._window) >= c.miss_min_actions
        # The miss-rate latch is keyed by beat, not time: it never goes stale.
        self._latches["miss_rate_high"][1].update(rate, float(beat_index), may_raise=enough)
        if beat.misses and rate > c.backoff_miss_rate:
            self._work_factor = max(c.min_work_factor, self._work_factor * c.backoff_factor)
            self._clean_streak = 0
            self._backoffs += 1
        elif beat.misses:
            self._clean_streak = 0
        else:
            self._clean_streak += 1
            if self._work_factor < 1.0 and self._clean_streak >= c.recovery_beats:
                self._work_factor = min(1.0, self._work_factor + c.recovery_step)
                self._clean_streak = 0

    # ----------------------------------------------------------------- answers

    def _target(self) -> tuple[Level, str]:
        level, reason = Level.FULL, REASON_OK
        for name, (cond_level, latch) in self._latches.items():
            if latch.active and _SEVERITY[cond_level] > _SEVERITY[level]:
                level, reason = cond_level, name
        return level, reason

    @property
    def verdict(self) -> Verdict:
        """The level and reason the last :meth:`advance` gave (``FULL``/``ok`` before any).

        A read: it changes nothing, so a view may call it as often as it likes.
        """
        return Verdict(self._level, self._reason)

    def advance(self, now: float) -> Verdict:
        """Move the level toward what the conditions ask for at ``now``; return the verdict.

        The step: worse levels apply at once; better ones one rung per ``recover_hold_s``
        of calm, counted from the last call that saw pressure. ``verdict_changes`` counts
        level changes. The runner calls it when it plans (through :meth:`admit`) and when
        it reviews a beat; anything that only shows the level reads :attr:`verdict`.
        """
        if not self.config.enabled:
            return Verdict(Level.FULL, REASON_DISABLED)
        target, reason = self._target()
        current = self._level
        if _SEVERITY[target] >= _SEVERITY[current]:
            self._pressed_at = now
            if target != current:
                self._verdict_changes += 1
            self._level, self._reason = target, reason
        elif self._pressed_at is None or now - self._pressed_at >= self.config.recover_hold_s:
            step = _STEP_DOWN[current]
            if _SEVERITY[step] <= _SEVERITY[target]:
                self._level, self._reason = target, reason
            else:
                self._level, self._reason = step, REASON_RECOVERING
            self._verdict_changes += 1
            self._pressed_at = now
        else:
            self._reason = REASON_RECOVERING
        return Verdict(self._level, self._reason)

    def estimate(self, name: str, default_cost_s: float) -> float:
        """The learned duration of action ``name`` (``default_cost_s`` until it has run)."""
        return self._estimates.get(name, default_cost_s)

    def miss_rate(self) -> float:
        """Missed / fired actions over the closed beats of the window (0.0 with none)."""
        actions = sum(b.actions for b in self._window)
        if actions == 0:
            return 0.0
        return sum(b.misses for b in self._window) / actions

    def admit(
        self,
        beat_index: int,
        candidates: Sequence[C],
        phase_seconds: float,
        now: float,
    ) -> Admission[C]:
        """Choose which of a beat's candidates run; see the module docstring.

        Candidates are taken essential first, then by highest ``priority``, earliest
        ``deadline``, earliest ``at``, name. Beyond ``queue_bound`` they are rejected
        (``queue_full``). At SHED nothing is admitted (``level_shed``); at ESSENTIAL_ONLY
        non-essential work is shed (``essential_only``). Essential work is otherwise always
        admitted, even over budget or late (late beats never), and its learned cost is
        reserved first. Non-essential work then passes decimation while backing off
        (``decimated``), must be able to finish by its deadline (``too_late``), must have a
        finite non-negative cost (``invalid_cost``) and must fit in what is left of
        ``phase_seconds * target_utilisation * work_factor`` (``over_budget``).
        ``admitted`` comes back sorted by ``at`` (then priority), ready to fire.
        """
        c = self.config
        ordered = sorted(candidates, key=_admission_key)
        if not c.enabled:
            return Admission(tuple(sorted(ordered, key=_firing_key)), ())
        verdict = self.advance(now)
        admitted: list[C] = []
        shed: list[tuple[C, str]] = []
        budget = max(0.0, phase_seconds) * c.target_utilisation
        optional_budget = budget * self._work_factor
        decimating = self._work_factor < 1.0 and c.decimate_every > 1
        used = 0.0
        for position, cand in enumerate(ordered):
            action = cand.action
            if position >= c.queue_bound:
                self._rejected += 1
                shed.append((cand, SHED_QUEUE_FULL))
                continue
            if verdict.level is Level.SHED:
                shed.append((cand, SHED_LEVEL))
                continue
            if not action.essential and verdict.level is Level.ESSENTIAL:
                shed.append((cand, SHED_ESSENTIAL_ONLY))
                continue
            seed = action.cost_s
            if not math.isfinite(seed) or seed < 0:
                if not action.essential:
                    shed.append((cand, SHED_INVALID))
                    continue
                seed = 0.0
            cost = self._estimates.setdefault(action.name, seed)
            if not action.essential:
                if decimating and (beat_index + _stagger(action.name)) % c.decimate_every:
                    shed.append((cand, SHED_DECIMATED))
                    continue
                if max(cand.at, now) + cost > cand.deadline:
                    shed.append((cand, SHED_TOO_LATE))
                    self._forget(action.name, seed)
                    continue
                if used + cost > optional_budget:
                    shed.append((cand, SHED_OVER_BUDGET))
                    self._forget(action.name, seed)
                    continue
            used += cost
            admitted.append(cand)
        for _, reason in shed:
            self._shed[reason] = self._shed.get(reason, 0) + 1
        admitted.sort(key=_firing_key)
        return Admission(tuple(admitted), tuple(shed))

    def _forget(self, name: str, seed: float) -> None:
        # An action shed for its estimate never runs, so it could never prove the estimate
        # wrong: one slow outlier would starve it for good. Each such shed moves the
        # estimate back toward the configured cost, so it gets another chance.
        est = self._estimates[name]
        if est > seed:
            self._estimates[name] = est + self.config.estimate_alpha_down * (seed - est)

    def batch_size(self, name: str, default_cost_s: float, phase_seconds: float) -> int:
        """How many runs of ``name`` fit in a phase at the target utilisation and work factor.

        The guide's batch sizing: ``floor(phase * utilisation * work_factor / estimate)``,
        at most ``queue_bound`` (and ``queue_bound`` for a free action).
        """
        c = self.config
        cost = self.estimate(name, default_cost_s)
        budget = max(0.0, phase_seconds) * c.target_utilisation * self._work_factor
        if cost <= 0 or not math.isfinite(cost):
            return c.queue_bound
        return min(c.queue_bound, math.floor(budget / cost + 1e-9))

    # ----------------------------------------------------------------- counters

    @property
    def shed(self) -> Mapping[str, int]:
        """Candidates shed so far, by shed reason code."""
        return MappingProxyType(dict(self._shed))

    @property
    def rejected(self) -> int:
        """Candidates rejected because the per-beat queue was full."""
        return self._rejected

    @property
    def verdict_changes(self) -> int:
        """How many times the level has changed."""
        return self._verdict_changes

    @property
    def work_factor(self) -> float:
        """Share of the budget non-essential work may use now (1.0 = no backoff)."""
        return self._work_factor

    @property
    def backoffs(self) -> int:
        """How many times the work factor was cut."""
        return self._backoffs

    @property
    def dropped(self) -> Mapping[str, int]:
        """Actions counted by :meth:`count_dropped`, by reason."""
        return MappingProxyType(dict(self._dropped))

    @property
    def invalid_records(self) -> int:
        """Durations passed to :meth:`record` that were negative or not finite."""
        return self._invalid_records

    @property
    def level(self) -> Level:
        """The level given by the last :meth:`advance` (as :attr:`verdict` has it)."""
        return self._level

    @property
    def active_conditions(self) -> tuple[str, ...]:
        """Names of the conditions latched now, most severe first."""
        return tuple(
            name
            for name, (level, latch) in sorted(
                self._latches.items(), key=lambda item: -_SEVERITY[item[1][0]]
            )
            if latch.active
        )

    @property
    def last_sample(self) -> Sample | None:
        """The last sample observed, if any."""
        return self._last_sample


def _admission_key(cand: Candidate) -> tuple[bool, int, float, float, str]:
    action = cand.action
    return (not action.essential, -action.priority, cand.deadline, cand.at, action.name)


def _firing_key(cand: Candidate) -> tuple[float, int, str]:
    return (cand.at, -cand.action.priority, cand.action.name)


def _stagger(name: str) -> int:
    # A stable hash (Python's hash() is salted per process), so a given action keeps its
    # slot across restarts and different actions land on different beats.
    return zlib.crc32(name.encode("utf-8"))
