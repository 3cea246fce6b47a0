"""The load policy, :class:`Guard`: samples and history in, a verdict and each beat's
admission out (see the package doc for how it decides)."""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from edge.guard.config import GuardConfig
from edge.guard.hysteresis import Hysteresis
from edge.guard.values import (
    _SEVERITY,
    _STEP_DOWN,
    REASON_DISABLED,
    REASON_OK,
    REASON_RECOVERING,
    SHED_DECIMATED,
    SHED_ESSENTIAL_ONLY,
    SHED_INVALID,
    SHED_LEVEL,
    SHED_OVER_BUDGET,
    SHED_QUEUE_FULL,
    SHED_TOO_LATE,
    Admission,
    C,
    Candidate,
    Level,
    Sample,
    Verdict,
)

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

    def __init__(self, config: GuardConfig = GuardConfig()) -> None:  # noqa: B008 (frozen)
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
