"""What the loop's wake-ups cost: spins only for precise deadlines, the action first after
its spin, an adaptive spin lead, a beat's start sharing its frame's wake-up, the probe
never a deadline in the past, outside deadlines (watchdog), a signal's nudge, and acks
that wake nothing (but are looked for while claims wait for the publish window)."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from test_runner import BEAT, Bench, FakeLink

from edge.clock import FakeClock
from edge.config import OutboxConfig
from edge.guard import Sample
from edge.inbox import Inbound, LinkInbox
from edge.outbox import PUBLISH_WINDOW, Outbox
from edge.runner import (
    ACK_POLL_S,
    BOUNDARY_SLACK_S,
    DRAIN_MAX,
    EXCHANGE_SLACK_S,
    MAX_WAIT_S,
    PROBE_SLACK_S,
    QUIET_AFTER_ACTION_S,
)
from edge.spin import SPIN_MAX_S, SPIN_MIN_S, SPIN_START_S, SpinLead
from edge.sync import SyncState
from edge.timesync import TimeSync
from edge.timewire import decode_request, encode_response, make_response


class Record:
    """Every wait's timeout and every spin that moved a fake clock, during one test."""

    def __init__(self) -> None:
        self.spins: list[float] = []
        self.waits: list[float] = []


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> Record:
    seen = Record()
    wait, spin_until = FakeClock.wait, FakeClock.spin_until

    def recording_wait(self, inbox, timeout):  # type: ignore[no-untyped-def]
        seen.waits.append(timeout)
        return wait(self, inbox, timeout)

    def recording_spin(self: FakeClock, deadline: float) -> None:
        if deadline > self.monotonic():
            seen.spins.append(deadline)
        spin_until(self, deadline)

    monkeypatch.setattr(FakeClock, "wait", recording_wait)
    monkeypatch.setattr(FakeClock, "spin_until", recording_spin)
    return seen


# ------------------------------------------------------------------ spin lead


def test_spin_lead_starts_at_the_old_value_and_narrows_on_quiet_wakeups() -> None:
    lead = SpinLead()
    assert lead.seconds == pytest.approx(SPIN_START_S)
    for _ in range(2000):
        lead.woke(20e-6)
    assert lead.seconds == pytest.approx(SPIN_MIN_S)  # 1.25 x 20 us + 30 us < the floor
    assert lead.wakeups == 2000


def test_one_late_wakeup_widens_the_lead_at_once_then_it_decays() -> None:
    lead = SpinLead()
    for _ in range(2000):
        lead.woke(0.0)
    lead.woke(0.0004)
    assert lead.seconds >= 0.0004 * 1.25  # the next spin covers a wake-up that late
    for _ in range(140):
        lead.woke(0.0)
    assert 0.00018 < lead.peak_s < 0.00022  # halved in ~140 wake-ups
    for _ in range(2000):
        lead.woke(0.0)
    assert lead.seconds == pytest.approx(SPIN_MIN_S)


def test_a_stall_or_a_bad_reading_does_not_pin_the_lead_wide() -> None:
    lead = SpinLead()
    lead.woke(5.0)  # a 5 s stall counts as SPIN_MAX_S
    assert lead.seconds == SPIN_MAX_S and lead.peak_s == SPIN_MAX_S
    for value in (-1.0, math.nan, math.inf, -math.inf):
        lead.woke(value)  # all on time
    assert lead.peak_s < SPIN_MAX_S
    for _ in range(2000):
        lead.woke(0.0)
    assert lead.seconds == pytest.approx(SPIN_MIN_S)


# ------------------------------------------------------------------ run_once


def test_only_actions_are_spun_to_and_each_lands_on_its_time(
    tmp_path: Path, factory: MockFactory, record: Record
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(30))
    bench.run_once_until(link, bench.start + 30 * BEAT)
    bench.runner.flush()
    fired = [r for r in bench.rows() if r["fired_mono"] is not None]
    assert len(fired) >= 25
    fired_at = sorted(float(r["fired_mono"]) for r in fired)  # type: ignore[arg-type]
    # Every spin ended at an action's time; phase boundaries and the rest were not spun to.
    assert record.spins == pytest.approx(fired_at[-len(record.spins) :])
    assert 0 < len(record.spins) <= len(fired)
    for r in fired:
        assert abs(float(r["late_ms"])) < 1e-6, r  # type: ignore[arg-type]


