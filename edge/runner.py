"""The runner: the agent's one loop, wiring the pure core to the adapters.

Theory of operation
-------------------
``Runner.step(item, now)`` handles one wake-up; ``Runner.run()`` only waits for the next
message or the next deadline and calls it. A wake-up does, in order:

1. hand an inbound item to its owner: a beat frame to the follower (stamped with its local
   arrival time by the link), an acknowledgement to the outbox, a (dis)connect to the
   status pump; a malformed frame is counted and reported, never fatal;
2. let the follower emit the boundary events due by ``now`` (beat started, phase started,
   sync lost...). At each beat start the score picks the actions of *this and the next*
   beat (one beat of look-ahead, so plan-phase actions are known before their beat) and the
   guard admits, sheds or keeps only the essential ones;
3. fire every admitted action whose time has come, unless its deadline (the end of its
   phase) has already passed (then it is a miss, not a late switch);
4. run the hardware's own follow-ups (pulse offs, fades, dead-man, command time-outs);
5. at a beat's review phase: read results back, feed the guard and the metrics, build the
   StatusClaim and put it through the outbox to the broker;
6. sample the machine with the probe when a sample is due and nothing is imminent.

Action times are not stored once: after every frame the follower's model may move (slew,
tempo change), so pending actions are re-timed from it. The wait is precise: a blocking
wait on the inbox to ~0.6 ms before an action, then a short spin (a plain sleep wakes
0.1-0.7 ms late). The spin holds the GIL, so frames stamped right after it are a little
late; the follower's lower-envelope filter ignores late arrivals, which is why this is
safe.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import queue
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from edge import __version__
from edge.clock import Clock
from edge.config import Config
from edge.errors import FrameError, HardwareError
from edge.guard import Guard, Sample
from edge.hardware import ActionResult, Hardware
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import StatusClaim, decode_bar_report, decode_beat_frame, encode
from edge.metrics import Metrics
from edge.mqtt_link import Inbound, Topics
from edge.outbox import Outbox
from edge.profile import Profile
from edge.score import ScheduledAction, Score
from edge.status import BeatReview, StatusBuilder
from edge.sync import (
    BeatFollower,
    BeatJumped,
    BeatStarted,
    PhaseStarted,
    SyncEvent,
    SyncLost,
    SyncRegained,
    SyncState,
    TempoChanged,
)

log = logging.getLogger(__name__)

#: Wake this long before an action and spin the rest (see the theory above).
SPIN_S = 0.0006
#: Touch the hardware path this long before an action so the first write is not cold.
WARM_S = 0.004
#: Longest blocking wait, so signals and stop requests are seen promptly.
MAX_WAIT_S = 0.1
#: Every this many probe samples one is a full sample (process, temperature, disk).
FULL_SAMPLE_EVERY = 5
#: At most this many claims in flight (un-acked) at once; the rest wait in the outbox.
PUBLISH_WINDOW = 16


class Link(Protocol):
    """What the runner needs of the MQTT link (the real one is ``edge.mqtt_link``)."""

    inbox: queue.Queue[Inbound]

    @property
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry_s: int | None = None,
    ) -> int: ...


class Probe(Protocol):
    def sample(self, now: float, full: bool = True) -> Sample: ...


class Notifier(Protocol):
    def status(self, text: str) -> object: ...


@dataclass
class BeatLedger:
    """What happened to one beat's actions, for its review."""

    planned: int = 0
    fired: int = 0
    missed: int = 0
    failed: int = 0
    late_ms: list[float] = field(default_factory=list)
    shed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0


@dataclass
class Counters:
    frames: int = 0
    frames_bad: int = 0
    bar_reports: int = 0
    fired: int = 0
    missed: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    safe_states: int = 0
    claims: int = 0
    claims_acked: int = 0
    reloads: int = 0
    reload_errors: int = 0


