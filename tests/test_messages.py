"""The wire contract (spec/backbeat-contract.md), rule by rule, in JSON and in CBOR."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import FrameError
from edge.messages import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    BarIssue,
    BarReport,
    BeatFrame,
    StatusClaim,
    decode_bar_report,
    decode_beat_frame,
    decode_status_claim,
    encode,
    format_rfc3339,
    parse_rfc3339,
    to_wire,
)

WINDOW = "0123456789abcdef0123456789abcdef"


def beat_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "backbeat.beatframe.v1",
        "cluster_id": "lab-1",
        "beat_index": 42,
        "downbeat": True,
        "phase": "execute",
        "hlc": "7ffd:0001:beef",
        "deadline_at": "2026-03-01T12:00:00Z",
        "tempo_bpm": 60,
        "window_id": WINDOW,
    }
    base.update(changes)
    return base


def claim_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "backbeat.statusclaim.v1",
        "agent_id": "edge:pi-07",
        "beat_index": 42,
        "state": "executing",
        "hlc": "7ffd:0002:1a2b",
    }
    base.update(changes)
    return base


def report_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "backbeat.barreport.v1",
        "window_id": WINDOW,
        "from_beat": 40,
        "to_beat": 43,
        "agents_reporting": 2,
        "on_time_reviews": 2,
        "help_promises_fulfilled": 0,
        "secret_rotations_ok": True,
        "tempo_drift_ms": -1.5,
    }
    base.update(changes)
    return base


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def as_json(d: object) -> bytes:
    return json.dumps(d).encode()


def as_cbor(d: object) -> bytes:
    return cbor2.dumps(d)


FORMATS = [pytest.param(as_json, id="json"), pytest.param(as_cbor, id="cbor")]
Decoder = Callable[[bytes], object]


# --------------------------------------------------------------------------- valid input


@pytest.mark.parametrize("dump", FORMATS)
def test_a_full_beat_frame_decodes_to_its_fields(dump: Callable[[object], bytes]) -> None:
    frame = decode_beat_frame(
        dump(
            beat_dict(
                metadata={
                    "pulse_version": "1.0.0",
                    "cluster_health": "healthy",
                    "expected_agents": 3,
                }
            )
        )
    )
    assert frame.cluster_id == "lab-1"
    assert frame.beat_index == 42
    assert frame.downbeat is True
    assert frame.phase == "execute"
    assert frame.hlc == "7ffd:0001:beef"
    assert frame.deadline_at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert frame.tempo_bpm == 60.0 and isinstance(frame.tempo_bpm, float)
    assert frame.window_id == WINDOW
    assert frame.metadata == {
        "pulse_version": "1.0.0",
        "cluster_health": "healthy",
        "expected_agents": 3,
    }
    assert frame.beat_seconds == 1.0
    assert frame.phase_seconds == pytest.approx(1 / 3)


@pytest.mark.parametrize("dump", FORMATS)
@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"hlc": "FFFF:FFFF:FFFF"}, id="uppercase-hlc"),
        pytest.param({"hlc": "aBcD:0000:Ef01"}, id="mixed-case-hlc"),
        pytest.param({"beat_index": 42, "downbeat": True}, id="downbeat-on-beat-42"),
        pytest.param({"beat_index": 7, "downbeat": True}, id="downbeat-any-beat"),
        pytest.param({"beat_index": 0, "downbeat": False}, id="beat-0-not-downbeat"),
        pytest.param({"beat_index": 4, "downbeat": False}, id="bar-length-4-irrelevant"),
        pytest.param({"beat_index": 120, "downbeat": False}, id="bar-length-120-irrelevant"),
        pytest.param({"beat_index": 2**63 - 1}, id="beat-index-max"),
        pytest.param({"beat_index": 0}, id="beat-index-zero"),
        pytest.param({"phase": "plan"}, id="phase-plan"),
        pytest.param({"phase": "review"}, id="phase-review"),
        pytest.param({"cluster_id": "a" * 64}, id="cluster-id-64"),
        pytest.param({"cluster_id": "A_b-9"}, id="cluster-id-chars"),
        pytest.param({"window_id": WINDOW.upper()}, id="window-id-uppercase"),
        pytest.param({"tempo_bpm": 0.1}, id="tempo-0.1"),
        pytest.param({"tempo_bpm": 0.3}, id="tempo-0.3"),
        pytest.param({"tempo_bpm": 2.3}, id="tempo-2.3"),
        pytest.param({"tempo_bpm": 1000}, id="tempo-1000"),
        pytest.param({"tempo_bpm": 1000.0}, id="tempo-1000.0"),
        pytest.param({"tempo_bpm": 999.9}, id="tempo-999.9"),
        pytest.param({"tempo_bpm": 120.5}, id="tempo-120.5"),
        pytest.param({"tempo_bpm": 1}, id="tempo-upstream-default"),
        pytest.param({"deadline_at": "2026-03-01T12:00:00.123456Z"}, id="deadline-fraction"),
        pytest.param({"deadline_at": "2026-03-01T12:00:00.1Z"}, id="deadline-short-fraction"),
        pytest.param({"deadline_at": "2026-03-01T12:00:00.123456789Z"}, id="deadline-nanos"),
        pytest.param({"deadline_at": "2026-03-01t12:00:00z"}, id="deadline-lowercase"),
        pytest.param({"deadline_at": "2026-03-01T13:30:00+01:30"}, id="deadline-offset"),
        pytest.param({"deadline_at": "2026-03-01T10:00:00-02:00"}, id="deadline-neg-offset"),
        pytest.param({"deadline_at": "2016-12-31T23:59:60Z"}, id="deadline-leap-second"),
        pytest.param({"metadata": {}}, id="empty-metadata"),
        pytest.param({"metadata": {"x": [1, 2.5, None, True, {"y": "z"}]}}, id="nested-metadata"),
    ],
)
def test_valid_beat_frames_decode(dump: Callable[[object], bytes], changes: dict[str, Any]) -> None:
    frame = decode_beat_frame(dump(beat_dict(**changes)))
    for key, value in changes.items():
        if key == "deadline_at":
            assert frame.deadline_at == parse_rfc3339(key, value)
        elif key == "metadata":  # frozen on decode: compare the tree it puts back on the wire
            assert json.loads(encode(frame, "json"))["metadata"] == value
        else:
            assert getattr(frame, key) == value


def test_tempo_step_is_checked_in_decimal() -> None:
    # Binary floats make these look off-step (0.3 % 0.1 == 0.09999999999999998).
    assert math.fmod(0.3, 0.1) != 0 and math.fmod(2.3, 0.1) != 0
    for tempo in (0.3, 2.3, 0.7, 33.3, 100.1):
        assert decode_beat_frame(as_json(beat_dict(tempo_bpm=tempo))).tempo_bpm == tempo


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00:00.25Z", datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2026-03-01T12:00:00.1234567Z", datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-01T13:00:00+01:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00:00-00:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_reads_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339("deadline_at", text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_format_rfc3339_is_utc_with_z_and_four_digit_year() -> None:
    assert format_rfc3339(datetime(2026, 3, 1, 13, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-03-01T12:00:00Z"
    )
    assert format_rfc3339(datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC)) == (
        "2026-03-01T12:00:00.000005Z"
    )
    assert format_rfc3339(datetime(33, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0033-01-02T03:04:05Z"


@pytest.mark.parametrize("dump", FORMATS)
def test_a_minimal_status_claim_decodes_with_optional_fields_absent(
    dump: Callable[[object], bytes],
) -> None:
    claim = decode_status_claim(dump(claim_dict()))
    assert (claim.agent_id, claim.beat_index, claim.state, claim.hlc) == (
        "edge:pi-07",
        42,
        "executing",
        "7ffd:0002:1a2b",
    )
    # Go producers omit beats_left: 0 and progress: 0 (omitempty): absent means not given.
    assert claim.beats_left is None and claim.progress is None
    assert claim.task_id is None and claim.notes is None and claim.resources is None
    assert claim.dependencies is None and claim.metadata is None


@pytest.mark.parametrize("dump", FORMATS)
def test_a_full_status_claim_decodes(dump: Callable[[object], bytes]) -> None:
    claim = decode_status_claim(
        dump(
            claim_dict(
                task_id="task:1",
                beats_left=0,
                progress=0,
                notes="n" * 256,
                resources={
                    "cpu_percent": 12.5,
                    "memory_mb": 512,
                    "disk_io_ops": 3,
                    "network_kb": 1.5,
                },
                dependencies=["svc:a", "svc:b"],
                metadata={"agent_version": "1", "retry_count": 0},
            )
        )
    )
    assert claim.beats_left == 0 and claim.progress == 0.0
    assert claim.dependencies == ("svc:a", "svc:b")
    assert claim.resources == {
        "cpu_percent": 12.5,
        "memory_mb": 512,
        "disk_io_ops": 3,
        "network_kb": 1.5,
    }
    assert claim.notes == "n" * 256


@pytest.mark.parametrize("dump", FORMATS)
@pytest.mark.parametrize(
    "state",
    ["idle", "planning", "executing", "reviewing", "completed", "failed", "blocked", "helping"],
)
def test_all_eight_claim_states_are_valid(dump: Callable[[object], bytes], state: str) -> None:
    assert decode_status_claim(dump(claim_dict(state=state))).state == state


@pytest.mark.parametrize("dump", FORMATS)
def test_a_bar_report_decodes_with_and_without_issues(dump: Callable[[object], bytes]) -> None:
    report = decode_bar_report(dump(report_dict()))
    assert report.issues is None and report.tempo_drift_ms == -1.5
    assert report.secret_rotations_ok is True
    issues = [{"severity": "warning", "category": "late", "count": i} for i in range(100)]
    report = decode_bar_report(dump(report_dict(issues=issues, tempo_drift_ms=12)))
    assert report.issues is not None and len(report.issues) == 100
    assert report.issues[5] == BarIssue("warning", "late", 5)
    assert report.tempo_drift_ms == 12.0


def test_json_with_leading_whitespace_and_buffer_types_are_read() -> None:
    raw = b" \n\t" + as_json(beat_dict())
    assert decode_beat_frame(raw).beat_index == 42
    # Typed bytes, read as any buffer.
    assert decode_beat_frame(bytearray(as_cbor(beat_dict()))).beat_index == 42  # type: ignore[arg-type]
    assert decode_beat_frame(memoryview(as_cbor(beat_dict()))).beat_index == 42  # type: ignore[arg-type]


# --------------------------------------------------------------------------- invalid input

BEAT_REQUIRED = [
    "type",
    "cluster_id",
    "beat_index",
    "downbeat",
    "phase",
    "hlc",
    "deadline_at",
    "tempo_bpm",
    "window_id",
]
CLAIM_REQUIRED = ["type", "agent_id", "beat_index", "state", "hlc"]
REPORT_REQUIRED = [
    "type",
    "window_id",
    "from_beat",
    "to_beat",
    "agents_reporting",
    "on_time_reviews",
    "help_promises_fulfilled",
    "secret_rotations_ok",
    "tempo_drift_ms",
]


@pytest.mark.parametrize("dump", FORMATS)
@pytest.mark.parametrize(
    ("decoder", "base", "name"),
    [(decode_beat_frame, beat_dict, n) for n in BEAT_REQUIRED]
    + [(decode_status_claim, claim_dict, n) for n in CLAIM_REQUIRED]
    + [(decode_bar_report, report_dict, n) for n in REPORT_REQUIRED],
)
def test_every_required_field_is_required(
    dump: Callable[[object], bytes],
    decoder: Decoder,
    base: Callable[[], dict[str, Any]],
    name: str,
) -> None:
    with pytest.raises(FrameError, match=rf"^{name} is required") as err:
        decoder(dump(without(base(), name)))
    assert err.value.field == name


def bad(
    decoder: Decoder,
    base: Callable[..., dict[str, Any]],
    field: str,
    value: Any,
    shown: str | None = None,
) -> Any:
    shown = repr(value) if shown is None else shown
    return pytest.param(
        decoder,
        base(**{field: value}),
        field,
        shown,
        id=f"{decoder.__name__[7:]}-{field}-{shown[:30]}",
    )


INVALID = [
    # BeatFrame
    bad(decode_beat_frame, beat_dict, "type", "backbeat.beatframe.v2"),
    bad(decode_beat_frame, beat_dict, "type", "backbeat.statusclaim.v1"),
    bad(decode_beat_frame, beat_dict, "cluster_id", ""),
    bad(decode_beat_frame, beat_dict, "cluster_id", "a" * 65, "'aaaa"),
    bad(decode_beat_frame, beat_dict, "cluster_id", "lab 1"),
    bad(decode_beat_frame, beat_dict, "cluster_id", "lab:1"),
    bad(decode_beat_frame, beat_dict, "cluster_id", "lab-1\n"),
    bad(decode_beat_frame, beat_dict, "cluster_id", 7),
    bad(decode_beat_frame, beat_dict, "beat_index", -1),
    bad(decode_beat_frame, beat_dict, "beat_index", 2**63),
    bad(decode_beat_frame, beat_dict, "beat_index", "42"),
    bad(decode_beat_frame, beat_dict, "beat_index", 42.0),
    bad(decode_beat_frame, beat_dict, "beat_index", True),
    bad(decode_beat_frame, beat_dict, "beat_index", None),
    bad(decode_beat_frame, beat_dict, "downbeat", 1),
    bad(decode_beat_frame, beat_dict, "downbeat", 0),
    bad(decode_beat_frame, beat_dict, "downbeat", "true"),
    bad(decode_beat_frame, beat_dict, "downbeat", None),
    bad(decode_beat_frame, beat_dict, "phase", "PLAN"),
    bad(decode_beat_frame, beat_dict, "phase", "rest"),
    bad(decode_beat_frame, beat_dict, "phase", ["plan"]),
    bad(decode_beat_frame, beat_dict, "hlc", "7ffd:0001"),
    bad(decode_beat_frame, beat_dict, "hlc", "7ffd:0001:beeg"),
    bad(decode_beat_frame, beat_dict, "hlc", "7ffd:00001:bee"),
    bad(decode_beat_frame, beat_dict, "hlc", "7ffd:0001:beef:0"),
    bad(decode_beat_frame, beat_dict, "hlc", 12345),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01T12:00:00"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01 12:00:00Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-13-01T12:00:00Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-02-30T12:00:00Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01T24:00:00Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01T12:00:00+24:00"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "2026-03-01T12:00:00.Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "\u0662\u0660\u0662\u0666-03-01T12:00:00Z"),
    bad(decode_beat_frame, beat_dict, "deadline_at", "0001-01-01T00:00:00+01:00"),
    bad(decode_beat_frame, beat_dict, "deadline_at", 1767225600),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 0.05),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 0),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", -60),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 1000.1),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 0.15),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 60.01),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", 0.30000000000000004),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", "60"),
    bad(decode_beat_frame, beat_dict, "tempo_bpm", True),
    bad(decode_beat_frame, beat_dict, "window_id", WINDOW[:-1]),
    bad(decode_beat_frame, beat_dict, "window_id", WINDOW + "0"),
    bad(decode_beat_frame, beat_dict, "window_id", "g" * 32, "'gggg"),
    bad(decode_beat_frame, beat_dict, "metadata", ["pulse_version"]),
    bad(decode_beat_frame, beat_dict, "metadata", "healthy"),
    # StatusClaim
    bad(decode_status_claim, claim_dict, "type", "backbeat.beatframe.v1"),
    bad(decode_status_claim, claim_dict, "agent_id", ""),
    bad(decode_status_claim, claim_dict, "agent_id", "edge pi"),
    bad(decode_status_claim, claim_dict, "agent_id", "a" * 129, "'aaaa"),
    bad(decode_status_claim, claim_dict, "agent_id", "edge/pi"),
    bad(decode_status_claim, claim_dict, "task_id", "task 1"),
    bad(decode_status_claim, claim_dict, "task_id", "t" * 129, "'tttt"),
    bad(decode_status_claim, claim_dict, "beat_index", -5),
    bad(decode_status_claim, claim_dict, "beat_index", False),
    bad(decode_status_claim, claim_dict, "state", "running"),
    bad(decode_status_claim, claim_dict, "state", "IDLE"),
    bad(decode_status_claim, claim_dict, "state", {"idle": 1}),
    bad(decode_status_claim, claim_dict, "hlc", "xyz"),
    bad(decode_status_claim, claim_dict, "beats_left", 1001),
    bad(decode_status_claim, claim_dict, "beats_left", -1),
    bad(decode_status_claim, claim_dict, "beats_left", True),
    bad(decode_status_claim, claim_dict, "beats_left", 2.5),
    bad(decode_status_claim, claim_dict, "progress", 1.01),
    bad(decode_status_claim, claim_dict, "progress", -0.1),
    bad(decode_status_claim, claim_dict, "progress", "0.5"),
    bad(decode_status_claim, claim_dict, "progress", False),
    bad(decode_status_claim, claim_dict, "notes", 42),
    bad(decode_status_claim, claim_dict, "notes", "n" * 257, "257"),
    bad(decode_status_claim, claim_dict, "resources", [1, 2]),
    bad(decode_status_claim, claim_dict, "dependencies", "svc:a"),
    bad(decode_status_claim, claim_dict, "dependencies", {"svc:a": 1}),
    bad(decode_status_claim, claim_dict, "metadata", 3),
    # BarReport
    bad(decode_bar_report, report_dict, "type", "backbeat.barreport.v0"),
    bad(decode_bar_report, report_dict, "window_id", "nope"),
    bad(decode_bar_report, report_dict, "from_beat", -1),
    bad(decode_bar_report, report_dict, "to_beat", "43"),
    bad(decode_bar_report, report_dict, "agents_reporting", -2),
    bad(decode_bar_report, report_dict, "on_time_reviews", True),
    bad(decode_bar_report, report_dict, "help_promises_fulfilled", 1.5),
    bad(decode_bar_report, report_dict, "secret_rotations_ok", 1),
    bad(decode_bar_report, report_dict, "secret_rotations_ok", "yes"),
    bad(decode_bar_report, report_dict, "tempo_drift_ms", "fast"),
    bad(decode_bar_report, report_dict, "tempo_drift_ms", None),
    bad(decode_bar_report, report_dict, "issues", {"severity": "x"}),
    bad(
        decode_bar_report,
        report_dict,
        "issues",
        [{"severity": "warning", "category": "late", "count": 1}] * 101,
        "101",
    ),
]


@pytest.mark.parametrize("dump", FORMATS)
@pytest.mark.parametrize(("decoder", "payload", "field", "shown"), INVALID)
def test_invalid_values_are_refused_naming_field_and_value(
    dump: Callable[[object], bytes],
    decoder: Decoder,
    payload: dict[str, Any],
    field: str,
    shown: str,
) -> None:
    with pytest.raises(FrameError) as err:
        decoder(dump(payload))
    message = str(err.value)
    assert err.value.field == field
    assert message.startswith(field), message
    assert shown in message, message


@pytest.mark.parametrize(
    ("decoder", "payload", "field", "shown"),
    [
        (
            decode_status_claim,
            claim_dict(resources={"cpu_percent": "high"}),
            "resources.cpu_percent",
            "'high'",
        ),
        (
            decode_status_claim,
            claim_dict(resources={"cpu_percent": -1}),
            "resources.cpu_percent",
            "-1",
        ),
        (
            decode_status_claim,
            claim_dict(resources={"memory_mb": 1.5}),
            "resources.memory_mb",
            "1.5",
        ),
        (
            decode_status_claim,
            claim_dict(resources={"disk_io_ops": True}),
            "resources.disk_io_ops",
            "True",
        ),
        # null is not "absent": a present resource must be a number.
        (
            decode_status_claim,
            claim_dict(resources={"cpu_percent": None}),
            "resources.cpu_percent",
            "None",
        ),
        (
            decode_status_claim,
            claim_dict(resources={"network_kb": True}),
            "resources.network_kb",
            "True",
        ),
        (
            decode_status_claim,
            claim_dict(resources={"memory_mb": None}),
            "resources.memory_mb",
            "None",
        ),
        (decode_status_claim, claim_dict(resources={"memory_mb": -3}), "resources.memory_mb", "-3"),
        (
            decode_status_claim,
            claim_dict(resources={"memory_mb": 2**63}),
            "resources.memory_mb",
            str(2**63),
        ),
        (
            decode_status_claim,
            claim_dict(dependencies=["svc:a", "bad id"]),
            "dependencies[1]",
            "'bad id'",
        ),
        (
            decode_status_claim,
            claim_dict(metadata={"a": {"b": [1, {"c": b"raw"}]}}),
            "metadata.a.b[1].c",
            "b'raw'",
        ),
        (
            decode_bar_report,
            report_dict(issues=[{"severity": "x", "category": "y"}]),
            "issues[0].count",
            "required",
        ),
        (
            decode_bar_report,
            report_dict(issues=[{"severity": "x", "category": "y", "count": -1}]),
            "issues[0].count",
            "-1",
        ),
        (
            decode_bar_report,
            report_dict(issues=[{"severity": "x", "category": "y", "count": 1, "extra": 1}]),
            "issues[0].extra",
            "unknown",
        ),
        (decode_bar_report, report_dict(issues=["late"]), "issues[0]", "'late'"),
        (
            decode_bar_report,
            report_dict(issues=[{"severity": 3, "category": "y", "count": 1}]),
            "issues[0].severity",
            "3",
        ),
    ],
)
def test_nested_problems_name_the_full_path(
    decoder: Decoder,
    payload: dict[str, Any],
    field: str,
    shown: str,
) -> None:
    for dump in (as_cbor, as_json) if "raw" not in shown else (as_cbor,):
        with pytest.raises(FrameError) as err:
            decoder(dump(payload))
        assert err.value.field == field
        assert str(err.value).startswith(field) and shown in str(err.value), str(err.value)


@pytest.mark.parametrize("dump", FORMATS)
@pytest.mark.parametrize(
    ("decoder", "payload", "extra"),
    [
        (decode_beat_frame, beat_dict(pulse_version="1.0.0"), "pulse_version"),
        (decode_status_claim, claim_dict(cluster_id="lab-1"), "cluster_id"),
        (decode_status_claim, claim_dict(window_id=WINDOW), "window_id"),
        (decode_status_claim, claim_dict(seq=3), "seq"),
        (decode_bar_report, report_dict(bar=1), "bar"),
    ],
)
def test_unknown_top_level_fields_are_refused(
    dump: Callable[[object], bytes],
    decoder: Decoder,
    payload: dict[str, Any],
    extra: str,
) -> None:
    with pytest.raises(FrameError, match=rf"^{extra} is not a field") as err:
        decoder(dump(payload))
    assert err.value.field == extra


def test_non_string_cbor_keys_are_refused() -> None:
    payload = beat_dict()
    payload[7] = "x"  # type: ignore[index]
    with pytest.raises(FrameError, match=r"^7 is not a field"):
        decode_beat_frame(as_cbor(payload))
    with pytest.raises(FrameError, match="keys must be strings"):
        decode_beat_frame(as_cbor(beat_dict(metadata={1: 2})))


def test_nan_and_infinity_are_refused_in_every_spelling() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        raw = as_json(beat_dict(tempo_bpm=1)).replace(b'"tempo_bpm": 1', b'"tempo_bpm": ' + literal)
        with pytest.raises(FrameError, match=literal.decode()):
            decode_beat_frame(raw)
    huge = as_json(beat_dict(tempo_bpm=1)).replace(b'"tempo_bpm": 1', b'"tempo_bpm": 1e400')
    with pytest.raises(FrameError, match=r"^tempo_bpm must be a finite number, got inf"):
        decode_beat_frame(huge)
    # 1e400 parses as an infinity inside metadata too, at any depth.
    for where, meta in (("metadata.x", b'{"x": 1e400}'), ("metadata.a.b", b'{"a": {"b": -1e400}}')):
        raw = as_json(claim_dict(metadata={})).replace(b'"metadata": {}', b'"metadata": ' + meta)
        with pytest.raises(FrameError, match=rf"^{where} must be a finite number, got -?inf"):
            decode_status_claim(raw)
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(FrameError, match=r"^tempo_bpm must be a finite number"):
            decode_beat_frame(as_cbor(beat_dict(tempo_bpm=value)))
        with pytest.raises(FrameError, match=r"^progress must be a finite number"):
            decode_status_claim(as_cbor(claim_dict(progress=value)))
        with pytest.raises(FrameError, match=r"^metadata.x\[0\] must be a finite number"):
            decode_status_claim(as_cbor(claim_dict(metadata={"x": [value]})))


def test_duplicate_keys_are_refused_in_json_and_cbor() -> None:
    raw = (
        b'{"type":"backbeat.statusclaim.v1","agent_id":"a","agent_id":"b","beat_index":1,'
        b'"state":"idle","hlc":"0000:0000:0000"}'
    )
    with pytest.raises(FrameError, match=r"agent_id.*twice"):
        decode_status_claim(raw)
    nested = raw.replace(b'"agent_id":"b",', b'"metadata":{"k":1,"k":2},')
    with pytest.raises(FrameError, match=r"'k' twice"):
        decode_status_claim(nested)
    # CBOR map with "hlc" twice: header a6 (6 pairs) with the last pair repeated.
    body = cbor2.dumps(claim_dict())[1:]
    dup = bytes([0xA6]) + body + cbor2.dumps("hlc") + cbor2.dumps("0000:0000:0000")
    with pytest.raises(FrameError, match=r"[Dd]uplicate"):
        decode_status_claim(dup)


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        (b"", "empty"),
        (b"\xff\xfe{", "CBOR"),
        (b'{"type": "caf\xe9"}', "not UTF-8"),
        (b'{"type": ', "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON"),
        (b"[1, 2]", "CBOR"),
        (cbor2.dumps([1, 2]), "must be an object, got list"),
        (cbor2.dumps("text"), "must be an object, got str"),
        (cbor2.dumps(claim_dict())[:-3], "CBOR"),
        (cbor2.dumps(claim_dict()) + b"\x00", "bytes after the CBOR item"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), f"more than the {MAX_PAYLOAD_BYTES} allowed"),
        (b"{" + b" " * (10 * 1024 * 1024) + b"}", "allowed"),
        (b"[" * 30000 + b"]" * 30000, "."),
        (b'{"a":' * 10000 + b"1" + b"}" * 10000, "."),
        (b"\x81" * 30000 + b"\x00", "."),
        (b"\xa1\x61a" * 10000 + b"\x00", "."),
        (b"{" + b'"a":1,' * 10 + b'"a":1}', "twice"),
    ],
)
def test_hostile_payloads_raise_frame_error(payload: bytes, pattern: str) -> None:
    for decoder in (decode_beat_frame, decode_status_claim, decode_bar_report):
        with pytest.raises(FrameError, match=pattern):
            decoder(payload)


def test_a_non_bytes_payload_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="must be bytes, got str"):
        decode_beat_frame(json.dumps(beat_dict()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (cbor2.CBORTag(1, 1767225600), "tags"),  # an epoch datetime
        (cbor2.CBORTag(0, "2026-03-01T12:00:00Z"), "tags"),  # a date-time string tag
        (cbor2.CBORTag(2, b"\x01" * 20), "tags"),  # a bignum
        (cbor2.CBORTag(55799, "x"), "tags"),  # self-described CBOR
        (cbor2.CBORTag(999, "x"), "tags"),  # an unknown tag
        (b"raw bytes", "byte|JSON"),
        (cbor2.undefined, "string|JSON"),
        (cbor2.CBORSimpleValue(99), "string|JSON"),
    ],
)
def test_cbor_outside_the_json_data_model_is_refused(value: object, pattern: str) -> None:
    with pytest.raises(FrameError, match=pattern):
        decode_beat_frame(as_cbor(beat_dict(deadline_at=value)))
    with pytest.raises(FrameError, match=pattern):
        decode_beat_frame(as_cbor(beat_dict(metadata={"x": value})))


def test_every_cbor_tag_is_refused_those_cbor2_decodes_itself_too() -> None:
    # cbor2 turns some tags into values of its own (dates, bignums, sets, self-described
    # CBOR unwrapped...): the codec names those one by one, so sweep every tag number.
    missed = []
    for tag in [*range(65536), 2**32 - 1, 2**64 - 1]:
        try:
            decode_status_claim(cbor2.dumps(cbor2.CBORTag(tag, 0)))
        except FrameError as exc:
            if "tags are not part of the contract" not in str(exc):
                missed.append(tag)
        else:
            missed.append(tag)
    assert missed == []


def test_cbor_shared_reference_cycles_are_refused() -> None:
    # tag 28 (shareable) around an array holding tag 29 (reference to itself)
    payload = cbor2.dumps(beat_dict(metadata={})).replace(b"\xa0", b"\xd8\x1c\x81\xd8\x1d\x00")
    with pytest.raises(FrameError, match="tags"):
        decode_beat_frame(payload)


def test_lone_surrogates_are_refused_so_every_message_can_be_encoded() -> None:
    raw = as_json(claim_dict(notes="x")).replace(b'"notes": "x"', b'"notes": "\\ud800"')
    with pytest.raises(FrameError, match=r"^notes must be valid Unicode"):
        decode_status_claim(raw)
    raw = as_json(claim_dict(metadata={"x": 1})).replace(b'"x"', b'"\\udfff"')
    with pytest.raises(FrameError, match="keys must be valid Unicode"):
        decode_status_claim(raw)
    # A proper pair is one character, and fine.
    raw = as_json(claim_dict(notes="x")).replace(b'"notes": "x"', b'"notes": "\\ud83c\\udfb5"')
    assert decode_status_claim(raw).notes == "\U0001f3b5"


def test_metadata_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    ok = claim_dict(metadata={"x": deep[0]})  # metadata + MAX_DEPTH - 1 arrays
    for dump in (as_json, as_cbor):
        assert decode_status_claim(dump(ok)).metadata is not None
    too_deep = claim_dict(metadata={"x": deep})
    for dump in (as_json, as_cbor):
        with pytest.raises(FrameError, match="nested"):
            decode_status_claim(dump(too_deep))


def test_huge_integers_are_refused_without_crashing() -> None:
    raw = as_json(claim_dict(beat_index=1)).replace(
        b'"beat_index": 1', b'"beat_index": 1' + b"0" * 5000
    )
    with pytest.raises(FrameError):
        decode_status_claim(raw)
    raw = as_json(claim_dict(beat_index=1)).replace(
        b'"beat_index": 1', b'"beat_index": 1' + b"0" * 100
    )
    with pytest.raises(FrameError, match=r"^beat_index must be between 0 and .*bits"):
        decode_status_claim(raw)
    with pytest.raises(FrameError, match=r"^metadata.n must fit in 64 bits"):
        decode_status_claim(as_json(claim_dict(metadata={"n": 2**64})))


# --------------------------------------------------------------------------- construction


def test_constructing_an_invalid_message_raises_frame_error_a_value_error() -> None:
    with pytest.raises(FrameError, match=r"^state must be one of .*, got 'running'"):
        StatusClaim(agent_id="a", beat_index=1, state="running", hlc="0000:0000:0000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^tempo_bpm must be between 0.1 and 1000, got 0.05"):
        BeatFrame("c", 1, True, "plan", "0000:0000:0000", datetime.now(UTC), 0.05, WINDOW)
    with pytest.raises(FrameError, match=r"^deadline_at must carry a time zone"):
        BeatFrame("c", 1, True, "plan", "0000:0000:0000", datetime(2026, 1, 1), 60, WINDOW)
    with pytest.raises(FrameError, match=r"^notes must be valid Unicode"):
        StatusClaim("a", 1, "idle", "0000:0000:0000", notes="\udc00")


def test_messages_are_immutable_all_the_way_down() -> None:
    claim = StatusClaim(
        "a",
        1,
        "idle",
        "0000:0000:0000",
        metadata={"x": {"y": [1]}},
        dependencies=["b"],  # type: ignore[arg-type]
    )
    assert claim.metadata is not None and claim.dependencies == ("b",)
    with pytest.raises(AttributeError):
        claim.state = "failed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        claim.metadata["x"]["y"] = 2
    assert claim.metadata["x"]["y"] == (1,)


@pytest.mark.parametrize("dump", FORMATS)
def test_decoded_messages_are_immutable_all_the_way_down(dump: Callable[[object], bytes]) -> None:
    claim = decode_status_claim(
        dump(
            claim_dict(
                metadata={"flat": {"a": 1}, "deep": {"b": [1, {"c": 2}]}},
                resources={"memory_mb": 1},
            )
        )
    )
    assert claim.metadata is not None and claim.resources is not None
    for mapping in (
        claim.metadata,
        claim.metadata["flat"],
        claim.metadata["deep"],
        claim.metadata["deep"]["b"][1],
        claim.resources,
    ):
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]
    assert claim.metadata["deep"]["b"] == (1, {"c": 2})
    assert type(claim.metadata["deep"]["b"]) is tuple


def test_frozen_objects_refuse_every_change_and_copy_to_plain_dicts() -> None:
    claim = StatusClaim("a", 1, "idle", "0000:0000:0000", metadata={"x": {"y": 1}, "z": 2})
    meta: Any = claim.metadata  # Any: the test calls what a Mapping does not declare
    changes: list[Callable[[], object]] = [
        lambda: meta.__setitem__("z", 3),
        lambda: meta.__delitem__("z"),
        lambda: meta.pop("z"),
        lambda: meta.popitem(),
        lambda: meta.setdefault("w", 1),
        lambda: meta.update(z=3),
        lambda: meta.clear(),
        lambda: meta["x"].__ior__({"y": 2}),
    ]
    for change in changes:
        with pytest.raises(TypeError):
            change()
    assert meta == {"x": {"y": 1}, "z": 2}
    mine = dict(meta) | {"w": 1}
    mine["z"] = 3  # a copy is the caller's to change
    assert type(meta.copy()) is dict
    for again in (copy.copy(meta), copy.deepcopy(meta), pickle.loads(pickle.dumps(meta))):
        assert again == meta and type(again) is type(meta)
    assert dataclasses.replace(claim, beat_index=2).metadata == meta


def test_a_message_keeps_its_own_copy_of_what_the_caller_passed() -> None:
    meta: dict[str, Any] = {"sync": {"state": "locked"}, "late": [0.5]}
    claim = StatusClaim("a", 1, "idle", "0000:0000:0000", metadata=meta)
    before = encode(claim)
    meta["sync"]["state"] = "lost"
    meta["late"].append(1.0)
    meta["new"] = 1
    assert claim.metadata == {"sync": {"state": "locked"}, "late": (0.5,)}
    assert encode(claim) == before


@pytest.mark.parametrize(
    ("metadata", "field", "shown"),
    [
        ({"x": {"y": b"raw"}}, "metadata.x.y", "b'raw'"),
        ({"x": {"ok": 1, "y": math.nan}}, "metadata.x.y", "nan"),
        ({"x": {"y": {"z": math.inf}}}, "metadata.x.y.z", "inf"),
        ({"x": {"ok": "a", "y": None, "z": cbor2.undefined}}, "metadata.x.z", "undefined"),
        ({"x": {1: 2}}, "metadata.x.1", "keys must be strings"),
    ],
)
def test_problems_in_flat_nested_objects_name_the_full_path(
    metadata: dict[Any, Any],
    field: str,
    shown: str,
) -> None:
    with pytest.raises(FrameError) as err:
        decode_status_claim(as_cbor(claim_dict(metadata=metadata)))
    assert err.value.field == field and shown in str(err.value), str(err.value)


def test_depth_is_bounded_for_nested_objects_too() -> None:
    def nest(levels: int) -> Any:
        value: Any = {"leaf": 1}  # a flat object
        for _ in range(levels):
            value = {"x": value}
        return value

    # metadata is level 0, so the flat object may sit at level MAX_DEPTH - 1.
    ok = nest(MAX_DEPTH - 1)
    for dump in (as_json, as_cbor):
        assert decode_status_claim(dump(claim_dict(metadata=ok))).metadata == ok
    assert StatusClaim("a", 1, "idle", "0000:0000:0000", metadata=ok).metadata == ok
    for dump in (as_json, as_cbor):
        with pytest.raises(FrameError, match="nested"):
            decode_status_claim(dump(claim_dict(metadata=nest(MAX_DEPTH))))
    with pytest.raises(FrameError, match="nested"):
        StatusClaim("a", 1, "idle", "0000:0000:0000", metadata=nest(MAX_DEPTH))


def test_deadline_is_normalised_to_utc_and_equal_instants_are_equal() -> None:
    plus_one = datetime(2026, 3, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    a = BeatFrame("c", 1, True, "plan", "0000:0000:0000", plus_one, 60, WINDOW)
    b = BeatFrame(
        "c",
        1,
        True,
        "plan",
        "0000:0000:0000",
        "2026-03-01T12:00:00Z",  # type: ignore[arg-type]
        60,
        WINDOW,
    )
    assert a.deadline_at.tzinfo is UTC and a == b and encode(a) == encode(b)


# --------------------------------------------------------------------------- encoding

FRAME = BeatFrame(
    cluster_id="lab-1",
    beat_index=42,
    downbeat=True,
    phase="execute",
    hlc="7ffd:0001:beef",
    deadline_at="2026-03-01T12:00:00.250Z",  # type: ignore[arg-type]
    tempo_bpm=120.5,
    window_id="0123456789abcdef0123456789ABCDEF",
    metadata={"pulse_version": "1.0.0", "expected_agents": 3},
)
CLAIM = StatusClaim(
    agent_id="edge:pi-07",
    beat_index=42,
    state="executing",
    hlc="7ffd:0002:1a2b",
    beats_left=3,
    progress=0.5,
    resources={"cpu_percent": 37.5, "memory_mb": 412},
    metadata={"seq": 7},
)
REPORT = BarReport(
    window_id=WINDOW,
    from_beat=40,
    to_beat=43,
    agents_reporting=2,
    on_time_reviews=2,
    help_promises_fulfilled=0,
    secret_rotations_ok=True,
    tempo_drift_ms=-1.5,
    issues=[{"severity": "warning", "category": "late", "count": 1}],  # type: ignore[arg-type]
)

GOLDEN_CBOR = {
    "frame": (
        "aa63686c636e376666643a303030313a626565666474797065756261636b626561742e626561746672616d"
        "652e7631657068617365676578656375746568646f776e62656174f5686d65746164617461a26d70756c73"
        "655f76657273696f6e65312e302e306f65787065637465645f6167656e7473036974656d706f5f62706df9"
        "57886977696e646f775f696478203031323334353637383961626364656630313233343536373839414243"
        "4445466a626561745f696e646578182a6a636c75737465725f6964656c61622d316b646561646c696e655f"
        "6174781b323032362d30332d30315431323a30303a30302e3235303030305a"
    ),
    "claim": (
        "a963686c636e376666643a303030323a316132626474797065776261636b626561742e737461747573636c"
        "61696d2e763165737461746569657865637574696e67686167656e745f69646a656467653a70692d303768"
        "6d65746164617461a163736571076870726f6772657373f93800697265736f7572636573a2696d656d6f72"
        "795f6d6219019c6b6370755f70657263656e74f950b06a626561745f696e646578182a6a62656174735f6c"
        "65667403"
    ),
    "report": (
        "aa6474797065756261636b626561742e6261727265706f72742e76316669737375657381a365636f756e74"
        "016863617465676f7279646c617465687365766572697479677761726e696e6767746f5f62656174182b69"
        "66726f6d5f6265617418286977696e646f775f696478203031323334353637383961626364656630313233"
        "3435363738396162636465666e74656d706f5f64726966745f6d73f9be006f6f6e5f74696d655f72657669"
        "65777302706167656e74735f7265706f7274696e6702737365637265745f726f746174696f6e735f6f6bf5"
        "7768656c705f70726f6d697365735f66756c66696c6c656400"
    ),
}
GOLDEN_JSON = {
    "frame": b'{"beat_index":42,"cluster_id":"lab-1","deadline_at":"2026-03-01T12:00:00.250000Z",'
    b'"downbeat":true,"hlc":"7ffd:0001:beef","metadata":{"expected_agents":3,'
    b'"pulse_version":"1.0.0"},"phase":"execute","tempo_bpm":120.5,'
    b'"type":"backbeat.beatframe.v1","window_id":"0123456789abcdef0123456789ABCDEF"}',
    "claim": b'{"agent_id":"edge:pi-07","beat_index":42,"beats_left":3,"hlc":"7ffd:0002:1a2b",'
    b'"metadata":{"seq":7},"progress":0.5,"resources":{"cpu_percent":37.5,'
    b'"memory_mb":412},"state":"executing","type":"backbeat.statusclaim.v1"}',
    "report": b'{"agents_reporting":2,"from_beat":40,"help_promises_fulfilled":0,"issues":'
    b'[{"category":"late","count":1,"severity":"warning"}],"on_time_reviews":2,'
    b'"secret_rotations_ok":true,"tempo_drift_ms":-1.5,"to_beat":43,'
    b'"type":"backbeat.barreport.v1","window_id":"0123456789abcdef0123456789abcdef"}',
}
MESSAGES: dict[str, BeatFrame | StatusClaim | BarReport] = {
    "frame": FRAME,
    "claim": CLAIM,
    "report": REPORT,
}
DECODERS: dict[str, Decoder] = {
    "frame": decode_beat_frame,
    "claim": decode_status_claim,
    "report": decode_bar_report,
}


@pytest.mark.parametrize("kind", ["frame", "claim", "report"])
def test_golden_bytes(kind: str) -> None:
    message = MESSAGES[kind]
    assert encode(message).hex() == GOLDEN_CBOR[kind]
    assert encode(message, "cbor") == bytes.fromhex(GOLDEN_CBOR[kind])
    assert encode(message, "json") == GOLDEN_JSON[kind]
    assert DECODERS[kind](bytes.fromhex(GOLDEN_CBOR[kind])) == message
    assert DECODERS[kind](GOLDEN_JSON[kind]) == message


def _map_keys_in_wire_order(raw: bytes) -> list[str]:
    """Top-level keys in the order they sit in the CBOR bytes (cbor2 keeps that order)."""
    return list(cbor2.loads(raw))


@pytest.mark.parametrize("kind", ["frame", "claim", "report"])
def test_cbor_is_canonical(kind: str) -> None:
    raw = encode(MESSAGES[kind])
    keys = _map_keys_in_wire_order(raw)
    # RFC 8949 core deterministic order: bytewise on the encoded key (shorter keys first).
    assert keys == sorted(keys, key=lambda k: (len(k.encode()), k.encode()))
    # Shortest floats: 0.5, 37.5, -1.5 and 120.5 all fit a half-precision float.
    assert b"\xfb" not in raw and b"\xfa" not in raw


def test_identical_claims_give_identical_bytes_whatever_the_insertion_order() -> None:
    def claim(meta: dict[str, Any]) -> StatusClaim:
        return StatusClaim(
            "edge:a",
            9,
            "idle",
            "0001:0002:0003",
            metadata=meta,
            resources={"memory_mb": 3, "cpu_percent": 1.0},
        )

    a = claim({"b": 1, "a": {"y": 2, "x": 1}, "seq": 0.1})
    b = claim({"seq": 0.1, "a": {"x": 1, "y": 2}, "b": 1})
    assert a == b
    assert encode(a) == encode(b)
    assert encode(a, "json") == encode(b, "json")
    assert encode(a) == encode(decode_status_claim(encode(b)))


def test_a_decoded_non_canonical_payload_encodes_canonically() -> None:
    # A sender with another key order and 8-byte floats everywhere (cbor2's fast mode).
    wire = claim_dict(
        progress=0.5,
        resources={"temperature_c": 61.2, "cpu_percent": 37.5},
        metadata={"zz": {"b": 1.0, "a": [2.5, {"d": 0.1, "c": -0.0}]}, "a": 60.0},
    )
    raw = cbor2.dumps(wire)
    assert b"\xfb" + bytes.fromhex("3fe0000000000000") in raw  # 0.5 in 8 bytes
    claim = decode_status_claim(raw)
    assert (
        encode(claim)
        == cbor2.dumps(wire, canonical=True)
        == encode(decode_status_claim(encode(claim)))
    )
    assert encode(claim) == encode(StatusClaim(**without(wire, "type")))


def test_decoding_after_a_refused_payload_reads_the_next_one_whole() -> None:
    good = encode(CLAIM)
    for bad in (good + b"\x00", good[:-1], b"\xa1\x61a\xd8\x1c\x00", good + good):
        with pytest.raises(FrameError):
            decode_status_claim(bad)
        assert decode_status_claim(good) == CLAIM
        assert encode(decode_status_claim(good)) == good


def test_a_built_and_a_decoded_message_are_equal_and_hash_alike() -> None:
    built = StatusClaim("a", 1, "idle", "0000:0000:0000", metadata={"x": 1.5})
    decoded = decode_status_claim(encode(built))
    assert built == decoded and hash(built) == hash(decoded)
    assert repr(built) == repr(decoded)


@pytest.mark.parametrize("kind", ["frame", "claim", "report"])
@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_encoded_output_has_only_upstream_top_level_fields(kind: str, fmt: str) -> None:
    allowed = {
        "frame": set(BEAT_REQUIRED) | {"metadata"},
        "claim": set(CLAIM_REQUIRED)
        | {"task_id", "beats_left", "progress", "notes", "resources", "dependencies", "metadata"},
        "report": set(REPORT_REQUIRED) | {"issues"},
    }[kind]
    raw = encode(MESSAGES[kind], fmt)  # type: ignore[arg-type]
    wire = cbor2.loads(raw) if fmt == "cbor" else json.loads(raw)
    assert set(wire) <= allowed
    assert set(to_wire(MESSAGES[kind])) == set(wire)


def test_absent_optional_fields_are_omitted_not_null() -> None:
    claim = StatusClaim("a", 1, "idle", "0000:0000:0000")
    assert json.loads(encode(claim, "json")) == {
        "type": "backbeat.statusclaim.v1",
        "agent_id": "a",
        "beat_index": 1,
        "state": "idle",
        "hlc": "0000:0000:0000",
    }


def test_encode_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="fmt must be 'cbor' or 'json', got 'xml'"):
        encode(CLAIM, "xml")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trips

ids = st.from_regex(r"\A[a-zA-Z0-9_:-]{1,128}\Z")
hlcs = st.from_regex(r"\A[0-9a-fA-F]{4}:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}\Z")
windows = st.from_regex(r"\A[0-9a-fA-F]{32}\Z")
beats = st.integers(0, 2**63 - 1)
texts = st.text(max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(texts, json_values, max_size=6)
moments = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)

frames = st.builds(
    BeatFrame,
    cluster_id=st.from_regex(r"\A[a-zA-Z0-9_-]{1,64}\Z"),
    beat_index=beats,
    downbeat=st.booleans(),
    phase=st.sampled_from(["plan", "execute", "review"]),
    hlc=hlcs,
    deadline_at=moments,
    tempo_bpm=st.integers(1, 10000).map(lambda n: n / 10),
    window_id=windows,
    metadata=st.none() | objects,
)
claims = st.builds(
    StatusClaim,
    agent_id=ids,
    beat_index=beats,
    state=st.sampled_from(
        sorted(
            [
                "idle",
                "planning",
                "executing",
                "reviewing",
                "completed",
                "failed",
                "blocked",
                "helping",
            ]
        )
    ),
    hlc=hlcs,
    task_id=st.none() | ids,
    beats_left=st.none() | st.integers(0, 1000),
    progress=st.none() | st.floats(0.0, 1.0),
    notes=st.none() | st.text(max_size=256),
    resources=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "cpu_percent": st.floats(0, 1e6),
            "memory_mb": st.integers(0, 2**40),
            "temperature_c": st.floats(-40, 120),
        },
    ),
    dependencies=st.none() | st.lists(ids, max_size=3).map(tuple),
    metadata=st.none() | objects,
)
issues = st.builds(BarIssue, severity=texts, category=texts, count=st.integers(0, 2**63 - 1))
reports = st.builds(
    BarReport,
    window_id=windows,
    from_beat=beats,
    to_beat=beats,
    agents_reporting=beats,
    on_time_reviews=beats,
    help_promises_fulfilled=beats,
    secret_rotations_ok=st.booleans(),
    tempo_drift_ms=st.floats(allow_nan=False, allow_infinity=False),
    issues=st.none() | st.lists(issues, max_size=5).map(tuple),
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(frame=frames)
def test_beat_frames_round_trip(frame: BeatFrame) -> None:
    # Our canonical encoder must agree byte for byte with cbor2's canonical mode.
    assert encode(frame, "cbor") == cbor2.dumps(to_wire(frame), canonical=True)
    for fmt in ("cbor", "json"):
        raw = encode(frame, fmt)
        assert decode_beat_frame(raw) == frame
        assert encode(decode_beat_frame(raw), fmt) == raw


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(claim=claims)
def test_status_claims_round_trip(claim: StatusClaim) -> None:
    assert encode(claim, "cbor") == cbor2.dumps(to_wire(claim), canonical=True)
    for fmt in ("cbor", "json"):
        raw = encode(claim, fmt)
        back = decode_status_claim(raw)
        assert back == claim
        assert back.metadata == claim.metadata and back.resources == claim.resources
        assert encode(back, fmt) == raw


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(report=reports)
def test_bar_reports_round_trip(report: BarReport) -> None:
    assert encode(report, "cbor") == cbor2.dumps(to_wire(report), canonical=True)
    for fmt in ("cbor", "json"):
        raw = encode(report, fmt)
        assert decode_bar_report(raw) == report
        assert encode(decode_bar_report(raw), fmt) == raw
