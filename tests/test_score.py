"""The score with a fake timeline: which beats, which times, which deadlines, what fits."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest

from edge.errors import ConfigProblems
from edge.messages import Phase
from edge.profile import parse_profile
from edge.score import Action, Rule, Score, parse_score

PROFILE_TOML = """
[gpio]
pin_factory = "mock"
[devices.status_led]
kind = "led"
pin = 17
[devices.glow]
kind = "pwm"
pin = 18
[devices.btn]
kind = "button"
pin = 5
[devices.sh]
kind = "command"
timeout_s = 0.5
"""


@dataclass
class FakeTimeline:
    """Beats of ``beat_s`` from t0; bars of ``bar`` beats starting at ``first_downbeat``."""

    beat_s: float = 1.0
    t0: float = 100.0
    bar: int | None = 4
    first_downbeat: int = 0

    def phase_start(self, beat_index: int, phase: Phase) -> float:
        return (
            self.t0
            + beat_index * self.beat_s
            + ("plan", "execute", "review").index(phase) * self.beat_s / 3
        )

    def beat_seconds(self) -> float:
        return self.beat_s

    def is_downbeat(self, beat_index: int) -> bool | None:
        position = self.bar_position(beat_index)
        return None if position is None else position == 0

    def bar_position(self, beat_index: int) -> int | None:
        if self.bar is None:
            return None
        return (beat_index - self.first_downbeat) % self.bar


def score_of(rules: str) -> Score:
    raw = tomllib.loads(PROFILE_TOML + rules)
    problems = ConfigProblems()
    profile = parse_profile(raw, problems)
    score = parse_score(raw.get("score"), profile, problems)
    assert problems.items == []
    return score


def beats_played(score: Score, timeline: FakeTimeline, beats: range) -> list[int]:
    return [b for b in beats if score.due(b, timeline)]


def test_the_minimal_rule_pulses_every_beat_at_execute_start() -> None:
    score = score_of(
        """
        [[score]]
        device = "status_led"
        do = "pulse"
        every = 1
        offset = 0.0
        phase = "execute"
        essential = true
        """
    )
    tl = FakeTimeline(beat_s=0.9)
    due = score.due(7, tl)
    assert len(due) == 1
    item = due[0]
    assert item.action == Action("status_led", "pulse", duration_s=0.1, essential=True)
    assert item.action.name == "status_led.pulse"
    assert item.at == pytest.approx(100.0 + 7 * 0.9 + 0.3)
    assert item.deadline == pytest.approx(100.0 + 7 * 0.9 + 0.6)
    assert (item.beat_index, item.rule) == (7, 0)
    assert beats_played(score, tl, range(10)) == list(range(10))


def test_every_n_beats_with_a_shift() -> None:
    score = score_of('[[score]]\ndevice="status_led"\ndo="toggle"\nevery=3\nevery_at=1\n')
    assert beats_played(score, FakeTimeline(), range(12)) == [1, 4, 7, 10]


def test_downbeats_follow_the_timeline_not_the_index() -> None:
    score = score_of('[[score]]\ndevice="status_led"\ndo="on"\ndownbeat=true\n')
    assert beats_played(score, FakeTimeline(first_downbeat=2), range(12)) == [2, 6, 10]
    # A bar of 3 beats, as the follower learned it.
    assert beats_played(score, FakeTimeline(bar=3), range(9)) == [0, 3, 6]
    # Unknown bar: a downbeat rule stays silent rather than guess.
    assert beats_played(score, FakeTimeline(bar=None), range(8)) == []


def test_bar_positions_count_from_one() -> None:
    score = score_of('[[score]]\ndevice="status_led"\ndo="on"\nbar_beats=[2, 4]\n')
    assert beats_played(score, FakeTimeline(bar=4), range(8)) == [1, 3, 5, 7]
    assert beats_played(score, FakeTimeline(bar=None), range(8)) == []


def test_beat_window() -> None:
    score = score_of('[[score]]\ndevice="status_led"\ndo="on"\nfrom_beat=3\nto_beat=5\n')
    assert beats_played(score, FakeTimeline(), range(10)) == [3, 4, 5]


def test_conditions_combine() -> None:
    score = score_of(
        '[[score]]\ndevice="status_led"\ndo="on"\nevery=2\ndownbeat=true\nfrom_beat=4\n'
    )
    # downbeats 0, 4, 8, 12...; even; from 4 on
    assert beats_played(score, FakeTimeline(bar=4), range(14)) == [4, 8, 12]


def test_offsets_phases_and_order() -> None:
    score = score_of(
        """
        [[score]]
        device = "glow"
        do = "set"
        value = 0.5
        offset = 0.5
        [[score]]
        device = "btn"
        do = "read"
        phase = "review"
        [[score]]
        device = "status_led"
        do = "on"
        offset = 0.5
        priority = 3
        [[score]]
        device = "status_led"
        do = "off"
        phase = "plan"
        offset = 0.25
        """
    )
    tl = FakeTimeline(beat_s=3.0, t0=0.0)
    due = score.due(0, tl)
    # plan+0.25 at 0.25; execute+0.5 at 1.5 (priority 3 first); review at 2.0
    assert [(d.action.name, d.at, d.deadline) for d in due] == [
        ("status_led.off", 0.25, 1.0),
        ("status_led.on", 1.5, 2.0),
        ("glow.set", 1.5, 2.0),
        ("btn.read", 2.0, 3.0),
    ]
    assert [d.rule for d in due] == [3, 2, 0, 1]


def test_fit_flags_rules_that_cannot_finish_in_their_phase() -> None:
    score = score_of(
        """
        [[score]]
        device = "status_led"
        do = "pulse"
        duration_s = 0.08
        [[score]]
        device = "glow"
        do = "fade"
        value = 1.0
        duration_s = 0.1
        offset = 0.5
        [[score]]
        device = "sh"
        do = "command"
        argv = ["true"]
        """
    )
    assert score.fit(30.0) == []
    # At 200 BPM a phase is 0.1 s: the pulse fits, the fade starting mid-phase does not.
    problems = score.fit(200.0)
    assert [p.rule for p in problems] == [1, 2]
    fade = problems[0]
    assert fade.max_tempo_bpm == pytest.approx(60 * 0.5 / (3 * 0.1))
    assert fade.available_s == pytest.approx(0.05)
    assert "glow.fade" in str(fade)
    # the command's deadline (0.5 s) is its span: 60 / (3 * 0.5) = 40 BPM
    assert problems[1].max_tempo_bpm == pytest.approx(40.0)
    assert [p.rule for p in score.fit(1000.0)] == [0, 1, 2]


def test_tempo_guide_rule_one() -> None:
    # 5 s tasks -> at most 4 BPM (the tempo guide's own example)
    rule = Rule(action=Action("x", "command", duration_s=5.0, cost_s=5.0))
    assert rule.max_tempo_bpm() == pytest.approx(4.0)
    score = Score((rule,))
    assert score.fit(4.0) == [] and len(score.fit(4.1)) == 1


def test_parse_reports_every_problem_with_where() -> None:
    raw = tomllib.loads(
        PROFILE_TOML
        + """
        [[score]]
        device = "ghost"
        do = "on"
        [[score]]
        device = "btn"
        do = "pulse"
        [[score]]
        device = "glow"
        do = "set"
        value = 1.5
        every = 0
        offset = 1.0
        phase = "encore"
        colour = "red"
        [[score]]
        device = "glow"
        do = "fade"
        value = 1.0
        [[score]]
        device = "sh"
        do = "command"
        [[score]]
        device = "status_led"
        do = "on"
        bar_beats = [0]
        from_beat = 5
        to_beat = 2
        duration_s = 1
        """
    )
    problems = ConfigProblems()
    profile = parse_profile(raw, problems)
    score = parse_score(raw["score"], profile, problems)
    wheres = {p.split(":")[0] for p in problems.items}
    assert wheres == {
        "score[0].device",
        "score[1].do",
        "score[2].value",
        "score[2].every",
        "score[2].offset",
        "score[2].phase",
        "score[2].colour",
        "score[3].duration_s",
        "score[4].argv",
        "score[5].bar_beats",
        "score[5].to_beat",
        "score[5].duration_s",
    }
    assert any("a button cannot 'pulse'" in p for p in problems.items)
    assert len(score.rules) < 6


def test_parse_score_odd_shapes() -> None:
    problems = ConfigProblems()
    profile = parse_profile(tomllib.loads(PROFILE_TOML), problems)
    assert parse_score(None, profile, problems) == Score()
    assert parse_score({"device": "x"}, profile, problems) == Score()
    assert parse_score([3], profile, problems) == Score()
    assert [p.split(":")[0] for p in problems.items] == ["score", "score[0]"]


def test_command_action_carries_argv_deadline_and_cost() -> None:
    score = score_of('[[score]]\ndevice="sh"\ndo="command"\nargv=["i2cset","-y","1"]\npriority=2\n')
    action = score.rules[0].action
    assert action.argv == ("i2cset", "-y", "1")
    assert action.duration_s == 0.5 and action.cost_s == 0.5 and action.priority == 2
    assert score.devices() == frozenset({"sh"})