def lower_timer_slack() -> None:
    """Ask Linux for 1 ns timer slack on this thread: sleeps then wake ~25-50 us late
    instead of the default 50 us slack plus rounding. A no-op where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


#: What a reload does not apply: the link, the outbox, the follower and the topics were
#: built from these and live as long as the process. The rest (the score, the devices,
#: [guard], [status], the other [agent] settings) applies at the next beat boundary.
_RESTART_ONLY_SECTIONS = ("broker", "outbox", "sync")
_RESTART_ONLY_AGENT = ("id", "cluster", "topic_prefix")


def _keep_restart_only(new: Config, old: Config) -> Config:
    """``new`` with the running values of what only a restart changes (logged, if any)."""
    kept = [
        f"[{name}]" for name in _RESTART_ONLY_SECTIONS if getattr(new, name) != getattr(old, name)
    ]
    kept += [
        f"agent.{name}"
        for name in _RESTART_ONLY_AGENT
        if getattr(new.agent, name) != getattr(old.agent, name)
    ]
    if not kept:
        return new
    log.warning("reload: %s changes take effect at the next restart", ", ".join(kept))
    agent = dataclasses.replace(
        new.agent, **{name: getattr(old.agent, name) for name in _RESTART_ONLY_AGENT}
    )
    return dataclasses.replace(
        new, agent=agent, **{name: getattr(old, name) for name in _RESTART_ONLY_SECTIONS}
    )


class Runner:
    """The agent: follower + score + guard + hardware + status, driven by one loop."""

    def __init__(
        self,
        config: Config,
        hardware: Hardware,
        clock: Clock,
        link: Link | None = None,
        outbox: Outbox | None = None,
        probe: Probe | None = None,
        notifier: Notifier | None = None,
        trace: IO[str] | None = None,
        on_view: Callable[[Runner, float], None] | None = None,
        start_seq: int = 0,
        make_hardware: Callable[[Profile], Hardware] = Hardware,
    ) -> None:
        self.config = config
        self.hardware = hardware
        #: Builds the devices of a profile anew (a reload that changes the profile).
        self.make_hardware = make_hardware
        self.clock = clock
        self.link = link
        self.outbox = outbox
        self.probe = probe
        self.notifier = notifier
        self.trace = trace
        self.on_view = on_view
        self.topics = Topics(config.agent.topic_prefix, config.agent.cluster)
        self.follower = BeatFollower(config.agent.cluster, config.sync)
        self.score: Score = config.score
        self.guard = Guard(config.guard)
        self.metrics = Metrics()
        self.hlc = HybridLogicalClock(clock, node_id(config.agent.id))
        self.status = StatusBuilder(
            config.agent.id,
            config.status,
            self.hlc,
            __version__,
            config.digest,
            start_seq=start_seq,
        )
        self.counters = Counters()
        self.pending: list[ScheduledAction] = []
        self.planned_beats: set[int] = set()
        self.ledgers: dict[int, BeatLedger] = {}
        self.last_beat: int | None = None
        self.last_phase: str | None = None
        self.last_review: BeatReview | None = None
        self.last_sample: Sample | None = None
        self.last_full_sample: Sample | None = None
        # The first sample waits a full interval, so it does not measure our own start-up.
        self._next_sample = clock.monotonic() + config.agent.sample_interval_s
        self._samples = 0
        self._next_view = 0.0
        self._unsynced_since: float | None = None
        self._safe_applied = False
        self._warmed: set[tuple[int, int]] = set()
        self._inflight: dict[int, int] = {}  # MQTT mid -> outbox seq
        self._outbox_degraded: str | None = None if outbox is None else outbox.degraded
        self._trace_buf: list[
            tuple[ScheduledAction, float, float, ActionResult | None, str | None]
        ] = []
        self._pending_reload: Config | None = None
        # Commands run off the loop: their real run time is known only when they end. The
        # hardware reports each end with the run id its start had, so several runs of one
        # device may end in any order: run id -> (action name, beat it was fired in).
        self._commands: dict[int, tuple[str, int]] = {}
        self._last_frame_error: str | None = None
        self._last_reviewed: int | None = None
        self.stop_requested = False
        self.recent_late_ms: deque[float] = deque(maxlen=256)

    # ------------------------------------------------------------------ scheduling

    def next_deadline(self, now: float) -> float:
        """The local time of the next thing ``step`` must do (capped at MAX_WAIT_S away)."""
        candidates = [now + MAX_WAIT_S]
        if self.pending:
            candidates.append(self.pending[0].at)
        follower_next = self.follower.next_deadline()
        if follower_next is not None:
            candidates.append(follower_next)
        hw_next = self.hardware.next_deadline()
        if hw_next is not None:
            candidates.append(hw_next)
        if self.probe is not None:
            candidates.append(self._next_sample)
        return min(candidates)

    def _retime(self) -> None:
        """Re-derive pending action times from the follower's current model."""
        if not self.pending:
            return
        fresh: dict[tuple[int, int], ScheduledAction] = {}
        for beat in {sa.beat_index for sa in self.pending}:
            for sa in self.score.due(beat, self.follower):
                fresh[(beat, sa.rule)] = sa
        # An action the score no longer places in its beat (the bar was learnt, the beat
        # was renumbered) is dropped; the rest follow the follower's latest model.
        retimed = [
            dataclasses.replace(sa, at=new.at, deadline=new.deadline)
            for sa in self.pending
            if (new := fresh.get((sa.beat_index, sa.rule))) is not None
        ]
        retimed.sort(key=lambda s: (s.at, -s.action.priority))
        self.pending = retimed

    def _plan(self, beat: int, now: float) -> None:
        if beat in self.planned_beats:
            return
        self.planned_beats.add(beat)
        ledger = self.ledgers.setdefault(beat, BeatLedger())
        due = [sa for sa in self.score.due(beat, self.follower) if sa.deadline > now]
        if not due:
            return
        phase_seconds = self.follower.beat_seconds() / 3.0
        admission = self.guard.admit(beat, due, phase_seconds, now)
        admitted = list(admission.admitted)
        ledger.planned += len(admitted)
        for candidate, reason in admission.shed:
            ledger.shed[reason] += 1
            self.counters.shed[reason] += 1
            if self.trace is not None and isinstance(candidate, ScheduledAction):
                self._trace_buf.append((candidate, now, 0.0, None, f"shed:{reason}"))
        self.pending.extend(sa for sa in admitted if isinstance(sa, ScheduledAction))
        self.pending.sort(key=lambda s: (s.at, -s.action.priority))

    # ------------------------------------------------------------------ one wake-up

    def step(self, item: Inbound | None, now: float) -> None:
        if item is not None:
            self._receive(item, now)
        self._handle(self.follower.tick(now), now)
        self._fire_due(now)
        for result in self.hardware.tick(self.clock.monotonic()):
            self._note_followup(result)
        self._watch_sync(now)
        if self.probe is not None and now >= self._next_sample and not self._imminent(now):
            # A light sample (system CPU, memory, load, throttling: ~50 us) every interval;
            # a full one (process CPU and RSS, temperature, disk: ~100-180 us) every 5th.
            full = self._samples % FULL_SAMPLE_EVERY == 0
            self._samples += 1
            self.last_sample = self.probe.sample(now, full=full)
            if full:
                self.last_full_sample = self.last_sample
            self.guard.observe(self.last_sample)
            self.metrics.observe(self.last_sample)
            self._next_sample = now + self.config.agent.sample_interval_s
        self._pump_outbox()
        if self.on_view is not None and now >= self._next_view and not self._imminent(now):
            self._next_view = now + 0.2
            self.on_view(self, now)

    def _imminent(self, now: float) -> bool:
        return bool(self.pending) and self.pending[0].at - now < 0.01

    def _receive(self, item: Inbound, now: float) -> None:
        if item.kind == "message":
            self.metrics.record_bytes(len(item.payload), now)
            if item.topic == self.topics.beat:
                self.counters.frames += 1
                try:
                    frame = decode_beat_frame(item.payload)
                except FrameError as exc:
                    self._bad_frame(f"beat frame on {item.topic}: {exc}")
                    return
                self.hlc.merge(frame.hlc)
                self._handle(self.follower.receive(frame, item.arrived_at, item.wall_at), now)
                self._retime()
            elif item.topic == self.topics.bar:
                try:
                    decode_bar_report(item.payload)
                    self.counters.bar_reports += 1
                except FrameError as exc:
                    self._bad_frame(f"bar report on {item.topic}: {exc}")
        elif item.kind == "ack":
            seq = self._inflight.pop(item.mid, None)
            if seq is not None and self.outbox is not None:
                self.outbox.ack(seq)
                self.counters.claims_acked += 1
        elif item.kind == "connected":
            log.info("broker connected")
        elif item.kind == "disconnected":
            log.warning("broker connection lost (%s); free-running on the local model", item.reason)

    def _bad_frame(self, message: str) -> None:
        self.counters.frames_bad += 1
        # Say it once per kind of problem, then count: a flood must not flood the log.
        if message != self._last_frame_error:
            log.warning("dropped malformed %s (%d so far)", message, self.counters.frames_bad)
            self._last_frame_error = message

    def _handle(self, events: list[SyncEvent], now: float) -> None:
        for event in events:
            if isinstance(event, BeatStarted):
                self.last_beat = event.beat_index
                self._apply_reload()
                if self._may_fire():
                    self._plan(event.beat_index, now)
                    self._plan(event.beat_index + 1, now)
            elif isinstance(event, PhaseStarted):
                self.last_beat, self.last_phase = event.beat_index, event.phase
                if event.phase == "review":
                    self._review(event.beat_index, now)
            elif isinstance(event, TempoChanged):
                log.info(
                    "tempo %.1f -> %.1f BPM at beat %d",
                    event.old_bpm,
                    event.new_bpm,
                    event.beat_index,
                )
            elif isinstance(event, BeatJumped):
                log.warning(
                    "beat index jumped %d -> %d (pulse restart or failover)",
                    event.from_beat,
                    event.to_beat,
                )
                self._renumber(event.to_beat - event.from_beat)
            elif isinstance(event, SyncLost):
                log.warning("beat lost after %.1f s of silence", event.silent_s)
            elif isinstance(event, SyncRegained):
                log.info("beat regained (error %.2f ms)", event.error_s * 1000)

    def _renumber(self, offset: int) -> None:
        """Carry what is planned over to the pulse's new numbering, so a beat already
        planned (or half fired) under its old number is not planned and fired again."""
        self.pending = [
            dataclasses.replace(sa, beat_index=sa.beat_index + offset) for sa in self.pending
        ]
        self.planned_beats = {b + offset for b in self.planned_beats}
        self.ledgers = {b + offset: ledger for b, ledger in self.ledgers.items()}
        self._warmed.clear()
        self._commands = {
            run: (name, beat + offset) for run, (name, beat) in self._commands.items()
        }

    def _may_fire(self) -> bool:
        """Fire on a locked or free-running timeline, and on a lost one until the device's
        limit; never while still acquiring (the timeline is not known well enough yet)."""
        state = self.follower.state
        if state in (SyncState.LOCKED, SyncState.FREE_RUNNING):
            return True
        return state is SyncState.LOST and not self._safe_applied

    def _watch_sync(self, now: float) -> None:
        """Outputs go to their safe state once the beat has been lost for too long."""
        if self.follower.state is not SyncState.LOST:
            self._unsynced_since = None
            self._safe_applied = False
            return
        if self._unsynced_since is None:
            self._unsynced_since = now
        if (
            not self._safe_applied
            and now - self._unsynced_since >= self.config.agent.safe_after_lost_s
        ):
            self.hardware.safe_state("beat lost")
            self._commands.clear()  # killed by the safe state: no end will be reported
            self.counters.safe_states += 1
            self._safe_applied = True
            self.pending.clear()

    def _fire_due(self, now: float) -> None:
        while self.pending:
            head = self.pending[0]
            key = (head.beat_index, head.rule)
            if head.at - now <= WARM_S and key not in self._warmed:
                self._warmed.add(key)
                self.hardware.warm([head.action.device])
            if head.at > now:
                return
            self.pending.pop(0)
            self._warmed.discard(key)
            self._fire(head)
            now = self.clock.monotonic()

    def _fire(self, sa: ScheduledAction) -> None:
        ledger = self.ledgers.setdefault(sa.beat_index, BeatLedger())
        name = sa.action.name
        before = self.clock.monotonic()
        if before > sa.deadline:
            # Its phase is over: switching now would be wrong, so it is a miss. It did not
            # run, so it teaches the guard no duration.
            ledger.missed += 1
            self.counters.missed += 1
            self.guard.count_dropped(name, "deadline_passed", missed=True)
            self.metrics.record_action(name, 0.0, before - sa.at, True, before)
            self._trace_buf.append((sa, before, 0.0, None, "deadline_passed"))
            return
        result = self.hardware.apply(sa.action, before)
        after = self.clock.monotonic()
        late_s = before - sa.at
        ledger.busy_s += after - before
        if result.dropped is not None:
            ledger.dropped[result.dropped] += 1
            self.counters.dropped[result.dropped] += 1
            # Nothing ran, so no duration is learned (a ~0 s sample would pull the estimate
            # down just when the device struggles). A busy command device means earlier
            # runs are still going: commands take longer than the score allows, which is
            # load, so it counts as a miss (miss rate, backoff, decimation). A rate limit,
            # an isolated pin or a bad action is the device's rule or fault: counted only.
            self.guard.count_dropped(name, result.dropped, missed=result.dropped == "busy")
            self.metrics.record_action(name, after - before, late_s, False, after)
        elif not result.ok:
            ledger.failed += 1
            self.guard.record(name, after - before, late_s, False)
            self.metrics.record_action(name, after - before, late_s, False, after)
        else:
            ledger.fired += 1
            self.counters.fired += 1
            ledger.late_ms.append(late_s * 1000.0)
            self.recent_late_ms.append(late_s * 1000.0)
            if sa.action.do == "command" and result.run is not None:
                # Its cost is learned when it ends (_note_followup), from the hardware's
                # own measure of that run.
                self._commands[result.run] = (name, sa.beat_index)
            else:
                self.guard.record(name, after - before, late_s, False)
                self.metrics.record_action(name, after - before, late_s, False, after)
        if self.trace is not None:
            self._trace_buf.append((sa, before, after - before, result, result.dropped))

    def _open_beat(self, beat: int) -> int:
        """``beat``, or the next one to be reviewed if its review has passed: an outcome
        that lands late (a command's end) goes into the next review, not nowhere."""
        if self._last_reviewed is not None and beat <= self._last_reviewed:
            return self._last_reviewed + 1
        return beat

    def _note_followup(self, result: ActionResult) -> None:
        if result.dropped is not None:
            self.counters.dropped[result.dropped] += 1
        if result.run is not None and result.do in (
            "command_done",
            "command_killed",
            "command_not_started",
        ):
            entry = self._commands.pop(result.run, None)
            if entry is not None:
                self._command_ended(result, *entry)
        if not result.ok and result.error:
            log.warning("%s.%s: %s", result.device, result.do, result.error)

    def _command_ended(self, result: ActionResult, name: str, beat: int) -> None:
        if result.do == "command_not_started":
            # A fault (missing program...), not load: counted, failed, nothing learned.
            self.guard.count_dropped(name, "not_started")
            self.ledgers.setdefault(self._open_beat(beat), BeatLedger()).failed += 1
            return
        killed = result.do == "command_killed"
        duration = result.duration_s if result.duration_s is not None else float("nan")
        # An overrun is a deadline miss, and teaches the guard what it really costs.
        self.guard.record(name, duration, 0.0, killed)
        self.metrics.record_action(name, duration, 0.0, killed, result.at)
        if killed:
            self.counters.missed += 1
            self.ledgers.setdefault(self._open_beat(beat), BeatLedger()).missed += 1

    # ------------------------------------------------------------------ review and status

    def _review(self, beat: int, now: float) -> None:
        ledger = self.ledgers.pop(beat, BeatLedger())
        self._last_reviewed = beat
        self.guard.end_beat(beat)
        phase_s = self.follower.beat_seconds() / 3.0
        self.metrics.record_beat(
            beat,
            phase_s,
            ledger.busy_s,
            ledger.missed == 0,
            ledger.fired,
            self.follower.tempo_drift_ms(now),
            now,
        )
        started, cleared = self.metrics.check_alerts(now)
        for alert in started:
            log.warning(
                "alert %s started: %s (%s)", alert.name, alert.message, alert.recommendation
            )
        for alert in cleared:
            log.info("alert %s cleared", alert.name)
        self._flush_trace()
        verdict = self.guard.verdict(now)
        sample, full = self.last_sample, self.last_full_sample
        sync_state = self.follower.state
        if sync_state in (SyncState.LOST, SyncState.ACQUIRING):
            state = "blocked"
        elif ledger.failed:
            state = "failed"
        elif ledger.planned == 0 and not ledger.shed:
            state = "idle"
        else:
            state = "reviewing"
        late = sorted(ledger.late_ms)
        review = BeatReview(
            beat_index=beat,
            state=state,
            sync_state=sync_state.value,
            error_bound_ms=self.follower.error_bound_s * 1000.0,
            late_ms_p50=statistics.median(late) if late else None,
            late_ms_max=late[-1] if late else None,
            fired=ledger.fired,
            missed=ledger.missed,
            shed=dict(ledger.shed),
            dropped_by_limit=sum(ledger.dropped.values()),
            frames_rejected=dict(self.follower.rejected),
            guard_level=verdict.level.value,
            guard_reason=verdict.reason,
            recommended_tempo=self.metrics.recommended_tempo(),
            cpu_percent=None if sample is None else sample.cpu_percent,
            memory_mb=None if full is None else full.process_rss_mb,
            temperature_c=None if full is None else full.temperature_c,
            backlog=0 if self.outbox is None else self.outbox.backlog,
            outbox_dropped=0 if self.outbox is None else self.outbox.dropped,
            outbox_degraded=None if self.outbox is None else self.outbox.degraded,
            alerts=tuple(a.name for a in self.metrics.active_alerts()),
            isolated=tuple(sorted(self.hardware.isolated)),
        )
        self.last_review = review
        claim = self.status.build(review)
        if claim is not None:
            self._submit_claim(claim, now)
        if self.notifier is not None:
            self.notifier.status(self.status_line())
        # Forget ledgers of beats that can no longer be reviewed (jumps, silence).
        for old in [b for b in self.ledgers if b < beat - 4]:
            del self.ledgers[old]
        self.planned_beats = {b for b in self.planned_beats if b >= beat - 4}

    def _submit_claim(self, claim: StatusClaim, now: float) -> None:
        payload = encode(claim, self.config.status.format)
        self.counters.claims += 1
        topic = self.topics.status(self.config.agent.id)
        if self.outbox is not None:
            self.outbox.append(topic, payload, self.clock.wall())
            if self.outbox.degraded != self._outbox_degraded:  # say it once, and the recovery
                if self.outbox.degraded:
                    log.warning("outbox: %s", self.outbox.degraded)
                else:
                    log.info("outbox: back on disk")
                self._outbox_degraded = self.outbox.degraded
            self._pump_outbox()
        elif self.link is not None and self.link.connected:
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> int:
        assert self.link is not None
        content_type = (
            "application/cbor" if self.config.status.format == "cbor" else ("application/json")
        )
        return self.link.publish(
            topic, payload, qos=1, content_type=content_type, expiry_s=self.config.status.expiry_s
        )

    def _pump_outbox(self) -> None:
        """Hand claims to the link in order, at most PUBLISH_WINDOW un-acked at once."""
        if self.outbox is None or self.link is None or not self.link.connected:
            return
        room = PUBLISH_WINDOW - len(self._inflight)
        if room <= 0:
            return
        for record in self.outbox.unsent(room):
            mid = self._publish(record.topic, record.payload)
            self.outbox.mark_sent(record.seq)
            self._inflight[mid] = record.seq

    # ------------------------------------------------------------------ trace

    def _flush_trace(self) -> None:
        if self.trace is None or not self._trace_buf:
            self._trace_buf.clear()
            return
        lines = []
        for sa, fired, duration, result, note in self._trace_buf:
            shed = note is not None and note.startswith("shed:")
            lines.append(
                json.dumps(
                    {
                        "beat_index": sa.beat_index,
                        "device": sa.action.device,
                        "do": sa.action.do,
                        "rule": sa.rule,
                        "essential": sa.action.essential,
                        "intended_mono": round(sa.at, 7),
                        "deadline_mono": round(sa.deadline, 7),
                        "fired_mono": None
                        if shed or note == "deadline_passed"
                        else round(fired, 7),
                        "late_ms": None if shed else round((fired - sa.at) * 1000.0, 4),
                        "duration_ms": round(duration * 1000.0, 4),
                        "ok": bool(result.ok) if result is not None else False,
                        "shed": note[5:] if shed and note else None,
                        "dropped": None if shed else note,
                        "missed": note == "deadline_passed",
                    }
                )
            )
        self._trace_buf.clear()
        self.trace.write("\n".join(lines) + "\n")
        self.trace.flush()

    # ------------------------------------------------------------------ reload

    def request_reload(self, new: Config) -> None:
        """Use ``new`` from the next beat boundary on (the old one stays until then)."""
        self._pending_reload = new

    def _apply_reload(self) -> None:
        new = self._pending_reload
        if new is None:
            return
        self._pending_reload = None
        old = self.config
        new = _keep_restart_only(new, old)
        if new.profile != old.profile:
            if not self._rebuild_hardware(new.profile, old.profile):
                self.counters.reload_errors += 1
                return
        elif self.hardware.isolated:
            self.hardware.revive()
        self.config = new
        self.score = new.score
        if new.guard != old.guard:
            self.guard = Guard(new.guard)
        if new.status != old.status or new.digest != old.digest:
            self.status = StatusBuilder(
                new.agent.id,
                new.status,
                self.hlc,
                __version__,
                new.digest,
                start_seq=self.status.seq,
            )
        # Whatever was planned under the old score is dropped; this beat is planned anew.
        self.pending.clear()
        self.planned_beats.clear()
        self.counters.reloads += 1
        log.info("new config applied at the start of beat %s", self.last_beat)

    def _rebuild_hardware(self, profile: Profile, old_profile: Profile) -> bool:
        """Swap in the devices of ``profile``: the old ones go to their safe state and are
        released (their running commands killed, as in any safe state), then the new ones
        are built. This takes a few milliseconds of the loop, once, at the beat boundary.
        False, with the old profile built again, if the new one cannot be built at all."""
        self.hardware.close()
        # The old hardware's run ids die with it (the new one counts from 1 again).
        self._commands.clear()
        try:
            self.hardware = self.make_hardware(profile)
        except HardwareError as exc:
            log.error(
                "reload refused: the new device profile cannot be built (%s); "
                "the old devices are built again",
                exc,
            )
            self.hardware = self.make_hardware(old_profile)
            return False
        log.info("reload: devices rebuilt from the new profile (%d devices)", len(profile.devices))
        return True

    # ------------------------------------------------------------------ reporting

    def status_line(self) -> str:
        phase = self.last_phase or "-"
        backlog = 0 if self.outbox is None else self.outbox.backlog
        return (
            f"beat {self.last_beat if self.last_beat is not None else '-'} {phase}; "
            f"sync {self.follower.state.value} +/-"
            f"{self.follower.error_bound_s * 1000:.2f} ms; backlog {backlog}"
        )

    def flush(self) -> None:
        self._flush_trace()

    # ------------------------------------------------------------------ the loop

    def run_once(self) -> None:
        """Wait for the next message or deadline, then step. Used by ``run`` and tests."""
        inbox = self.link.inbox if self.link is not None else None
        now = self.clock.monotonic()
        deadline = self.next_deadline(now)
        item: Inbound | None = None
        wait = deadline - now - SPIN_S
        action_next = bool(self.pending) and self.pending[0].at <= deadline
        if inbox is not None:
            try:
                item = inbox.get(timeout=wait) if wait > 0 else inbox.get_nowait()
            except queue.Empty:
                item = None
        elif wait > 0:
            time.sleep(wait)
        if item is None and action_next:
            # Warm the path, then spin the last fraction of a millisecond.
            self._fire_due(self.clock.monotonic())
            while self.clock.monotonic() < deadline:
                pass
        self.step(item, self.clock.monotonic())