def test_the_action_fires_before_the_rest_of_its_wakeup(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner = bench.runner
    order: list[str] = []
    tick, apply = runner.follower.tick, runner.hardware.apply

    def traced_tick(now: float):  # type: ignore[no-untyped-def]
        order.append("tick")
        return tick(now)

    def traced_apply(*args, **kwargs):  # type: ignore[no-untyped-def]
        order.append("apply")
        return apply(*args, **kwargs)

    run_once = runner.run_once

    def traced_run_once() -> None:
        order.append("wake")
        run_once()

    runner.follower.tick = traced_tick  # type: ignore[method-assign]
    runner.hardware.apply = traced_apply  # type: ignore[method-assign]
    runner.run_once = traced_run_once  # type: ignore[method-assign]
    bench.pulse(range(20))
    bench.run_once_until(link, bench.start + 20 * BEAT)
    # The toggle at 0.25 of the execute phase is no phase boundary: a wake-up of its own,
    # in which the pin is written before the follower is even asked what is due.
    wakes = " ".join(order).split("wake")
    firing = [w.split() for w in wakes if "apply" in w]
    assert len(firing) >= 15
    for calls in firing:
        assert calls[0] == "apply", calls


def test_the_wait_before_an_action_leaves_the_spin_lead(
    tmp_path: Path, factory: MockFactory, record: Record
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(12))
    bench.run_once_until(link, bench.start + 10 * BEAT)
    runner, clock = bench.runner, bench.clock
    action_at = runner.plan.next_at()
    assert action_at is not None
    while runner.next_deadline(clock.monotonic()) < action_at:
        runner.run_once()
    now, lead = clock.monotonic(), runner.spin.seconds
    assert lead < SPIN_START_S  # a fake clock wakes on time: the lead has narrowed
    record.waits.clear()
    runner.run_once()
    assert record.waits == [pytest.approx(action_at - now - lead)]
    assert record.spins[-1] == pytest.approx(action_at)


def test_a_beat_start_waits_for_its_frame_but_loss_stays_exact(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock
    bench.pulse(range(12))
    bench.run_once_until(link, bench.start + 10.5 * BEAT)
    while runner.last_phase != "review":  # to beat 10's review
        runner.run_once()
    assert runner.follower.state is SyncState.LOCKED and runner.last_phase == "review"
    start = runner.follower.phase_start(11, "plan")
    now = clock.monotonic()
    assert runner.follower.next_deadline() == pytest.approx(start)
    assert runner.next_deadline(now) == pytest.approx(start + BOUNDARY_SLACK_S)
    # the frame of beat 11 arrives just after its start: one wake-up does both
    bench.run_once_until(link, start + BOUNDARY_SLACK_S)
    assert runner.last_beat == 11 and runner.counters.frames == 12


class StubProbe:
    """A probe that gives a fixed sample, noting when it was asked (and telling
    ``on_sample``)."""

    def __init__(self, on_sample: Callable[[], object] | None = None) -> None:
        self.samples = 0
        self.at: list[float] = []
        self._on_sample = on_sample

    def sample(self, now: float, full: bool = True) -> Sample:
        self.samples += 1
        self.at.append(now)
        if self._on_sample is not None:
            self._on_sample()
        return Sample(now, 1.0, None, None, 1.0, None, 0.1, None, None, None, 0.0)


def test_a_due_sample_never_makes_a_deadline_in_the_past(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock

    probe = StubProbe()
    runner.probe = probe
    side: list[float] = []  # the adapters' side work (edge.beatmark's write) goes alike
    runner.on_side_work = lambda: side.append(clock.monotonic())
    bench.pulse(range(12))
    bench.run_once_until(link, bench.start + 8 * BEAT)
    action_at = runner.plan.next_at()
    assert action_at is not None
    runner._next_sample = action_at - 0.3  # due long since, but the action is imminent
    now = action_at - 0.004
    clock.set(now)
    assert runner._imminent(now)
    assert runner.next_deadline(now) >= action_at - runner.spin.seconds - 1e-9
    before = probe.samples
    runner.run_once()  # the action
    assert probe.samples == before  # not in the action's own wake-up
    runner.run_once()
    assert probe.samples == before + 1  # taken at the wake-up after it, once the quiet is over
    assert probe.at[-1] >= action_at + QUIET_AFTER_ACTION_S
    assert probe.at[-1] <= action_at + QUIET_AFTER_ACTION_S + 1e-3
    assert side and not [t for t in side if action_at - 0.01 < t < action_at + QUIET_AFTER_ACTION_S]
    assert side[-1] == probe.at[-1]
    # not due: a sample waits up to PROBE_SLACK_S for a wake-up that comes anyway
    assert runner.next_deadline(clock.monotonic()) <= runner._next_sample + PROBE_SLACK_S


def test_an_outside_deadline_wakes_the_loop(tmp_path: Path, factory: MockFactory) -> None:
    runner = Bench(tmp_path, factory, link=FakeLink()).runner
    now = runner.clock.monotonic()
    assert runner.next_deadline(now) == pytest.approx(now + MAX_WAIT_S)
    runner.wake_at = now + 0.3
    assert runner.next_deadline(now) == pytest.approx(now + 0.3)


def test_a_wake_item_is_nothing_to_the_runner(tmp_path: Path, factory: MockFactory) -> None:
    link = FakeLink()
    runner = Bench(tmp_path, factory, link=link).runner
    link.inbox.put(Inbound("wake", 500.0))
    runner.run_once()
    assert runner.counters.frames == 0 and runner.counters.frames_bad == 0
    assert runner.intake.frames_rejected() == {}


# ------------------------------------------------------------------ the nudge


def test_a_nudge_wakes_a_waiting_get_at_once() -> None:
    inbox = LinkInbox(4)
    got: list[Inbound] = []
    waiter = threading.Thread(target=lambda: got.append(inbox.get(timeout=10.0)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert inbox.nudge(123.0)
    waiter.join(5.0)
    assert time.monotonic() - started < 2.0
    assert [(g.kind, g.arrived_at) for g in got] == [("wake", 123.0)]


def test_a_nudge_never_blocks_on_a_held_lock() -> None:
    inbox = LinkInbox(4)
    with inbox.mutex:  # as when a signal interrupts the thread inside get()
        assert inbox.nudge(1.0) is False
    assert inbox.qsize() == 0


# ------------------------------------------------------------------ acks


def taken_after(inbox: LinkInbox, put: Callable[[], None]) -> tuple[Inbound, float]:
    """What a ``get`` (0.4 s at most) already waiting when ``put`` runs takes, and after
    how long."""
    got: list[tuple[Inbound, float]] = []

    def waiter() -> None:
        started = time.monotonic()
        item = inbox.get(timeout=0.4)
        got.append((item, time.monotonic() - started))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    put()
    thread.join(5.0)
    [(item, waited)] = got
    return item, waited


def test_an_ack_does_not_wake_a_waiting_get_but_is_taken_next() -> None:
    inbox = LinkInbox(4)
    item, waited = taken_after(
        inbox, lambda: inbox.put_control(Inbound("ack", 1.0, mid=3), wake=False)
    )
    assert item.kind == "ack" and waited >= 0.35  # taken when the wait ended, not woken by it
    inbox.put_control(Inbound("connected", 2.0))  # events still wake at once
    assert inbox.get(timeout=0.01).kind == "connected"


def test_the_link_hands_acks_over_without_waking_the_loop() -> None:
    from edge.config import BrokerConfig
    from edge.mqtt_link import MqttLink

    woken: list[str] = []
    link = MqttLink(
        BrokerConfig(host="127.0.0.1", port=1), "t", on_wake=lambda: woken.append("wake")
    )
    link._hand_over(Inbound("ack", 1.0, mid=5))
    assert woken == [] and link.inbox.get_nowait().mid == 5
    link._hand_over(Inbound("connected", 2.0))
    assert woken == ["wake"]


def test_messages_on_quiet_topics_wait_for_the_next_wakeup() -> None:
    from edge.config import BrokerConfig
    from edge.mqtt_link import MqttLink

    link = MqttLink(BrokerConfig(host="127.0.0.1", port=1), "t", quiet_topics=("b/c/time/resp/a",))
    response = Inbound("message", 1.0, topic="b/c/time/resp/a", payload=b"x")
    item, waited = taken_after(link.inbox, lambda: link._hand_over(response))
    assert item.topic == "b/c/time/resp/a" and waited >= 0.35  # not woken: taken when it ended
    frame = Inbound("message", 2.0, topic="b/c/beat", payload=b"y")
    item, waited = taken_after(link.inbox, lambda: link._hand_over(frame))
    assert item.topic == "b/c/beat" and waited < 0.3  # a frame wakes the loop at once


def test_claims_waiting_for_the_window_make_the_loop_look_for_acks(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    outbox = Outbox(OutboxConfig(directory=None))
    bench = Bench(tmp_path, factory, link=link, outbox=outbox)
    runner = bench.runner
    bench.pulse(range(40))
    bench.run_until(bench.start + 10 * BEAT)  # FakeLink never acks: the window fills
    assert not runner.publisher.window_full()  # 10 claims in flight: room left
    now = bench.clock.monotonic()
    assert runner.next_deadline(now) > now + ACK_POLL_S
    bench.run_until(bench.start + 30 * BEAT)
    assert outbox.backlog > PUBLISH_WINDOW and runner.publisher.window_full()
    now = bench.clock.monotonic()
    assert runner.next_deadline(now) == pytest.approx(now + ACK_POLL_S)
    link.connected = False  # nothing comes back while the link is down: no polling
    assert not runner.publisher.window_full()


def test_what_is_queued_is_taken_in_one_wakeup(tmp_path: Path, factory: MockFactory) -> None:
    link = FakeLink()
    runner = Bench(tmp_path, factory, link=link).runner
    link.inbox.put(Inbound("wake", 500.0))
    link.inbox.put(Inbound("ack", 500.0, mid=9))
    link.inbox.put(Inbound("message", 500.0, 0.0, "backbeat/bench/beat", b"not a frame"))
    runner.run_once()
    assert link.inbox.qsize() == 0 and runner.counters.frames_bad == 1
    assert runner.clock.monotonic() == 500.0  # no wait: all three were there
    for _ in range(DRAIN_MAX + 5):  # a flood: taken DRAIN_MAX + 1 at a time
        link.inbox.put(Inbound("wake", 500.0))
    runner.run_once()
    assert link.inbox.qsize() == 4


def attach_exchange(
    bench: Bench,
    publish: Callable[[str, bytes], object],
    connected: Callable[[], bool] = lambda: True,
) -> TimeSync:
    """A time exchange on the bench's runner, its requests handed to ``publish``."""
    timesync = TimeSync(
        "backbeat",
        "bench",
        "bench:pi-01",
        publish,
        connected,
        bench.clock.monotonic,
        None,
        rng=random.Random(1),
    )
    bench.runner.attach_timesync(timesync)
    return timesync


def test_the_exchange_paces_the_loop_while_the_link_is_up(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock
    up = [True]
    sent: list[float] = []
    timesync = attach_exchange(
        bench, lambda topic, payload: sent.append(clock.monotonic()), lambda: up[0]
    )
    now = clock.monotonic()
    asked = timesync.next_at()
    assert asked < math.inf  # the first request is due at once
    assert runner.next_deadline(now) <= max(asked, now) + EXCHANGE_SLACK_S
    for _ in range(40):  # no responder: requests at the acquiring pace, then backing off
        runner.run_once()
    assert len(sent) >= 10
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    pace = timesync.exchange.config.acquire_interval_s
    assert min(gaps) >= pace - 1e-9
    assert max(gaps[:5]) <= pace + EXCHANGE_SLACK_S + 1e-9  # the loop woke for them
    # The link down: nothing is sent, so the exchange no longer sets a deadline (one in
    # the past would make the loop poll until the link came back).
    up[0] = False
    assert timesync.next_at() == math.inf
    now = clock.monotonic()
    assert runner.next_deadline(now) > now


def test_a_time_response_beside_an_action_waits_for_the_quiet_after_it(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock
    requests: list[bytes] = []
    asked_at: list[float] = []

    def publish(topic: str, payload: bytes) -> None:
        requests.append(payload)
        asked_at.append(clock.monotonic())

    timesync = attach_exchange(bench, publish)
    bench.pulse(range(12))
    bench.run_once_until(link, bench.start + 8 * BEAT)
    action_at = runner.plan.next_at()
    assert action_at is not None and requests
    # A response to the last request arrives 4 ms before the action.
    clock.set(action_at - 0.004)
    request_id = decode_request(requests[-1]).id
    wall_ns = int(clock.wall() * 1e9)
    response = encode_response(make_response(request_id, wall_ns, wall_ns + 1000))
    topic = "backbeat/bench/time/resp/bench:pi-01"
    link.inbox.put(Inbound("message", clock.monotonic(), clock.wall(), topic, response))
    runner.run_once()
    assert not timesync.exchange.answered  # held while the action is imminent
    while runner.firing.last_fired_at < action_at:
        runner.run_once()
    assert not timesync.exchange.answered  # and in the action's own wake-up
    runner.run_once()
    assert timesync.exchange.answered
    assert clock.monotonic() >= action_at + QUIET_AFTER_ACTION_S
    # Requests too (ten a second while acquiring) keep out of the action's neighbourhood.
    assert len(asked_at) >= 5
    assert not [t for t in asked_at if action_at - 0.01 < t < action_at + QUIET_AFTER_ACTION_S]


def test_a_time_request_is_the_last_thing_its_wakeup_does(
    tmp_path: Path, factory: MockFactory
) -> None:
    # Its response is stamped on paho's thread, which waits for the GIL: a sample or a
    # collection after the request would make the response look slower than it was.
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock
    done: list[str] = []

    class Collector:
        def collect(self, room_s: float) -> None:
            done.append("collect")

    runner.probe = StubProbe(lambda: done.append("sample"))
    runner.collector = Collector()  # type: ignore[assignment]
    timesync = attach_exchange(bench, lambda topic, payload: done.append("request"))
    now = clock.monotonic()
    assert timesync.next_at() <= now  # the first request is due at once
    runner._next_sample = now  # and so is a sample
    runner.step(None, now)
    assert done == ["sample", "collect", "request"]
