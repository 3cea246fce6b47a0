"""Status claims: which beats are reported, what a claim carries, and that it decodes."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import cbor2
import pytest

from edge import __version__
from edge.clock import FakeClock
from edge.errors import ConfigProblems
from edge.hlc import HybridLogicalClock, compare
from edge.messages import MAX_PAYLOAD_BYTES, decode_status_claim, encode
from edge.status import (
    METADATA_VERSION,
    BeatReview,
    StatusBuilder,
    StatusConfig,
    claim_state,
    config_hash,
    parse_status,
)
from edge.testing.reviews import quiet_review

ROOT = Path(__file__).resolve().parent.parent


def review(beat: int, **changes: object) -> BeatReview:
    base = dataclasses.replace(
        quiet_review(beat),
        error_bound_ms=0.8123,
        late_ms_p50=0.0421,
        late_ms_max=0.3,
        fired=3,
        cpu_percent=12.34,
        memory_mb=27.6,
        temperature_c=48.25,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def builder(
    clock: FakeClock, config: StatusConfig | None = None, start_seq: int = 0
) -> StatusBuilder:
    hlc = HybridLogicalClock(clock, node=0xBEEF)
    return StatusBuilder(
        "relay:pi-07",
        config or StatusConfig(),
        hlc,
        __version__,
        config_hash(b"[agent]\nid='relay:pi-07'\n"),
        start_seq=start_seq,
    )


def reported(b: StatusBuilder, reviews: list[BeatReview]) -> list[int]:
    beats = []
    for r in reviews:
        claim = b.build(r)
        if claim is not None:
            beats.append(claim.beat_index)
    return beats


# --------------------------------------------------------------------------- which beats


def test_default_reports_every_beat(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    assert reported(b, [review(i) for i in range(100, 110)]) == list(range(100, 110))


def test_every_n_reports_one_beat_in_n(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(every=4))
    assert reported(b, [review(i) for i in range(10, 23)]) == [10, 14, 18, 22]


def test_every_n_does_not_skip_more_after_a_gap(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(every=4))
    # Beats 11..16 never reviewed (Pulse lost): 17 is more than 4 after 10, so it is due.
    assert reported(b, [review(10), review(17), review(18), review(21)]) == [10, 17, 21]


def test_beat_index_going_back_is_reported(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(every=10))
    assert reported(b, [review(500), review(501), review(3), review(4)]) == [500, 3]


def test_on_change_reports_changes_and_heartbeats(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(mode="on_change", heartbeat_beats=5))
    reviews = [
        review(i, cpu_percent=10.0 + i, late_ms_max=i / 10, missed=int(i >= 7))
        for i in range(0, 12)
    ]
    reviews[3] = review(3, state="blocked")  # a change of state
    reviews[4] = review(4, state="blocked")  # same again: not reported
    reviews[5] = review(5)  # back to reviewing: a change
    # beat 7: a trouble counter moved (missed 0 -> 1), and stays at 1 after that.
    assert reported(b, reviews) == [0, 3, 5, 7]
    # No change from 8 on; the heartbeat comes 5 beats after the last report (7).
    assert reported(b, [review(i, missed=1) for i in range(8, 20)]) == [12, 17]


@pytest.mark.parametrize(
    "change",
    [
        {"sync_state": "free_running"},
        {"guard_level": "shed", "guard_reason": "cpu 93%"},
        {"recommended_tempo": 54.0},
        {"shed": {"cpu": 2}},
        {"frames_rejected": {"bad_hlc": 1}},
        {"dropped_by_limit": 1},
        {"outbox_dropped": 4},
        {"alerts": ("deadline miss rate 3% > 2%",)},
        {"isolated": ("relay",)},
    ],
)
def test_on_change_sees_each_condition(fake_clock: FakeClock, change: dict[str, object]) -> None:
    b = builder(fake_clock, StatusConfig(mode="on_change", heartbeat_beats=100))
    assert b.build(review(1)) is not None
    assert b.build(review(2)) is None
    assert b.build(review(3, **change)) is not None


def test_on_change_ignores_continuous_readings(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(mode="on_change", heartbeat_beats=100))
    assert b.build(review(1)) is not None
    noisy = review(
        2,
        cpu_percent=99.0,
        memory_mb=300.0,
        temperature_c=80.0,
        late_ms_p50=5.0,
        late_ms_max=9.0,
        error_bound_ms=7.0,
        backlog=40,
        fired=9,
    )
    assert b.build(noisy) is None


def test_final_always_emits_and_says_so(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(every=100))
    first = b.build(review(1))
    assert first is not None and first.metadata is not None
    assert "final" not in first.metadata
    assert b.build(review(2)) is None
    last = b.final(review(2, state="idle"))
    assert last.metadata is not None and last.metadata["final"] is True
    assert last.state == "idle"
    assert last.metadata["seq"] == 2


# --------------------------------------------------------------------------- seq and hlc


def test_seq_strictly_increases_and_survives_a_restart(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    seqs = []
    for i in range(5):
        claim = b.build(review(i))
        assert claim is not None and claim.metadata is not None
        seqs.append(claim.metadata["seq"])
    assert seqs == [1, 2, 3, 4, 5]
    assert b.seq == 5
    again = builder(fake_clock, start_seq=b.seq)  # the caller persisted 5
    claim = again.build(review(0))
    assert claim is not None and claim.metadata is not None
    assert claim.metadata["seq"] == 6


def test_skipped_beats_do_not_burn_a_seq(fake_clock: FakeClock) -> None:
    b = builder(fake_clock, StatusConfig(every=3))
    metas = [c.metadata for c in (b.build(review(i)) for i in range(9)) if c is not None]
    assert [m["seq"] for m in metas if m is not None] == [1, 2, 3]


def test_hlc_moves_forward_between_claims(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    stamps = []
    for i in range(4):
        claim = b.build(review(i))
        assert claim is not None
        stamps.append(claim.hlc)
        if i == 1:
            fake_clock.advance(1.0)
    assert all(compare(a, c) < 0 for a, c in itertools.pairwise(stamps))
    assert all(s.endswith(":beef") for s in stamps)


# --------------------------------------------------------------------------- contents


def test_claim_carries_resources_and_metadata(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    claim = b.build(
        review(
            42,
            state="executing",
            sync_state="free_running",
            error_bound_ms=3.14159,
            late_ms_p50=0.1234,
            late_ms_max=1.5,
            fired=7,
            missed=2,
            shed={"cpu": 3},
            dropped_by_limit=1,
            frames_rejected={"bad_tempo": 4},
            guard_level="shed",
            guard_reason="cpu 93% > 85%",
            recommended_tempo=54.0,
            backlog=12,
            outbox_dropped=5,
            alerts=("miss rate high",),
        )
    )
    assert claim is not None
    assert claim.agent_id == "relay:pi-07"
    assert claim.beat_index == 42
    assert claim.state == "executing"
    assert claim.notes == "miss rate high"
    assert claim.resources == {"cpu_percent": 12.3, "memory_mb": 28, "temperature_c": 48.2}
    assert isinstance(claim.resources["memory_mb"], int)
    meta = claim.metadata
    assert meta is not None
    assert meta["meta_v"] == METADATA_VERSION
    assert meta["seq"] == 1
    assert meta["agent_version"] == __version__
    assert meta["config_hash"] == config_hash(b"[agent]\nid='relay:pi-07'\n")
    assert meta["sync"] == {"state": "free_running", "error_bound_ms": 3.142}
    assert meta["late_ms"] == {"p50": 0.123, "max": 1.5}
    assert meta["actions"] == {"fired": 7, "deadline_misses": 2, "dropped_by_limit": 1}
    assert meta["shed"] == {"cpu": 3}
    assert meta["frames_rejected"] == {"bad_tempo": 4}
    assert meta["guard"] == {"level": "shed", "reason": "cpu 93% > 85%"}
    assert meta["recommended_tempo_bpm"] == 54.0
    assert "tempo_bpm" not in meta  # the cluster's tempo is the frames' field, not ours
    assert meta["outbox"] == {"backlog": 12, "dropped": 5}
    assert meta["alerts"] == ("miss rate high",)


def test_missing_and_non_finite_readings_are_left_out(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    claim = b.build(
        review(
            1,
            cpu_percent=None,
            memory_mb=None,
            temperature_c=float("nan"),
            late_ms_p50=None,
            late_ms_max=float("inf"),
            error_bound_ms=float("inf"),
        )
    )
    assert claim is not None and claim.metadata is not None
    assert claim.resources is None
    assert claim.notes is None
    assert claim.metadata["late_ms"] == {}
    assert claim.metadata["sync"] == {"state": "locked"}
    assert "recommended_tempo_bpm" not in claim.metadata
    assert "alerts" not in claim.metadata
    assert "isolated" not in claim.metadata


def test_isolated_devices_are_named_in_the_claim(fake_clock: FakeClock) -> None:
    claim = builder(fake_clock).build(review(1, isolated=("fan", "relay")))
    assert claim is not None and claim.metadata is not None
    assert claim.metadata["isolated"] == ("fan", "relay")


def test_negative_cpu_reading_is_clamped(fake_clock: FakeClock) -> None:
    claim = builder(fake_clock).build(review(1, cpu_percent=-0.5))
    assert claim is not None and claim.resources is not None
    assert claim.resources["cpu_percent"] == 0.0


def test_long_alerts_fit_the_notes_limit(fake_clock: FakeClock) -> None:
    claim = builder(fake_clock).build(review(1, alerts=tuple("x" * 60 for _ in range(10))))
    assert claim is not None and claim.notes is not None
    assert len(claim.notes) == 256 and claim.notes.endswith("...")


def test_bad_state_is_refused_early() -> None:
    with pytest.raises(ValueError, match="state must be one of"):
        review(1, state="dancing")


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_every_claim_decodes_in_both_formats(fake_clock: FakeClock, fmt: str) -> None:
    b = builder(fake_clock, StatusConfig(format=fmt))  # type: ignore[arg-type]
    states = ["planning", "executing", "reviewing", "idle", "failed", "blocked"]
    for i, state in enumerate(states * 3):
        claim = b.build(
            review(
                i,
                state=state,
                shed={"cpu": i},
                alerts=("a",) * (i % 2),
                recommended_tempo=60.0 if i % 3 else None,
            )
        )
        assert claim is not None
        payload = b.encode(claim)
        assert payload == encode(claim, fmt)  # type: ignore[arg-type]
        assert len(payload) < MAX_PAYLOAD_BYTES
        assert (payload[:1] == b"{") == (fmt == "json")
        back = decode_status_claim(payload)
        assert back == claim
        assert back.metadata == claim.metadata
        assert back.resources == claim.resources
    final = b.final(review(99))
    assert decode_status_claim(b.encode(final)).metadata == final.metadata


def test_claim_wire_has_only_upstream_top_level_keys(fake_clock: FakeClock) -> None:
    b = builder(fake_clock)
    claim = b.build(review(1, alerts=("x",)))
    assert claim is not None
    upstream = {
        "type",
        "agent_id",
        "task_id",
        "beat_index",
        "state",
        "beats_left",
        "progress",
        "notes",
        "hlc",
        "resources",
        "dependencies",
        "metadata",
    }
    assert set(cbor2.loads(encode(claim))) <= upstream
    assert set(json.loads(encode(claim, "json"))) <= upstream


def test_config_hash_is_short_stable_and_sensitive() -> None:
    assert config_hash(b"a") == config_hash(b"a")
    assert config_hash(b"a") != config_hash(b"b")
    assert len(config_hash(b"")) == 12
    int(config_hash(b"x"), 16)


# --------------------------------------------------------------------------- config


def test_parse_status_defaults() -> None:
    problems = ConfigProblems()
    assert parse_status({}, problems) == StatusConfig()
    assert not problems


def test_parse_status_reads_every_key() -> None:
    problems = ConfigProblems()
    got = parse_status(
        {"every": 2, "mode": "on_change", "heartbeat_beats": 30, "format": "json", "expiry_s": 0},
        problems,
    )
    assert got == StatusConfig(
        every=2, mode="on_change", heartbeat_beats=30, format="json", expiry_s=None
    )
    assert not problems


def test_parse_status_reports_every_problem_at_once() -> None:
    problems = ConfigProblems()
    got = parse_status(
        {
            "every": 0,
            "mode": "sometimes",
            "heartbeat_beats": True,
            "format": "xml",
            "expiry_s": -1,
            "evry": 3,
        },
        problems,
        "agent.status",
    )
    assert got == StatusConfig()
    text = "\n".join(problems.items)
    for where in ("every", "mode", "heartbeat_beats", "format", "expiry_s", "evry"):
        assert f"agent.status.{where}:" in text
    assert len(problems.items) == 6


def test_a_degraded_outbox_is_said_in_the_claim_and_counts_as_a_change() -> None:
    b = builder(FakeClock(), StatusConfig(mode="on_change", heartbeat_beats=100))
    first = b.build(review(1))
    assert first is not None and "degraded" not in dict(first.metadata or {})["outbox"]
    assert b.build(review(2)) is None  # nothing changed
    why = "outbox in memory: [Errno 28] No space left on device"
    claim = b.build(review(3, outbox_degraded=why))
    assert claim is not None
    assert dict(dict(claim.metadata or {})["outbox"])["degraded"] == why


# --------------------------------------------------------------------------- claim state


@pytest.mark.parametrize("sync_state", ["lost", "acquiring"])
def test_a_beat_not_followed_is_blocked_whatever_happened(sync_state: str) -> None:
    assert claim_state(sync_state, planned=3, failed=1, shed=2) == "blocked"
    assert claim_state(sync_state, planned=0, failed=0, shed=0) == "blocked"


@pytest.mark.parametrize("sync_state", ["locked", "free_running"])
def test_a_followed_beat_is_failed_idle_or_reviewing(sync_state: str) -> None:
    assert claim_state(sync_state, planned=3, failed=1, shed=0) == "failed"
    assert claim_state(sync_state, planned=0, failed=1, shed=0) == "failed"  # a late end
    assert claim_state(sync_state, planned=0, failed=0, shed=0) == "idle"
    assert claim_state(sync_state, planned=0, failed=0, shed=2) == "reviewing"  # all shed
    assert claim_state(sync_state, planned=2, failed=0, shed=0) == "reviewing"


def test_incarnation_and_outbox_damage_reach_the_claim(fake_clock: FakeClock) -> None:
    b = StatusBuilder(
        "relay:pi-07",
        StatusConfig(),
        HybridLogicalClock(fake_clock, node=0xBEEF),
        "0.1.0",
        "abc",
        incarnation="0123456789abcdef",
    )
    claim = b.build(review(0, outbox_torn=1, outbox_corrupt=2, outbox_lost=3))
    assert claim is not None and claim.metadata is not None
    assert claim.metadata["incarnation"] == "0123456789abcdef"
    outbox = claim.metadata["outbox"]
    assert outbox == {"backlog": 0, "dropped": 0, "torn": 1, "corrupt": 2, "lost": 3}
    decoded = decode_status_claim(encode(claim, "cbor"))
    assert decoded.metadata == claim.metadata
    plain = builder(fake_clock).build(review(0))
    assert plain is not None and plain.metadata is not None
    assert "incarnation" not in plain.metadata
    assert set(plain.metadata["outbox"]) == {"backlog", "dropped"}  # no damage, no keys
