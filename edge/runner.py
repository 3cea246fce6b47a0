"""The runner: the agent's one loop, wiring the pure core to the adapters.

Theory of operation
-------------------
``Runner.step(item, now)`` handles one wake-up; ``Runner.run_once()`` only waits for the
next message or the next deadline (through the clock) and calls it. A wake-up does, in
order:

1. hand an inbound item to the intake (``edge.intake``: decoding, the trust stage,
   plausibility, the follower and the HLC; acks and (dis)connects to the publisher);
2. let the follower emit the boundary events due by ``now`` (beat started, phase started,
   sync lost...). At each beat start the score picks the actions of *this and the next*
   beat (one beat of look-ahead, so plan-phase actions are known before their beat) and the
   guard admits, sheds or keeps only the essential ones, into the beat plan
   (``edge.plan``);
3. fire every admitted action whose time has come, or count it a miss when its deadline
   (the end of its phase) has passed (``edge.firing``); a python device's ``call`` is
   handed to its worker ahead of its time, so the worker waits for the instant itself;
4. run the hardware's own follow-ups (pulse offs, fades, dead-man, command time-outs);
5. at a beat's review phase: first count as misses the beat's actions whose deadline
   passed while they waited (after a stall the review comes in the same wake-up as they
   do: counted later they would land in no claim), then read results back, feed the
   guard and the metrics, build the StatusClaim and hand it to the claim publisher
   (``edge.publisher``: the outbox, its publish window, ack time-outs and resends);
6. sample the machine with the probe when a sample is due and nothing is imminent.

Action times are not stored once: after every frame the follower's model may move (slew,
tempo change), so pending actions are re-timed from it. The wait is precise for actions
(``edge.wait``: a blocking wait, then a short spin); the spin holds the GIL, so frames
stamped right after it are a little late; the follower's lower-envelope filter ignores
late arrivals, which is why this is safe. A reload is applied at a beat's start
(``edge.reload``); the follower's events are logged by ``edge.eventlog``.
"""

from __future__ import annotations

import logging
import math
import queue
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import IO, Protocol

from edge import __version__, reload
from edge.clock import Clock
from edge.collector import Collector
from edge.config import Config
from edge.counters import Counters
from edge.errors import EdgeError
from edge.eventlog import log_event
from edge.firing import Firing
from edge.guard import Guard, Sample
from edge.hardware import Hardware
from edge.hlc import HybridLogicalClock, node_id
from edge.inbox import Inbound
from edge.intake import Intake
from edge.loglimit import LogLimiter
from edge.lostbeat import LostBeat
from edge.messages import StatusClaim
from edge.metrics import Metrics
from edge.outbox import Outbox
from edge.outbox_seq import new_incarnation
from edge.plan import BeatPlan
from edge.profile import Profile
from edge.publisher import ACK_TIMEOUT_S as ACK_TIMEOUT_S  # re-exported: tests, tools
from edge.publisher import ClaimPublisher, Link
from edge.review import assemble, record_beat
from edge.score import ScheduledAction, Score
from edge.settle import Settler
from edge.spin import SpinLead
from edge.status import BeatReview, StatusBuilder
from edge.sync import BeatFollower, BeatJumped, BeatStarted, PhaseStarted, SyncEvent, SyncState
from edge.timesync import ENVELOPE, WALL, TimeSync
from edge.topics import Topics
from edge.trust import BeatTrust, Signer
from edge.wait import DRAIN_MAX as DRAIN_MAX  # re-exported: tests
from edge.wait import precise_next, wait

log = logging.getLogger(__name__)

