#!/usr/bin/env python3
"""Benchmark the MQTT link: claim size on the wire, reconnect time, fleet reconnect spread.

Run with the project's interpreter: ``.venv/bin/python scripts/bench_link.py``
(``--restarts N``, ``--links N``, ``--down S``). Each part runs against its own private
Mosquitto on loopback; the whole run takes well under two minutes. Prints tables; no
assertion is made (timings depend on the machine).

(a) bytes per status claim in CBOR and JSON, bare and as a whole MQTT 5 PUBLISH packet
    (topic, packet id, content type and expiry properties).
(b) reconnect time of one real agent process after the broker comes back: from the
    broker's restart to the agent's "broker connected" log line, over a few restarts.
(c) how N links in one process reconnect after a broker restart, with full jitter and
    without (an rng whose ``uniform(a, b)`` is ``b``: the deterministic exponential backoff
    paho has). The reconnect time of a link is its CONNACK, relative to the restart.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.broker import Mosquitto, start_mosquitto
from edge.clock import SystemClock
from edge.config import BrokerConfig
from edge.harness import start_agent, write_agent_config
from edge.hlc import HybridLogicalClock, node_id
from edge.mqtt_link import MqttLink, Topics
from edge.status import BeatReview, StatusBuilder, StatusConfig, config_hash

AGENT = "relay:pi-07"
TOPICS = Topics("backbeat", "c1")
PROFILE = """
[gpio]
pin_factory = "mock"
[devices.led]
kind = "led"
pin = 17
[[score]]
device = "led"
do = "toggle"
every = 1
"""


# ---------------------------------------------------------------------------- (a) size


def reviews() -> dict[str, BeatReview]:
    quiet = BeatReview(
        beat_index=48_213, state="reviewing", sync_state="locked", error_bound_ms=0.84,
        late_ms_p50=0.052, late_ms_max=0.31, fired=192_852, missed=0, shed={},
        dropped_by_limit=0, frames_rejected={}, guard_level="admit", guard_reason="",
        recommended_tempo=None, cpu_percent=11.3, memory_mb=28.4, temperature_c=51.2,
        backlog=0, outbox_dropped=0,
    )
    busy = BeatReview(
        beat_index=48_214, state="executing", sync_state="free_running", error_bound_ms=12.5,
        late_ms_p50=0.41, late_ms_max=7.9, fired=192_856, missed=37,
        shed={"cpu": 12, "thermal": 3}, dropped_by_limit=5,
        frames_rejected={"bad_tempo": 2, "stale": 9}, guard_level="essential_only",
        guard_reason="cpu 94% > 85% for 5 samples", recommended_tempo=54.0,
        cpu_percent=94.1, memory_mb=31.0, temperature_c=78.6, backlog=412, outbox_dropped=18,
        alerts=("deadline miss rate 3.1% > 2%", "sync lost 4 beats ago"),
    )
    return {"quiet (locked, no trouble)": quiet, "busy (shedding, alerts)": busy}


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def publish_packet_bytes(topic: str, payload: bytes, content_type: str, expiry_s: int) -> int:
    """Size of the QoS 1 MQTT 5 PUBLISH packet that carries ``payload``."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    props.MessageExpiryInterval = expiry_s
    packed = props.pack()  # type: ignore[no-untyped-call]  # includes its own length
    remaining = 2 + len(topic.encode()) + 2 + len(packed) + len(payload)
    return 1 + _varint_len(remaining) + remaining


def bench_size() -> None:
    print("(a) bytes per status claim (StatusBuilder, realistic BeatReview)")
    print(f"{'review':<28} {'format':<6} {'payload':>8} {'MQTT 5 packet':>14}")
    topic = TOPICS.status(AGENT)
    for name, review in reviews().items():
        for fmt in ("cbor", "json"):
            builder = StatusBuilder(AGENT, StatusConfig(format=fmt),
                                    HybridLogicalClock(SystemClock(), node_id(AGENT)),
                                    "0.1.0", config_hash(b"example config"),
                                    start_seq=123_456)
            claim = builder.build(review)
            assert claim is not None
            payload = builder.encode(claim)
            packet = publish_packet_bytes(topic, payload, f"application/{fmt}", 60)
            print(f"{name:<28} {fmt:<6} {len(payload):>8} {packet:>14}")
    print()


# ---------------------------------------------------------------------------- (b) one agent


_CONNECTED = re.compile(r"^(\S+ \S+) INFO backbeat.runner: broker connected", re.M)


def _connected_walls(log: str) -> list[float]:
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for m in _CONNECTED.finditer(log)]


