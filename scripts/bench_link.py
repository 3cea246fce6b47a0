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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import __version__
from edge.broker import Mosquitto, start_mosquitto
from edge.clock import SystemClock
from edge.config import BrokerConfig
from edge.harness import start_agent, write_agent_config
from edge.hlc import HybridLogicalClock, node_id
from edge.mqtt_link import MqttLink
from edge.status import BeatReview, StatusBuilder, StatusConfig, config_hash
from edge.testing.profiles import MOCK_LED, rule
from edge.testing.reviews import busy_review, quiet_review
from edge.topics import Topics

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

AGENT = "relay:pi-07"
TOPICS = Topics("backbeat", "c1")
PROFILE = MOCK_LED + rule("led", "toggle", every=1)


# ---------------------------------------------------------------------------- (a) size


def reviews() -> dict[str, BeatReview]:
    return {
        "quiet (locked, no trouble)": quiet_review(48_213),
        "busy (shedding, alerts)": busy_review(48_214),
    }


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
            builder = StatusBuilder(
                AGENT,
                StatusConfig(format=fmt),
                HybridLogicalClock(SystemClock(), node_id(AGENT)),
                __version__,
                config_hash(b"example config"),
                start_seq=123_456,
            )
            claim = builder.build(review)
            assert claim is not None
            payload = builder.encode(claim)
            packet = publish_packet_bytes(topic, payload, f"application/{fmt}", 60)
            print(f"{name:<28} {fmt:<6} {len(payload):>8} {packet:>14}")
    print()


# ---------------------------------------------------------------------------- (b) one agent


_CONNECTED = re.compile(r"^(\S+ \S+) INFO \S+: broker connected", re.M)


def _connected_walls(log: str) -> list[float]:
    return [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in _CONNECTED.finditer(log)
    ]


def _wait(predicate: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def bench_agent_reconnect(restarts: int, down_s: float) -> None:
    print(
        f"(b) one agent process: broker restart -> 'broker connected' "
        f"({restarts} restarts, broker down {down_s:g} s, default backoff 0.25..2 s)"
    )
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
        print(
            f"{len(ms):>3} {ms[0]:>8.0f} {statistics.median(ms):>10.0f} {ms[-1]:>8.0f}   "
            + " ".join(f"{t:.0f}" for t in ms)
        )
        print("  (log timestamps have 1 ms resolution; the backoff is random by design)")
    print()


# ---------------------------------------------------------------------------- (c) a fleet


class NoJitter(random.Random):
    """uniform(a, b) = b: the backoff ceiling itself, as paho's own reconnect waits."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class FleetRun:
    """Seconds after the broker's restart, sorted: each link's reconnect CONNECT (its TCP
    connection opening; the CONNECT follows at once) and its CONNACK."""

    connects: list[float]
    connacks: list[float]
    broker_up_s: float


def _record_socket_opens(link: MqttLink, opens: list[float]) -> None:
    # Bench instrumentation: note when paho opens the link's socket, then do what the link
    # does. A refused attempt opens no socket, so the first open after the restart is the
    # attempt that reconnects.
    client = link._client
    original = client.on_socket_open

    def on_open(c: mqtt.Client, userdata: object, sock: SocketLike) -> None:
        opens.append(time.monotonic())
        if original is not None:
            original(c, userdata, sock)

    client.on_socket_open = on_open


def fleet_run(n: int, down_s: float, jitter: bool, seed: int) -> FleetRun | None:
    """Stop and restart the broker under ``n`` connected links; None if some did not return."""
    broker: Mosquitto = start_mosquitto()
    links: list[MqttLink] = []
    opens: list[list[float]] = []
    try:
        config = BrokerConfig(url=broker.url, host="127.0.0.1", port=broker.port)
        for i in range(n):
            agent_id = f"fleet:pi-{i:03d}"
            rng = random.Random(seed + i) if jitter else NoJitter()
            link = MqttLink(
                config,
                f"bench-link-{i:03d}",
                subscriptions=(TOPICS.beat, TOPICS.bar),
                availability_topic=TOPICS.availability(agent_id),
                rng=rng,
            )
            opens.append([])
            _record_socket_opens(link, opens[-1])
            links.append(link)
            link.start()
        if not _wait(lambda: all(link.connected for link in links), 20):
            return None
        broker.stop()
        _wait(lambda: not any(link.connected for link in links), 5)
        time.sleep(down_s)
        restarted = time.monotonic()
        broker.restart()  # returns once the port accepts (polled every 20 ms)
        up = time.monotonic() - restarted
        if not _wait(lambda: all(link.connects >= 2 for link in links), 30):
            return None
        connects = sorted(min(t for t in o if t >= restarted) - restarted for o in opens)
        connacks = sorted(float(link.last_connected_at or 0.0) - restarted for link in links)
        return FleetRun(connects, connacks, up)
    finally:
        # In parallel: each stop waits for its network thread's loop() tick (<= 0.5 s).
        with ThreadPoolExecutor(max_workers=max(1, len(links))) as pool:
            list(pool.map(lambda link: link.stop(timeout=1.0), links))
        broker.close()


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window of ``window`` seconds (times sorted)."""
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def bench_fleet(n: int, down_s: float, rounds: int) -> None:
    print(
        f"(c) {n} links in one process, broker down {down_s:g} s then restarted "
        "(backoff 0.25..2 s)."
    )
    print("    CONNECT = the reconnecting attempt's TCP open, CONNACK = the broker's answer;")
    print("    ms after the broker was restarted ('broker up' = until its port accepted)")
    print(
        f"{'backoff':<22} {'first':>6} {'last':>6} {'spread':>7} {'p50':>6} "
        f"{'max CONNECTs/50ms':>18} {'CONNACK p50':>12} {'last':>6} {'broker up':>10}"
    )
    for round_ in range(rounds):
        for jitter, label in ((True, "full jitter"), (False, "no jitter (paho-like)")):
            run = fleet_run(n, down_s, jitter, seed=1000 + round_ * n)
            if run is None:
                print(f"{label:<22} some links did not reconnect within 30 s")
                continue
            c = [t * 1000 for t in run.connects]
            a = [t * 1000 for t in run.connacks]
            print(
                f"{label:<22} {c[0]:>6.0f} {c[-1]:>6.0f} {c[-1] - c[0]:>7.0f} "
                f"{statistics.median(c):>6.0f} {max_in_window(run.connects, 0.050):>18} "
                f"{statistics.median(a):>12.0f} {a[-1]:>6.0f} {run.broker_up_s * 1000:>10.0f}"
            )
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
    logging.getLogger(MqttLink.__module__).setLevel(logging.ERROR)
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
