#!/usr/bin/env python3
"""Benchmark status claims and the outbox: claim size, append latency, fsync, replay.

Run with the project's interpreter: ``.venv/bin/python scripts/bench_outbox.py [--dir D]``.
``--dir`` picks where the segments go (default: a temporary directory under the system
temp dir); put it on the device's real storage (an SD card on a Pi) to see what fsync
costs there. Prints tables; no assertion is made (speed depends on the machine).

The outbox table shows ``append`` as the beat loop sees it (p50/p99/max per call) under
each fsync policy, and on its own row what the fsyncs cost on the syncer thread (``calls``
= how many ran: requests made while one is queued coalesce). Appends are paced 2 ms apart
(a beat loop appends once per beat; back to back, every fsync would coalesce away). The
reference row "inline fsync" is write+flush+fsync on the caller's thread: what ``append``
paid when a due fsync ran inline. "slow card" replaces fsync with a 20 ms sleep, as a
cheap SD card might take, to show that the caller does not wait for it whatever the local
disk is. ``close`` drains the syncer, joins it and fsyncs once more on the caller.

Since issue 15: ``seq.hw writes`` is how often the durable seq wrote its high-water file
during those appends (a write per block of seqs; its fsync runs on the syncer), and
``take`` times the seq's own step per append on its own. The replay rows reopen the same
backlog clean and with 10 flipped bytes spread over it (each costs one record; the reader
resyncs on the next good frame, then the good records are rewritten to a new segment).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edge import __version__
from edge.clock import SystemClock
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import decode_status_claim
from edge.outbox import Outbox, OutboxConfig
from edge.outbox_seq import SEQ_BLOCK, HighWater
from edge.status import BeatReview, StatusBuilder, StatusConfig, config_hash
from edge.testing.reviews import busy_review, quiet_review

AGENT = "relay:pi-07"
COUNT = 500  # appends per policy
PACE_S = 0.002  # between appends
TOPIC = f"backbeat/c1/status/{AGENT}"


def builder(fmt: str) -> StatusBuilder:
    clock = SystemClock()
    return StatusBuilder(
        AGENT,
        StatusConfig(format=fmt),  # type: ignore[arg-type]
        HybridLogicalClock(clock, node_id(AGENT)),
        __version__,
        config_hash(b"example config"),
        start_seq=123_456,
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(call: Callable[[int], object], count: int, pace_s: float = 0.0) -> list[float]:
    """Time ``call(i)`` for i in range(count); ``pace_s`` sleeps between calls."""
    out = []
    for i in range(count):
        if pace_s:
            time.sleep(pace_s)
        start = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - start)
    return out


def encoder(b: StatusBuilder, make: Callable[[int], BeatReview]) -> Callable[[int], bytes]:
    return lambda i: b.encode(b.final(make(1000 + i)))


def decoder(payload: bytes) -> Callable[[int], object]:
    return lambda i: decode_status_claim(payload)


def appender(box: Outbox, payload: bytes) -> Callable[[int], object]:
    return lambda i: box.append(TOPIC, payload, time.time())


def acker(box: Outbox) -> Callable[[int], None]:
    return lambda i: box.ack(i + 1)  # seqs start at 1


def bench_claims() -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for label, make in (("quiet beat", quiet_review), ("troubled beat", busy_review)):
        for fmt in ("cbor", "json"):
            b = builder(fmt)
            claim = b.build(make(1000))
            assert claim is not None
            size = len(b.encode(claim))
            enc = timed(encoder(b, make), 2000)
            dec = timed(decoder(b.encode(claim)), 2000)
            rows.append(
                (
                    label,
                    fmt,
                    str(size),
                    f"{statistics.median(enc) * 1e6:.1f}",
                    f"{percentile(enc, 0.99) * 1e6:.1f}",
                    f"{statistics.median(dec) * 1e6:.1f}",
                )
            )
    return rows


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def latency_row(label: str, op: str, samples: list[float], rate: bool = True) -> tuple[str, ...]:
    if not samples:
        return (label, op, "0", "", "", "", "")
    return (
        label,
        op,
        str(len(samples)),
        f"{len(samples) / sum(samples):,.0f}" if rate else "",
        us(statistics.median(samples)),
        us(percentile(samples, 0.99)),
        us(max(samples)),
    )


class TimedFsync:
    """The fsync seam: runs ``os.fsync`` (or sleeps ``fake_s``) and notes how long it took."""

    def __init__(self, fake_s: float | None = None) -> None:
        self.fake_s = fake_s
        self.times: list[float] = []

    def __call__(self, fd: int) -> None:
        start = time.perf_counter()
        if self.fake_s is None:
            os.fsync(fd)
        else:
            time.sleep(self.fake_s)
        self.times.append(time.perf_counter() - start)


def inline_fsync(directory: Path, payload: bytes, count: int) -> list[float]:
    """write + flush + fsync of one claim-sized frame on this thread, as append did before."""
    directory.mkdir()
    frame = bytes(16) + payload
    with open(directory / "inline.log", "ab") as handle:

        def one(_: int) -> None:
            handle.write(frame)
            handle.flush()
            os.fsync(handle.fileno())

        return timed(one, count, pace_s=PACE_S)


def bench_outbox(base: Path) -> list[tuple[str, ...]]:
    b = builder("cbor")
    claim = b.build(quiet_review(1))
    assert claim is not None
    payload = b.encode(claim)
    rows = [
        latency_row(
            "inline fsync (before)", "write+fsync", inline_fsync(base / "inline", payload, COUNT)
        )
    ]
    policies = (
        ("default (10 / 1 s)", 10, 1.0, None),
        ("fsync every record", 1, 0.0, None),
        ("slow card, default", 10, 1.0, 0.020),
        ("slow card, every record", 1, 0.0, 0.020),
        ("flush only (no fsync)", 0, 0.0, None),
    )
    for number, (label, every, interval, fake_s) in enumerate(policies):
        directory = base / f"policy{number}"
        config = OutboxConfig(directory, fsync_every=every, fsync_interval_s=interval)
        seam = TimedFsync(fake_s)
        box = Outbox(config, fsync=seam)
        at_open = len(seam.times)
        per = timed(appender(box, payload), COUNT, pace_s=PACE_S)
        ack = timed(acker(box), COUNT)
        start = time.perf_counter()
        box.close()
        closing = time.perf_counter() - start
        rows.append(latency_row(label, "append (caller)", per))
        rows.append(latency_row(label, "ack (caller)", ack))
        rows.append((label, "seq.hw writes", str(box.seq_writes), "", "", "", ""))
        if every or interval:
            # Without the one at open and the final one in close (both on the caller).
            rows.append(latency_row(label, "fsync (syncer)", seam.times[at_open:-1], rate=False))
        rows.append((label, "close (caller)", "1", "", us(closing), "", ""))
        shutil.rmtree(directory)
    hw = HighWater(base / "hw", block=SEQ_BLOCK, background=None)
    (base / "hw").mkdir()
    hw.start(0, volatile=False)
    takes = timed(lambda i: hw.take(i + 1), 10 * COUNT)
    hw.close(10 * COUNT)
    rows.append(latency_row(f"durable seq, block {SEQ_BLOCK}", "take (inline fsync)", takes))
    rows.append(
        (f"durable seq, block {SEQ_BLOCK}", "seq.hw writes", str(hw.writes), "", "", "", "")
    )
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
    rows.append(
        (
            "reopen 10k frames, 5k pending",
            "replay",
            "5000",
            f"{5000 / best:,.0f}",
            f"{best * 1e3:.1f} ms",
            "",
            f"{max(opens) * 1e3:.1f} ms",
        )
    )
    again.close()
    damaged = base / "damaged"
    shutil.copytree(directory, damaged)
    segs = sorted(damaged.glob("seg-*.log"))
    for n, seg in enumerate(segs[:: max(1, len(segs) // 10)][:10]):
        blob = bytearray(seg.read_bytes())
        blob[len(blob) // 2 + n] ^= 0x5A
        seg.write_bytes(bytes(blob))
    start = time.perf_counter()
    hurt = Outbox(OutboxConfig(damaged, max_bytes=16 << 20, max_count=20_000))
    took = time.perf_counter() - start
    rows.append(
        (
            "reopen, 10 flipped bytes (resync)",
            "replay+rewrite",
            str(hurt.backlog),
            f"{hurt.backlog / took:,.0f}",
            f"{took * 1e3:.1f} ms",
            f"{hurt.corrupt + hurt.torn} bad",
            f"{hurt.lost} lost",
        )
    )
    hurt.close()
    again = Outbox(replay)
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
    rows.append(
        ("unsent(100)+mark_sent, 5k", "drain", str(sent), f"{sent / drain:,.0f}", "", "", "")
    )
    again.close()
    return rows


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
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
        print(
            table(
                ("claim", "format", "bytes", "build+encode p50", "p99", "decode p50"),
                bench_claims(),
            )
        )
        print()
        print(
            f"Outbox on {base} ({filesystem(base.resolve())}), "
            f"{os.cpu_count()} CPUs; times in us unless marked; "
            f"appends {PACE_S * 1e3:g} ms apart"
        )
        print(table(("policy", "op", "calls", "calls/s", "p50", "p99", "max"), bench_outbox(base)))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