def _wait(predicate: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def bench_agent_reconnect(restarts: int, down_s: float) -> None:
    print(f"(b) one agent process: broker restart -> 'broker connected' "
          f"({restarts} restarts, broker down {down_s:g} s, default backoff 0.25..2 s)")
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto()
        try:
            config = write_agent_config(work, broker.url, PROFILE)
            agent = start_agent(config, None, work / "agent.log")
            try:
                if not _wait(lambda: len(_connected_walls(agent.log())) >= 1, 20):
                    print("  the agent never connected:\n" + agent.log()[-2000:])
                    return
                times = []
                for _ in range(restarts):
                    seen = len(_connected_walls(agent.log()))
                    broker.stop()
                    time.sleep(down_s)
                    restarted = time.time()
                    broker.restart()
                    if not _wait(lambda n=seen: len(_connected_walls(agent.log())) > n, 20):
                        print("  no reconnect within 20 s")
                        continue
                    times.append(_connected_walls(agent.log())[seen] - restarted)
            finally:
                agent.stop()
        finally:
            broker.close()
    if times:
        ms = sorted(t * 1000 for t in times)
        print(f"{'n':>3} {'min ms':>8} {'median ms':>10} {'max ms':>8}   all (ms)")
        print(f"{len(ms):>3} {ms[0]:>8.0f} {statistics.median(ms):>10.0f} {ms[-1]:>8.0f}   "
              + " ".join(f"{t:.0f}" for t in ms))
        print("  (log timestamps have 1 ms resolution; the backoff is random by design)")
    print()


# ---------------------------------------------------------------------------- (c) a fleet


class NoJitter(random.Random):
    """uniform(a, b) = b: the backoff ceiling itself, as paho's own reconnect waits."""

    def uniform(self, a: float, b: float) -> float:
        return b


def fleet_run(n: int, down_s: float, jitter: bool, seed: int,
              startup: list[float]) -> list[float] | None:
    """Reconnect times (seconds after the restart) of ``n`` links; None if some failed."""
    broker: Mosquitto = start_mosquitto()
    links: list[MqttLink] = []
    try:
        config = BrokerConfig(url=broker.url, host="127.0.0.1", port=broker.port)
        for i in range(n):
            agent_id = f"fleet:pi-{i:03d}"
            rng = random.Random(seed + i) if jitter else NoJitter()
            link = MqttLink(config, f"bench-link-{i:03d}",
                            subscriptions=(TOPICS.beat, TOPICS.bar),
                            availability_topic=TOPICS.availability(agent_id), rng=rng)
            links.append(link)
            link.start()
        if not _wait(lambda: all(link.connected for link in links), 20):
            return None
        broker.stop()
        _wait(lambda: not any(link.connected for link in links), 5)
        time.sleep(down_s)
        restarted = time.monotonic()
        broker.restart()  # returns once the port accepts (polled every 20 ms)
        startup.append(time.monotonic() - restarted)
        if not _wait(lambda: all(link.connects >= 2 for link in links), 30):
            return None
        return sorted(float(link.last_connected_at or 0.0) - restarted for link in links)
    finally:
        # In parallel: each stop waits for its network thread's loop() tick (<= 0.5 s).
        with ThreadPoolExecutor(max_workers=max(1, len(links))) as pool:
            list(pool.map(lambda link: link.stop(timeout=1.0), links))
        broker.close()


def max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def bench_fleet(n: int, down_s: float, rounds: int) -> None:
    print(f"(c) {n} links in one process, broker down {down_s:g} s then restarted "
          "(backoff 0.25..2 s); times from the restart to each link's CONNACK")
    print(f"{'backoff':<22} {'first ms':>9} {'last ms':>8} {'spread ms':>10} {'p50 ms':>7} "
          f"{'max CONNECTs/50 ms':>19} {'broker up ms':>12}")
    for round_ in range(rounds):
        for jitter, label in ((True, "full jitter"), (False, "no jitter (paho-like)")):
            t0 = time.monotonic()
            startup: list[float] = []
            times = fleet_run(n, down_s, jitter, seed=1000 + round_ * n, startup=startup)
            if times is None:
                print(f"{label:<22} some links did not reconnect within 30 s")
                continue
            ms = [t * 1000 for t in times]
            print(f"{label:<22} {ms[0]:>9.0f} {ms[-1]:>8.0f} {ms[-1] - ms[0]:>10.0f} "
                  f"{statistics.median(ms):>7.0f} {max_in_window(times, 0.050):>19}"
                  f" {startup[0] * 1000:>11.0f}   (run {time.monotonic() - t0:.0f} s)")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--restarts", type=int, default=5, help="broker restarts in (b)")
    parser.add_argument("--links", type=int, default=50, help="links in (c)")
    parser.add_argument("--down", type=float, default=3.0, help="broker down time in (c), s")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each policy in (c)")
    args = parser.parse_args()
    started = time.monotonic()
    # Every link says once per outage that it cannot reach the broker: expected here.
    logging.getLogger("backbeat.link").setLevel(logging.ERROR)
    bench_size()
    t0 = time.monotonic()
    bench_agent_reconnect(args.restarts, down_s=1.5)
    print(f"(b) took {time.monotonic() - t0:.0f} s")
    t0 = time.monotonic()
    bench_fleet(args.links, args.down, args.rounds)
    print(f"(c) took {time.monotonic() - t0:.0f} s")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
