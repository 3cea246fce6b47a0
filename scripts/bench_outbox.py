#!/usr/bin/env python3
"""Benchmark status claims and the outbox: claim size, append and replay rates.

Run with the project's interpreter: ``.venv/bin/python scripts/bench_outbox.py [--dir D]``.
``--dir`` picks where the segments go (default: a temporary directory under the system
temp dir); put it on the device's real storage (an SD card on a Pi) to see what fsync
costs there. Prints tables; no assertion is made (speed depends on the machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.clock import SystemClock
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import decode_status_claim
from edge.outbox import Outbox, OutboxConfig
from edge.status import BeatReview, StatusBuilder, StatusConfig, config_hash

AGENT = "relay:pi-07"
TOPIC = f"backbeat/c1/status/{AGENT}"


def quiet_review(beat: int) -> BeatReview:
    return BeatReview(
        beat_index=beat, state="reviewing", sync_state="locked", error_bound_ms=0.84,
        late_ms_p50=0.052, late_ms_max=0.31, fired=4 * beat, missed=0, shed={},
        dropped_by_limit=0, frames_rejected={}, guard_level="admit", guard_reason="",
        recommended_tempo=None, cpu_percent=11.3, memory_mb=28.4, temperature_c=51.2,
        backlog=0, outbox_dropped=0,
    )


def busy_review(beat: int) -> BeatReview:
    return BeatReview(
        beat_index=beat, state="executing", sync_state="free_running", error_bound_ms=12.5,
        late_ms_p50=0.41, late_ms_max=7.9, fired=4 * beat, missed=37,
        shed={"cpu": 12, "thermal": 3}, dropped_by_limit=5,
        frames_rejected={"bad_tempo": 2, "stale": 9}, guard_level="essential_only",
        guard_reason="cpu 94% > 85% for 5 samples", recommended_tempo=54.0,
        cpu_percent=94.1, memory_mb=31.0, temperature_c=78.6, backlog=412, outbox_dropped=18,
        alerts=("deadline miss rate 3.1% > 2%", "sync lost 4 beats ago"),
    )


def builder(fmt: str) -> StatusBuilder:
    clock = SystemClock()
    return StatusBuilder(AGENT, StatusConfig(format=fmt),  # type: ignore[arg-type]
                         HybridLogicalClock(clock, node_id(AGENT)), "0.1.0",
                         config_hash(b"example config"), start_seq=123_456)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn: object, count: int) -> list[float]:
    call = fn  # type: ignore[assignment]
    out = []
    for i in range(count):
        start = time.perf_counter()
        call(i)  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def bench_claims() -> list[tuple[str, ...]]:
    rows = []
    for label, make in (("quiet beat", quiet_review), ("troubled beat", busy_review)):
        for fmt in ("cbor", "json"):
            b = builder(fmt)
            claim = b.build(make(1000))
            assert claim is not None
            size = len(b.encode(claim))
            enc = timed(lambda i, b=b, make=make: b.encode(b.final(make(1000 + i))), 2000)
            payload = b.encode(claim)
            dec = timed(lambda i, p=payload: decode_status_claim(p), 2000)
            rows.append((label, fmt, str(size), f"{statistics.median(enc) * 1e6:.1f}",
                         f"{percentile(enc, 0.99) * 1e6:.1f}",
                         f"{statistics.median(dec) * 1e6:.1f}"))
    return rows


def bench_outbox(base: Path) -> list[tuple[str, ...]]:
    b = builder("cbor")
    claim = b.build(quiet_review(1))
    assert claim is not None
    payload = b.encode(claim)
    rows = []
    policies = (("default (10 / 1 s)", 10, 1.0, 3000), ("fsync every record", 1, 0.0, 500),
                ("flush only (no fsync)", 0, 0.0, 3000))
    for label, every, interval, count in policies:
        directory = base / label.split()[0]
        config = OutboxConfig(directory, fsync_every=every, fsync_interval_s=interval)
        box = Outbox(config)
        now = time.time()
        per = timed(lambda i, box=box, now=now: box.append(TOPIC, payload, now + i * 0.001),
                    count)
        total = sum(per)
        ack = timed(lambda i, box=box: box.ack(i + 1), count)
        box.close()
        rows.append((label, "append", str(count), f"{count / total:,.0f}",
                     f"{statistics.median(per) * 1e6:.1f}", f"{percentile(per, 0.99) * 1e6:.1f}"))
        rows.append((label, "ack", str(count), f"{count / sum(ack):,.0f}",
                     f"{statistics.median(ack) * 1e6:.1f}", f"{percentile(ack, 0.99) * 1e6:.1f}"))
        shutil.rmtree(directory)
    # Replay: reopen a directory holding a full backlog (10,000 claims, as after an outage).
    directory = base / "replay"
    # Bounds raised so the whole backlog fits (10,000 CBOR claims are ~5 MB).
    replay = OutboxConfig(directory, max_bytes=16 << 20, max_count=20_000)
    box = Outbox(replay)
    for i in range(10_000):
        box.append(TOPIC, payload, 1.0 + i)
    for seq in range(1, 10_001, 2):  # half acked, out of order within pairs
        box.ack(seq)
    box.close()
    opens = []
    for _ in range(7):
        start = time.perf_counter()
        again = Outbox(replay)
        opens.append(time.perf_counter() - start)
        assert again.backlog == 5000
        if len(opens) < 7:
            again.close()
    best = statistics.median(opens)
    rows.append(("reopen 10k frames, 5k pending", "replay", "5000", f"{5000 / best:,.0f}",
                 f"{best * 1e3:.1f} ms", f"{max(opens) * 1e3:.1f} ms"))
    start = time.perf_counter()
    sent = 0
    while True:
        batch = again.unsent(100)
        if not batch:
            break
        for record in batch:
            again.mark_sent(record.seq)
        sent += len(batch)
    drain = time.perf_counter() - start
    rows.append(("unsent(100)+mark_sent, 5k", "drain", str(sent), f"{sent / drain:,.0f}", "", ""))
    return rows


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def filesystem(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to put the segments")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=args.dir))
    try:
        print("Status claim size and codec cost (us per claim; encode includes building)")
        print(table(("claim", "format", "bytes", "build+encode p50", "p99", "decode p50"),
                    bench_claims()))
        print()
        print(f"Outbox on {base} ({filesystem(base.resolve())}), "
              f"{os.cpu_count()} CPUs; times in us unless marked")
        print(table(("policy", "op", "records", "records/s", "p50", "p99"), bench_outbox(base)))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
