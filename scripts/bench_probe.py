#!/usr/bin/env python3
"""Benchmark the probe: what a full and a light sample cost, and what the guard adds.

Run with the project's interpreter: ``.venv/bin/python scripts/bench_probe.py [-n N]
[--disk DIR]``. Each row times N calls back to back (after a short warm-up) with
``time.perf_counter`` around the call; ``self`` is the cost the sample recorded itself
(``Sample.cost_s``). The per-reading rows show where a full sample's time goes (only the
readings the probe exposes one by one). The guard rows are the per-beat policy work the
runner does on top: observe a sample, take a verdict, admit eight candidates. No assertion
is made: speed depends on the machine (a Pi is several times slower than a laptop).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.guard import Guard, Sample
from edge.probe import Probe


@dataclass(frozen=True, slots=True)
class _Act:
    name: str
    priority: int
    essential: bool
    cost_s: float


@dataclass(frozen=True, slots=True)
class _Cand:
    beat_index: int
    at: float
    deadline: float
    action: _Act


def timed(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    costs = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        costs.append(time.perf_counter() - started)
    return costs


def row(name: str, costs: list[float], extra: str = "") -> str:
    ordered = sorted(costs)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{name:<28} {len(costs):>6} {statistics.median(costs) * 1e6:>10.1f} "
        f"{p99 * 1e6:>10.1f} {ordered[-1] * 1e6:>10.1f}  {extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--samples", type=int, default=2000, help="calls per row")
    parser.add_argument("--disk", type=Path, default=None, help="outbox directory to watch")
    args = parser.parse_args()
    n = max(1, args.samples)

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as scratch:
        disk = args.disk or Path(scratch)
        probe = Probe(disk_path=disk)
        first = probe.sample(0.0)
        print(
            f"machine: temperature source {probe.temperature_source or 'none'}, "
            f"throttle flags {'present' if first.throttled is not None else 'absent'}, "
            f"swap {'present' if first.swap_percent is not None else 'absent'}"
        )
        print()
        print(f"{'probe':<28} {'n':>6} {'median us':>10} {'p99 us':>10} {'max us':>10}")
        rows = []
        samples: list[Sample] = []

        def full() -> None:
            samples.append(probe.sample(1.0, full=True))

        def light() -> None:
            samples.append(probe.sample(1.0, full=False))

        warm = min(50, n)  # timed() warms up first; those samples are not counted
        rows.append(row("sample(full=True)", timed(full, n)))
        full_self = [s.cost_s for s in samples[warm:]]
        samples.clear()
        rows.append(row("sample(full=False)", timed(light, n)))
        light_self = [s.cost_s for s in samples[warm:]]
        rows.append(row("  self-reported, full", full_self))
        rows.append(row("  self-reported, light", light_self))
        rows.append(row("  temperature_c()", timed(probe.temperature_c, n)))
        rows.append(row("  throttled()", timed(probe.throttled, n)))
        rows.append(row("  disk_free_mb()", timed(probe.disk_free_mb, n)))
        print("\n".join(rows))

        guard = Guard()
        sample = probe.sample(2.0)
        cands = [
            _Cand(0, 10.0 + i * 0.01, 11.0, _Act(f"dev{i}.on", i % 3, i % 4 == 0, 0.0005))
            for i in range(8)
        ]
        beat = [0]

        def policy() -> None:
            guard.observe(sample)
            guard.admit(beat[0], cands, 1.0, 9.0)
            for c in cands:
                guard.record(c.action.name, 0.0004, 0.0, False)
            guard.end_beat(beat[0])
            beat[0] += 1

        print()
        print(f"{'guard (per beat)':<28} {'n':>6} {'median us':>10} {'p99 us':>10} {'max us':>10}")
        print(row("observe+admit(8)+record+end", timed(policy, n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
