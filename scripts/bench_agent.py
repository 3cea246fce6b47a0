#!/usr/bin/env python3
"""End-to-end timing of the real agent against the real pulse on loopback.

For each tempo it starts a private Mosquitto, the pulse and the agent (mock pins, three
digital actions per beat in the execute phase), lets them run for N beats, and prints:

* lateness of each fired action against the *pulse's own* beat times (its intended beat
  start plus the rule's place in the phase): p50, p99, max, in ms — this includes the beat
  follower's error, not only the agent's wake-up;
* lateness as the agent itself measured it (against its own timeline);
* deadline misses and shed actions;
* the agent's CPU use (share of one core, from /proc/PID/stat) and peak RSS (VmHWM).

Usage: .venv/bin/python scripts/bench_agent.py [--beats-60 N] [--beats-240 N] [--beats-1000 N]
Targets (issue 5): p99 lateness < 0.5 ms at 60 and 240 BPM; no deadline missed at 1000 BPM
with three digital actions per beat; < 2 % of one core at 60 BPM; peak memory < 35 MB.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge.broker import start_mosquitto
from edge.harness import read_trace, start_agent, start_pulse, write_agent_config

PROFILE = """
[gpio]
pin_factory = "mock"
[devices.a]
kind = "output"
pin = 17
[devices.b]
kind = "output"
pin = 18
[devices.c]
kind = "output"
pin = 19
[[score]]
device = "a"
do = "toggle"
offset = 0.0
essential = true
[[score]]
device = "b"
do = "toggle"
offset = 0.25
essential = true
[[score]]
device = "c"
do = "toggle"
offset = 0.5
essential = true
"""
OFFSETS = {0: 0.0, 1: 0.25, 2: 0.5}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_tempo(bpm: float, beats: int, warmup_beats: int = 10) -> dict[str, float]:
    beat_s = 60.0 / bpm
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp, start_mosquitto() as broker:
        work = Path(tmp)
        config = write_agent_config(work, broker.url, PROFILE)
        agent = start_agent(config, work / "agent.jsonl", work / "agent.log")
        time.sleep(1.0)  # imports done before the beat starts
        pulse = start_pulse(broker.url, "bench", bpm, work / "pulse.jsonl", work / "pulse.log")
        # warm-up: acquire, lock, and let the follower learn the clock rate (it needs a few
        # seconds of frames), then the measured window
        time.sleep(max(8.0, warmup_beats * beat_s))
        cpu0, t0 = cpu_seconds(agent.process.pid), time.monotonic()
        time.sleep(beats * beat_s)
        cpu1, t1 = cpu_seconds(agent.process.pid), time.monotonic()
        rss = peak_rss_mb(agent.process.pid)
        pulse.stop()
        agent.signal(signal.SIGTERM)
        agent.process.wait(timeout=15)
        pulse_rows = read_trace(work / "pulse.jsonl")
        starts = {
            int(r["beat_index"]): (float(r["intended_mono"]), float(r["tempo_bpm"]))
            for r in pulse_rows
            if r["phase"] == "plan"
        }
        rows = [
            r
            for r in read_trace(work / "agent.jsonl")
            if r["intended_mono"] is not None and t0 <= float(r["intended_mono"]) <= t1
        ]
    vs_pulse, own = [], []
    missed = shed = 0
    for r in rows:
        if r["missed"]:
            missed += 1
            continue
        if r["shed"]:
            shed += 1
            continue
        if r["fired_mono"] is None:
            continue
        start, tempo = starts[int(r["beat_index"])]
        intended = start + (1 + OFFSETS[int(r["rule"])]) * 20.0 / tempo
        vs_pulse.append((float(r["fired_mono"]) - intended) * 1000.0)
        own.append(float(r["late_ms"]))
    return {
        "bpm": bpm,
        "actions": len(rows),
        "fired": len(vs_pulse),
        "missed": missed,
        "shed": shed,
        "p50": statistics.median(vs_pulse) if vs_pulse else float("nan"),
        "p99": pct(vs_pulse, 0.99),
        "max": max(vs_pulse, default=float("nan")),
        "min": min(vs_pulse, default=float("nan")),
        "own_p50": statistics.median(own) if own else float("nan"),
        "own_p99": pct(own, 0.99),
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mb": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beats-60", type=int, default=120)
    parser.add_argument("--beats-240", type=int, default=300)
    parser.add_argument("--beats-1000", type=int, default=600)
    args = parser.parse_args()
    results = [
        run_tempo(60, args.beats_60),
        run_tempo(240, args.beats_240),
        run_tempo(1000, args.beats_1000),
    ]
    print("lateness vs the pulse's beat times (ms; negative = early) and agent footprint")
    head = (
        f"{'BPM':>6} {'actions':>8} {'fired':>6} {'missed':>6} {'shed':>5} {'min':>7} "
        f"{'p50':>7} {'p99':>7} {'max':>7} {'own p50':>8} {'own p99':>8} {'cpu %':>6} "
        f"{'peak MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['bpm']:>6.0f} {r['actions']:>8.0f} {r['fired']:>6.0f} {r['missed']:>6.0f} "
            f"{r['shed']:>5.0f} {r['min']:>7.3f} {r['p50']:>7.3f} {r['p99']:>7.3f} "
            f"{r['max']:>7.3f} {r['own_p50']:>8.3f} {r['own_p99']:>8.3f} "
            f"{r['cpu_pct']:>6.2f} {r['rss_mb']:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
