"""The beat client library: a Python program that is its own agent, on the beat.

:class:`BeatClient` follows a cluster's beat with the agent's own parts, not copies: the
config reader (its options are the agent's TOML sections, checked and worded alike), the
MQTT link, the intake (trust stage, plausibility, HLC), the beat follower, the outbox and
the claim publisher, all driven by a :class:`~edge.runner.Runner` that has no devices and
no score. What it adds:

* ``@client.on_beat``, ``@client.on_downbeat``, ``@client.on_phase("execute")``: callbacks
  run at the phase boundary on one callback thread, precisely timed (``edge.client_dispatch``);
* ``await client.sync(beats=1, phase="execute")``: resumes a coroutine at the next such
  boundary (in a beat whose index is a multiple of ``beats``), as aalink's ``sync``;
* ``client.emit_status_claim(state=..., progress=..., notes=...)``: a claim now, with the
  agent id, beat, HLC and seq filled in as the agent fills them, through the outbox. The
  state, progress and notes given are *declared*: the per-beat claims carry them on (but
  say ``blocked`` while the beat is not followed, and the final claim says ``idle``);
* ``client.with_beat_budget(n, fn)``: runs ``fn(budget)`` with a deadline of ``n`` beats at
  the current tempo. A plain function is never interrupted (Python cannot stop a thread):
  it may poll ``budget.expired`` or call ``budget.check()`` (raises :class:`BudgetExpired`,
  which ends it as *cancelled*); an overrun is reported in the result and counted. The
  coroutine form, ``await client.with_beat_budget_async(n, fn)``, is cancelled at the
  deadline. Every claim carries the counts under ``metadata.client``.

Threads: paho's (the link), the beat loop (the runner; it steps under the client's lock and
sleeps where the agent's loop would spin) and the callback thread (the only one that
spins, so the two never fight over the GIL at a boundary). ``start``/``stop`` or ``with``;
``stop`` sends the final claim and the retained ``offline``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TypeVar

from edge.agent import (
    farewell,
    link_for,
    lower_timer_slack,
    open_outbox,
    outbox_config_for,
    security_for,
    timesync_for,
)
from edge.client_budget import Budget, BudgetCounts, BudgetExpired, BudgetResult
from edge.client_config import client_config
from edge.client_dispatch import (
    LATE_FRACTION,
    Callback,
    DispatchCounts,
    Dispatcher,
    Interest,
    Tick,
    Waiter,
)
from edge.clock import Clock, SystemClock
from edge.config import Config
from edge.errors import EdgeError
from edge.hardware import Hardware
from edge.loglimit import LogLimiter
from edge.messages import PHASES, ClaimState, Phase, StatusClaim
from edge.mqtt_link import MqttLink
from edge.outbox import Outbox
from edge.plan import BeatLedger
from edge.preflight import preflight
from edge.probe import Probe
from edge.review import assemble
from edge.runner import Runner
from edge.sync import SyncState
from edge.sync.tempo import next_key

__all__ = [
    "BeatClient",
    "BeatClientClosed",
    "BeatClientError",
    "Budget",
    "BudgetExpired",
    "BudgetResult",
    "Tick",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callback)

#: Follower states in which the beat is followed (callbacks run; the agent would fire).
_FOLLOWED = frozenset({SyncState.LOCKED, SyncState.FREE_RUNNING})
#: How many boundaries ahead the forecast looks for one that is wanted.
_LOOKAHEAD = 6
#: A fake HLC stamp for checking a declared claim before it takes a seq.
_CHECK_HLC = "0000:0000:0000"


class BeatClientError(EdgeError, RuntimeError):
    """The client cannot do that now (not started, no tempo yet...); the message says why."""


class BeatClientClosed(BeatClientError):
    """The client has stopped: a ``sync()`` still waiting, or a call after ``stop()``."""


class _SleepingClock(SystemClock):
    """The system clock for the client's beat loop: it sleeps where the runner would spin
    (the loop's own deadlines need no sub-millisecond precision here; the callback thread's
    do, and it alone spins)."""

    __slots__ = ()

    def spin_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


@dataclass(frozen=True, slots=True)
class _Declared:
    state: ClaimState
    progress: float | None
    notes: str | None
    task_id: str | None
    beats_left: int | None


class BeatClient:
    """Follows the beat of ``cluster`` on ``broker_url`` as agent ``agent_id``; see the
    module doc. ``options`` are the agent's config sections as dicts (``sync={...}``,
    ``status={"every": 4}``, ``outbox={"directory": "..."}``, ``broker={"username": ...}``,
    ``security={"beat_keys": [...]}``...); a wrong one raises ConfigError at once, listing
    every problem."""

    def __init__(
        self, broker_url: str, cluster: str, agent_id: str, **options: Mapping[str, object]
    ) -> None:
        self.config: Config = outbox_config_for(
            client_config(broker_url, cluster, agent_id, options)
        )
        preflight(self.config)  # the broker's password and TLS files, before anything starts
        self.clock: Clock = SystemClock()
        self._loop_clock = _SleepingClock()
        self._lock = threading.Lock()
        self.dispatcher = Dispatcher(self.clock, self._forecast, self._passed)
        self._declared: _Declared | None = None
        self._budgets = BudgetCounts()
        self._claims_refused = 0
        self._problems = LogLimiter(log)
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.runner: Runner | None = None
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self._hardware: Hardware | None = None
        #: The error that ended the beat loop, if one did (a bug: it is logged too).
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ registration

    def on_beat(self, fn: F) -> F:
        """Decorator: ``fn(tick)`` at the start of every beat."""
        self.dispatcher.add("beat", fn)
        return fn

    def on_downbeat(self, fn: F) -> F:
        """Decorator: ``fn(tick)`` at the start of every downbeat (once the bar is known)."""
        self.dispatcher.add("downbeat", fn)
        return fn

    def on_phase(self, phase: Phase) -> Callable[[F], F]:
        """Decorator: ``fn(tick)`` at the start of ``phase`` (plan, execute, review) of
        every beat."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")

        def register(fn: F) -> F:
            self.dispatcher.add(phase, fn)
            return fn

        return register

    # ------------------------------------------------------------------ start and stop

    def start(self) -> BeatClient:
        """Connect and follow the beat (returns at once; the broker may come later)."""
        if self._started:
            raise BeatClientError("the beat client was started already")
        config = self.config
        trust, signer = security_for(config.security)
        self.outbox = open_outbox(config)
        self.link = link_for(config)
        self._hardware = Hardware(config.profile)  # no devices: mock pins, nothing built
        probe = Probe(disk_path=config.outbox.directory)
        self.runner = Runner(
            config,
            self._hardware,
            self._loop_clock,
            link=self.link,
            outbox=self.outbox,
            probe=probe,
            start_seq=self.outbox.last_seq,
            trust=trust,
            claim_signer=signer,
        )
        self.runner.claim_hook = self._decorate
        self.runner.attach_timesync(timesync_for(config, self.link, self.clock, trust))
        probe.sample(time.monotonic(), full=False)  # prime the CPU counters
        self._started = True
        self.link.start()
        self._thread = threading.Thread(target=self._loop, name="beat-loop", daemon=True)
        self._thread.start()
        self.dispatcher.start(prepare=lower_timer_slack)  # its sleeps wake closer to time
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Whether the broker was reached within ``timeout`` seconds."""
        return self.link is not None and self.link.wait_connected(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop following: the callback thread (waiting ``timeout`` for a running callback),
        the beat loop, then the final claim and the retained ``offline``. Waiting
        ``sync()`` calls raise :class:`BeatClientClosed`. Safe to call twice."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self.dispatcher.stop(timeout, BeatClientClosed("the beat client stopped"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        assert self.runner is not None and self.link is not None and self.outbox is not None
        with self._lock:
            farewell(self.runner, self.link, self.outbox, self.clock)
            if self._hardware is not None:
                self._hardware.close()
            self._problems.flush(self.clock.monotonic())

    def __enter__(self) -> BeatClient:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _loop(self) -> None:
        runner = self.runner
        assert runner is not None
        lower_timer_slack()
        try:
            while not self._stopping.is_set():
                items = runner.wait_next()  # without the lock: it only reads the timeline
                with self._lock:
                    runner.handle(items)
        except Exception as exc:  # a bug: said loudly; sync() waiters are failed by stop()
            self.failure = exc
            log.exception("the beat client's loop failed; the client stops following")
            self.dispatcher.stop(0.0, BeatClientClosed(f"the beat loop failed: {exc}"))

    def _require_runner(self) -> Runner:
        if self._stopped:
            raise BeatClientClosed("the beat client has stopped")
        if self.runner is None:
            raise BeatClientError("the beat client is not started (call start() or use with)")
        return self.runner

    # ------------------------------------------------------------------ reading the beat

    @property
    def sync_state(self) -> str:
        """The follower's state: acquiring, locked, free_running or lost."""
        if self.runner is None:
            return SyncState.ACQUIRING.value
        return self.runner.follower.state.value

    @property
    def tempo_bpm(self) -> float | None:
        """The cluster's tempo (the beat frames'), None before the first frame."""
        return None if self.runner is None else self.runner.follower.tempo_bpm

    @property
    def counts(self) -> DispatchCounts:
        """What the callback thread did: boundaries, callbacks, errors, overruns, skips."""
        return self.dispatcher.counts

    def _forecast(
        self, now: float, after: float, interest: Interest
    ) -> tuple[Tick | None, float | None]:
        """The next wanted boundary after local time ``after`` (the one just passed, if it
        is still early in its phase), and None; or None and when to look again."""
        runner = self.runner
        if runner is None:
            return None, None
        with self._lock:
            follower = runner.follower
            if follower.state not in _FOLLOWED:
                return None, None
            pos = follower.position(now)
            tempo = follower.tempo_bpm
            if pos is None or tempo is None:
                return None, None
            key = (pos.beat_index, PHASES.index(pos.phase))
            at, end = pos.phase_start, pos.phase_end
            phase_s = end - at
            if not (at > after + phase_s / 2 and now - at <= LATE_FRACTION * phase_s):
                key, at = next_key(key), end
            for _ in range(_LOOKAHEAD):
                phase = PHASES[key[1]]
                following = next_key(key)
                end = follower.phase_start(following[0], PHASES[following[1]])
                downbeat = bool(follower.is_downbeat(key[0]))
                if interest.wants(key[0], phase, downbeat):
                    tick = Tick(
                        beat_index=key[0],
                        phase=phase,
                        downbeat=downbeat,
                        bar_position=follower.bar_position(key[0]),
                        tempo_bpm=tempo,
                        at=at,
                        deadline=end,
                        sync_state=follower.state.value,
                    )
                    return tick, None
                key, at = following, end
            return None, at

    def _passed(self, tick: Tick, until: float, interest: Interest) -> int:
        """How many wanted boundaries after ``tick`` are too late to run at ``until``."""
        runner = self.runner
        if runner is None:
            return 0
        with self._lock:
            follower = runner.follower
            if follower.position(until) is None:
                return 0
            phase_s = follower.beat_seconds() / 3.0
            key, count = next_key((tick.beat_index, PHASES.index(tick.phase))), 0
            for _ in range(10_000):  # a bound: a renumbered timeline must not loop long
                at = follower.phase_start(key[0], PHASES[key[1]])
                if at + LATE_FRACTION * phase_s >= until:
                    break
                if interest.wants(key[0], PHASES[key[1]], bool(follower.is_downbeat(key[0]))):
                    count += 1
                key = next_key(key)
            return count

    async def sync(self, beats: int = 1, phase: Phase = "plan") -> Tick:
        """Resume at the next start of ``phase`` in a beat whose index is a multiple of
        ``beats`` (``beats=1``: the next one at all), as aalink's ``sync``. Waits while the
        beat is not followed (wrap it in ``asyncio.wait_for`` to bound that); raises
        :class:`BeatClientClosed` if the client stops first."""
        if isinstance(beats, bool) or not isinstance(beats, int) or beats < 1:
            raise ValueError(f"beats must be an integer >= 1, got {beats!r}")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        self._require_runner()
        loop = asyncio.get_running_loop()
        waiter = Waiter(loop, loop.create_future(), phase, beats, self.clock.monotonic())
        self.dispatcher.wait_for(waiter)
        try:
            return await waiter.future
        finally:
            self.dispatcher.forget(waiter)

    # ------------------------------------------------------------------ claims

    def emit_status_claim(
        self,
        state: ClaimState = "executing",
        progress: float | None = None,
        notes: str | None = None,
        *,
        task_id: str | None = None,
        beats_left: int | None = None,
    ) -> StatusClaim:
        """Send a claim now (through the outbox, as every claim) and declare its state,
        progress and notes for the per-beat claims that follow. Agent id, beat index, HLC
        and seq are filled in as the agent fills them. A value the contract refuses
        raises FrameError naming the field (counted; nothing is sent, no seq is used)."""
        runner = self._require_runner()
        declared = _Declared(state, progress, notes, task_id, beats_left)
        try:
            # Checked against the contract before it takes a seq.
            StatusClaim(
                agent_id=self.config.agent.id,
                beat_index=0,
                state=state,
                hlc=_CHECK_HLC,
                task_id=task_id,
                beats_left=beats_left,
                progress=progress,
                notes=notes,
            )
        except EdgeError:
            self._claims_refused += 1
            raise
        with self._lock:
            beat = runner.last_beat if runner.last_beat is not None else 0
            review = assemble(
                max(beat, 0),
                BeatLedger(),
                runner.guard.verdict,
                runner.follower,
                runner.metrics,
                (runner.last_sample, runner.last_full_sample),
                runner.intake.frames_rejected(),
                0 if runner.link is None else runner.link.dropped_inbound,
                runner.outbox,
                tuple(sorted(runner.hardware.isolated)),
            )
            self._declared = declared
            claim = self._decorate(runner.status.emit(replace(review, state=state)), own=True)
            runner.publisher.submit(claim)
        return claim

    def _metadata(self) -> dict[str, object]:
        budgets = self._budgets
        return {
            **self.dispatcher.counts.as_metadata(),
            "budgets": {
                "run": budgets.run,
                "finished": budgets.finished,
                "overran": budgets.overran,
                "cancelled": budgets.cancelled,
            },
            "claims_refused": self._claims_refused,
        }

    def _decorate(self, claim: StatusClaim, own: bool = False) -> StatusClaim:
        """Every claim: the client's counts under ``metadata.client``; the declared state,
        progress and notes on a per-beat claim while the beat is followed (the final
        claim stays ``idle``)."""
        metadata = dict(claim.metadata or {})
        metadata["client"] = self._metadata()
        declared = self._declared
        if declared is None or metadata.get("final") or (claim.state == "blocked" and not own):
            return replace(claim, metadata=metadata)
        return replace(
            claim,
            state=declared.state,
            progress=declared.progress,
            notes=declared.notes if declared.notes is not None else claim.notes,
            task_id=declared.task_id,
            beats_left=declared.beats_left,
            metadata=metadata,
        )

    # ------------------------------------------------------------------ budgets

    def _budget(self, beats: float) -> Budget:
        runner = self._require_runner()
        if isinstance(beats, bool) or not isinstance(beats, int | float):
            raise ValueError(f"beats must be a number > 0, got {beats!r}")
        if not (math.isfinite(beats) and beats > 0):
            raise ValueError(f"beats must be a finite number > 0, got {beats!r}")
        with self._lock:
            if runner.follower.tempo_bpm is None:
                raise BeatClientError("no beat followed yet: a budget in beats needs a tempo")
            beat_s = runner.follower.beat_seconds()
        now = self.clock.monotonic()
        budget_s = beats * beat_s
        return Budget(float(beats), budget_s, now, now + budget_s, self.clock)

    def _settle(self, budget: Budget, value: T | None, cancelled: bool) -> BudgetResult[T]:
        elapsed = self.clock.monotonic() - budget.started
        overran = cancelled or elapsed > budget.budget_s
        counts = self._budgets
        counts.run += 1
        counts.finished += not cancelled
        counts.overran += overran
        counts.cancelled += cancelled
        if overran:
            self._problems.note(
                "budget overrun",
                f"a beat budget of {budget.beats:g} beats ({budget.budget_s * 1000:.1f} ms) "
                f"{'was cancelled' if cancelled else 'overran'} after {elapsed * 1000:.1f} ms",
                self.clock.monotonic(),
            )
        return BudgetResult(
            value=value,
            finished=not cancelled,
            cancelled=cancelled,
            overran=overran,
            elapsed_s=elapsed,
            budget_s=budget.budget_s,
            beats=budget.beats,
        )

    def with_beat_budget(self, beats: float, fn: Callable[[Budget], T]) -> BudgetResult[T]:
        """Run ``fn(budget)`` here with a deadline of ``beats`` beats at the current tempo.
        It is not interrupted: an overrun is reported (``overran``) and counted; ``fn``
        may end itself early with ``budget.check()`` (``cancelled``). Other exceptions
        of ``fn`` propagate. Raises BeatClientError before the first frame (no tempo)."""
        budget = self._budget(beats)
        try:
            value = fn(budget)
        except BudgetExpired:
            return self._settle(budget, None, cancelled=True)
        return self._settle(budget, value, cancelled=False)

    async def with_beat_budget_async(
        self, beats: float, fn: Callable[[Budget], Awaitable[T]]
    ) -> BudgetResult[T]:
        """As :meth:`with_beat_budget` for a coroutine, which is cancelled at the deadline
        (``cancelled``)."""
        budget = self._budget(beats)
        deadline = asyncio.timeout(max(budget.remaining_s, 0.0))
        try:
            async with deadline:
                value = await fn(budget)
        except BudgetExpired:
            return self._settle(budget, None, cancelled=True)
        except TimeoutError:
            if not deadline.expired():  # the coroutine's own time-out: not ours to hide
                raise
            return self._settle(budget, None, cancelled=True)
        return self._settle(budget, value, cancelled=False)
