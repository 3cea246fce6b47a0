#!/usr/bin/env python3
"""What signed beat frames cost: the verify per frame, and the agent's lateness signed vs not.

Prints two tables:

* the trust stage's cost per frame (``BeatTrust.check`` on a decoded per-phase frame: the
  signed bytes plus one Ed25519 verify), and decode + check together, p50/p99 in us, with
  the share of one core that is at 1000 BPM with a frame per phase (3000 frames/min);
* the real agent against the real pulse on loopback (a private Mosquitto, mock pins, the
  three actions of scripts/bench_agent.py), one run unsigned and one signed (pulse
  ``--signing-key``, agent ``[security] beat_keys``) per tempo, frames per phase: lateness
  of every fired action against the pulse's own beat times (p50/p99 ms), and CPU.

Usage: .venv/bin/python scripts/bench_signing.py [--frames N] [--beats-240 N] [--beats-1000 N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edge.broker import start_mosquitto
from edge.harness import pulse_beats, read_trace, start_agent, start_pulse, write_agent_config
from edge.messages import BeatFrame, decode_beat_frame_with_map, encode
from edge.signing import Keyring, SigningKey, keygen
from edge.testing.measure import cpu_seconds, pct
from edge.testing.profiles import THREE_TOGGLES as PROFILE
from edge.testing.profiles import THREE_TOGGLES_OFFSETS as OFFSETS
from edge.trust import BeatTrust, sign_message, signed_bytes


def verify_cost(frames: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        private, _, _ = keygen(Path(tmp) / "pulse")
        key = SigningKey.load(private)
    stage = BeatTrust(Keyring([key.public_raw]), require=True)
    payloads = []
    for k in range(64):
        frame = BeatFrame(
            cluster_id="bench",
            beat_index=1000 + k,
            downbeat=k % 4 == 0,
            phase=("plan", "execute", "review")[k % 3],
            hlc=f"{k:04x}:0001:beef",
            deadline_at=datetime(2026, 12, 1, 12, 0, k % 60, 20000 * (k % 50), tzinfo=UTC),
            tempo_bpm=1000.0,
            window_id=f"{k // 4:032x}",
            metadata={"pulse_version": "backbeat-edge-pulse/1", "cluster_health": "healthy"},
        )
        payloads.append(encode(sign_message(frame, key), "json"))
    maps = [decode_beat_frame_with_map(p)[1] for p in payloads]
    check, both, only_bytes = [], [], []
    for i in range(frames):
        data = maps[i % len(maps)]
        t0 = time.perf_counter_ns()
        signed_bytes(data)
        only_bytes.append((time.perf_counter_ns() - t0) / 1000.0)
        t0 = time.perf_counter_ns()
        reason = stage.check(data)
        t1 = time.perf_counter_ns()
        assert reason is None
        check.append((t1 - t0) / 1000.0)
        payload = payloads[i % len(payloads)]
        t0 = time.perf_counter_ns()
        _, decoded = decode_beat_frame_with_map(payload)
        stage.check(decoded)
        t1 = time.perf_counter_ns()
        both.append((t1 - t0) / 1000.0)
    per_s = 3000 / 60.0
    return {
        "bytes_p50": statistics.median(only_bytes),
        "bytes_p99": pct(only_bytes, 0.99),
        "core_pct_bytes": 100.0 * per_s * statistics.mean(only_bytes) / 1e6,
        "check_p50": statistics.median(check),
        "check_p99": pct(check, 0.99),
        "both_p50": statistics.median(both),
        "both_p99": pct(both, 0.99),
        "core_pct": 100.0 * per_s * statistics.mean(check) / 1e6,
        "core_pct_both": 100.0 * per_s * statistics.mean(both) / 1e6,
    }


def run(bpm: float, beats: int, signed: bool) -> dict[str, float]:
    beat_s = 60.0 / bpm
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp, start_mosquitto() as broker:
        work = Path(tmp)
        private = None
        extra = ""
        if signed:
            private, _, _ = keygen(work / "pulse")
            extra = '[security]\nbeat_keys = ["pulse.pub.pem"]\n'
        config = write_agent_config(work, broker.url, PROFILE, extra=extra)
        agent = start_agent(config, work / "agent.jsonl", work / "agent.log")
        time.sleep(1.0)
        pulse = start_pulse(
            broker.url,
            "bench",
            bpm,
            work / "pulse.jsonl",
            work / "pulse.log",
            per_phase=True,
            signing_key=private,
        )
        time.sleep(max(8.0, 10 * beat_s))
        cpu0, t0 = cpu_seconds(agent.process.pid), time.monotonic()
        time.sleep(beats * beat_s)
        cpu1, t1 = cpu_seconds(agent.process.pid), time.monotonic()
        pulse.stop()
        agent.signal(signal.SIGTERM)
        agent.process.wait(timeout=15)
        starts = pulse_beats(read_trace(work / "pulse.jsonl"))
        rows = [
            r
            for r in read_trace(work / "agent.jsonl")
            if r["intended_mono"] is not None and t0 <= float(r["intended_mono"]) <= t1
        ]
        log = (work / "agent.log").read_text(errors="replace")
    late, missed = [], 0
    for r in rows:
        if r["missed"]:
            missed += 1
        elif r["fired_mono"] is not None and int(r["beat_index"]) in starts:
            start, tempo = starts[int(r["beat_index"])]
            intended = start + (1 + OFFSETS[int(r["rule"])]) * 20.0 / tempo
            late.append((float(r["fired_mono"]) - intended) * 1000.0)
    if signed and "rejected beat frame" in log:
        print(f"warning: the signed agent rejected frames at {bpm} BPM", file=sys.stderr)
    return {
        "bpm": bpm,
        "fired": len(late),
        "missed": missed,
        "p50": statistics.median(late) if late else float("nan"),
        "p99": pct(late, 0.99),
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--beats-240", type=int, default=120)
    parser.add_argument("--beats-1000", type=int, default=500)
    args = parser.parse_args()
    cost = verify_cost(args.frames)
    print(f"trust stage per frame ({args.frames} per-phase JSON frames, one Ed25519 key)")
    print(f"{'':<26} {'p50 us':>8} {'p99 us':>8} {'core % at 1000 BPM per phase':>30}")
    print(
        f"{'signed bytes (CBOR)':<26} {cost['bytes_p50']:>8.1f} {cost['bytes_p99']:>8.1f} "
        f"{cost['core_pct_bytes']:>30.3f}"
    )
    print(
        f"{'check (bytes + verify)':<26} {cost['check_p50']:>8.1f} {cost['check_p99']:>8.1f} "
        f"{cost['core_pct']:>30.3f}"
    )
    print(
        f"{'decode + check':<26} {cost['both_p50']:>8.1f} {cost['both_p99']:>8.1f} "
        f"{cost['core_pct_both']:>30.3f}"
    )
    print()
    results = []
    for bpm, beats in ((240.0, args.beats_240), (1000.0, args.beats_1000)):
        for signed in (False, True):
            results.append((signed, run(bpm, beats, signed)))
    print("agent lateness vs the pulse's beat times (ms; negative = early), frames per phase")
    head = (
        f"{'BPM':>6} {'signing':>8} {'fired':>6} {'missed':>6} {'p50':>7} {'p99':>7} {'cpu %':>6}"
    )
    print(head)
    print("-" * len(head))
    for signed, r in results:
        print(
            f"{r['bpm']:>6.0f} {'on' if signed else 'off':>8} {r['fired']:>6.0f} "
            f"{r['missed']:>6.0f} {r['p50']:>7.3f} {r['p99']:>7.3f} {r['cpu_pct']:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
