"""edge.client against a real Mosquitto and the real pulse process.

The pulse's trace says when each beat really started (this host's monotonic clock), so a
callback's own ``time.monotonic()`` at entry can be held against it. The windows are
correctness windows with margins for a loaded 2-core box (a phase is 83 ms at 240 BPM),
not precision targets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto
from edge.client import BeatClient, Budget, Tick
from edge.harness import ClaimRecorder, Proc, read_trace, start_pulse, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BPM = 240.0
BEAT = 60.0 / BPM
#: A callback may start this much before the pulse's beat (the follower's estimate) ...
EARLY_S = 0.003
#: ... and this much after it (a loaded box wakes threads late).
LATE_S = 0.025


@pytest.fixture
def pulse(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Proc]:
    proc = start_pulse(
        mosquitto.url, "bench", BPM, tmp_path / "pulse.jsonl", tmp_path / "pulse.log"
    )
    try:
        yield proc
    finally:
        proc.stop()


def _beats(tmp_path: Path) -> dict[int, float]:
    """The pulse's beat starts by index (local monotonic)."""
    return {
        int(row["beat_index"]): float(row["intended_mono"])  # type: ignore[call-overload, arg-type]
        for row in read_trace(tmp_path / "pulse.jsonl")
    }


def _client(tmp_path: Path, mosquitto: Mosquitto) -> BeatClient:
    return BeatClient(
        mosquitto.url, "bench", "bench:prog", outbox={"directory": str(tmp_path / "outbox")}
    )


def test_callbacks_on_every_beat_and_downbeats_only_on_downbeats(
    tmp_path: Path, mosquitto: Mosquitto, pulse: Proc
) -> None:
    client = _client(tmp_path, mosquitto)
    lock = threading.Lock()
    seen: list[tuple[str, Tick, float, str]] = []

    def note(kind: str) -> Callable[[Tick], None]:
        def callback(tick: Tick) -> None:
            entered = time.monotonic()
            with lock:
                seen.append((kind, tick, entered, threading.current_thread().name))

        return callback

    client.on_beat(note("beat"))
    client.on_downbeat(note("down"))
    client.on_phase("execute")(note("exec"))
    with client:
        assert wait_until(lambda: sum(k == "beat" for k, *_ in seen) >= 14, 25), pulse.log()
    beats = _beats(tmp_path)
    on_beat = [t.beat_index for k, t, _, _ in seen if k == "beat"]
    assert on_beat == list(range(on_beat[0], on_beat[0] + len(on_beat)))  # every beat, once
    for kind, tick, entered, thread in seen:
        assert thread == "beat-callbacks"  # off paho's thread and the beat loop
        start = beats[tick.beat_index] + (BEAT / 3 if kind == "exec" else 0.0)
        assert start - EARLY_S <= entered <= start + LATE_S, (kind, tick, entered - start)
    # The pulse's bar is 4 from beat 0; downbeats once the bar is known, only on downbeats.
    downs = [t.beat_index for k, t, _, _ in seen if k == "down"]
    assert downs and all(b % 4 == 0 for b in downs)
    known = [t.beat_index for k, t, _, _ in seen if k == "beat" and t.bar_position is not None]
    assert [b for b in known if b % 4 == 0 and b >= downs[0]] == downs
    executes = [t.beat_index for k, t, _, _ in seen if k == "exec"]
    assert set(on_beat[1:-1]) <= set(executes)
    assert client.counts.errors == 0 and client.counts.overran == 0


def test_await_sync_resumes_on_the_boundary(
    tmp_path: Path, mosquitto: Mosquitto, pulse: Proc
) -> None:
    async def follow(client: BeatClient) -> list[tuple[int, str, float]]:
        resumed = []
        await asyncio.wait_for(client.sync(), 20)  # locked and on the beat
        for _ in range(4):
            tick = await asyncio.wait_for(client.sync(beats=1, phase="execute"), 5)
            resumed.append((tick.beat_index, "execute", time.monotonic()))
        for _ in range(2):
            tick = await asyncio.wait_for(client.sync(beats=2), 5)
            resumed.append((tick.beat_index, "plan", time.monotonic()))
        return resumed

    with _client(tmp_path, mosquitto) as client:
        resumed = asyncio.run(follow(client))
    beats = _beats(tmp_path)
    execute = [b for b, phase, _ in resumed if phase == "execute"]
    assert execute == list(range(execute[0], execute[0] + 4))  # each the next boundary
    for beat, phase, at in resumed:
        start = beats[beat] + (BEAT / 3 if phase == "execute" else 0.0)
        assert start - EARLY_S <= at <= start + LATE_S, (beat, phase, at - start)
    assert all(b % 2 == 0 for b, phase, _ in resumed if phase == "plan")


def test_a_budget_that_runs_out_and_claims_within_the_contract(
    tmp_path: Path, mosquitto: Mosquitto, pulse: Proc
) -> None:
    recorder = ClaimRecorder(mosquitto.port)
    offline: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, msg: offline.append(bytes(msg.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("backbeat/bench/agents/bench:prog/availability", qos=1)
    watcher.loop_start()
    try:
        client = _client(tmp_path, mosquitto)
        with client:
            assert wait_until(lambda: client.sync_state == "locked", 20), pulse.log()

            async def forever(budget: Budget) -> None:
                await asyncio.sleep(60)

            late = client.with_beat_budget(1, lambda budget: time.sleep(1.5 * BEAT))
            cut = asyncio.run(client.with_beat_budget_async(0.5, forever))
            on_time = client.with_beat_budget(4, lambda budget: "done")
            assert late.finished and late.overran and late.overrun_s > 0.3 * BEAT
            assert cut.cancelled and not cut.finished and cut.elapsed_s < 0.5 * BEAT + 0.2
            assert on_time.finished and not on_time.overran and on_time.value == "done"
            own = client.emit_status_claim("executing", progress=0.5, notes="calibrating")

            def carried() -> bool:
                return any(
                    c.metadata is not None and c.metadata["seq"] > own.metadata["seq"]  # type: ignore[index]
                    for c in recorder.claims
                )

            assert wait_until(carried, 10)
        assert wait_until(
            lambda: any(c.metadata and c.metadata.get("final") for c in recorder.claims), 5
        )
        assert wait_until(lambda: offline[-1:] == [b"offline"], 5), offline
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        recorder.stop()
    claims = recorder.claims  # every one decoded and checked against the contract
    assert {c.agent_id for c in claims} == {"bench:prog"}
    seqs = [c.metadata["seq"] for c in claims if c.metadata is not None]
    assert len(seqs) == len(claims) and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    mine = [c for c in claims if c.notes == "calibrating"]
    assert mine and mine[0].state == "executing" and mine[0].progress == 0.5
    after = [c for c in claims if c.metadata["seq"] > own.metadata["seq"]]  # type: ignore[index]
    beat_claims = [c for c in after if not c.metadata.get("final")]  # type: ignore[union-attr]
    assert beat_claims and all(c.state == "executing" for c in beat_claims)  # declared, carried
    # The client runs the agent's time exchange too: the pulse answers, so claims carry its
    # bound on the pulse's clock.
    assert any("time_error_ms" in (c.metadata or {}) for c in beat_claims), beat_claims[-1]
    final = claims[-1]
    assert final.metadata is not None and final.metadata["final"] is True
    assert final.state == "idle"
    budgets = final.metadata["client"]["budgets"]
    assert budgets == {"run": 3, "finished": 2, "overran": 2, "cancelled": 1}