#: Longest blocking wait. Stop and reload signals nudge the inbox (edge.agent), so this
#: only bounds how late one is seen when the nudge could not take the inbox's lock; every
#: wake-up costs ~0.1-0.3 ms of CPU on a Pi-class core, so it is not short. The agent
#: wakes the loop for its watchdog pings (``wake_at``); a live view caps it at VIEW_EVERY_S.
MAX_WAIT_S = 1.0
#: How late the loop may see a beat's start, so that it shares its frame's wake-up (see
#: next_deadline); events keep their own times, and actions are spun to precisely.
BOUNDARY_SLACK_S = 0.003
#: While claims wait for the publish window, the loop looks for acks this often.
ACK_POLL_S = 0.005
#: A live view (the demo's screen) is redrawn this often.
VIEW_EVERY_S = 0.2
#: A due probe sample waits up to this long for a wake-up that comes anyway (a frame, a
#: phase, an action), rather than waking the loop for itself; it is stamped when taken.
PROBE_SLACK_S = 0.25
#: The wake-up's side work (probe samples, time requests, the view) waits this long after
#: an action: taken in the action's own wake-up, a sample due at any interval locks onto
#: it (the next is due one interval later, at the next action), and where several agents
#: share a box (or other work its cores) it adds to their queue at the same instant.
QUIET_AFTER_ACTION_S = 0.02
#: A due time request waits up to this long for a wake-up that comes anyway. No longer:
#: the wake-ups that come anyway are mostly a frame's and a phase's, when the pulse (the
#: usual responder) is busiest, and requests sent only then have no fast ones among them
#: (a 0.15-0.25 ms bias of the exchange's estimate, with a quarter of its pace).
EXCHANGE_SLACK_S = 0.02
#: Every this many probe samples one is a full sample (process, temperature, disk).
FULL_SAMPLE_EVERY = 5
#: Bad input of one kind is logged once per this many seconds, then counted (loglimit).
BAD_INPUT_QUIET_S = 10.0


class Probe(Protocol):
    def sample(self, now: float, full: bool = True) -> Sample: ...


