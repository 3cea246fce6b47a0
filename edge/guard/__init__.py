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

from edge.guard.config import GuardConfig, parse_guard
from edge.guard.hysteresis import Hysteresis
from edge.guard.policy import Guard
from edge.guard.values import (
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
    ActionLike,
    Admission,
    C,
    Candidate,
    Level,
    Sample,
    Verdict,
)

__all__ = [
    "REASON_DISABLED",
    "REASON_OK",
    "REASON_RECOVERING",
    "SHED_DECIMATED",
    "SHED_ESSENTIAL_ONLY",
    "SHED_INVALID",
    "SHED_LEVEL",
    "SHED_OVER_BUDGET",
    "SHED_QUEUE_FULL",
    "SHED_TOO_LATE",
    "ActionLike",
    "Admission",
    "C",
    "Candidate",
    "Guard",
    "GuardConfig",
    "Hysteresis",
    "Level",
    "Sample",
    "Verdict",
    "parse_guard",
]
