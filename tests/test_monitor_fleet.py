"""`monitor` for a fleet (issue 18 part 5): a summary line above the rows, the rows worst
first, compact rows that fit 80 columns, and only as many as the screen holds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge import __version__
from edge.clock import FakeClock
from edge.hlc import HybridLogicalClock
from edge.messages import encode
from edge.monitor import NO_CLAIM, FleetView, _columns_asked
from edge.status import BeatReview, StatusBuilder, StatusConfig
from edge.topics import Topics

BASE = BeatReview(
    beat_index=7,
    state="reviewing",
    sync_state="locked",
    error_bound_ms=0.42,
    late_ms_p50=0.021,
    late_ms_max=0.3,
    fired=1,
    missed=0,
    shed={},
    dropped_by_limit=0,
    frames_rejected={},
    guard_level="full",
    guard_reason="ok",
    recommended_tempo=120.0,
    cpu_percent=3.0,
    memory_mb=31.0,
    temperature_c=51.2,
    backlog=0,
    outbox_dropped=0,
    broker="10.0.0.2:1883",
)


def _claim(agent: str, **changes: object) -> bytes:
    builder = StatusBuilder(
        agent, StatusConfig(), HybridLogicalClock(FakeClock(), 7), __version__, "abc123"
    )
    claim = builder.build(replace(BASE, **changes))  # type: ignore[arg-type]
    assert claim is not None
    return encode(claim)


def _view(agents: dict[str, dict[str, object]], offline: tuple[str, ...] = ()) -> FleetView:
    view = FleetView(Topics("backbeat", "bench"))
    for agent, changes in agents.items():
        state = b"offline" if agent in offline else b"online"
        view.feed(f"backbeat/bench/agents/{agent}/availability", state, 0.0)
        view.feed(f"backbeat/bench/status/{agent}", _claim(agent, **changes), 0.0)
    return view


def _row_order(screen: str) -> list[str]:
    return [line.split()[0] for line in screen.splitlines() if line.startswith("bench:")]


def test_the_summary_counts_online_locked_alerting_and_names_the_latest() -> None:
    view = _view(
        {
            "bench:ok": {},
            "bench:late": {"late_ms_max": 4.25},
            "bench:lost": {"sync_state": "free_running"},
            "bench:hot": {"alerts": ("cpu_high",)},
            "bench:gone": {},
        },
        offline=("bench:gone",),
    )
    summary = view.summary()
    assert summary.startswith("5 agents: 4 online, 4 locked, 1 alerting")
    assert "worst late 4.250 ms (bench:late)" in summary
    screen = view.render()
    assert screen.splitlines()[0] == summary  # above the table


def test_rows_are_sorted_worst_first() -> None:
    view = _view(
        {
            "bench:a-ok": {"late_ms_max": 0.1},
            "bench:b-late": {"late_ms_max": 2.0},
            "bench:c-lost": {"sync_state": "free_running"},
            "bench:d-gone": {},
            "bench:e-shed": {"guard_level": "shed", "guard_reason": "cpu"},
            "bench:f-later": {"late_ms_max": 3.0},
        },
        offline=("bench:d-gone",),
    )
    expected = [
        "bench:d-gone",
        "bench:c-lost",
        "bench:e-shed",
        "bench:f-later",
        "bench:b-late",
        "bench:a-ok",
    ]
    assert _row_order(view.render()) == expected  # the full table
    assert _row_order(view.render(80)) == expected  # compact rows
    # table() keeps its order by agent id.
    assert _row_order(view.table()) == sorted(expected)


def test_two_hundred_agents_fit_80_columns_and_the_screen_shows_the_worst() -> None:
    agents: dict[str, dict[str, object]] = {
        f"bench:stage-left-relay-{i:03d}": {"late_ms_max": i / 100} for i in range(200)
    }
    agents["bench:stage-left-relay-150"] = {"sync_state": "free_running", "alerts": ("a",) * 9}
    view = _view(agents, offline=("bench:stage-left-relay-007",))
    screen = view.render(80, 40)
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert len(lines) <= 40
    assert lines[0].startswith("200 agents: 199 online, 199 locked")
    rows = [line for line in lines if line.startswith("~")]
    # The offline one first, then the unlocked one, then the latest (names cut to fit).
    assert rows[0].startswith("~tage-left-relay-007 ") and " OFF " in rows[0]
    assert "free_runni" in rows[1] and "alerts: a,a" in rows[1]
    assert " 1.990 " in rows[2]
    assert lines[-1].startswith(f"... and {200 - len(rows)} more")
    # Without a height every agent is shown.
    assert sum(line.startswith("~") for line in view.render(80).splitlines()) == 200


def test_the_broker_in_use_is_on_the_compact_row() -> None:
    view = _view({"bench:a": {}})
    row = next(line for line in view.render(120).splitlines() if line.startswith("bench:a"))
    assert "10.0.0.2:1883" in row
    assert "broker" in view.render(120) and "broker" not in view.render(80)


@pytest.mark.parametrize(
    ("value", "columns"), [("80", 80), ("", None), ("wide", None), ("0", None)]
)
def test_a_pipe_gets_the_width_columns_asks_for(
    value: str, columns: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", value)
    assert _columns_asked() == columns


def test_compact_rows_wrap_the_link_state_instead_of_cutting_it() -> None:
    view = _view({"bench:a": {}})
    view.link_state = (
        "DISCONNECTED from mqtt://127.0.0.1:1883 at 12:00:00 (connection lost); "
        "reconnecting; the rows below are as last seen"
    )
    screen = view.render(60)
    assert all(len(line) <= 60 for line in screen.splitlines())
    assert "the rows below are as last seen" in " ".join(screen.split())


def test_an_online_agent_without_claims_says_why_it_shows_no_figures() -> None:
    view = FleetView(Topics("backbeat", "bench"))
    view.feed("backbeat/bench/agents/bench:mute/availability", b"online", 0.0)
    for screen in (view.render(), view.render(80)):
        row = next(line for line in screen.splitlines() if line.startswith("bench:mute"))
        assert NO_CLAIM in row
    view.feed("backbeat/bench/agents/bench:mute/availability", b"offline", 1.0)
    assert NO_CLAIM not in view.render()  # offline says enough
