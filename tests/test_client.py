"""edge.client without a broker: options read by the agent's config reader, the forecast and
the callback thread in fake time, claims, budgets. The process tests (a real Mosquitto and
pulse) are in test_client_process.py."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.client import BeatClient, BeatClientClosed, BeatClientError, Budget, BudgetExpired
from edge.client_dispatch import Dispatcher, Interest, Tick, Waiter
from edge.clock import FakeClock
from edge.errors import ConfigError, FrameError
from edge.hardware import Hardware
from edge.inbox import Inbound
from edge.messages import BeatFrame, decode_status_claim, encode
from edge.runner import Runner

BPM = 120.0
BEAT = 60.0 / BPM
PHASE = BEAT / 3


def _client(tmp_path: Path, **options: dict[str, object]) -> BeatClient:
    options.setdefault("outbox", {"directory": str(tmp_path / "outbox")})
    return BeatClient("mqtt://127.0.0.1:1883", "bench", "bench:prog", **options)


class Fed:
    """A client whose runner has no link and runs on a fake clock, fed frames by hand."""

    def __init__(self, tmp_path: Path, beats: int = 12) -> None:
        self.clock = FakeClock(monotonic=500.0, wall=1_800_000_000.0)
        self.client = _client(tmp_path)
        config = self.client.config
        self.runner = Runner(config, Hardware(config.profile), self.clock)
        self.runner.claim_hook = self.client._decorate
        self.client.runner = self.runner
        self.start = self.clock.monotonic() + 0.1  # beat 0 of the pulse, local time
        self.feed(range(beats))

    def feed(self, beats: range) -> None:
        wall0 = self.clock.wall() - self.clock.monotonic()
        for k in beats:
            at = self.start + k * BEAT
            self.clock.set(at + 0.0005)
            frame = BeatFrame(
                cluster_id="bench",
                beat_index=k,
                downbeat=k % 4 == 0,
                phase="plan",
                hlc=f"{int(wall0 + at) & 0xFFFF:04x}:0000:0001",
                deadline_at=datetime.fromtimestamp(wall0 + at + PHASE, UTC),
                tempo_bpm=BPM,
                window_id=f"{k // 4:032x}",
            )
            item = Inbound("message", at + 0.0005, wall0 + at, "backbeat/bench/beat", encode(frame))
            self.runner.step(item, self.clock.monotonic())

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.clock, self.client._forecast, self.client._passed)


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    bench = Fed(tmp_path)
    yield bench
    bench.runner.hardware.close()


# ---------------------------------------------------------------------- options


def test_options_are_the_agents_sections_read_by_its_reader(tmp_path: Path) -> None:
    client = _client(
        tmp_path,
        status={"every": 4, "format": "json"},
        sync={"lock_after_frames": 3},
        agent={"topic_prefix": "bb"},
        broker={"keepalive_s": 30},
    )
    config = client.config
    assert (config.agent.id, config.agent.cluster, config.agent.topic_prefix) == (
        "bench:prog",
        "bench",
        "bb",
    )
    assert config.status.every == 4 and config.status.format == "json"
    assert config.sync.lock_after_frames == 3 and config.broker.keepalive_s == 30
    assert config.profile.devices == {} and config.score.rules == ()
    assert config.outbox.directory == tmp_path / "outbox"


def test_every_bad_option_is_listed_with_where_it_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _client(
            tmp_path,
            devices={"led": {"kind": "led"}},
            status="often",  # type: ignore[arg-type]
            broker={"url": "mqtt://elsewhere", "keepalive_s": {"a": 1}},
            agent={"profile": "hw/bench.toml"},
        )
    problems = caught.value.problems
    assert caught.value.source == "BeatClient options"
    assert any(p.startswith("devices: is not an option of BeatClient") for p in problems)
    assert any(p.startswith("status: must be a table") for p in problems)
    assert "broker.url: is not an option of BeatClient" in problems
    assert "agent.profile: is not an option of BeatClient" in problems
    assert any(p.startswith("broker.keepalive_s: must be a string, number") for p in problems)
    assert len(problems) == 5


def test_a_bad_value_is_worded_as_in_agent_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _client(tmp_path, guard={"cpu_enter": 150}, status={"every": math.nan})
    text = "\n".join(caught.value.problems)
    assert "guard.cpu_enter" in text and "150" in text
    assert "status.every" in text
    with pytest.raises(ConfigError, match=r"agent\.id"):
        BeatClient("mqtt://127.0.0.1:1883", "bench", "bad id with spaces")
    with pytest.raises(ConfigError, match=r"broker\.url"):
        BeatClient("http://nowhere", "bench", "bench:prog")


def test_strings_with_quotes_and_newlines_reach_the_reader_intact(tmp_path: Path) -> None:
    odd = tmp_path / 'out"box\nx'
    client = _client(tmp_path, outbox={"directory": str(odd)})
    assert client.config.outbox.directory == odd


# ---------------------------------------------------------------------- forecast


def test_the_forecast_names_the_next_wanted_boundary_on_the_timeline(fed: Fed) -> None:
    client, follower = fed.client, fed.runner.follower
    now = fed.clock.monotonic()
    everything = Interest(
        beat=False, downbeat=False, phases=frozenset(("plan", "execute", "review")), waiters=()
    )
    tick, _ = client._forecast(now, -math.inf, everything)
    assert tick is not None and tick.at > now - PHASE * 0.25
    assert tick.at == follower.phase_start(tick.beat_index, tick.phase)
    only_downbeats = Interest(beat=False, downbeat=True, phases=frozenset(), waiters=())
    tick, _ = client._forecast(now, -math.inf, only_downbeats)
    assert tick is not None and tick.downbeat and tick.beat_index % 4 == 0 and tick.phase == "plan"
    assert tick.deadline == follower.phase_start(tick.beat_index, "execute")
    nothing = Interest(beat=False, downbeat=False, phases=frozenset(), waiters=())
    tick, look_again = client._forecast(now, -math.inf, nothing)
    assert tick is None and look_again is not None and look_again > now + BEAT


def test_no_boundary_while_the_beat_is_not_followed(tmp_path: Path) -> None:
    bench = Fed(tmp_path, beats=1)  # acquiring: one frame is not a lock
    try:
        beat = Interest(beat=True, downbeat=False, phases=frozenset(), waiters=())
        assert bench.client._forecast(bench.clock.monotonic(), -math.inf, beat) == (None, None)
    finally:
        bench.runner.hardware.close()


# ---------------------------------------------------------------------- the callback thread


def test_callbacks_run_exactly_at_their_boundaries_in_fake_time(fed: Fed) -> None:
    dispatcher = fed.dispatcher()
    seen: list[tuple[str, Tick, float]] = []
    dispatcher.add("beat", lambda t: seen.append(("beat", t, fed.clock.monotonic())))
    dispatcher.add("downbeat", lambda t: seen.append(("down", t, fed.clock.monotonic())))
    dispatcher.add("execute", lambda t: seen.append(("exec", t, fed.clock.monotonic())))
    end = fed.clock.monotonic() + 8 * BEAT
    while fed.clock.monotonic() < end:
        dispatcher._once()
    beats = [t.beat_index for kind, t, _ in seen if kind == "beat"]
    assert beats == list(range(beats[0], beats[0] + len(beats))) and len(beats) >= 7
    assert [t.beat_index for kind, t, _ in seen if kind == "down"] == [
        b for b in beats if b % 4 == 0
    ]
    assert [t.beat_index for kind, t, _ in seen if kind == "exec"][:3] == beats[:3]
    for kind, tick, at in seen:
        assert at == tick.at == tick.started  # the fake clock's spin lands on it
        expected = fed.start + tick.beat_index * BEAT + (PHASE if kind == "exec" else 0.0)
        assert abs(tick.at - expected) < 0.002, (kind, tick)
    counts = dispatcher.counts
    assert counts.callbacks == len(seen) and counts.errors == counts.overran == 0


def test_a_raising_callback_is_counted_and_the_others_still_run(fed: Fed) -> None:
    dispatcher = fed.dispatcher()
    ran: list[int] = []

    def broken(tick: Tick) -> None:
        raise RuntimeError("sensor unplugged")

    dispatcher.add("beat", broken)
    dispatcher.add("beat", lambda t: ran.append(t.beat_index))
    end = fed.clock.monotonic() + 3 * BEAT
    while fed.clock.monotonic() < end:
        dispatcher._once()
    assert len(ran) >= 2 and dispatcher.counts.errors == len(ran)


def test_a_slow_callback_is_reported_and_boundaries_are_skipped_not_queued(fed: Fed) -> None:
    dispatcher = fed.dispatcher()
    ran: list[int] = []

    def slow(tick: Tick) -> None:
        ran.append(tick.beat_index)
        if len(ran) == 1:
            fed.clock.advance(2.5 * BEAT)  # runs through the next two beats

    dispatcher.add("beat", slow)
    end = fed.clock.monotonic() + 6 * BEAT
    while fed.clock.monotonic() < end:
        dispatcher._once()
    assert ran[1] - ran[0] == 3  # the two beats it ran through were not run late
    assert dispatcher.counts.overran == 1 and dispatcher.counts.skipped == 2
    assert all(b - a == 1 for a, b in itertools.pairwise(ran[1:]))


def test_a_waiter_resumes_at_its_boundary_and_is_failed_on_stop(fed: Fed) -> None:
    dispatcher = fed.dispatcher()
    loop = asyncio.new_event_loop()
    try:
        first = Waiter(loop, loop.create_future(), "review", 2, fed.clock.monotonic())
        never = Waiter(loop, loop.create_future(), "plan", 1_000_000, fed.clock.monotonic())
        dispatcher.wait_for(first)
        dispatcher.wait_for(never)
        while not first.future.done() and fed.clock.monotonic() < fed.start + 40 * BEAT:
            dispatcher._once()
            loop.run_until_complete(asyncio.sleep(0))
        tick = first.future.result()
        assert tick.phase == "review" and tick.beat_index % 2 == 0
        assert tick.at > first.after and tick.at == fed.runner.follower.phase_start(
            tick.beat_index, "review"
        )
        dispatcher.stop(0.1, BeatClientClosed("stopped"))
        loop.run_until_complete(asyncio.sleep(0))
        with pytest.raises(BeatClientClosed):
            never.future.result()
    finally:
        loop.close()


# ---------------------------------------------------------------------- claims and budgets


def test_emit_status_claim_fills_what_the_agent_fills_and_the_beat_claims_carry_it(
    fed: Fed,
) -> None:
    client, runner = fed.client, fed.runner
    before = runner.status.seq
    claim = client.emit_status_claim("executing", progress=0.25, notes="warming up")
    again = decode_status_claim(encode(claim))
    assert again == claim  # within the contract, as the collector decodes it
    assert (claim.agent_id, claim.state, claim.progress, claim.notes) == (
        "bench:prog",
        "executing",
        0.25,
        "warming up",
    )
    assert claim.beat_index == runner.last_beat
    assert claim.metadata is not None and claim.metadata["seq"] == before + 1
    assert claim.metadata["client"]["boundaries"] == 0
    # The next per-beat claim carries the declared state on.
    assert runner.last_review is not None and runner.last_beat is not None
    built = runner.status.build(replace(runner.last_review, beat_index=runner.last_beat + 1))
    assert built is not None
    carried = client._decorate(built)
    assert (carried.state, carried.progress, carried.notes) == ("executing", 0.25, "warming up")
    final = runner.final_claim()
    assert final is not None
    final_claim = decode_status_claim(final[1])
    assert final_claim.state == "idle" and final_claim.metadata is not None
    assert final_claim.metadata["final"] is True and "client" in final_claim.metadata


def test_a_claim_outside_the_contract_is_refused_counted_and_uses_no_seq(fed: Fed) -> None:
    client, runner = fed.client, fed.runner
    before = runner.status.seq
    with pytest.raises(FrameError) as caught:
        client.emit_status_claim("executing", progress=1.5)
    assert caught.value.field == "progress"
    with pytest.raises(FrameError, match="state"):
        client.emit_status_claim("dancing")  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="notes"):
        client.emit_status_claim("executing", notes="x" * 300)
    assert runner.status.seq == before and client._claims_refused == 3
    assert client._declared is None  # the declared state stays as it was
    claim = client.emit_status_claim("planning")
    assert claim.metadata is not None and claim.metadata["client"]["claims_refused"] == 3


def test_a_budget_reports_an_overrun_and_a_cooperative_cancel(fed: Fed) -> None:
    client = fed.client
    client.clock = fed.clock  # budgets on the fake clock

    def work(budget: Budget) -> str:
        fed.clock.advance(0.5 * BEAT)
        return "ok"

    done = client.with_beat_budget(2, work)
    assert done.finished and not done.overran and done.value == "ok"
    assert done.budget_s == pytest.approx(2 * BEAT, rel=1e-3)
    late = client.with_beat_budget(1, lambda b: fed.clock.advance(1.5 * BEAT))
    assert late.finished and late.overran and late.overrun_s == pytest.approx(0.5 * BEAT, rel=1e-2)

    def polite(budget: Budget) -> str:
        while True:
            fed.clock.advance(0.1 * BEAT)
            budget.check()

    stopped = client.with_beat_budget(0.5, polite)
    assert stopped.cancelled and stopped.overran and not stopped.finished and stopped.value is None
    assert client._metadata()["budgets"] == {"run": 3, "finished": 2, "overran": 2, "cancelled": 1}
    with pytest.raises(ValueError, match="beats"):
        client.with_beat_budget(0, lambda b: None)
    with pytest.raises(BudgetExpired):
        Budget(1.0, 0.5, 0.0, fed.clock.monotonic() - 1, fed.clock).check()


def test_an_async_budget_is_cancelled_at_its_deadline(fed: Fed) -> None:
    client = fed.client

    async def forever(budget: Budget) -> None:
        await asyncio.sleep(10)

    async def quick(budget: Budget) -> int:
        return 7

    async def main() -> tuple[object, object]:
        return (
            await client.with_beat_budget_async(0.05, forever),
            await client.with_beat_budget_async(1, quick),
        )

    cancelled, finished = asyncio.run(main())
    assert cancelled.cancelled and not cancelled.finished  # type: ignore[attr-defined]
    assert finished.finished and finished.value == 7  # type: ignore[attr-defined]


def test_calls_that_need_a_running_client_say_so(tmp_path: Path) -> None:
    client = _client(tmp_path)
    with pytest.raises(BeatClientError, match="not started"):
        client.emit_status_claim("executing")
    with pytest.raises(BeatClientError, match="not started"):
        asyncio.run(client.sync())
    with pytest.raises(ValueError, match="beats"):
        asyncio.run(client.sync(beats=0))
    with pytest.raises(ValueError, match="phase"):
        client.on_phase("encore")  # type: ignore[arg-type]


def test_no_budget_before_the_first_frame(tmp_path: Path) -> None:
    client = _client(tmp_path)
    config = client.config
    client.runner = Runner(config, Hardware(config.profile), FakeClock())
    try:
        with pytest.raises(BeatClientError, match="tempo"):
            client.with_beat_budget(1, lambda b: None)
    finally:
        client.runner.hardware.close()
