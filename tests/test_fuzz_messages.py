"""Fuzz the three decoders: whatever the bytes, only FrameError comes out, and memory is flat.

Deterministic (fixed seed), ~120,000 payloads: random bytes, bit flips, byte edits,
truncations, splices of valid JSON and CBOR frames, and structure-aware mutations (a field
given a value of another type, dropped, added, or buried in nesting) re-encoded as JSON
or CBOR. A second pass runs under tracemalloc and checks memory does not grow.
"""

from __future__ import annotations

import gc
import json
import math
import random
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest

from edge.errors import FrameError
from edge.messages import (
    BarReport,
    BeatFrame,
    StatusClaim,
    decode_bar_report,
    decode_beat_frame,
    decode_status_claim,
    encode,
)

SEED = 20260301
PAYLOADS = 120_000
DECODERS: tuple[Callable[[bytes], object], ...] = (
    decode_beat_frame,
    decode_status_claim,
    decode_bar_report,
)

SEEDS_MESSAGES: list[BeatFrame | StatusClaim | BarReport] = [
    BeatFrame(
        "lab-1",
        42,
        True,
        "execute",
        "7FFD:0001:beef",
        "2026-03-01T12:00:00.25Z",  # type: ignore[arg-type]
        2.3,
        "0123456789abcdef0123456789abcdef",
        metadata={"pulse_version": "1.0.0", "cluster_health": "healthy", "expected_agents": 3},
    ),
    BeatFrame(
        "c",
        2**63 - 1,
        False,
        "review",
        "0000:0000:0000",
        "2026-03-01T12:00:00+01:00",  # type: ignore[arg-type]
        1000,
        "f" * 32,
    ),
    StatusClaim(
        "edge:pi-07",
        42,
        "executing",
        "7ffd:0002:1a2b",
        task_id="t:1",
        beats_left=3,
        progress=0.25,
        notes="ok \u00e9\U0001f3b5",
        resources={"cpu_percent": 37.5, "memory_mb": 412, "temperature_c": 61.2},
        dependencies=("svc:a",),
        metadata={
            "seq": 9,
            "shed": {"low": 1, "normal": 0},
            "lateness_us": [110, 1930],
            "guard": "admit",
            "ratio": 0.42,
        },
    ),
    StatusClaim("a", 0, "idle", "ffff:ffff:ffff"),
    BarReport(
        "0123456789abcdef0123456789abcdef",
        40,
        43,
        2,
        2,
        0,
        True,
        -1.5,
        issues=({"severity": "warning", "category": "late", "count": 1},),  # type: ignore[arg-type]
    ),
    BarReport("0" * 32, 0, 0, 0, 0, 0, False, 0.0),
]
VALID: list[bytes] = [encode(m, fmt) for m in SEEDS_MESSAGES for fmt in ("cbor", "json")]
WIRES: list[dict[str, Any]] = [json.loads(encode(m, "json")) for m in SEEDS_MESSAGES]

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**64),
    0.0,
    -0.0,
    0.1,
    0.3,
    1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "\u0000",
    "\U0001f3b5",
    "a" * 300,
    "2026-03-01T12:00:00Z",
    "plan",
    "idle",
    "ffff:ffff:ffff",
    [],
    [1],
    {},
    {"a": 1},
]
ODD_VALUES.append(json.loads("[" * 20 + "1" + "]" * 20))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 25 and roll < 0.15:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if depth < 25 and roll < 0.3:
        return {
            rng.choice(["a", "type", "metadata", "x" * rng.randrange(5)]): _random_value(
                rng, depth + 1
            )
            for _ in range(rng.randrange(3))
        }
    return rng.choice(ODD_VALUES)


def _structured(rng: random.Random) -> bytes:
    wire = dict(rng.choice(WIRES))
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(5)
        keys = list(wire)
        if action == 0 and keys:
            wire[rng.choice(keys)] = _random_value(rng)
        elif action == 1 and keys:
            del wire[rng.choice(keys)]
        elif action == 2:
            wire[
                rng.choice(
                    [
                        "extra",
                        "cluster_id",
                        "window_id",
                        "beats_left",
                        "issues",
                        "progress",
                        "metadata",
                        "resources",
                    ]
                )
            ] = _random_value(rng)
        elif action == 3 and keys:
            key = rng.choice(keys)
            wire[key] = [wire[key]] if rng.random() < 0.5 else {"v": wire[key]}
        else:
            wire["type"] = rng.choice(
                [
                    "backbeat.beatframe.v1",
                    "backbeat.statusclaim.v1",
                    "backbeat.barreport.v1",
                    "backbeat.beatframe.v2",
                    1,
                ]
            )
    if rng.random() < 0.5:
        return cbor2.dumps(wire)
    return json.dumps(wire).encode()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        if not buf:
            break
        kind = rng.randrange(5)
        pos = rng.randrange(len(buf))
        if kind == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[pos] = rng.randrange(256)
        elif kind == 2:
            del buf[pos : pos + rng.randrange(1, 8)]
        elif kind == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        else:
            buf[pos:pos] = rng.choice(SPLICES)
    return bytes(buf)


SPLICES = [
    b"\xff",
    b"\x9f",
    b"\xbf",
    b"\xc1",
    b"\xd8\x1c",
    b"\xf9\x7e\x00",
    b"[",
    b"{",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b'"',
    b"\\ud800",
    b"NaN",
    b"1e999",
]


def payloads(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.10:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif roll < 0.15:
            yield rng.choice(VALID)[: rng.randrange(1, 400)]
        elif roll < 0.25:
            a, b = rng.choice(VALID), rng.choice(VALID)
            yield a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]
        elif roll < 0.55:
            yield _mutate(rng, rng.choice(VALID))
        elif roll < 0.85:
            yield _structured(rng)
        elif roll < 0.95:
            yield _mutate(rng, _structured(rng))
        else:
            yield rng.choice(VALID)


def _feed(data: bytes, index: int) -> bool:
    """Decode with one of the decoders; True if accepted. Anything but FrameError fails."""
    decoder = DECODERS[index % 3]
    try:
        message = decoder(data)
    except FrameError:
        return False
    # An accepted message must encode again, and decode to itself.
    for fmt in ("cbor", "json"):
        assert decoder(encode(message, fmt)) == message  # type: ignore[arg-type]
    return True


@pytest.mark.slow
def test_decoders_raise_only_frame_error_on_fuzzed_input() -> None:
    accepted = refused = 0
    for i, data in enumerate(payloads(SEED, PAYLOADS)):
        if _feed(data, i):
            accepted += 1
        else:
            refused += 1
    assert accepted + refused == PAYLOADS
    # The corpus is neither all garbage nor all valid: the mutations reach the checks.
    assert accepted > 1000 and refused > 50_000


def test_each_valid_seed_decodes_with_every_matching_decoder() -> None:
    for message, raw in zip([m for m in SEEDS_MESSAGES for _ in range(2)], VALID, strict=True):
        decoder = {
            BeatFrame: decode_beat_frame,
            StatusClaim: decode_status_claim,
            BarReport: decode_bar_report,
        }[type(message)]
        assert decoder(raw) == message


@pytest.mark.slow
def test_memory_stays_flat_while_decoding_garbage() -> None:
    stream = payloads(SEED + 1, 22_000)
    gc.collect()
    tracemalloc.start()
    try:
        for i, data in zip(range(2_000), stream, strict=False):  # warm caches first
            _feed(data, i)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for i, data in enumerate(stream):
            _feed(data, i)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 20,000 payloads; a leak of even 50 bytes each would show as 1 MB.
    assert after - before < 256 * 1024, f"grew by {after - before} bytes"
