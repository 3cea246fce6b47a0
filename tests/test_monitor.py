"""The fleet monitor: its pure view of topics, and `monitor --json` against a live agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge import __version__
from edge.broker import Mosquitto
from edge.clock import FakeClock
from edge.harness import start_agent, start_pulse, write_agent_config
from edge.hlc import HybridLogicalClock
from edge.messages import encode
from edge.monitor import FleetView
from edge.status import BeatReview, StatusBuilder, StatusConfig
from edge.testing.profiles import MOCK_LED, rule
from edge.topics import Topics


def _claim_bytes(
    agent: str,
    beat: int,
    sync: str = "locked",
    isolated: tuple[str, ...] = (),
    frames_rejected: dict[str, int] | None = None,
    inbox_dropped: int = 0,
    alerts: tuple[str, ...] = (),
    source_conflict_ms: float | None = None,
) -> bytes:
    builder = StatusBuilder(
        agent, StatusConfig(), HybridLogicalClock(FakeClock(), 7), __version__, "abc123"
    )
    review = BeatReview(
        beat_index=beat,
        state="reviewing",
        sync_state=sync,
        error_bound_ms=0.42,
        late_ms_p50=0.021,
        late_ms_max=0.3,
        fired=3,
        missed=0,
        shed={},
        dropped_by_limit=0,
        frames_rejected=frames_rejected or {},
        guard_level="full",
        guard_reason="ok",
        recommended_tempo=120.0,
        cpu_percent=12.5,
        memory_mb=31.0,
        temperature_c=51.2,
        backlog=4,
        outbox_dropped=0,
        isolated=isolated,
        inbox_dropped=inbox_dropped,
        alerts=alerts,
        source_conflict_ms=source_conflict_ms,
    )
    claim = builder.build(review)
    assert claim is not None
    return encode(claim)


def test_rows_follow_claims_and_availability() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    view.feed("backbeat/bench/agents/bench:pi-01/availability", b"online", 1.0)
    view.feed("backbeat/bench/status/bench:pi-01", _claim_bytes("bench:pi-01", 41), 1.1)
    view.feed("backbeat/bench/status/bench:pi-02", _claim_bytes("bench:pi-02", 40, "lost"), 1.2)
    view.feed("backbeat/bench/agents/bench:pi-02/availability", b"offline", 1.3)
    view.feed("backbeat/other/status/x", _claim_bytes("x", 1), 1.4)  # another cluster: ignored
    table = view.table()
    row1 = next(line for line in table.splitlines() if line.startswith("bench:pi-01"))
    assert "online" in row1 and "41" in row1 and "locked" in row1 and "0.42" in row1
    assert "0.021/0.300" in row1 and "51.2" in row1 and "full" in row1 and row1.endswith("4")
    row2 = next(line for line in table.splitlines() if line.startswith("bench:pi-02"))
    assert "offline" in row2 and "lost" in row2
    assert len(table.splitlines()) == 4  # header, rule, two agents: the other cluster is not shown
    view.feed(
        "backbeat/bench/status/bench:pi-01",
        _claim_bytes("bench:pi-01", 42, isolated=("fan", "relay")),
        1.5,
    )
    row1 = next(line for line in view.table().splitlines() if line.startswith("bench:pi-01"))
    assert row1.endswith("4  isolated: fan, relay"), row1


def test_a_source_conflict_alert_is_shown_with_its_spread() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    payload = _claim_bytes(
        "bench:pi-01", 41, alerts=("beat_source_conflict",), source_conflict_ms=140.04
    )
    view.feed("backbeat/bench/status/bench:pi-01", payload, 1.0)
    row = next(line for line in view.table().splitlines() if line.startswith("bench:pi-01"))
    assert row.endswith("alerts: beat_source_conflict (sources 140.0 ms apart)"), row


def test_rejected_input_is_shown_under_its_columns() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    payload = _claim_bytes(
        "bench:pi-01", 41, frames_rejected={"malformed": 4932, "stale": 2}, inbox_dropped=18597
    )
    view.feed("backbeat/bench/status/bench:pi-01", payload, 1.0)
    header, _, row = view.table().splitlines()[:3]
    cols = header.index("malformed"), header.index("in drop"), header.index("backlog")
    assert cols[0] < cols[1] < cols[2]
    assert row.split()[-3:] == ["4932", "18597", "4"], row
    view.feed("backbeat/bench/status/bench:pi-02", _claim_bytes("bench:pi-02", 41), 1.1)
    quiet = next(line for line in view.table().splitlines() if line.startswith("bench:pi-02"))
    assert quiet.split()[-3:] == ["0", "0", "4"], quiet


def test_a_malformed_claim_is_counted_and_shown() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    assert view.feed("backbeat/bench/status/bench:pi-01", b"\xff\x00garbage", 1.0) is None
    assert view.bad == 1
    assert "1 malformed claim" in view.table() and "bench:pi-01" in view.last_error


@pytest.mark.broker
@pytest.mark.slow
def test_monitor_json_prints_a_line_per_claim(tmp_path: Path, mosquitto: Mosquitto) -> None:
    profile = MOCK_LED + rule("led", "toggle", essential=True)
    config = write_agent_config(tmp_path, mosquitto.url, profile)
    agent = start_agent(config, None, tmp_path / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        time.sleep(1.0)
        monitor = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "monitor",
                "--broker",
                mosquitto.url,
                "--cluster",
                "bench",
                "--json",
                "--duration",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        pulse.stop()
        agent.stop()
    assert monitor.returncode == 0, monitor.stderr
    lines = [json.loads(x) for x in monitor.stdout.splitlines()]
    assert len(lines) >= 8
    assert all(
        x["type"] == "backbeat.statusclaim.v1" and x["agent_id"] == "bench:pi-01" for x in lines
    )
    beats = [x["beat_index"] for x in lines]
    assert beats == sorted(beats)