class Notifier(Protocol):
    def status(self, text: str) -> object: ...


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
        trust: BeatTrust | None = None,
        claim_signer: Signer | None = None,
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
        self.on_view = on_view
        #: Called in each wake-up that may do side work (no action imminent, none just
        #: fired): what an adapter does on the side, such as writing edge.beatmark's file.
        self.on_side_work: Callable[[], None] | None = None
        self.topics = Topics(config.agent.topic_prefix, config.agent.cluster)
        self.follower = BeatFollower(config.agent.cluster, config.sync)
        self.score: Score = config.score
        self.guard = Guard(config.guard)
        self.metrics = Metrics()
        self.hlc = HybridLogicalClock(
            clock, node_id(config.agent.id), max_ahead_s=config.agent.hlc_max_ahead_s
        )
        self.status = StatusBuilder(
            config.agent.id,
            config.status,
            self.hlc,
            __version__,
            config.digest,
            start_seq=start_seq,
            incarnation=outbox.incarnation if outbox is not None else new_incarnation(),
        )
        self.counters = Counters()
        self.publisher = ClaimPublisher(
            config, clock, self.topics, link, outbox, claim_signer, self.counters
        )
        self._bad_input = LogLimiter(log, quiet_s=BAD_INPUT_QUIET_S)
        self.intake = Intake(
            self.topics,
            self.follower,
            self.hlc,
            trust,
            self.publisher,
            self.metrics,
            self.counters,
            self._bad_input,
        )
        self.plan = BeatPlan()
        self.settler = Settler(self.plan, self.counters, self.metrics)
        self.firing = Firing(self.plan, self.settler, self.follower, clock, trace)
        self.last_beat: int | None = None
        self.last_phase: str | None = None
        self.last_review: BeatReview | None = None
        self.last_sample: Sample | None = None
        self.last_full_sample: Sample | None = None
        # The first sample waits a full interval, so it does not measure our own start-up.
        self._next_sample = clock.monotonic() + config.agent.sample_interval_s
        self._samples = 0
        self._next_view = 0.0
        self.lost = LostBeat()
        self._pending_reload: Config | None = None
        #: Given every claim (per beat and final) before it is encoded; returns the claim
        #: to send. ``edge.client`` adds the program's declared state and its counts.
        self.claim_hook: Callable[[StatusClaim], StatusClaim] | None = None
        #: The time exchange, when the agent runs one (attach_timesync).
        self.timesync: TimeSync | None = None
        #: Time responses that came beside an action, taken in once the quiet after it is
        #: over (their arrival is stamped already, so they lose nothing by waiting).
        self._held: list[Inbound] = []
        #: How long before a precise deadline the wait ends and the spin starts.
        self.spin = SpinLead()
        #: The longest blocking wait (MAX_WAIT_S; VIEW_EVERY_S with a live view).
        self.max_wait_s = MAX_WAIT_S if on_view is None else VIEW_EVERY_S
        #: A deadline from outside the loop (the agent's next watchdog ping), or None.
        self.wake_at: float | None = None
        #: Runs the cyclic garbage collector in side work, when the agent has turned its
        #: automatic runs off (edge.collector); None: the process's own policy.
        self.collector: Collector | None = None

    @property
    def trust(self) -> BeatTrust | None:
        """Between decoding and the follower when beat keys are configured (edge.trust)."""
        return self.intake.trust

    @trust.setter
    def trust(self, trust: BeatTrust | None) -> None:
        self.intake.trust = trust

    @property
    def claim_signer(self) -> Signer | None:
        """Signs every claim when [security] signing_key is set."""
        return self.publisher.signer

    @claim_signer.setter
    def claim_signer(self, signer: Signer | None) -> None:
        self.publisher.signer = signer

    def attach_timesync(self, timesync: TimeSync) -> None:
        """Run the time exchange (edge.timesync): requests from the loop, responses and
        the wall reading of frames through the intake, its reference in the claims."""
        self.timesync = timesync
        self.intake.timesync = timesync
        clock = self.clock
        self.hlc.follow(lambda: timesync.hlc_wall(clock.monotonic(), clock.wall()))

    def time_ref(self) -> str:
        """What the follower's fixed path delay comes from (``metadata.time_ref``)."""
        if self.timesync is not None:
            return self.timesync.time_ref(self.follower)
        return WALL if self.follower.wall_clock_trusted else ENVELOPE

    @property
    def recent_late_ms(self) -> deque[float]:
        """How late the last fired actions started (ms), for the demo view."""
        return self.settler.recent_late_ms

    # ------------------------------------------------------------------ scheduling

    def next_deadline(self, now: float) -> float:
        """The local time of the next thing ``step`` must do (capped at ``max_wait_s``)."""
        candidates = [now + self.max_wait_s]
        if self.wake_at is not None:
            candidates.append(self.wake_at)
        action_next = self.plan.next_at()
        if action_next is not None:
            candidates.append(action_next)
        follower_next = self.follower.next_deadline()
        if follower_next is not None:
            if self._is_next_beat_start(follower_next):
                # Seen up to BOUNDARY_SLACK_S late, a beat's start shares the wake-up of its
                # frame, which arrives just after it (one wake-up per beat less; each costs
                # ~0.1-0.3 ms of CPU). Its actions were planned a beat ahead and are timed
                # on their own; silence and loss deadlines stay exact.
                follower_next += BOUNDARY_SLACK_S
            candidates.append(follower_next)
        hw_next = self.hardware.next_deadline()
        if hw_next is not None:
            candidates.append(hw_next)
        # A sample put off by an imminent action is taken at the wake-up after it, one put
        # off by an action just fired once the quiet after it is over (never a deadline in
        # the past, which would make the loop poll until then).
        if self.probe is not None and not (now >= self._next_sample and self._imminent(now)):
            candidates.append(max(self._next_sample + PROBE_SLACK_S, self._quiet_from()))
        if self._held and not self._imminent(now):
            candidates.append(self._quiet_from())
        if self.timesync is not None:
            # The exchange's pace (ten a second while acquiring): a request waits a little
            # for a wake-up that comes anyway, and never goes out beside an action.
            asked = self.timesync.next_at()
            if asked < math.inf and not (now >= asked and self._imminent(now)):
                candidates.append(max(asked + EXCHANGE_SLACK_S, self._quiet_from()))
        if self.publisher.window_full():
            # Acks do not wake the loop (edge.mqtt_link): look for them soon while claims
            # wait for the publish window (a backlog after a reconnect drains at speed).
            candidates.append(now + ACK_POLL_S)
        safe_at = self.lost.deadline(self.config)
        if safe_at is not None:
            candidates.append(safe_at)
        return min(candidates)

    def _is_next_beat_start(self, at: float) -> bool:
        """Whether ``at`` is the start of the beat after the last one reviewed, while
        locked (frames coming; free-running, the next deadline may be the loss itself)."""
        if self.last_beat is None or self.last_phase != "review":
            return False
        if self.follower.state is not SyncState.LOCKED:
            return False
        return self.follower.phase_start(self.last_beat + 1, "plan") == at

    def _due(self, beat: int) -> list[ScheduledAction]:
        due = self.score.due(beat, self.follower)
        if self.lost.outputs_safe(self.follower.state):  # only the devices kept when lost
            keep = self.config.profile.keep_running_when_lost
            due = [sa for sa in due if sa.action.device in keep]
        return due

    def _plan(self, beat: int, now: float) -> None:
        shed = self.plan.plan(
            beat,
            self._due,
            now,
            lambda due: self.guard.admit(beat, due, self.follower.beat_seconds() / 3.0, now),
        )
        for candidate, reason in shed:
            self.counters.shed[reason] += 1
            self.firing.shed(candidate, reason)

    # ------------------------------------------------------------------ one wake-up

    def step(self, item: Inbound | None, now: float) -> None:
        if item is not None:
            self._receive(item, now)
        self._bad_input.tick(now)
        self._handle(self.follower.tick(now), now)
        self._fire_due(now)
        self.firing.prepare_calls(self.hardware, self.score)
        for result in self.hardware.tick(self.clock.monotonic()):
            self.settler.followup(self.guard, result)
        self._watch_sync(now)
        side_work = self._side_work_now(now)
        if self._held and side_work:
            held, self._held = self._held, []
            for response in held:
                self.intake.receive(response, now)
        if self.probe is not None and now >= self._next_sample and side_work:
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
        self.publisher.pump()
        if self.on_view is not None and now >= self._next_view and side_work:
            self._next_view = now + VIEW_EVERY_S
            self.on_view(self, now)
        if self.on_side_work is not None and side_work:
            self.on_side_work()
        if self.collector is not None:
            # After the wake-up's own work, so that it never delays it; outside side work it
            # runs only when long overdue.
            self.collector.collect(self._room(now) if side_work else 0.0)
        if self.timesync is not None and side_work:
            # Last: its t1 is read inside poll, right before the publish, and the response's
            # t4 is stamped on paho's thread, which needs the GIL: work of this wake-up after
            # the request (a sample, a collection: 0.1-1 ms) would make the response look
            # slower than it was. Its pace is kept to EXCHANGE_SLACK_S (next_deadline).
            self.timesync.poll(self.clock.monotonic())

    def _room(self, now: float) -> float:
        """Time until the next precise deadline: a planned action's, a hardware
        follow-up's, or the next phase boundary, where new actions may be planned."""
        upcoming = [
            self.plan.next_at(),
            self.hardware.next_deadline(),
            self.follower.next_deadline(),
        ]
        return min((t for t in upcoming if t is not None), default=math.inf) - now

    def _fire_due(self, now: float) -> None:
        self.firing.fire_due(now, self.hardware, self.score, self.guard)

    def _quiet_from(self) -> float:
        """When the quiet after the last action fired is over."""
        return self.firing.last_fired_at + QUIET_AFTER_ACTION_S

    def _side_work_now(self, now: float) -> bool:
        """Whether this wake-up may do side work: no action imminent, none just fired."""
        return now >= self._quiet_from() and not self._imminent(now)

    def _imminent(self, now: float) -> bool:
        action_next = self.plan.next_at()
        return action_next is not None and action_next - now < 0.01

    def _receive(self, item: Inbound, now: float) -> None:
        if (
            self.timesync is not None
            and item.kind == "message"
            and self.timesync.handles(item.topic)
            and not self._side_work_now(now)
        ):
            # The clock filter takes ~0.4 ms (more on a Pi) to take one in: not beside an
            # action, where it would hold the loop past the spin's start.
            self._held.append(item)
            return
        events = self.intake.receive(item, now)
        if events is not None:  # a beat frame reached the follower: its model may move
            self._handle(events, now)
            self.plan.retime(self._due)

    def _handle(self, events: list[SyncEvent], now: float) -> None:
        for event in events:
            log_event(event, signed=self.trust is not None)
            if isinstance(event, BeatStarted):
                self.last_beat = event.beat_index
                self._apply_reload()
                if self.lost.may_fire(self.follower.state, self.config):
                    self._plan(event.beat_index, now)
                    self._plan(event.beat_index + 1, now)
            elif isinstance(event, PhaseStarted):
                self.last_beat, self.last_phase = event.beat_index, event.phase
                if event.phase == "review":
                    self._review(event.beat_index, now)
            elif isinstance(event, BeatJumped):
                # Carried over, so what was planned under the old numbers is not again.
                self.plan.renumber(event.to_beat - event.from_beat)
                self.hardware.renumber_calls(event.to_beat - event.from_beat)
                self.firing.renumbered()

    def _watch_sync(self, now: float) -> None:
        state = self.follower.state
        if self.lost.watch(state, now, self.config, self.hardware, self.plan):
            self.counters.safe_states += 1

    # ------------------------------------------------------------------ review and status

    def _review(self, beat: int, now: float) -> None:
        # After a stall the review comes before the loop got to fire what waited: what is
        # past its deadline is this beat's miss, counted before the beat is closed.
        for sa in self.plan.take_overdue(beat, now):
            self.firing.miss(sa, now, self.guard)
        ledger = self.plan.review(beat)
        self.guard.end_beat(beat)
        record_beat(self.metrics, self.follower, beat, ledger, now)
        self.firing.flush_trace()
        review = assemble(
            beat,
            ledger,
            self.guard.advance(now),
            self.follower,
            self.metrics,
            (self.last_sample, self.last_full_sample),
            self.intake.frames_rejected(),
            0 if self.link is None else self.link.dropped_inbound,
            self.outbox,
            tuple(sorted(self.hardware.isolated)),
            # Not in the Link protocol: a test's fake link need not have them.
            broker=getattr(self.link, "current_broker", None),
            broker_unreachable=getattr(self.link, "unreachable", 0),
            calls=(self.hardware.call_counts(), self.hardware.call_values()),
        )
        timesync = self.timesync
        review = replace(
            review,
            time_ref=self.time_ref(),
            time_error_ms=None if timesync is None else timesync.error_ms(now),
            time_rejected={} if timesync is None else timesync.rejected,
        )
        self.last_review = review
        claim = self.status.build(review)
        if claim is not None:
            if self.claim_hook is not None:
                claim = self.claim_hook(claim)
            self._submit_claim(claim)
        if self.notifier is not None:
            self.notifier.status(self.status_line())

    def _encode_claim(self, claim: StatusClaim) -> bytes:
        return self.publisher.encode(claim)

    def _submit_claim(self, claim: StatusClaim) -> None:
        self.publisher.submit(claim)

    # ------------------------------------------------------------------ reload

    def request_reload(self, new: Config) -> None:
        """Use ``new`` from the next beat boundary on (the old one stays until then)."""
        self._pending_reload = new

    def _apply_reload(self) -> None:
        """Switch to the pending config, or refuse it (edge.reload): never fatal."""
        new, self._pending_reload = self._pending_reload, None
        if new is None:
            return
        running = reload.Running(self.config, self.guard, self.status, self.hardware)
        parts, switched = reload.switch(new, running, self.make_hardware, self.counters)
        self.hardware = parts.hardware  # the old devices built again, if the new ones failed
        if not switched:
            return
        self.config = self.publisher.config = parts.config
        self.score, self.guard, self.status = parts.config.score, parts.guard, parts.status
        # Whatever was planned under the old score is dropped; this beat is planned anew.
        self.plan.replan()
        self.counters.reloads += 1
        log.info("new config applied at the start of beat %s", self.last_beat)

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
        self.firing.flush_trace()
        self._bad_input.flush(self.clock.monotonic())

    def final_claim(self) -> tuple[str, bytes] | None:
        """The shutdown claim, as (topic, payload): the last review, now ``idle`` and
        marked final (it takes the next seq). None if no beat was reviewed yet."""
        if self.last_review is None:
            return None
        claim = self.status.final(replace(self.last_review, state="idle"))
        if self.claim_hook is not None:
            claim = self.claim_hook(claim)
        return self.publisher.topic, self._encode_claim(claim)

    def shutdown(self) -> list[tuple[str, bytes, bool]]:
        """Stop: every output to its safe state, the trace flushed. Returns what to send
        on the way out, as (topic, payload, retain): the final claim (kept in the outbox
        instead, for the next start to send first, when the link is down) and
        ``offline``."""
        try:
            self.hardware.safe_state("shutdown")
        except EdgeError as exc:
            log.error("safe state on shutdown: %s", exc)
        log.info("outputs after safe state: %s", self.hardware.check_states())
        self.flush()
        claim = self.final_claim()
        return self.publisher.farewell(None if claim is None else claim[1])

    def take_late_acks(self) -> int:
        """At exit, after the link's last wait: the acks queued since the loop's last
        wake-up (it never looks again), so the outbox does not keep, or call lost, claims
        the broker has; returns how many. Anything else queued is of no use any more."""
        if self.link is None:
            return 0
        taken = 0
        while True:
            try:
                item = self.link.inbox.get_nowait()
            except queue.Empty:
                return taken
            if item.kind == "ack" and item.mid is not None:
                self.publisher.acked(item.mid)
                taken += 1

    # ------------------------------------------------------------------ the loop

    def run_once(self) -> None:
        """Wait (on the clock) for the next message or deadline, then step. Used by the
        agent's loop and tests (a fake clock makes it move at once). Only an action's or a
        hardware follow-up's time is spun to, and its action fires first (``edge.wait``)."""
        self.handle(self.wait_next())

    def wait_next(self) -> list[Inbound]:
        """The waiting half of :meth:`run_once`: the items this wake-up took, in order
        (empty at a deadline). Apart so that ``edge.client`` can step under its lock but
        wait without it; it fires only actions that are due after a spin (a client has
        none)."""
        inbox = self.link.inbox if self.link is not None else None
        now = self.clock.monotonic()
        deadline = self.next_deadline(now)
        precise = precise_next(self.plan.next_at(), self.hardware.next_deadline())
        return wait(
            self.clock, inbox, now, deadline, precise, self.max_wait_s, self.spin, self._fire_due
        )

    def handle(self, items: list[Inbound]) -> None:
        """Step through what one wake-up took (:meth:`wait_next`): every item but the last
        is received, the last goes through :meth:`step` (None: the deadline came)."""
        for item in items[:-1]:
            self._receive(item, self.clock.monotonic())
        self.step(items[-1] if items else None, self.clock.monotonic())
