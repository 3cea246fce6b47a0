#!/usr/bin/env python3
"""A program that is its own agent on the beat: the edge.client example.

Against the demo (``scripts/demo`` prints its broker URL; its cluster is ``demo``)::

    .venv/bin/python scripts/examples/beat_client.py --broker mqtt://127.0.0.1:PORT

or on its own, with a private Mosquitto and a bench pulse (``--own-broker``). It prints a
line per beat (how late its callback started), reads a simulated sensor at every execute
phase under a one-beat budget, declares its state in claims (``backbeat-edge monitor``
shows it as agent ``CLUSTER:example``), and every 4th beat awaits ``client.sync`` in
asyncio. Ctrl-C (or ``--duration``) stops it: a final claim and ``offline`` go out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edge.broker import start_mosquitto
from edge.client import BeatClient, Budget, Tick
from edge.harness import start_pulse


def read_sensor(budget: Budget) -> float:
    """A simulated sensor: a slow sine with noise, and a read that takes 2-30 ms."""
    time.sleep(random.uniform(0.002, 0.03))
    budget.check()  # a cooperative cancel: give up if the beat budget ran out meanwhile
    return 20.0 + 2.0 * math.sin(time.monotonic() / 10.0) + random.gauss(0.0, 0.05)


def run(
    broker_url: str, cluster: str, duration_s: float, state_dir: Path, protocol: str = "5"
) -> int:
    client = BeatClient(
        broker_url,
        cluster,
        f"{cluster}:example",
        outbox={"directory": str(state_dir)},
        broker={"protocol": protocol},
    )

    @client.on_beat
    def beat(tick: Tick) -> None:
        mark = "|" if tick.downbeat else "."
        print(
            f"{mark} beat {tick.beat_index:6d} at {tick.tempo_bpm:5.1f} BPM, "
            f"callback {tick.late_s * 1e6:7.0f} us after the boundary",
            flush=True,
        )

    @client.on_phase("execute")
    def execute(tick: Tick) -> None:
        result = client.with_beat_budget(1, read_sensor)
        if result.finished and result.value is not None:
            client.emit_status_claim("executing", notes=f"temperature {result.value:.2f} C")
        else:
            print(f"  sensor read overran its beat budget by {result.overrun_s * 1000:.1f} ms")

    async def every_fourth_beat() -> None:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            tick = await client.sync(beats=4, phase="review")
            print(
                f"  await sync(beats=4, phase='review') resumed at beat {tick.beat_index}, "
                f"{(time.monotonic() - tick.at) * 1e6:.0f} us after the boundary"
            )

    with client:
        if not client.wait_connected(10):
            print(f"no broker at {broker_url} within 10 s", file=sys.stderr)
            return 1
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(every_fourth_beat())
    print(
        f"callbacks: {client.counts.callbacks}, errors {client.counts.errors}, "
        f"overruns {client.counts.overran}, skipped {client.counts.skipped}"
    )
    return 0


@contextlib.contextmanager
def own_broker(bpm: float) -> Iterator[str]:
    """A private Mosquitto and a bench pulse (cluster ``demo``) for as long as the block."""
    with tempfile.TemporaryDirectory() as tmp, start_mosquitto() as broker:
        pulse = start_pulse(broker.url, "demo", bpm, None, Path(tmp) / "pulse.log")
        try:
            yield broker.url
        finally:
            pulse.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="broker URL (the demo prints it)")
    parser.add_argument("--cluster", default="demo", help="cluster to follow (default: demo)")
    parser.add_argument(
        "--own-broker", action="store_true", help="start a private Mosquitto and pulse instead"
    )
    parser.add_argument("--bpm", type=float, default=120.0, help="--own-broker pulse tempo")
    parser.add_argument("--duration", type=float, default=math.inf, help="seconds to run")
    parser.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (3.1.1 for NATS, as the demo --nats prints)",
    )
    options = parser.parse_args(argv)
    if options.own_broker == bool(options.broker):
        parser.error("give --broker URL or --own-broker")
    with tempfile.TemporaryDirectory() as state:
        if options.own_broker:
            with own_broker(options.bpm) as url:
                return run(url, "demo", options.duration, Path(state))
        return run(options.broker, options.cluster, options.duration, Path(state), options.protocol)


if __name__ == "__main__":
    sys.exit(main())
