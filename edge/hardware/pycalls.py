"""Python devices: one worker process each, the jobs handed to it ahead of time, and the
calls' ends, kills and restarts (the worker's side is :mod:`edge.pyworker`).

Why a process, and one per device: a function may block, hang or crash, and the beat loop
must never wait for it, so it runs outside the agent, where it can be killed at its
deadline. One worker per *device* (not per module) because a kill then costs only that
device's calls, a restart re-imports only its module, and no device's slow function queues
behind another's; two devices naming one module each import it (they share no state).

Theory of operation: the runner hands :meth:`prepare_calls` every ``call`` its plan holds
(this beat and the next), at plan time and after every re-time; each is sent to its worker
at once, with its intended monotonic time, and re-sent when the time moves or cancelled
when the plan drops it. The worker waits for the instant itself (see
:mod:`edge.pyworker`). When the runner fires the call at its time, :meth:`_call` only
marks the job fired (one not prepared is sent then, to run at once). The end comes later
from :meth:`tick`, as for a command: ``call_done`` (values kept for the next claim),
``call_failed`` (an exception or refused values, the one-line summary logged once per
kind), ``call_overran`` (returned after its deadline), ``call_killed`` (still running at
its deadline: the worker is killed, restarted, and the calls queued behind it sent to the
new one) or ``call_not_started`` (the worker died or was down). A worker that exits is
restarted at once, or after a backoff when it exits within a second of starting (an import
that fails), without the loop waiting: the exec happens on a spawner thread.

This module keeps the jobs and hands them over; a job's record and what each end is
reported as are :mod:`edge.hardware.pyjobs`', the processes (start, pipe writes under a
budget, restarts and their backoff, the stop) :mod:`edge.hardware.pyprocess`'.
"""

from __future__ import annotations

import logging
import math
import queue
from collections import Counter
from collections.abc import Collection
from typing import Any

from edge.hardware.devices import Devices, _Device
from edge.hardware.pyjobs import (
    CALL_POLL_MIN_S,
    CALL_POLL_S,
    COUNT_KEYS,
    EndInfo,
    Job,
    call_context,
    done_end,
    end_result,
    moved,
)
from edge.hardware.pyprocess import (
    PIPE_BUDGET,
    SEND_BUDGET,
    WORKER_STOP_S,
    Spawner,
    Worker,
    discard,
    kill_worker,
    spawn_worker,
    stop_workers,
)
from edge.hardware.results import ActionResult
from edge.plan import CALL_ENDS as CALL_ENDS  # re-exported: what a call reports
from edge.score import Action, CallJob

log = logging.getLogger(__name__)


