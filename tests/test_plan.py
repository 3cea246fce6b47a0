"""The beat plan with plain values: planning, re-timing, firing order, renumbering, and
the miss and drop rules of ``outcome``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from edge.plan import BeatLedger, BeatPlan, Fate, Outcome, outcome, overdue
from edge.score import Action, ScheduledAction

LED = Action("led", "toggle")
RELAY = Action("relay", "on", priority=5)
SH = Action("sh", "command", argv=("true",))


def sa(beat: int, at: float, action: Action = LED, rule: int = 0) -> ScheduledAction:
    """An action of ``beat`` due at ``at``; its phase ends 0.1 s later."""
    return ScheduledAction(beat, at, at + 0.1, action, rule)


@dataclass(frozen=True)
class Admission:
    admitted: tuple[ScheduledAction, ...]
    shed: tuple[tuple[ScheduledAction, str], ...] = ()


def admit_all(due: list[ScheduledAction]) -> Admission:
    return Admission(tuple(due))


def score(table: dict[int, list[ScheduledAction]]) -> Callable[[int], list[ScheduledAction]]:
    return lambda beat: list(table.get(beat, []))


# --------------------------------------------------------------------------- planning


def test_a_beat_is_planned_once_and_its_actions_wait_in_time_order() -> None:
    plan = BeatPlan()
    asked: list[int] = []

    def due(beat: int) -> list[ScheduledAction]:
        asked.append(beat)
        return [sa(beat, 10.3 + beat, rule=1), sa(beat, 10.1 + beat, RELAY, rule=0)]

    assert plan.plan(4, due, 10.0, admit_all) == []
    assert plan.plan(4, due, 10.0, admit_all) == []  # planned already: the score not asked
    assert asked == [4]
    assert [(p.beat_index, p.at) for p in plan.pending] == [(4, 14.1), (4, 14.3)]
    assert plan.ledgers[4].planned == 2 and 4 in plan.planned
    assert plan.next_at() == 14.1


def test_equal_times_fire_the_higher_priority_first() -> None:
    plan = BeatPlan()
    plan.plan(1, score({1: [sa(1, 5.0, LED, 0), sa(1, 5.0, RELAY, 1)]}), 0.0, admit_all)
    assert [p.action for p in plan.pending] == [RELAY, LED]


def test_actions_whose_deadline_passed_are_not_planned() -> None:
    plan = BeatPlan()
    seen: list[list[ScheduledAction]] = []

    def admit(due: list[ScheduledAction]) -> Admission:
        seen.append(due)
        return Admission(tuple(due))

    late, ok = sa(2, 1.0), sa(2, 1.5, rule=1)  # deadlines 1.1 and 1.6
    plan.plan(2, score({2: [late, ok]}), 1.2, admit)
    assert seen == [[ok]] and plan.pending == [ok]
    # nothing left to admit: the guard is not asked, the beat still counts as planned
    plan.plan(3, score({3: [sa(3, 0.5)]}), 1.2, admit)
    assert len(seen) == 1 and 3 in plan.planned and plan.ledgers[3] == BeatLedger()


def test_what_the_guard_sheds_is_counted_and_returned() -> None:
    plan = BeatPlan()
    keep, drop = sa(1, 2.0, RELAY, 0), sa(1, 2.0, LED, 1)
    shed = plan.plan(
        1, score({1: [keep, drop]}), 0.0, lambda due: Admission((keep,), ((drop, "over_budget"),))
    )
    assert list(shed) == [(drop, "over_budget")]
    assert plan.pending == [keep]
    assert plan.ledgers[1].planned == 1 and plan.ledgers[1].shed == {"over_budget": 1}


def test_pop_due_hands_out_in_time_order_and_only_when_due() -> None:
    plan = BeatPlan()
    plan.plan(
        1, score({1: [sa(1, 3.0, rule=2), sa(1, 1.0, rule=0), sa(1, 2.0, rule=1)]}), 0, admit_all
    )
    assert plan.pop_due(0.5) is None and len(plan.pending) == 3
    assert plan.head() == sa(1, 1.0, rule=0)
    out = []
    while (due := plan.pop_due(2.5)) is not None:
        out.append(due.at)
    assert out == [1.0, 2.0] and plan.next_at() == 3.0
    assert plan.pop_due(3.0) == sa(1, 3.0, rule=2)
    assert plan.head() is None and plan.next_at() is None and plan.pop_due(99.0) is None


# --------------------------------------------------------------------------- re-timing


def test_retime_follows_a_moved_model_and_drops_what_the_score_no_longer_places() -> None:
    plan = BeatPlan()
    plan.plan(1, score({1: [sa(1, 1.0, rule=0), sa(1, 1.2, RELAY, rule=1)]}), 0.0, admit_all)
    plan.plan(2, score({2: [sa(2, 2.0, rule=0)]}), 0.0, admit_all)
    # the model slewed 3 ms later; beat 1's relay rule no longer plays (the bar was learnt)
    moved = {1: [sa(1, 1.003, rule=0)], 2: [sa(2, 2.003, rule=0)]}
    plan.retime(score(moved))
    assert [(p.beat_index, p.rule, p.at) for p in plan.pending] == [(1, 0, 1.003), (2, 0, 2.003)]
    assert [p.deadline for p in plan.pending] == pytest.approx([1.103, 2.103])


def test_retime_keeps_firing_order_when_the_model_reorders_beats() -> None:
    plan = BeatPlan()
    plan.plan(1, score({1: [sa(1, 1.0, LED, 0), sa(1, 1.5, RELAY, 1)]}), 0.0, admit_all)
    plan.retime(score({1: [sa(1, 1.6, LED, 0), sa(1, 1.5, RELAY, 1)]}))
    assert [p.rule for p in plan.pending] == [1, 0]


# --------------------------------------------------------------------------- renumbering


def test_renumbering_moves_pending_actions_planned_beats_and_ledgers() -> None:
    plan = BeatPlan()
    plan.plan(60, score({60: [sa(60, 30.0)]}), 0.0, admit_all)
    plan.plan(61, score({61: [sa(61, 30.5)]}), 0.0, admit_all)
    plan.settle(60, outcome("toggle"), late_s=0.001)
    plan.renumber(-58)  # the pulse restarted its numbering at 2
    assert [p.beat_index for p in plan.pending] == [2, 3]
    assert plan.planned == {2, 3}
    assert set(plan.ledgers) == {2, 3} and plan.ledgers[2].fired == 1
    # beat 2 (once 60) is planned already: it is not planned, nor fired, twice
    plan.plan(2, score({2: [sa(2, 30.0)]}), 0.0, admit_all)
    assert len(plan.pending) == 2


def test_a_command_fired_before_a_renumbering_ends_in_its_renumbered_beat() -> None:
    plan = BeatPlan()
    command = sa(60, 30.0, SH)
    tag = plan.tag(command)
    assert (tag.name, plan.beat_of(tag)) == ("sh.command", 60)
    plan.renumber(-58)
    plan.renumber(+10)
    assert plan.beat_of(tag) == 12
    assert plan.settle_run(tag, outcome("command_killed")) == 12
    assert plan.ledgers[12].missed == 1


# --------------------------------------------------------------------------- review


def test_review_closes_a_beat_and_forgets_what_can_no_longer_be_reviewed() -> None:
    plan = BeatPlan()
    for beat in (1, 5, 9, 10):
        plan.plan(beat, score({beat: [sa(beat, float(beat))]}), 0.0, admit_all)
    ledger = plan.review(10)
    assert ledger.planned == 1 and 10 not in plan.ledgers
    assert set(plan.ledgers) == {9}  # 1 and 5 are more than 4 beats behind
    assert plan.planned == {9, 10} and plan.last_reviewed == 10
    assert plan.review(11) == BeatLedger()  # a beat with no ledger reviews empty


def test_an_end_after_its_beat_was_reviewed_counts_in_the_next_review() -> None:
    plan = BeatPlan()
    tag = plan.tag(sa(7, 3.0, SH))
    plan.review(8)
    assert plan.open_beat(7) == 9 and plan.open_beat(12) == 12
    assert plan.settle_run(tag, outcome("command_not_started")) == 9
    assert plan.review(9).failed == 1


def test_an_end_in_time_changes_no_count() -> None:
    plan = BeatPlan()
    tag = plan.tag(sa(3, 1.0, SH))
    assert plan.settle_run(tag, outcome("command_done", ok=False)) == 3
    assert plan.ledgers == {}


def test_cancel_keeps_beats_planned_and_replan_forgets_them() -> None:
    plan = BeatPlan()
    plan.plan(1, score({1: [sa(1, 1.0)]}), 0.0, admit_all)
    plan.cancel()  # a safe state
    assert plan.pending == [] and plan.planned == {1}
    plan.plan(1, score({1: [sa(1, 1.0)]}), 0.0, admit_all)
    assert plan.pending == []  # not again
    plan.replan()  # a reload
    plan.plan(1, score({1: [sa(1, 1.0)]}), 0.0, admit_all)
    assert plan.pending == [sa(1, 1.0)]


# --------------------------------------------------------------------------- outcome


def test_an_action_due_after_its_deadline_is_overdue() -> None:
    action = sa(1, 1.0)  # deadline 1.1
    assert not overdue(action, 1.0) and not overdue(action, 1.1)
    assert overdue(action, 1.1000001)


def test_a_passed_deadline_counts_a_miss_and_teaches_no_duration() -> None:
    fate = outcome("toggle", overdue=True)
    assert fate == Outcome(Fate.MISSED, "deadline_passed", miss=True, learn=False)
    plan = BeatPlan()
    ledger = plan.settle(4, fate, late_s=0.2)
    assert (ledger.missed, ledger.fired, ledger.late_ms) == (1, 0, [])


@pytest.mark.parametrize(
    ("dropped", "miss"),
    [("busy", True), ("rate_limit", False), ("isolated", False), ("bad_action", False)],
)
def test_a_drop_teaches_nothing_and_only_a_busy_device_is_a_miss(dropped: str, miss: bool) -> None:
    fate = outcome("command", ok=False, dropped=dropped)
    assert fate == Outcome(Fate.DROPPED, dropped, miss=miss, learn=False, measured=True)
    ledger = BeatPlan().settle(1, fate, late_s=0.0, busy_s=0.00002)
    assert ledger.dropped == {dropped: 1} and ledger.missed == 0 and ledger.busy_s == 0.00002


def test_fired_failed_and_running_outcomes() -> None:
    fired = outcome("toggle")
    assert fired == Outcome(Fate.FIRED, learn=True)
    assert outcome("on", ok=False) == Outcome(Fate.FAILED, learn=True)
    running = outcome("command", running=True)
    assert running == Outcome(Fate.RUNNING, learn=False, measured=False)  # learned at its end
    plan = BeatPlan()
    plan.settle(1, fired, late_s=0.0005, busy_s=0.00001)
    plan.settle(1, running, late_s=0.001, busy_s=0.00003)
    plan.settle(1, outcome("on", ok=False))
    ledger = plan.ledgers[1]
    assert (ledger.fired, ledger.failed) == (2, 1)
    assert ledger.late_ms == pytest.approx([0.5, 1.0]) and ledger.busy_s == pytest.approx(4e-5)


def test_command_ends() -> None:
    assert outcome("command_done", ok=True) == Outcome(Fate.ENDED, learn=True)
    assert outcome("command_done", ok=False) == Outcome(Fate.ENDED, learn=True)  # exit != 0
    assert outcome("command_killed", ok=False) == Outcome(
        Fate.MISSED, "killed", miss=True, learn=True
    )
    assert outcome("command_not_started", ok=False) == Outcome(
        Fate.FAILED, "not_started", miss=False, learn=False, measured=False
    )


def test_overdue_wins_over_anything_reported() -> None:
    assert outcome("command", dropped="busy", running=True, overdue=True).fate is Fate.MISSED


def test_a_tag_is_a_plain_value() -> None:
    plan = BeatPlan()
    first = plan.tag(sa(2, 1.0, SH))
    assert first == plan.tag(replace(sa(2, 1.0, SH), at=1.5))  # name and beat, not time
