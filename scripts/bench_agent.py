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

First the trusted-clock rows (issue 16): one execute-start action per beat at 120 and
240 BPM, |error| against the pulse's beat times from beat 8 on; target p99 0.05 ms.

Usage: .venv/bin/python scripts/bench_agent.py [--beats-60 N] [--beats-240 N] [--beats-1000 N]
       [--trusted-120 N] [--trusted-240 N] [--trusted-only]
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


TRUSTED_PROFILE = """
[gpio]
pin_factory = "mock"
[devices.a]
kind = "output"
pin = 17
[[score]]
device = "a"
do = "toggle"
phase = "execute"
offset = 0.0
essential = true
"""
#: Trusted rows count from this beat on (acquiring and locking come before it).
TRUSTED_FROM_BEAT = 8


def run_trusted(bpm: float, beats: int) -> dict[str, float]:
    """One execute-start action per beat, the wall clock trusted (one host): signed error
    of each fired action against the pulse's own beat times, from TRUSTED_FROM_BEAT on."""
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp, start_mosquitto() as broker:
        work = Path(tmp)
        config = write_agent_config(work, broker.url, TRUSTED_PROFILE)
        agent = start_agent(config, work / "agent.jsonl", work / "agent.log")
        time.sleep(1.0)  # imports done before the beat starts
        pulse = start_pulse(broker.url, "bench", bpm, work / "pulse.jsonl", work / "pulse.log")
        beat_s = 60.0 / bpm
        time.sleep((TRUSTED_FROM_BEAT + 0.5) * beat_s + 0.1)
        cpu0, t0 = cpu_seconds(agent.process.pid), time.monotonic()
        time.sleep(beats * beat_s)
        cpu1, t1 = cpu_seconds(agent.process.pid), time.monotonic()
        rss = peak_rss_mb(agent.process.pid)
        pulse.stop()
        agent.signal(signal.SIGTERM)
        agent.process.wait(timeout=15)
        starts = {
            int(r["beat_index"]): (float(r["intended_mono"]), float(r["tempo_bpm"]))
            for r in read_trace(work / "pulse.jsonl")
            if r["phase"] == "plan"
        }
        fired = {
            int(r["beat_index"]): float(r["fired_mono"])
            for r in read_trace(work / "agent.jsonl")
            if r["fired_mono"] is not None
        }
        own = {
            int(r["beat_index"]): abs(float(r["late_ms"]))
            for r in read_trace(work / "agent.jsonl")
            if r["fired_mono"] is not None
        }
    # The measured beats: from TRUSTED_FROM_BEAT to the last whose action time had come.
    intended = {
        beat: start + 20.0 / tempo
        for beat, (start, tempo) in starts.items()
        if beat >= TRUSTED_FROM_BEAT and start + 20.0 / tempo <= t1
    }
    errors = [(fired[b] - at) * 1000.0 for b, at in intended.items() if b in fired]
    own_late = [own[b] for b in intended if b in fired]  # against its own timeline
    missed = len(intended) - len(errors)
    magnitudes = [abs(e) for e in errors]
    return {
        "bpm": bpm,
        "fired": len(errors),
        "missed": missed,
        "p50": statistics.median(magnitudes) if errors else float("nan"),
        "p99": pct(magnitudes, 0.99),
        "max": max(magnitudes, default=float("nan")),
        "mean": statistics.fmean(errors) if errors else float("nan"),
        "own_p99": pct(own_late, 0.99),
        "cpu_s_min": 60.0 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mb": rss,
    }


def print_trusted(results: list[dict[str, float]]) -> None:
    print(
        "\nwall clock trusted, one execute-start action per beat: |error| vs the pulse's "
        f"beat times from beat {TRUSTED_FROM_BEAT} on (ms), signed mean, agent CPU"
    )
    head = (
        f"{'BPM':>6} {'fired':>6} {'missed':>6} {'p50':>7} {'p99':>7} {'max':>7} {'mean':>7} "
        f"{'own p99':>8} {'cpu s/min':>9} {'peak MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['bpm']:>6.0f} {r['fired']:>6.0f} {r['missed']:>6.0f} {r['p50']:>7.3f} "
            f"{r['p99']:>7.3f} {r['max']:>7.3f} {r['mean']:>+7.3f} {r['own_p99']:>8.3f} "
            f"{r['cpu_s_min']:>9.3f} {r['rss_mb']:>8.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beats-60", type=int, default=120)
    parser.add_argument("--beats-240", type=int, default=300)
    parser.add_argument("--beats-1000", type=int, default=600)
    parser.add_argument("--trusted-120", type=int, default=240, help="beats measured")
    parser.add_argument("--trusted-240", type=int, default=480, help="beats measured")
    parser.add_argument("--trusted-only", action="store_true", help="only the trusted rows")
    args = parser.parse_args()
    trusted = [run_trusted(120, args.trusted_120), run_trusted(240, args.trusted_240)]
    print_trusted(trusted)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work shares it)")
    if args.trusted_only:
        return 0
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