class PyCalls(Devices):
    """Python devices' workers and jobs (see the module doc)."""

    _workers: dict[str, Worker]
    _jobs: dict[int, Job]
    _slots: dict[tuple[int, int], int]
    _spawner: Spawner | None
    _next_job: int
    _call_counts: Counter[str]
    _values: dict[str, dict[str, object]]
    _logged: set[tuple[str, str]]
    _early_ends: list[Job]

    def _init_calls(self, start: bool, now: float) -> None:
        self._workers = {}
        self._jobs = {}
        self._slots = {}
        self._spawner = None
        self._next_job = 1
        self._call_counts = Counter()
        self._values = {}
        self._logged = set()
        self._early_ends = []
        for spec in self.profile.devices.values():
            if spec.family == "python":
                self._workers[spec.name] = Worker(spec)
        if not start or not self._workers:
            return
        self._spawner = Spawner()
        for worker in self._workers.values():
            # Started with the agent, before the loop runs: the exec may block here.
            worker.generation = 1
            try:
                worker.attach(spawn_worker(worker.spec), now)
            except Exception as exc:
                self._once(worker.spec.name, "spawn", f"cannot start its worker: {exc}")
                worker.restart_at = now + worker.backoff

    @property
    def has_calls(self) -> bool:
        """Whether the profile has python devices (the runner prepares calls only then)."""
        return bool(self._workers)

    def call_counts(self) -> dict[str, int]:
        """What became of python calls since the start (see :data:`COUNT_KEYS`)."""
        return {key: self._call_counts[key] for key in COUNT_KEYS} if self._workers else {}

    def call_values(self) -> dict[str, dict[str, object]]:
        """The values each python device's function returned last (for the claim)."""
        return {name: dict(values) for name, values in self._values.items()}

    def call_entry_late_ms(self) -> dict[str, float]:
        """How late each python device's last call was entered, in ms (worker-measured)."""
        return {
            name: w.entry_late_s * 1000.0
            for name, w in self._workers.items()
            if w.entry_late_s is not None
        }

    # ------------------------------------------------------------------ logging

    def _once(self, device: str, kind: str, text: str) -> None:
        """Log ``text`` the first time ``device`` has a problem of ``kind``; count it."""
        self._failures[device] = self._failures.get(device, 0) + 1
        self.errors[device] = f"{device}: {text}"
        if (device, kind) not in self._logged:
            self._logged.add((device, kind))
            log.error("%s: %s (logged once; counted from now on)", device, text)

    # ------------------------------------------------------------------ preparing

    def prepare_calls(self, calls: Collection[CallJob], now: float) -> None:
        """Make the workers hold exactly the calls of ``calls`` not yet fired: new ones
        are sent, moved ones re-sent, dropped ones cancelled (see the module doc)."""
        wanted: dict[tuple[int, int], CallJob] = {c.slot: c for c in calls}
        for slot, job_id in list(self._slots.items()):
            job = self._jobs.get(job_id)
            fresh = wanted.get(slot)
            if job is None or job.fired:
                del self._slots[slot]
                continue
            if fresh is None or fresh.action != job.action:
                self._cancel(job)
                del self._slots[slot]
        for slot, call in wanted.items():
            worker = self._workers.get(call.action.device)
            if worker is None:
                continue
            deadline, context = call_context(call, worker.spec)
            known = self._slots.get(slot)
            if known is None:
                job = Job(self._next_job, slot, call.action, call.at, deadline, context)
                self._next_job += 1
                self._jobs[job.job_id] = job
                self._slots[slot] = job.job_id
                self._send(worker, job)
                continue
            job = self._jobs[known]
            if moved(job, call.at, deadline, context):
                job.at, job.deadline, job.context = call.at, deadline, context
                job.generation = 0
            if job.generation != worker.generation:
                self._send(worker, job)

    def renumber_calls(self, offset: int) -> None:
        """The pulse renumbered its beats: the prepared calls follow (edge.plan.renumber)."""
        renumbered: dict[tuple[int, int], int] = {}
        for (beat, rule), job_id in self._slots.items():
            job = self._jobs.get(job_id)
            if job is not None:
                job.slot = (beat + offset, rule)
                job.context["beat_index"] = beat + offset
                job.generation = 0  # re-sent with the new beat index
            renumbered[(beat + offset, rule)] = job_id
        self._slots = renumbered

    def _send(self, worker: Worker, job: Job) -> bool:
        if not worker.alive:
            return False
        message = ("job", job.job_id, job.at, job.deadline, job.context)
        if not worker.post(message, SEND_BUDGET):
            return False
        job.generation = worker.generation
        worker.at_rest = False
        return True

    def _cancel(self, job: Job) -> None:
        worker = self._workers.get(job.action.device)
        if (
            worker is None
            or job.ended is not None
            or job.generation == 0
            or job.generation != worker.generation
            or worker.send is None
        ):
            self._jobs.pop(job.job_id, None)
            return
        if worker.post(("cancel", job.job_id), PIPE_BUDGET):
            job.cancelled = True  # kept until the worker says whether it ran
        else:
            self._once(job.action.device, "pipe", "its worker reads nothing; a cancel waits")

    # ------------------------------------------------------------------ firing

    def _call(
        self, d: _Device, action: Action, now: float, tag: object, call: CallJob | None
    ) -> ActionResult:
        name = d.spec.name
        worker = self._workers[name]
        job_id = self._slots.pop(call.slot, None) if call is not None else None
        job = self._jobs.get(job_id) if job_id is not None else None
        if job is not None and (job.action != action or job.cancelled):
            job = None
        if not worker.alive and (job is None or job.ended is None):
            if job is not None:
                self._jobs.pop(job.job_id, None)
            self._drop("worker_down")
            self._call_counts["not_started"] += 1
            return ActionResult(
                name, "call", False, "worker_down", self.errors.get(name), None, now, tag=tag
            )
        if job is None or (job.ended is None and job.generation != worker.generation):
            # Not handed over ahead of time: send it now, to run at once.
            if job is None:
                base = call or CallJob((-1, -1), action, now, now + 1.0, "execute", None, 60.0)
                deadline, context = call_context(base, d.spec)
                job = Job(self._next_job, None, action, now, deadline, context)
                self._next_job += 1
                self._jobs[job.job_id] = job
            self._send(worker, job)
        job.fired = True
        job.applied = now
        job.tag = tag
        job.poll_at = max(job.at, now) + CALL_POLL_MIN_S
        if job.ended is not None:
            self._early_ends.append(job)
        return ActionResult(name, "call", True, None, None, None, now, run=job.job_id, tag=tag)

    # ------------------------------------------------------------------ follow-ups

    def _calls_next(self) -> float | None:
        best = math.inf
        # (an end kept for its fire, _early_ends, is reported by the tick of that step)
        for job in self._jobs.values():
            if job.ended is not None:
                continue
            if job.fired:
                best = min(best, job.poll_at, job.deadline)
            elif job.generation:
                best = min(best, job.deadline)
        for worker in self._workers.values():
            if worker.restart_at is not None and not worker.spawning:
                best = min(best, worker.restart_at)
        return None if best == math.inf else best

    def _tick_calls(self, now: float) -> list[ActionResult]:
        results: list[ActionResult] = []
        if not self._workers:
            return results
        while self._early_ends:
            early = self._early_ends.pop(0)
            self._jobs.pop(early.job_id, None)
            if early.ended is not None:
                do, ok, duration, error = early.ended
                results.append(end_result(early, do, ok, now, duration, error))
        self._collect_spawns(now, results)
        for job in list(self._jobs.values()):
            # Fired but never handed to a live worker (it was down, or its pipe full):
            # at its deadline it is reported, not left waiting.
            owner = self._workers[job.action.device]
            if (
                job.fired
                and job.ended is None
                and (job.generation != owner.generation or not owner.alive)
                and now >= job.deadline
            ):
                self._jobs.pop(job.job_id, None)
                self._call_counts["not_started"] += 1
                results.append(end_result(job, "call_not_started", False, now, None))
        for worker in self._workers.values():
            if not worker.alive:
                if (
                    worker.restart_at is not None
                    and now >= worker.restart_at
                    and not worker.spawning
                    and self._spawner is not None
                ):
                    worker.restart(self._spawner)
                continue
            dead = self._drain(worker, now, results)
            proc = worker.proc
            if proc is not None and proc.poll() is not None:
                # (after the pipe closed it is usually gone already: say how it ended)
                dead = f"exited with code {proc.returncode}"
            if dead:
                self._lost(worker, now, results, dead, killed=False)
                continue
            overdue = [
                j
                for j in self._jobs.values()
                if j.generation == worker.generation
                and j.action.device == worker.spec.name
                and j.ended is None
                and now >= j.deadline
            ]
            if overdue:
                if proc is not None:
                    kill_worker(proc)
                self._lost(worker, now, results, "killed at its deadline", killed=True)
                continue
            for job in self._jobs.values():
                if job.fired and job.action.device == worker.spec.name and now >= job.poll_at:
                    job.poll_every = min(job.poll_every * 2.0, CALL_POLL_S)
                    job.poll_at = now + job.poll_every
        return results

    def _collect_spawns(self, now: float, results: list[ActionResult]) -> None:
        spawner = self._spawner
        if spawner is None:
            return
        while True:
            try:
                name, generation, made, error = spawner.done.get_nowait()
            except queue.Empty:
                return
            worker = self._workers.get(name)
            if worker is None:
                continue
            worker.spawning = False
            if made is None or generation != worker.generation:
                if made is not None:
                    discard(made)
                else:
                    self._once(name, "spawn", f"cannot start its worker: {error}")
                    worker.spawn_failed(now)
                continue
            self._call_counts["restarts"] += 1
            log.warning("%s: worker restarted (pid %d)", name, made[0].pid)
            worker.attach(made, now)
            for job in sorted(self._jobs.values(), key=lambda j: j.at):
                if job.action.device != name or job.generation == worker.generation:
                    continue
                if job.cancelled:
                    self._jobs.pop(job.job_id, None)
                elif job.deadline <= now:
                    self._jobs.pop(job.job_id, None)
                    if job.fired:
                        results.append(end_result(job, "call_not_started", False, now, None))
                else:
                    self._send(worker, job)

    def _drain(self, worker: Worker, now: float, results: list[ActionResult]) -> str | None:
        """Read every message the worker sent; returns why it is dead, or None."""
        recv = worker.recv
        if recv is None:
            return "no pipe"
        name = worker.spec.name
        try:
            while recv.poll(0):
                message = recv.recv()
                worker.unread_bytes = 0  # it is reading: it drains its pipe before it runs
                what = message[0]
                if what == "done":
                    self._done(worker, message, now, results)
                elif what == "skipped":
                    job = self._jobs.get(message[1])
                    if job is not None:
                        self._call_counts["not_started"] += 1
                        end = ("call_not_started", False, 0.0, "its time came after its deadline")
                        self._finish(job, end, now, results)
                elif what == "cancelled":
                    job = self._jobs.get(message[1])
                    if job is not None and message[2]:
                        del self._jobs[job.job_id]
                elif what == "ready":
                    if message[2]:
                        self._once(
                            name,
                            "import",
                            f"cannot load {worker.spec.text('call', '')}: {message[2]}",
                        )
                elif what == "safe_done" and message[1]:
                    self._once(name, "safe_call", f"safe_call failed: {message[1]}")
        except (EOFError, OSError):
            return "closed its pipe"
        return None

    def _done(
        self, worker: Worker, message: tuple[Any, ...], now: float, results: list[ActionResult]
    ) -> None:
        _, job_id, entry, exit_at, values, error, kind = message
        name = worker.spec.name
        job = self._jobs.get(job_id)
        if job is None:
            return
        worker.entry_late_s = entry - job.at
        counted, end, checked = done_end(job, entry, exit_at, values, error, kind)
        self._call_counts[counted] += 1
        if checked is not None:
            self._values[name] = checked
        error = end[3]
        if counted in ("exceptions", "bad_values") and error is not None:
            self._once(name, f"{counted}:{error.split(':', 1)[0]}", error)
        self._finish(job, end, now, results)

    def _finish(self, job: Job, end: EndInfo, now: float, results: list[ActionResult]) -> None:
        """Report ``job``'s end, or keep it until the runner fires it: a loop that came
        late to its own spin must not send it again (the function has run)."""
        if job.fired:
            self._jobs.pop(job.job_id, None)
            do, ok, duration, error = end
            results.append(end_result(job, do, ok, now, duration, error))
        elif job.cancelled:
            self._jobs.pop(job.job_id, None)
        else:
            job.ended = end

    def _lost(
        self, worker: Worker, now: float, results: list[ActionResult], why: str, killed: bool
    ) -> None:
        """The worker is gone (killed at a deadline, or it died): settle the jobs it held
        and schedule its restart."""
        name = worker.spec.name
        mine = sorted(
            (
                j
                for j in self._jobs.values()
                if j.action.device == name and j.generation == worker.generation and j.ended is None
            ),
            key=lambda j: j.at,
        )
        running = next((j for j in mine if j.at <= now), None)
        for job in mine:
            if job is running:
                self._jobs.pop(job.job_id, None)
                if killed:
                    self._call_counts["kills"] += 1
                    self._once(name, "killed", f"a call overran its deadline: worker {why}")
                    if job.fired:
                        limit = job.deadline - job.at
                        text = f"still running at its {limit * 1000:.0f} ms deadline; {why}"
                        results.append(end_result(job, "call_killed", False, now, None, text))
                else:
                    self._call_counts["exits"] += 1
                    self._once(name, "exited", f"the worker {why} during a call")
                    if job.fired:
                        text = f"the worker {why} during the call"
                        results.append(end_result(job, "call_failed", False, now, None, text))
            elif job.cancelled or job.deadline <= now:
                self._jobs.pop(job.job_id, None)
                if job.fired and not job.cancelled:
                    self._call_counts["not_started"] += 1
                    results.append(end_result(job, "call_not_started", False, now, None))
            else:
                job.generation = 0  # sent again to the next worker
        worker.lost(now, killed)
        if not killed:
            self._once(name, "exited", f"its worker {why}")

    # ------------------------------------------------------------------ safety

    def _safe_calls(self, reason: str, keep: Collection[str], closing: bool) -> None:
        """Cancel the queued calls of every python device not in ``keep`` and have its
        worker call ``safe_call``; a call already running finishes or meets its deadline.
        ``closing``: the last safe state, the one of ``close()``, which skips a worker
        already at rest (its safe_call has run and no call was sent since)."""
        for name, worker in self._workers.items():
            if name in keep:
                continue
            for job in list(self._jobs.values()):
                if job.action.device == name and not job.fired:
                    self._cancel(job)
            for slot in [s for s, j in self._slots.items() if j not in self._jobs]:
                del self._slots[slot]
            # After a shutdown's safe state its safe_call has run: not called a second time.
            if closing and worker.at_rest:
                continue
            message = ("safe", reason, dict(worker.spec.params))
            if worker.alive and worker.post(message, PIPE_BUDGET):  # no pipe: False
                worker.at_rest = True

    def _close_calls(self) -> None:
        """End every worker: told to stop after its safe_call, killed if it has not within
        :data:`~edge.hardware.pyprocess.WORKER_STOP_S`."""
        for name in stop_workers(self._workers.values(), self._spawner):
            log.error("%s: worker did not stop in %g s; killed", name, WORKER_STOP_S)
        self._spawner = None
        self._jobs.clear()
        self._slots.clear()
