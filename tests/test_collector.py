"""The loop's garbage collection (edge.collector): CPython's thresholds, run only where
there is room before the next precise deadline, forced when long overdue; and in the
runner, only in side work."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from test_runner import BEAT, Bench, FakeLink

from edge.collector import FORCE_FACTOR, MARGIN_S, START_ESTIMATE_S, Collector
from edge.runner import QUIET_AFTER_ACTION_S


class FakeGc:
    """gc.get_count / gc.collect as CPython keeps them, and a timer each collection moves."""

    def __init__(self, took_s: tuple[float, float, float] = (0.0002, 0.002, 0.02)) -> None:
        self.counts = [0, 0, 0]
        self.runs: list[int] = []
        self.took_s = took_s
        self.now = 0.0

    def get_count(self) -> tuple[int, int, int]:
        return self.counts[0], self.counts[1], self.counts[2]

    def collect(self, gen: int) -> int:
        self.runs.append(gen)
        self.now += self.took_s[gen]
        for young in range(gen + 1):
            self.counts[young] = 0
        if gen < 2:
            self.counts[gen + 1] += 1
        return 0

    def timer(self) -> float:
        return self.now

    def collector(self) -> Collector:
        return Collector(self.get_count, self.collect, (700, 10, 10), self.timer)


def test_the_generation_due_follows_cpythons_thresholds() -> None:
    fake = FakeGc()
    collector = fake.collector()
    assert collector.collect(1.0) is None  # nothing allocated
    fake.counts = [701, 3, 0]
    assert collector.collect(1.0) == 0
    fake.counts = [701, 11, 4]
    assert collector.collect(1.0) == 1
    fake.counts = [701, 11, 11]
    assert collector.collect(1.0) == 2
    assert fake.runs == [0, 1, 2] and collector.collections == [1, 1, 1]
    fake.counts = [700, 50, 50]  # the young generation not over its threshold: nothing
    assert collector.collect(1.0) is None


def test_a_collection_waits_for_room_before_the_next_deadline() -> None:
    fake = FakeGc()
    collector = fake.collector()
    fake.counts = [701, 11, 0]
    need = START_ESTIMATE_S[1] + MARGIN_S
    assert collector.collect(need * 0.9) is None and collector.deferred == 1
    assert collector.collect(0.0) is None and collector.deferred == 2
    assert collector.collect(need) == 1 and fake.runs == [1]
    # Timed now: the estimate is what it took, no longer the start value.
    assert collector.estimate_s[1] == pytest.approx(0.002)
    assert collector.longest_s == pytest.approx(0.002)
    assert collector.summary() == (
        "garbage collections in the loop: 0 young, 1 middle, 0 full, longest 2.0 ms; "
        "0 without room for them"
    )


def test_a_slow_collection_widens_the_room_it_waits_for_then_decays() -> None:
    fake = FakeGc(took_s=(0.03, 0.002, 0.02))
    collector = fake.collector()
    fake.counts = [701, 0, 0]
    assert collector.collect(1.0) == 0
    fake.counts = [701, 0, 0]
    assert collector.collect(0.02) is None  # it took 30 ms last time
    fake.took_s = (0.0002, 0.002, 0.02)
    for _ in range(60):
        fake.counts[0] = 701
        collector.collect(1.0)
    assert collector.estimate_s[0] < 0.001


def test_with_no_room_ever_it_collects_once_far_overdue() -> None:
    fake = FakeGc()
    collector = fake.collector()
    fake.counts = [FORCE_FACTOR * 700 - 1, 0, 0]
    assert collector.collect(0.0) is None
    fake.counts[0] += 1
    assert collector.collect(0.0) == 0
    assert collector.forced == 1


def test_no_deadline_ahead_is_room_enough() -> None:
    fake = FakeGc()
    collector = fake.collector()
    fake.counts = [701, 11, 11]
    assert collector.collect(float("inf")) == 2


def test_a_zero_threshold_means_off_as_in_cpython() -> None:
    fake = FakeGc()
    collector = Collector(fake.get_count, fake.collect, (0, 10, 10), fake.timer)
    fake.counts = [10_000, 100, 100]
    assert collector.collect(1.0) is None and fake.runs == []


def test_the_defaults_are_the_process_collector() -> None:
    collector = Collector()
    assert collector.thresholds == gc.get_threshold()
    assert collector.due() in (None, 0, 1, 2)


def test_the_runner_collects_only_away_from_actions(tmp_path: Path, factory: MockFactory) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner, clock = bench.runner, bench.clock
    fake = FakeGc()
    collector = fake.collector()
    rooms: list[tuple[float, float]] = []
    collect = collector.collect

    def recording(room_s: float) -> int | None:
        fake.counts[0] = 701  # always due: where the loop runs it is the runner's choice
        rooms.append((clock.monotonic(), room_s))
        return collect(room_s)

    collector.collect = recording  # type: ignore[method-assign]
    runner.collector = collector
    bench.pulse(range(24))
    bench.run_once_until(link, bench.start + 20 * BEAT)
    fired = [f for r in bench.rows() if isinstance(f := r["fired_mono"], float)]
    assert len(fired) >= 10 and fake.runs
    ran = [(t, room) for t, room in rooms if room > 0.0]
    assert len(ran) == len(fake.runs)  # with room 0 it waits (it is never 8x overdue here)
    for t, room in ran:
        after = [f for f in fired if f >= t]
        before = [f for f in fired if f <= t]
        # Never right before an action, and never given more room than there was.
        if after:
            assert after[0] - t >= 0.01
            assert room <= after[0] - t + 1e-6  # the trace rounds to 0.1 us
        if before:
            assert t - before[-1] >= QUIET_AFTER_ACTION_S - 1e-9


def test_the_agent_collects_in_its_loop_and_gives_the_collector_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from test_hostile_configs import _good

    import edge.agent

    _good(tmp_path, "mqtt://127.0.0.1:1")  # no broker: the loop runs all the same
    agent = edge.agent.Agent(tmp_path / "agent.toml", pin_factory=MockFactory())
    seen: list[tuple[bool, bool]] = []
    run_once = agent.runner.run_once

    def watching() -> None:
        seen.append((gc.isenabled(), isinstance(agent.runner.collector, Collector)))
        run_once()

    monkeypatch.setattr(agent.runner, "run_once", watching)
    assert gc.isenabled()
    with caplog.at_level(logging.INFO, logger="edge.agent"):
        assert agent.run(duration_s=0.5) == 0
    # What the loop's collections were is said at the exit.
    assert any(
        r.getMessage().startswith("garbage collections in the loop: ") for r in caplog.records
    )
    assert seen and set(seen) == {(False, True)}  # automatic runs off, the loop's on
    assert gc.isenabled() and agent.runner.collector is None
