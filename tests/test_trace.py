"""The trace row: typed, with the JSON line the tools read (rounded only when written)."""

from __future__ import annotations

import json
from io import StringIO

from edge.score import Action, ScheduledAction
from edge.trace import TraceRow, write_rows

SA = ScheduledAction(12, 100.0, 100.1, Action("led", "toggle", essential=True), 3)


def test_an_applied_action_row() -> None:
    row = TraceRow.applied(
        SA, 100.00012345678, 0.0000123456, True, None, bound_ms=0.123456, sync_state="locked"
    )
    assert json.loads(row.line()) == {
        "beat_index": 12,
        "device": "led",
        "do": "toggle",
        "rule": 3,
        "essential": True,
        "intended_mono": 100.0,
        "deadline_mono": 100.1,
        "fired_mono": 100.0001235,
        "late_ms": 0.1235,
        "duration_ms": 0.0123,
        "ok": True,
        "shed": None,
        "dropped": None,
        "missed": False,
        "error_bound_ms": 0.1235,
        "sync_state": "locked",
    }
    assert row.fired_mono == 100.00012345678  # the row keeps the raw time


def test_a_dropped_action_fired_but_not_ok() -> None:
    row = json.loads(TraceRow.applied(SA, 100.0, 0.00001, False, "rate_limit").line())
    assert (row["ok"], row["dropped"], row["missed"]) == (False, "rate_limit", False)
    assert row["fired_mono"] == 100.0 and row["late_ms"] == 0.0


def test_a_missed_action_has_no_fired_time_but_its_lateness() -> None:
    row = json.loads(TraceRow.missed_at(SA, 100.25).line())
    assert row["fired_mono"] is None and row["late_ms"] == 250.0
    assert (row["ok"], row["dropped"], row["missed"], row["duration_ms"]) == (
        False,
        "deadline_passed",
        True,
        0.0,
    )


def test_a_shed_action_names_the_reason_and_has_no_times() -> None:
    row = json.loads(TraceRow.shed_by(SA, "over_budget").line())
    assert (row["shed"], row["fired_mono"], row["late_ms"], row["dropped"]) == (
        "over_budget",
        None,
        None,
        None,
    )
    assert (row["ok"], row["missed"], row["duration_ms"]) == (False, False, 0.0)


def test_rows_are_written_as_json_lines_and_nothing_for_none() -> None:
    out = StringIO()
    write_rows([], out)
    assert out.getvalue() == ""
    write_rows([TraceRow.shed_by(SA, "queue_full"), TraceRow.missed_at(SA, 101.0)], out)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert [json.loads(line)["missed"] for line in lines[:2]] == [False, True]


def test_every_kind_of_row_says_how_sure_the_follower_was() -> None:
    rows = [
        TraceRow.applied(SA, 100.0, 0.0, True, None, bound_ms=0.5, sync_state="locked"),
        TraceRow.missed_at(SA, 101.0, bound_ms=2.25, sync_state="free_running"),
        TraceRow.shed_by(SA, "over_budget", bound_ms=1.0, sync_state="lost"),
    ]
    got = [json.loads(row.line()) for row in rows]
    assert [(r["error_bound_ms"], r["sync_state"]) for r in got] == [
        (0.5, "locked"),
        (2.25, "free_running"),
        (1.0, "lost"),
    ]


def test_an_unknown_or_infinite_bound_is_written_as_null() -> None:
    assert json.loads(TraceRow.applied(SA, 100.0, 0.0, True, None).line())["sync_state"] is None
    row = TraceRow.missed_at(SA, 101.0, bound_ms=float("inf"), sync_state="acquiring")
    assert json.loads(row.line())["error_bound_ms"] is None
