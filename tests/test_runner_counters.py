"""What the runner counts of bad input, stalls and lost acknowledgements reaches the claims.

The runner through ``step()`` with a fake clock and a fake link (see ``test_runner``):
malformed frames and inbox drops show in the next claim, bad input is logged at a bounded
rate, misses of a stall land in their beat's claim, an unacknowledged claim is sent again
after the time-out, and trace rows say how sure the follower was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from test_runner import BEAT, Bench, FakeLink

from edge.inbox import Inbound
from edge.messages import StatusClaim, decode_status_claim
from edge.outbox import PUBLISH_WINDOW, Outbox, OutboxConfig
from edge.runner import ACK_TIMEOUT_S, BAD_INPUT_QUIET_S

BEAT_TOPIC, BAR_TOPIC = "backbeat/bench/beat", "backbeat/bench/bar"


def _meta(claim: StatusClaim) -> Mapping[str, object]:
    return dict(claim.metadata or {})


def _claims(link: FakeLink) -> list[StatusClaim]:
    return [decode_status_claim(payload) for _, payload in link.published]


def _run(bench: Bench, t_end: float, extra: list[tuple[float, str, bytes]] = ()) -> None:  # type: ignore[assignment]
    """Like ``Bench.run_until``, with ``extra`` items (time, topic, payload) handed over
    too, each at its time."""
    frames = sorted(
        [(at, BEAT_TOPIC, payload) for at, payload in bench.frames] + list(extra),
        key=lambda f: f[0],
    )
    bench.frames.clear()
    runner, clock = bench.runner, bench.clock
    while clock.monotonic() < t_end:
        now = clock.monotonic()
        target = min(runner.next_deadline(now), t_end)
        if frames:
            target = min(target, frames[0][0])
        clock.set(max(target, now))
        item = None
        if frames and frames[0][0] <= clock.monotonic():
            arrived, topic, payload = frames.pop(0)
            item = Inbound("message", arrived, clock.wall(), topic, payload)
        runner.step(item, clock.monotonic())
        assert bench.hardware.wait_for_starts(10.0)
    # what is left is kept for the next call
    bench.frames.extend((at, payload) for at, topic, payload in frames if topic == BEAT_TOPIC)
    runner.flush()


def test_malformed_frames_are_counted_in_the_next_claim_and_logged_at_a_bounded_rate(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(60))
    t0 = bench.start + 20.05 * BEAT
    # 5,000 bad frames in one second, alternating two kinds on the beat topic, and some
    # on the bar topic: garbage bytes, a truncated frame.
    kinds = (b"\xff" * 40, b'{"type": "backbeat.beatframe.v1"')
    flood = [
        (t0 + i / 5000.0, BAR_TOPIC if i % 10 == 9 else BEAT_TOPIC, kinds[i % 2])
        for i in range(5000)
    ]
    caplog.set_level(logging.WARNING, logger="edge.runner")
    _run(bench, t0 + 1.0 + 0.2, flood)  # the flood is over; reviews came during it
    during = _claims(link)
    _run(bench, bench.start + 60 * BEAT)
    claims = _claims(link)
    after = [c for c in claims if c.beat_index >= 23]
    assert after, claims
    rejected = _meta(after[0])["frames_rejected"]
    # 4,500 on the beat topic, 500 on the bar topic: each counted as what it is (a bad bar
    # report is no beat frame).
    assert isinstance(rejected, Mapping), rejected
    assert rejected["malformed"] == 4500 and rejected["malformed_bar_report"] == 500, rejected
    assert bench.runner.counters.frames_bad == 4500
    # counted as they came: the claims during the flood already show some of them
    assert any(
        0 < dict(_meta(c)["frames_rejected"]).get("malformed", 0) < 4500  # type: ignore[call-overload]
        for c in during
    )
    # two kinds (beat topic, bar topic): the first of each at once, one count each after
    # the quiet period, nothing else, however fast they came
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.runner"]
    assert 60 * BEAT > BAD_INPUT_QUIET_S + 20 * BEAT + 1.0  # the periods ended in the run
    assert len(lines) == 4, lines
    assert sum("4499 more" in line for line in lines) == 1, lines
    assert sum("499 more" in line and "bar report" in line for line in lines) == 1, lines
    # the frames between kept the beat: nothing was lost to the flood
    fired = {int(r["beat_index"]) for r in bench.rows() if r["rule"] == 0 and r["fired_mono"]}  # type: ignore[call-overload]
    assert set(range(10, 60)) <= fired


def test_frames_the_link_dropped_are_in_the_claim(tmp_path: Path, factory: MockFactory) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(30))
    _run(bench, bench.start + 15.5 * BEAT)
    assert all(_meta(c)["inbox_dropped"] == 0 for c in _claims(link))
    link.dropped_inbound = 18597
    _run(bench, bench.start + 30 * BEAT)
    last = _claims(link)[-1]
    assert _meta(last)["inbox_dropped"] == 18597
    assert bench.runner.last_review is not None
    assert bench.runner.last_review.inbox_dropped == 18597


def test_misses_of_a_stall_land_in_the_claim_of_their_beat(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(60))
    # Run to just before beat 40's actions, then stop for 5 s (SIGSTOP): the frames of the
    # stall are handed over late, all at once, when the process runs again.
    stop_at = bench.start + 40.02 * BEAT
    _run(bench, stop_at)
    resume = stop_at + 5.0
    bench.frames = [(max(at, resume), payload) for at, payload in bench.frames]
    bench.clock.set(resume)
    _run(bench, bench.start + 60 * BEAT)
    missed: dict[int, int] = {}
    for r in bench.rows():
        if r["dropped"] == "deadline_passed":
            beat = int(r["beat_index"])  # type: ignore[call-overload]
            missed[beat] = missed.get(beat, 0) + 1
    assert missed.get(40, 0) >= 1, missed  # beat 40's actions were planned and waited
    by_beat: dict[int, int] = {}
    for claim in _claims(link):
        actions = _meta(claim)["actions"]
        assert isinstance(actions, Mapping)
        by_beat[claim.beat_index] = by_beat.get(claim.beat_index, 0) + int(
            actions["deadline_misses"]
        )
    for beat, count in missed.items():
        assert by_beat.get(beat) == count, (beat, count, by_beat)
    assert bench.runner.counters.missed == sum(missed.values())
    assert not bench.runner.plan.ledgers.get(40), "a miss was counted after beat 40's review"


class AckingLink(FakeLink):
    """A link that acknowledges what it publishes, except the message ids in ``lose``."""

    def __init__(self, lose: set[int]) -> None:
        super().__init__()
        self.lose = lose
        self.acks: list[int] = []

    def publish(self, topic: str, payload: bytes, *args: object, **kwargs: object) -> int:
        mid = super().publish(topic, payload)
        if mid not in self.lose:
            self.acks.append(mid)
        return mid


def _run_acking(bench: Bench, link: AckingLink, t_end: float) -> None:
    runner, clock = bench.runner, bench.clock
    while clock.monotonic() < t_end:
        now = clock.monotonic()
        target = min(runner.next_deadline(now), t_end)
        if bench.frames:
            target = min(target, bench.frames[0][0])
        clock.set(max(target, now))
        item = None
        if link.acks:
            item = Inbound("ack", clock.monotonic(), mid=link.acks.pop(0))
        elif bench.frames and bench.frames[0][0] <= clock.monotonic():
            arrived, payload = bench.frames.pop(0)
            item = Inbound("message", arrived, clock.wall(), BEAT_TOPIC, payload)
        runner.step(item, clock.monotonic())


def test_lost_acks_do_not_hold_the_window_claims_are_sent_again(
    tmp_path: Path, factory: MockFactory
) -> None:
    # The acks of the first PUBLISH_WINDOW claims never come: without the time-out the
    # window would stay full and no claim would go out again.
    link = AckingLink(lose=set(range(1, PUBLISH_WINDOW + 1)))
    outbox = Outbox(OutboxConfig(directory=None))
    bench = Bench(tmp_path, factory, link=link, outbox=outbox)
    beats = int((ACK_TIMEOUT_S + 15.0) / BEAT)
    bench.pulse(range(beats))
    _run_acking(bench, link, bench.start + 20 * BEAT)
    first = [payload for _, payload in link.published[:PUBLISH_WINDOW]]
    assert len(link.published) == PUBLISH_WINDOW  # the window is full, nothing more goes
    assert outbox.inflight == PUBLISH_WINDOW
    _run_acking(bench, link, bench.start + beats * BEAT)
    payloads = [payload for _, payload in link.published]
    # each was sent again once its time-out passed (oldest first), and then acked
    again = [p for p in payloads[PUBLISH_WINDOW:] if p in first]
    assert again == first
    seqs = [int(_meta(decode_status_claim(p))["seq"]) for p in payloads]  # type: ignore[call-overload]
    new = [seq for seq in seqs[PUBLISH_WINDOW:] if seq > PUBLISH_WINDOW]
    assert new == list(range(PUBLISH_WINDOW + 1, seqs[-1] + 1))  # the rest once each, in order
    assert len(new) > 20  # the claims kept going out
    assert outbox.backlog <= 1 and bench.runner.counters.claims_acked >= len(payloads) - 17


@pytest.mark.parametrize("event_first", [True, False])
def test_no_claim_is_sent_again_while_disconnected_or_just_after_the_reconnect(
    tmp_path: Path, factory: MockFactory, event_first: bool
) -> None:
    link = AckingLink(lose={1})
    outbox = Outbox(OutboxConfig(directory=None))
    bench = Bench(tmp_path, factory, link=link, outbox=outbox)
    beats = int((2 * ACK_TIMEOUT_S + 10.0) / BEAT)
    bench.pulse(range(beats))
    _run_acking(bench, link, bench.start + 8.5 * BEAT)
    first = link.published[0][1]
    link.connected = False  # an outage longer than the time-out: paho keeps message 1
    _run_acking(bench, link, bench.start + 8.5 * BEAT + ACK_TIMEOUT_S + 5.0)
    link.connected = True
    now = bench.clock.monotonic()
    if event_first:  # else the runner sees the link up before the event reaches it
        bench.runner.step(Inbound("connected", now), now)
    sent = len(link.published)
    _run_acking(bench, link, now + ACK_TIMEOUT_S - 1.0)
    assert first not in [p for _, p in link.published[sent:]]  # paho re-sends it itself
    _run_acking(bench, link, now + ACK_TIMEOUT_S + 1.0)
    assert first in [p for _, p in link.published[sent:]]  # still no ack: ours now


def test_trace_rows_say_the_bound_and_sync_state_at_fire_time(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(30))
    bench.run_until(bench.start + 30 * BEAT)
    rows = [r for r in bench.rows() if r["fired_mono"]]
    assert rows and all(isinstance(r["error_bound_ms"], float) for r in rows)
    assert {r["sync_state"] for r in rows} <= {"locked", "free_running", "acquiring", "lost"}
    late = [r for r in rows if int(r["beat_index"]) >= 20]  # type: ignore[call-overload]
    assert late and all(r["sync_state"] == "locked" for r in late)
    # the bound is the follower's: it shrinks as it learns the beat
    bounds = [float(r["error_bound_ms"]) for r in rows]  # type: ignore[arg-type]
    assert bounds[-1] <= bounds[0]
    assert bounds[-1] == pytest.approx(bench.runner.follower.error_bound_s * 1000.0, abs=0.5)


def test_the_outbox_window_frees_a_lost_slot_and_hands_the_record_out_again() -> None:
    outbox = Outbox(OutboxConfig(directory=None))
    for i in range(PUBLISH_WINDOW + 2):
        outbox.append("s/t", b"claim %d" % i, 0.0)
    batch = outbox.to_publish()
    assert [r.seq for r in batch] == list(range(1, PUBLISH_WINDOW + 1))
    for mid, record in enumerate(batch, start=100):
        outbox.published(record.seq, mid)
    assert outbox.to_publish() == []  # the window is full
    assert outbox.resend(100) and not outbox.resend(100) and not outbox.resend(999)
    again = outbox.to_publish()
    assert [r.seq for r in again] == [1]  # the oldest first: the record given up on
    outbox.published(1, 200)
    assert not outbox.acked(100)  # the old id is forgotten
    assert outbox.acked(200) and outbox.backlog == PUBLISH_WINDOW + 1
    assert [r.seq for r in outbox.to_publish()] == [PUBLISH_WINDOW + 1]
