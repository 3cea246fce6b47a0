"""Tempo metrics, alerts and tempo recommendations, as the tempo guide describes them.

Theory of operation
-------------------
:class:`Metrics` keeps a sliding window of the last ``window_beats`` closed beats. The
runner feeds it, all with times on the local monotonic clock:

* ``record_action`` for each fired action (its duration, how late, whether it missed);
  actions belong to the beat that is open until the next ``record_beat``;
* ``record_beat`` once per beat, in review: how long the beat's processing took, the phase
  length it had, whether it finished on time, tasks done, the follower's tempo drift;
* ``record_bytes`` for every BACKBEAT message sent or received (kept in one-second
  buckets over ``window_s``, so memory stays bounded at any message rate);
* ``observe`` for every probe sample.

``snapshot(now)`` condenses these into the guide's :class:`TempoMetrics`. ``check_alerts``
applies the guide's alert rules (processing latency above 90% of the phase, deadline miss
rate above 5%, CPU above 90%) plus memory, temperature and firmware throttling. Each rule
latches with hysteresis (raise above ``*_enter``, clear at or below ``*_exit``), and the
tracker reports an alert once when it starts and once when it clears, so a log line per
change is all a caller has to write.

Tempo recommendations use the guide's three rules, each giving a tempo ceiling in BPM:

* Rule 1, task duration: ``60 / (3 * task_s)`` (a task must fit in one phase);
* Rule 2, coordination: ``60 / sync_interval_s``;
* Rule 3, sustainable: ``60 / (task_s + recovery_s)``;

and its capacity planner (:func:`capacity_tempo`), the minimum of the CPU-, memory- and
I/O-constrained tempos. A recommendation is the minimum of the ceilings that apply,
clamped to the contract's 0.1..1000 BPM and rounded *down* to its 0.1 grid, so it is
always a tempo a Pulse may legally broadcast and never above a ceiling.

Pure: no clock and no psutil; time enters as ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edge.guard import Hysteresis, Sample

MIN_TEMPO_BPM = 0.1
MAX_TEMPO_BPM = 1000.0

# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TempoMetrics:
    """The guide's TempoMetrics over the window, plus what an edge device adds.

    Rates and utilisations are fractions 0..1 (as the guide's alert rules compare them);
    ``None`` means no data (no sample with that reading in the window).
    """

    # Timing
    beat_processing_latency_s: float  # mean processing time of a beat
    phase_completion_rate: float  # beats whose processing finished on time
    deadline_miss_rate: float  # missed / fired actions
    # Resources
    cpu_utilisation: float | None  # mean system CPU over the window's samples
    memory_utilisation: float | None  # mean system memory in use
    network_bandwidth_bps: float  # bytes per second of BACKBEAT traffic
    # Throughput
    tasks_per_beat: float  # mean work completed per beat
    beats_per_second: float  # effective beat processing rate
    tempo_drift_ms: float  # latest drift; positive = behind, negative = ahead
    # Edge additions
    beats: int  # beats in the window
    actions: int  # actions fired in the window
    phase_utilisation: float  # mean of processing / phase length per beat
    latency_max_s: float  # slowest beat in the window
    mean_task_s: float | None  # mean action duration
    temperature_c: float | None  # latest reading
    throttled: int | None  # latest firmware flags


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: ``name`` is stable (``cpu_high``); ``level`` is warning or critical."""

    name: str
    level: str
    message: str
    recommendation: str


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds of the alert rules (fractions 0..1 except temperatures, deg C)."""

    latency_enter: float = 0.9  # of the phase
    latency_exit: float = 0.8
    miss_rate_enter: float = 0.05
    miss_rate_exit: float = 0.02
    cpu_enter: float = 0.9
    cpu_exit: float = 0.8
    memory_enter: float = 0.9
    memory_exit: float = 0.8
    temperature_enter: float = 80.0
    temperature_exit: float = 75.0
    temperature_critical_enter: float = 85.0
    temperature_critical_exit: float = 80.0
    throttle_mask: int = 0x000F


# name -> (level, message, recommendation); messages take the measured value.
_ALERTS: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        "latency_high": (
            "warning",
            "Beat processing approaching deadline: {:.0%} of the phase",
            "Consider reducing tempo or optimizing processing",
        ),
        "miss_rate_high": (
            "critical",
            "High deadline miss rate: {:.1%}",
            "Reduce tempo immediately or scale resources",
        ),
        "cpu_high": (
            "warning",
            "High CPU utilization: {:.0%}",
            "Scale up or reduce workload per beat",
        ),
        "memory_high": (
            "warning",
            "High memory utilization: {:.0%}",
            "Reduce workload per beat or free memory on the device",
        ),
        "temperature_high": (
            "warning",
            "SoC temperature high: {:.1f} C",
            "Improve cooling or reduce workload; the firmware throttles at 80 C",
        ),
        "temperature_critical": (
            "critical",
            "SoC temperature critical: {:.1f} C",
            "Shed work now and check the cooling; the firmware hard-throttles at 85 C",
        ),
        "throttled": (
            "warning",
            "Firmware reports throttling: flags 0x{:x}",
            "Check the power supply (under-voltage) and cooling; expect slower actions",
        ),
    }
)


# --------------------------------------------------------------------------- tempo rules


def task_duration_tempo(task_s: float) -> float:
    """Rule 1: the highest tempo at which a ``task_s`` task fits in one phase (inf if free)."""
    return math.inf if task_s <= 0 else 60.0 / (3.0 * task_s)


def coordination_tempo(sync_interval_s: float) -> float:
    """Rule 2: the tempo that gives one beat per desired sync interval."""
    return math.inf if sync_interval_s <= 0 else 60.0 / sync_interval_s


def sustainable_tempo(task_s: float, recovery_s: float) -> float:
    """Rule 3: the tempo at which a task plus its recovery time fits in one beat."""
    total = task_s + recovery_s
    return math.inf if total <= 0 else 60.0 / total


def clamp_tempo(bpm: float) -> float:
    """Clamp to 0.1..1000 BPM and round down onto the 0.1 grid (``inf`` gives 1000).

    Raises ``ValueError`` for NaN.
    """
    if math.isnan(bpm):
        raise ValueError("tempo_bpm must be a number, got nan")
    bounded = min(MAX_TEMPO_BPM, max(MIN_TEMPO_BPM, bpm))
    # The epsilon keeps 0.3 computed as 0.29999999999999993 on 0.3, not 0.2.
    tenths = math.floor(bounded * 10.0 + 1e-9)
    return max(1, tenths) / 10.0


def recommend_tempo(
    task_s: float | None = None,
    sync_interval_s: float | None = None,
    recovery_s: float | None = None,
) -> float | None:
    """The guide's recommendation: the lowest ceiling of the rules that apply.

    Rule 1 applies with ``task_s``, rule 2 with ``sync_interval_s``, rule 3 with both
    ``task_s`` and ``recovery_s``. ``None`` when no rule applies. Clamped and rounded down
    by :func:`clamp_tempo`.
    """
    ceilings: list[float] = []
    if task_s is not None:
        ceilings.append(task_duration_tempo(task_s))
        if recovery_s is not None:
            ceilings.append(sustainable_tempo(task_s, recovery_s))
    if sync_interval_s is not None:
        ceilings.append(coordination_tempo(sync_interval_s))
    if not ceilings:
        return None
    return clamp_tempo(min(ceilings))


@dataclass(frozen=True, slots=True)
class CapacityProfile:
    """What a beat costs and what the device can give, for :func:`capacity_tempo`.

    Each constraint applies only when both of its numbers are given.

    * CPU: ``cpu_s_per_beat`` of CPU time per beat must fit in one phase (the guide's
      ``60 / (CPUTime * 3)``).
    * Memory: the guide's ``Memory / MemoryPerBeat``, read as beats per minute:
      ``memory_mb_per_minute`` is the allocation the device can sustain per minute.
    * I/O: the guide divides IOPS by I/O per beat, which gives beats per *second*; here it
      is multiplied by 60 so that every constraint is in BPM.
    """

    cpu_s_per_beat: float | None = None
    memory_mb_per_beat: float | None = None
    memory_mb_per_minute: float | None = None
    io_ops_per_beat: float | None = None
    iops: float | None = None


def capacity_tempo(profile: CapacityProfile) -> float | None:
    """The capacity planner: min of the CPU-, memory- and I/O-constrained tempos.

    Clamped and rounded down by :func:`clamp_tempo`; ``None`` when no constraint applies.
    """
    ceilings: list[float] = []
    if profile.cpu_s_per_beat is not None:
        ceilings.append(task_duration_tempo(profile.cpu_s_per_beat))
    if profile.memory_mb_per_beat is not None and profile.memory_mb_per_minute is not None:
        per_beat = profile.memory_mb_per_beat
        ceilings.append(math.inf if per_beat <= 0 else profile.memory_mb_per_minute / per_beat)
    if profile.io_ops_per_beat is not None and profile.iops is not None:
        per_beat = profile.io_ops_per_beat
        ceilings.append(math.inf if per_beat <= 0 else 60.0 * profile.iops / per_beat)
    if not ceilings:
        return None
    return clamp_tempo(min(ceilings))


def adjusted_tempo(current_bpm: float, metrics: TempoMetrics, rate: float = 0.1) -> float:
    """The guide's adaptive tempo controller, one step: slow down or speed up by ``rate``.

    Slower when the miss rate is above 2%; faster when more than 95% of phases complete on
    time and CPU is below 70% (unknown CPU counts as busy); else unchanged. Clamped and
    rounded down to the grid.
    """
    if metrics.deadline_miss_rate > 0.02:
        return clamp_tempo(current_bpm * (1.0 - rate))
    cpu = metrics.cpu_utilisation
    if metrics.phase_completion_rate > 0.95 and cpu is not None and cpu < 0.7:
        return clamp_tempo(current_bpm * (1.0 + rate))
    return clamp_tempo(current_bpm)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class _Beat:
    beat_index: int
    at: float
    phase_seconds: float
    processing_s: float
    on_time: bool
    tasks: int
    drift_ms: float
    actions: int
    misses: int
    task_s_total: float
    timed_actions: int


class Metrics:
    """Sliding-window tempo metrics and the alert tracker. See the module docstring.

    Bad numbers (NaN, negative durations) are dropped and counted in ``invalid``; they never
    poison a mean.
    """

    def __init__(
        self, window_beats: int = 60, rules: AlertRules = AlertRules(), window_s: float = 60.0
    ) -> None:
        if window_beats < 1:
            raise ValueError(f"window_beats must be at least 1, got {window_beats}")
        if not window_s > 0:
            raise ValueError(f"window_s must be above 0, got {window_s}")
        self.rules = rules
        self.window_beats = window_beats
        self.window_s = window_s
        self._beats: deque[_Beat] = deque(maxlen=window_beats)
        self._samples: deque[Sample] = deque(maxlen=window_beats)
        self._open_actions = 0
        self._open_misses = 0
        self._open_task_s = 0.0
        self._open_timed = 0
        self._bytes: deque[list[float]] = deque()  # [second, bytes]
        self._bytes_since: float | None = None
        self._temperature: float | None = None
        self._throttled: int | None = None
        self._invalid = 0
        r = rules
        self._latches: dict[str, Hysteresis] = {
            "latency_high": Hysteresis(r.latency_enter, r.latency_exit),
            "miss_rate_high": Hysteresis(r.miss_rate_enter, r.miss_rate_exit),
            "cpu_high": Hysteresis(r.cpu_enter, r.cpu_exit),
            "memory_high": Hysteresis(r.memory_enter, r.memory_exit),
            "temperature_high": Hysteresis(r.temperature_enter, r.temperature_exit),
            "temperature_critical": Hysteresis(
                r.temperature_critical_enter, r.temperature_critical_exit
            ),
            "throttled": Hysteresis(0.0, 0.0),
        }
        self._active: dict[str, Alert] = {}

    # ----------------------------------------------------------------- inputs

    def record_action(
        self, name: str, duration_s: float, late_s: float, missed: bool, now: float
    ) -> None:
        """One fired action, counted in the beat open now. ``name`` and ``late_s`` are
        accepted so the runner can hand the same outcome to the guard and here."""
        del name, late_s, now
        self._open_actions += 1
        if missed:
            self._open_misses += 1
        if math.isfinite(duration_s) and duration_s >= 0:
            self._open_task_s += duration_s
            self._open_timed += 1
        else:
            self._invalid += 1

    def record_beat(
        self,
        beat_index: int,
        phase_seconds: float,
        processing_s: float,
        completed_on_time: bool,
        tasks: int,
        tempo_drift_ms: float,
        now: float,
    ) -> None:
        """Close a beat: its processing time against its phase length, and its actions."""
        good = (
            math.isfinite(phase_seconds)
            and phase_seconds > 0
            and math.isfinite(processing_s)
            and processing_s >= 0
        )
        if not good:
            self._invalid += 1
            phase_seconds = phase_seconds if math.isfinite(phase_seconds) else 0.0
            processing_s = 0.0
        if not math.isfinite(tempo_drift_ms):
            self._invalid += 1
            tempo_drift_ms = 0.0
        self._beats.append(
            _Beat(
                beat_index=beat_index,
                at=now,
                phase_seconds=phase_seconds,
                processing_s=processing_s,
                on_time=completed_on_time,
                tasks=max(0, tasks),
                drift_ms=tempo_drift_ms,
                actions=self._open_actions,
                misses=self._open_misses,
                task_s_total=self._open_task_s,
                timed_actions=self._open_timed,
            )
        )
        self._open_actions = self._open_misses = self._open_timed = 0
        self._open_task_s = 0.0

    def record_bytes(self, n: int, now: float) -> None:
        """``n`` bytes of BACKBEAT traffic (either direction) at ``now``."""
        if n < 0:
            self._invalid += 1
            return
        if self._bytes_since is None:
            self._bytes_since = now
        second = math.floor(now)
        if self._bytes and self._bytes[-1][0] == second:
            self._bytes[-1][1] += n
        else:
            self._bytes.append([second, float(n)])
        self._prune_bytes(now)

    def observe(self, sample: Sample) -> None:
        """A probe sample; CPU and memory are averaged, temperature and flags kept latest."""
        self._samples.append(sample)
        if sample.temperature_c is not None:
            self._temperature = sample.temperature_c
        if sample.throttled is not None:
            self._throttled = sample.throttled

    # ----------------------------------------------------------------- outputs

    def _prune_bytes(self, now: float) -> None:
        horizon = now - self.window_s
        while self._bytes and self._bytes[0][0] + 1.0 <= horizon:
            self._bytes.popleft()

    def snapshot(self, now: float) -> TempoMetrics:
        """The metrics over the window as of ``now``."""
        beats = list(self._beats)
        n = len(beats)
        actions = sum(b.actions for b in beats)
        misses = sum(b.misses for b in beats)
        valid = [b for b in beats if b.phase_seconds > 0]
        span = beats[-1].at - beats[0].at if n >= 2 else 0.0
        self._prune_bytes(now)
        since = self._bytes_since
        byte_span = 0.0 if since is None else min(self.window_s, now - since)
        total_bytes = sum(b[1] for b in self._bytes)
        return TempoMetrics(
            beat_processing_latency_s=_mean([b.processing_s for b in beats]) or 0.0,
            phase_completion_rate=(sum(b.on_time for b in beats) / n) if n else 1.0,
            deadline_miss_rate=misses / actions if actions else 0.0,
            cpu_utilisation=_percent_mean([s.cpu_percent for s in self._samples]),
            memory_utilisation=_percent_mean([s.memory_percent for s in self._samples]),
            network_bandwidth_bps=total_bytes / max(byte_span, 1.0) if total_bytes else 0.0,
            tasks_per_beat=_mean([float(b.tasks) for b in beats]) or 0.0,
            beats_per_second=(n - 1) / span if span > 0 else 0.0,
            tempo_drift_ms=beats[-1].drift_ms if beats else 0.0,
            beats=n,
            actions=actions,
            phase_utilisation=_mean([b.processing_s / b.phase_seconds for b in valid]) or 0.0,
            latency_max_s=max((b.processing_s for b in beats), default=0.0),
            mean_task_s=self._mean_task_s(),
            temperature_c=self._temperature,
            throttled=self._throttled,
        )

    def check_alerts(self, now: float) -> tuple[list[Alert], list[Alert]]:
        """Apply the alert rules; return (started, cleared) since the last call.

        A cleared alert is returned as it was when it started. Alerts come in rule order.
        """
        m = self.snapshot(now)
        throttled = None
        if m.throttled is not None:
            throttled = 1.0 if m.throttled & self.rules.throttle_mask else 0.0
        values: dict[str, tuple[float | None, float]] = {
            # (value for the latch, value shown in the message)
            "latency_high": (m.phase_utilisation if m.beats else None, m.phase_utilisation),
            "miss_rate_high": (m.deadline_miss_rate if m.actions else 0.0, m.deadline_miss_rate),
            "cpu_high": (m.cpu_utilisation, m.cpu_utilisation or 0.0),
            "memory_high": (m.memory_utilisation, m.memory_utilisation or 0.0),
            "temperature_high": (m.temperature_c, m.temperature_c or 0.0),
            "temperature_critical": (m.temperature_c, m.temperature_c or 0.0),
            "throttled": (throttled, float(m.throttled or 0)),
        }
        started: list[Alert] = []
        cleared: list[Alert] = []
        for name, (latch_value, shown) in values.items():
            latch = self._latches[name]
            latch.update(latch_value, now)
            if latch.active and name not in self._active:
                level, message, recommendation = _ALERTS[name]
                text = message.format(int(shown) if name == "throttled" else shown)
                alert = Alert(name, level, text, recommendation)
                self._active[name] = alert
                started.append(alert)
            elif not latch.active and name in self._active:
                cleared.append(self._active.pop(name))
        return started, cleared

    def active_alerts(self) -> list[Alert]:
        """The alerts that have started and not yet cleared, in rule order."""
        return [self._active[name] for name in _ALERTS if name in self._active]

    def recommended_tempo(
        self,
        *,
        sync_interval_s: float | None = None,
        recovery_s: float | None = None,
        task_s: float | None = None,
    ) -> float | None:
        """The guide's tempo recommendation from this window's mean action duration.

        ``task_s`` overrides the measured mean; see :func:`recommend_tempo`. ``None`` when
        no action has been timed and no sync interval is given.
        """
        if task_s is None:
            task_s = self._mean_task_s()
        return recommend_tempo(task_s, sync_interval_s, recovery_s)

    def _mean_task_s(self) -> float | None:
        timed = sum(b.timed_actions for b in self._beats)
        return sum(b.task_s_total for b in self._beats) / timed if timed else None

    @property
    def invalid(self) -> int:
        """Bad numbers dropped so far."""
        return self._invalid


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _percent_mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return sum(known) / len(known) / 100.0 if known else None
