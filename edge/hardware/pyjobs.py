"""A python call's record and its ends: the job a worker holds, what its function is told,
when a re-timed one is sent again, and the :class:`ActionResult` each end is reported as.

No process and no pipe here (those are :mod:`edge.hardware.pyprocess`'s); the driver's
python side (:mod:`edge.hardware.pycalls`) keeps the jobs and hands them over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge.hardware.results import ActionResult
from edge.profile import DeviceSpec
from edge.pyworker import check_values
from edge.score import Action, CallJob

#: A fired call's pipe is read this soon after its time, then at doubling intervals.
CALL_POLL_MIN_S = 0.002
CALL_POLL_S = 0.02
#: A call re-timed by less than this is not sent again (the hand-off target is 0.5 ms).
RETIME_S = 5e-5
#: The counts a python device reports (summed in the claim's ``metadata.calls``).
COUNT_KEYS = (
    "done",
    "exceptions",
    "bad_values",
    "overruns",
    "kills",
    "not_started",
    "exits",
    "restarts",
)


#: A call's end as reported: (do, ok, duration, error).
EndInfo = tuple[str, bool, float, str | None]


@dataclass(slots=True)
class Job:
    job_id: int
    slot: tuple[int, int] | None
    action: Action
    at: float
    deadline: float
    context: dict[str, Any]
    generation: int = 0  # the worker it was sent to; 0 = not sent yet
    fired: bool = False
    cancelled: bool = False  # a cancel is on its way: its answer says whether it ran
    applied: float = 0.0
    tag: object = None
    poll_at: float = math.inf
    poll_every: float = CALL_POLL_MIN_S
    ended: EndInfo | None = None  # it ran before the runner fired it: reported at the fire


def moved(job: Job, at: float, deadline: float, context: dict[str, Any]) -> bool:
    """Whether a re-timed call must be sent again: its times moved by more than
    :data:`RETIME_S`, its tempo by more than 0.01 BPM, or anything else it is told changed
    (a frame moves the follower's model by microseconds: not worth a message each)."""
    if abs(job.at - at) > RETIME_S or abs(job.deadline - deadline) > RETIME_S:
        return True
    old = job.context
    if abs(old["tempo_bpm"] - context["tempo_bpm"]) > 0.01:
        return True
    return any(old[key] != context[key] for key in context if key != "tempo_bpm")


def call_context(job: CallJob, spec: DeviceSpec) -> tuple[float, dict[str, Any]]:
    """The deadline of ``job`` on device ``spec`` (its ``deadline_beats``, if set, counts
    from the call's time) and the context its function is given."""
    deadline = job.deadline
    beats = spec.options.get("deadline_beats")
    if isinstance(beats, int | float) and job.tempo_bpm > 0:
        deadline = job.at + float(beats) * 60.0 / job.tempo_bpm
    params = dict(job.action.params or spec.params)
    return deadline, {
        "beat_index": job.beat_index,
        "phase": job.phase,
        "downbeat": job.downbeat,
        "tempo_bpm": job.tempo_bpm,
        "params": params,
    }


def done_end(
    job: Job, entry: float, exit_at: float, values: object, error: str | None, kind: str | None
) -> tuple[str, EndInfo, dict[str, object] | None]:
    """What a worker's ``done`` for ``job`` comes to: the count it adds to (see
    :data:`COUNT_KEYS`), its end, and the values to keep for the claim (None: keep the
    last). Values the worker let through are checked again: the claim trusts us, not it."""
    checked, problem = check_values(values)
    if error is None and problem is not None:
        error, kind = problem, "bad_values"
    duration = exit_at - entry
    if error is not None:
        counted = "exceptions" if kind == "exception" else "bad_values"
        return counted, ("call_failed", False, duration, error), None
    if exit_at > job.deadline:
        late = f"returned {(exit_at - job.deadline) * 1000:.1f} ms after its deadline"
        return "overruns", ("call_overran", False, duration, late), checked
    return "done", ("call_done", True, duration, None), checked


def end_result(
    job: Job, do: str, ok: bool, now: float, duration: float | None, error: str | None = None
) -> ActionResult:
    """``job``'s end as the driver reports it: its run id, the caller's tag, and the
    duration (counted from the fire when the worker did not measure it)."""
    return ActionResult(
        job.action.device,
        do,
        ok,
        None,
        error,
        None,
        now,
        run=job.job_id,
        duration_s=duration if duration is not None else now - job.applied,
        tag=job.tag,
    )
