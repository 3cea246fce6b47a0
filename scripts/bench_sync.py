#!/usr/bin/env python3
"""Simulation benchmark of the beat follower (edge.sync) against the truth, in fake time.

For each scenario a simulated Pulse sends frames through a simulated network into a
BeatFollower driven at its own deadlines. "follower" is the error of every emitted phase
start (what tick() fires on) against the true phase start; "receipt" is the error of firing
when each frame arrives. Errors are in ms, measured once locked (from beat 8 of the run).
"in bound" is the share of boundaries whose error beyond the fixed delay stayed within the
follower's own error_bound at that time.

Run: .venv/bin/python scripts/bench_sync.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_sync_sim import (  # noqa: E402
    Network,
    Pulse,
    heavy_tail,
    percentile,
    simulate,
    uniform,
)

from edge.messages import PHASES  # noqa: E402
from edge.sync import PhaseStarted  # noqa: E402

FIRST = 1000
LOCKED_FROM = FIRST + 8


def tempo_step(change: float) -> object:
    return lambda i: 60.0 if i < 150 else round(60.0 * change, 1)


def scenarios() -> list[tuple[str, Pulse, Network, dict[str, object]]]:
    hv, un = heavy_tail(), uniform()
    return [
        ("clean 0.5 ms", Pulse(), Network(), {}),
        ("heavy tail <=50ms, 10% loss", Pulse(), Network(jitter=hv, loss=0.1), {}),
        ("  same, wall in sync", Pulse(), Network(jitter=hv, loss=0.1), {"wall": 0.0}),
        ("  same, wall 3 h off", Pulse(), Network(jitter=hv, loss=0.1), {"wall": 10800.0}),
        ("uniform 0-50ms, 10% loss", Pulse(), Network(jitter=un, loss=0.1), {}),
        ("dup 10% + reorder 5%", Pulse(), Network(jitter=hv, duplicate=0.1), {"reorder": 0.05}),
        ("+200 ppm, heavy, 10% loss", Pulse(ppm=200), Network(jitter=hv, loss=0.1), {}),
        ("-200 ppm, heavy, 10% loss", Pulse(ppm=-200), Network(jitter=hv, loss=0.1), {}),
        (
            "60 s silence, +200 ppm",
            Pulse(ppm=200, beats=220),
            Network(jitter=hv, loss=0.1, silence=(250.0, 310.0)),
            {},
        ),
        ("tempo +10% at beat 150", Pulse(tempo=tempo_step(1.1)), Network(jitter=hv, loss=0.1), {}),
        ("tempo -10% at beat 150", Pulse(tempo=tempo_step(0.9)), Network(jitter=hv, loss=0.1), {}),
        (
            "tempo 1 -> 600 BPM",
            Pulse(tempo=lambda i: 1.0 if i < 10 else 600.0, beats=400),
            Network(jitter=hv, loss=0.1),
            {},
        ),
        (
            "beat index jump",
            Pulse(jump_at=150, jump_to=5),
            Network(jitter=hv, loss=0.1),
            {},
        ),
        ("per-phase frames", Pulse(per_phase=True), Network(jitter=hv, loss=0.1), {}),
    ]


def ms(value: float) -> str:
    return f"{value * 1e3:8.3f}"


def main() -> int:
    head = (
        f"{'scenario':30s} {'follower p50':>12s} {'p99':>8s} {'max':>8s} | {'receipt p50':>11s} "
        f"{'p99':>8s} {'max':>8s} {'missed':>6s} | {'p99 gain':>8s} {'in bound':>8s} "
        f"{'lost/dup':>8s} {'rate ppm':>8s}"
    )
    print(head)
    print("-" * len(head))
    started = time.perf_counter()
    notes: list[str] = []
    for name, pulse, net, opts in scenarios():
        wall = opts.get("wall")
        run = simulate(
            pulse,
            net,
            wall_error=(lambda t, w=wall: float(w)) if wall is not None else None,  # type: ignore[misc]
            reorder=float(opts.get("reorder", 0.0)),  # type: ignore[arg-type]
        )
        truth = pulse.truth
        order = pulse.order
        skip = set(order[: 8 * 3])
        follower = [abs(e) for e in _errors(run, skip)]
        seen: set[tuple[int, int]] = set()
        receipt: list[float] = []
        for arrive, frame in run.arrivals:
            key = (frame.beat_index, PHASES.index(frame.phase))
            if key in seen or key in skip or key not in truth:
                continue
            seen.add(key)
            receipt.append(arrive - truth[key])
        announced = {k for k in order if k not in skip and (k[1] == 0 or pulse.per_phase)}
        missed = len(announced - seen)
        emitted = [(e.beat_index, e.phase) for e in run.events if isinstance(e, PhaseStarted)]
        doubled = len(emitted) - len(set(emitted))
        lost = len({(k, PHASES[p]) for k, p in order} - set(emitted))
        in_bound = _in_bound(run, skip, net.base if wall is None or abs(wall) > 1 else 0.0)
        if net.silence is not None:
            quiet_end = net.silence[1]
            tail = [
                abs(e.at - truth[(e.beat_index, PHASES.index(e.phase))] - net.base)
                for e in run.events
                if isinstance(e, PhaseStarted)
                and quiet_end - 5.0
                <= truth.get((e.beat_index, PHASES.index(e.phase)), 0.0)
                < quiet_end
            ]
            notes.append(f"{name}: error beyond the fixed delay in the last 5 s of the silence: "
                         f"max {max(tail) * 1e3:.3f} ms over {len(tail)} boundaries")
        gain = percentile(receipt, 99) / max(percentile(follower, 99) - net.base, 1e-6)
        print(
            f"{name:30s} {ms(percentile(follower, 50)):>12s} {ms(percentile(follower, 99))} "
            f"{ms(max(follower))} | {ms(percentile(receipt, 50)):>11s} "
            f"{ms(percentile(receipt, 99))} {ms(max(receipt))} {missed:6d} | {gain:7.0f}x "
            f"{in_bound:7.1%} {lost:3d}/{doubled:<4d} {run.follower.rate_ppm:8.1f}"
        )
    for note in notes:
        print(note)
    print(f"\n(errors in ms; p99 gain = receipt p99 / follower p99 beyond the 0.5 ms minimum "
          f"delay; {time.perf_counter() - started:.1f} s)")
    return 0


def _errors(run: object, skip: set[tuple[int, int]]) -> list[float]:
    out = []
    for e in run.events:  # type: ignore[attr-defined]
        if isinstance(e, PhaseStarted):
            key = (e.beat_index, PHASES.index(e.phase))
            if key in run.pulse.truth and key not in skip:  # type: ignore[attr-defined]
                out.append(e.at - run.pulse.truth[key])  # type: ignore[attr-defined]
    return out


def _in_bound(run: object, skip: set[tuple[int, int]], fixed: float) -> float:
    bounds = getattr(run, "bounds", {})
    if not bounds:
        return float("nan")
    hits = total = 0
    for e in run.events:  # type: ignore[attr-defined]
        if isinstance(e, PhaseStarted):
            key = (e.beat_index, PHASES.index(e.phase))
            if key in bounds and key not in skip and key in run.pulse.truth:  # type: ignore[attr-defined]
                total += 1
                err = e.at - run.pulse.truth[key] - fixed  # type: ignore[attr-defined]
                hits += abs(err) <= bounds[key]
    return hits / total if total else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
