"""End to end: python devices in the real agent process, a real pulse and Mosquitto.

One agent runs four python devices at 120 BPM (167 ms phases) for a dozen beats:

* ``probe`` records its own ``time.monotonic()`` at entry and returns values: every call
  must be entered inside its phase of its beat by the pulse's own timeline (a correctness
  window; the offsets are printed, the 0.5 ms target is ``scripts/bench_hardware.py``'s),
  and its values must appear in the claims under ``metadata.values.probe``;
* ``sleeper`` sleeps forever on odd beats: killed at its deadline each time, and the even
  beats after still run;
* ``boom`` raises: counted in ``metadata.calls.exceptions``, its beats' claims ``failed``,
  the one-line summary logged once;
* ``quitter`` exits its worker on its first call: restarted, and its later calls run;

then the pulse stops: the beat is lost, and ``probe``'s ``safe_call`` runs (and again at
shutdown).

A bad ``call`` is a ``check`` error naming the device (the real CLI).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.broker import Mosquitto
from edge.harness import (
    ClaimRecorder,
    pulse_beats,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.messages import StatusClaim

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BPM = 120.0
THIRD = 20.0 / BPM
PHASE_NO = {"plan": 0, "execute": 1, "review": 2}

MODULE = textwrap.dedent(
    """
    import json, os, time

    def _log(ctx, entry, out):
        with open(out, "a") as f:
            f.write(json.dumps({"entry": entry, "at": ctx.at, "deadline": ctx.deadline,
                                "beat": ctx.beat_index, "phase": ctx.phase,
                                "device": ctx.device, "tempo": ctx.tempo_bpm}) + "\\n")

    def record(ctx):
        entry = time.monotonic()
        _log(ctx, entry, ctx.params["out"])
        return {"beat": ctx.beat_index, "reading": 1.5, "unit": "V"}

    def sleep_odd(ctx):
        entry = time.monotonic()
        _log(ctx, entry, ctx.params["out"])
        if ctx.beat_index % 2:
            time.sleep(1000)

    def boom(ctx):
        raise ValueError("sensor unplugged")

    def quit_once(ctx):
        entry = time.monotonic()
        if not os.path.exists(ctx.params["marker"]):
            open(ctx.params["marker"], "w").close()
            os._exit(4)
        _log(ctx, entry, ctx.params["out"])

    def rest(sctx):
        with open(sctx.params["out"] + ".safe", "a") as f:
            f.write(sctx.reason + "\\n")
    """
)


def _profile(tmp: Path) -> str:
    return textwrap.dedent(
        f"""
        [gpio]
        pin_factory = "mock"

        [devices.probe]
        kind = "python"
        call = "probe:record"
        path = "mods"
        safe_call = "rest"
        params = {{ out = "{tmp / "probe.jsonl"}" }}

        [devices.sleeper]
        kind = "python"
        call = "probe:sleep_odd"
        path = "mods"
        params = {{ out = "{tmp / "sleeper.jsonl"}" }}

        [devices.boom]
        kind = "python"
        call = "probe:boom"
        path = "mods"

        [devices.quitter]
        kind = "python"
        call = "probe:quit_once"
        path = "mods"
        params = {{ out = "{tmp / "quitter.jsonl"}", marker = "{tmp / "quit.marker"}" }}

        [[score]]
        device = "probe"
        do = "call"
        phase = "execute"
        essential = true

        [[score]]
        device = "sleeper"
        do = "call"
        phase = "execute"
        offset = 0.25
        essential = true

        [[score]]
        device = "boom"
        do = "call"
        every = 4
        phase = "review"
        essential = true

        [[score]]
        device = "quitter"
        do = "call"
        phase = "plan"
        offset = 0.5
        essential = true
        """
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Run:
    tmp: Path
    log: str
    code: int
    claims: list[StatusClaim]
    beats: dict[int, float]  # beat index -> its start on the pulse's timeline


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from edge.broker import BrokerUnavailable, find_mosquitto, start_mosquitto

    try:
        find_mosquitto()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    broker: Mosquitto = start_mosquitto()
    tmp = tmp_path_factory.mktemp("pyact")
    (tmp / "mods").mkdir()
    (tmp / "mods" / "probe.py").write_text(MODULE, encoding="utf-8")
    try:
        claims = ClaimRecorder(broker.port)
        # The beat is lost 2 s after the last frame, so the safe_call is seen quickly.
        config = write_agent_config(
            tmp,
            broker.url,
            _profile(tmp),
            extra="[sync]\nlost_after_s = 2.0\nlost_after_beats = 4\n",
        )
        agent = start_agent(config, tmp / "agent.jsonl", tmp / "agent.log")
        pulse = start_pulse(broker.url, "bench", BPM, tmp / "pulse.jsonl", tmp / "pulse.log")
        try:
            assert wait_until(lambda: len(_rows(tmp / "probe.jsonl")) >= 12, 40), agent.log()
            pulse.stop()
            safe = tmp / "probe.jsonl.safe"
            wait_until(lambda: safe.exists() and "beat lost" in safe.read_text(), 15)
        finally:
            pulse.stop()
            code = agent.stop()
            claims.stop()
        beats = {k: start for k, (start, _) in pulse_beats(read_trace(tmp / "pulse.jsonl")).items()}
        yield Run(tmp, agent.log(), code, claims.claims, beats)
    finally:
        broker.close()


def _calls(run: Run) -> dict[str, int]:
    last = [c for c in run.claims if c.metadata and "calls" in c.metadata][-1]
    return dict(last.metadata["calls"])  # type: ignore[index]


def test_the_agent_ran_and_stopped_cleanly(run: Run) -> None:
    assert run.code == 0, run.log
    assert run.claims, run.log


def test_a_call_is_entered_inside_its_phase_of_its_beat(run: Run) -> None:
    rows = [r for r in _rows(run.tmp / "probe.jsonl") if int(r["beat"]) in run.beats]
    assert len(rows) >= 10, rows
    offsets: list[float] = []
    handoffs: list[float] = []
    for row in rows:
        entry = float(row["entry"])
        start = run.beats[int(row["beat"])] + PHASE_NO[str(row["phase"])] * THIRD
        assert row["phase"] == "execute" and row["device"] == "probe"
        assert start - 0.005 <= entry < start + THIRD, (row, entry - start)
        assert entry >= float(row["at"])  # the worker waited for it
        offsets.append((entry - start) * 1000.0)
        handoffs.append((entry - float(row["at"])) * 1000.0)
    print(
        f"\nprobe entered {statistics.median(offsets):.3f} ms (median), "
        f"{max(offsets):.3f} ms (max) after its phase boundary on the pulse's timeline "
        f"(the follower's error included); {statistics.median(handoffs):.3f} / "
        f"{max(handoffs):.3f} ms after the agent's own intended time; {len(offsets)} calls"
    )


def test_returned_values_appear_in_claims(run: Run) -> None:
    with_values = [c for c in run.claims if c.metadata and "values" in c.metadata]
    assert with_values, run.log
    values = dict(with_values[-1].metadata["values"]["probe"])  # type: ignore[index]
    assert values["reading"] == 1.5 and values["unit"] == "V"
    assert isinstance(values["beat"], int)


def test_a_hang_is_killed_at_its_deadline_and_the_next_beats_fire(run: Run) -> None:
    rows = _rows(run.tmp / "sleeper.jsonl")
    odd = [int(r["beat"]) for r in rows if int(r["beat"]) % 2]
    assert odd, rows
    later_even = [
        int(r["beat"]) for r in rows if int(r["beat"]) % 2 == 0 and int(r["beat"]) > odd[0]
    ]
    assert len(later_even) >= 2, rows  # killed, restarted, the next beats ran
    calls = _calls(run)
    assert calls["kills"] >= 2 and calls["restarts"] >= 2, calls
    assert "a call overran its deadline" in run.log
    # The probe, on its own worker, never missed a beat meanwhile.
    probe_beats = sorted(int(r["beat"]) for r in _rows(run.tmp / "probe.jsonl"))
    assert probe_beats == list(range(probe_beats[0], probe_beats[-1] + 1)), probe_beats


def test_an_exception_is_counted_reported_and_logged_once(run: Run) -> None:
    calls = _calls(run)
    assert calls["exceptions"] >= 2, calls
    assert any(c.state == "failed" for c in run.claims)
    assert run.log.count("ValueError: sensor unplugged") == 1, run.log


def test_a_worker_that_exits_is_restarted(run: Run) -> None:
    assert (run.tmp / "quit.marker").exists()
    calls = _calls(run)
    assert calls["exits"] >= 1, calls
    assert len(_rows(run.tmp / "quitter.jsonl")) >= 3, run.log


def test_safe_call_runs_when_the_beat_is_lost_and_at_shutdown(run: Run) -> None:
    reasons = (run.tmp / "probe.jsonl.safe").read_text().splitlines()
    assert reasons[0] == "beat lost" and "shutdown" in reasons, reasons
    assert "close" not in reasons, reasons  # at rest after the shutdown: not called twice


def test_check_names_the_device_of_a_bad_call(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "probe.py").write_text(MODULE + "\nvalue = 3\n", encoding="utf-8")
    profile = textwrap.dedent(
        """
        [gpio]
        pin_factory = "mock"
        [devices.nomod]
        kind = "python"
        call = "no_such_module:read"
        [devices.notcallable]
        kind = "python"
        call = "probe:value"
        path = "mods"
        [devices.fine]
        kind = "python"
        call = "probe:record"
        path = "mods"
        """
    )
    config = write_agent_config(tmp_path, "mqtt://127.0.0.1:1", profile)
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "devices.nomod.call" in done.stderr and "No module named" in done.stderr, done.stderr
    assert "devices.notcallable.call" in done.stderr and "not callable" in done.stderr
    assert "devices.fine" not in done.stderr


def test_the_demo_shows_the_simulated_sensor() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "demo",
            "--profile",
            str(root / "hw" / "python-sensor.toml"),
            "--duration",
            "8",
            "--bpm",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    screens = done.stdout.split("backbeat-edge demo (Ctrl-C to stop)")
    shown = [s for s in screens if "temperature_c=" in s]
    assert shown, done.stdout[-2000:]
    assert "python calls: done" in shown[-1] and "sensor" in shown[-1]
    assert "sensor: sensor at rest (shutdown)" in done.stderr + done.stdout
