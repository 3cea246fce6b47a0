"""The score: which action fires on which beat, at which point of which phase.

Theory of operation
-------------------
A score is a list of rules, one per ``[[score]]`` table. A rule names one action (a device
and what to do with it) and the beats it plays on:

* ``every = N`` (default 1) with ``every_at = k``: beats whose index ``i`` has
  ``(i - k) % N == 0``. Beat indexes count up from cluster start, so this is stable across
  restarts of the agent.
* ``downbeat = true``: only on downbeats, as the beat follower learned them from frames.
* ``bar_beats = [1, 3]``: only on those positions of a bar, counted as musicians do
  (1 = the downbeat). Bars have no fixed length (upstream uses 4, 8 and 120), so the
  position comes from the follower (``Timeline.bar_position``, 0 = downbeat).
* ``from_beat`` / ``to_beat``: only inside that window of beat indexes (inclusive).

All the conditions a rule gives must hold. When the follower does not know where the bar
is (``None``), downbeat and bar rules do not fire: better silent than on the wrong beat.

The action fires at ``phase_start + offset * phase_length`` of its phase (``execute`` by
default) and must be done by the end of that phase, its deadline. :meth:`Score.due` turns a
beat into those times using the follower's timeline; it reads no clock.

The tempo guide's rule 1 (tempo <= 60 / (3 x task duration)) says a task must fit in one
phase. :meth:`Score.fit` applies it to each rule at a given tempo, counting the offset: a
rule starting at ``offset`` of the phase and taking ``span`` seconds needs
``phase_length * (1 - offset) >= span``, so it allows at most
``60 * (1 - offset) / (3 * span)`` BPM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge.errors import ConfigProblems
from edge.messages import PHASES, Phase
from edge.profile import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DeviceSpec,
    Profile,
    read_bool,
    read_integer,
    read_number,
    read_params,
)

#: Default cost of one pin action: the hardware layer adds well under 0.1 ms, but a cold
#: gpiozero path can take ~0.2 ms, so planning assumes a whole millisecond.
DEFAULT_PIN_COST_S = 0.001
#: Actions that hold a device for ``duration_s`` after they start.
TIMED_ACTIONS = frozenset({"pulse", "beep", "fade", "command"})
_RULE_KEYS = frozenset(
    {
        "device",
        "do",
        "value",
        "duration_s",
        "argv",
        "cost_s",
        "priority",
        "essential",
        "every",
        "every_at",
        "downbeat",
        "bar_beats",
        "from_beat",
        "to_beat",
        "offset",
        "phase",
        "name",
        "params",
    }
)


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do to one device.

    ``value`` is the target of ``set`` / ``fade`` / ``move`` (duty cycle, position, angle,
    tone in Hz); ``duration_s`` the length of a pulse, beep or fade, or a command's deadline
    (it is killed after it). ``cost_s`` is the planning estimate of the time the action
    takes to apply; ``priority`` (higher first) and ``essential`` (kept when the load guard
    sheds) are for the guard. ``params`` are a ``call``'s: the device's params with the
    rule's merged over them (``None`` for every other action).
    """

    device: str
    do: str
    value: float | None = None
    duration_s: float | None = None
    argv: tuple[str, ...] | None = None
    cost_s: float = DEFAULT_PIN_COST_S
    priority: int = 0
    essential: bool = False
    params: Mapping[str, object] | None = field(default=None, hash=False)

    @property
    def name(self) -> str:
        return f"{self.device}.{self.do}"

    @property
    def span_s(self) -> float:
        """How long the action occupies its phase: its cost, or its duration if longer."""
        return max(self.cost_s, self.duration_s or 0.0)


@dataclass(frozen=True, slots=True)
class Rule:
    """When ``action`` fires: see the module docstring for the meaning of each field."""

    action: Action
    every: int = 1
    every_at: int = 0
    downbeat: bool = False
    bar_beats: frozenset[int] | None = None  # 1-based positions in the bar
    from_beat: int | None = None
    to_beat: int | None = None
    offset: float = 0.0
    phase: Phase = "execute"
    name: str = ""

    def plays(self, beat_index: int, timeline: Timeline) -> bool:
        """Whether this rule fires on ``beat_index``."""
        if self.from_beat is not None and beat_index < self.from_beat:
            return False
        if self.to_beat is not None and beat_index > self.to_beat:
            return False
        if (beat_index - self.every_at) % self.every != 0:
            return False
        if self.downbeat and timeline.is_downbeat(beat_index) is not True:
            return False
        if self.bar_beats is not None:
            position = timeline.bar_position(beat_index)
            if position is None or position + 1 not in self.bar_beats:
                return False
        return True

    def max_tempo_bpm(self) -> float:
        """The highest tempo at which the action still fits in its phase (inf if free)."""
        span = self.action.span_s
        if span <= 0:
            return math.inf
        return 60.0 * (1.0 - self.offset) / (3.0 * span)


@dataclass(frozen=True, slots=True)
class ScheduledAction:
    """An action due at local monotonic time ``at``, to be done by ``deadline``."""

    beat_index: int
    at: float
    deadline: float
    action: Action
    rule: int  # index of the rule in Score.rules


@dataclass(frozen=True, slots=True)
class CallJob:
    """A ``call`` the plan holds, with what its function is told: handed to the python
    device's worker ahead of ``at`` (``slot`` = beat and rule, which name it while it is
    re-timed). ``deadline`` is the end of its phase; the device's ``deadline_beats``, if
    set, replaces it."""

    slot: tuple[int, int]
    action: Action
    at: float
    deadline: float
    phase: Phase
    downbeat: bool | None
    tempo_bpm: float

    @property
    def beat_index(self) -> int:
        return self.slot[0]


@dataclass(frozen=True, slots=True)
class FitProblem:
    """Rule ``rule`` needs ``span_s`` from ``offset`` of its phase, which is too long at
    ``tempo_bpm``; it fits up to ``max_tempo_bpm``."""

    rule: int
    action: str
    tempo_bpm: float
    span_s: float
    available_s: float
    max_tempo_bpm: float

    def __str__(self) -> str:
        return (
            f"score[{self.rule}] {self.action} needs {self.span_s:g} s but only "
            f"{self.available_s:g} s of its phase remain at {self.tempo_bpm:g} BPM "
            f"(fits up to {self.max_tempo_bpm:.3g} BPM)"
        )


class Timeline(Protocol):
    """The beat follower's local model of the cluster beat, as the score needs it."""

    def phase_start(self, beat_index: int, phase: Phase) -> float:
        """Local monotonic time at which ``phase`` of ``beat_index`` starts."""
        ...

    def beat_seconds(self) -> float:
        """Length of one beat at the current tempo (60 / tempo_bpm)."""
        ...

    def is_downbeat(self, beat_index: int) -> bool | None:
        """Whether the beat opens a bar; ``None`` when the bar is not known yet."""
        ...

    def bar_position(self, beat_index: int) -> int | None:
        """0 for the downbeat, 1 for the beat after it...; ``None`` when unknown."""
        ...


@dataclass(frozen=True, slots=True)
class Score:
    """The checked score: its rules in file order."""

    rules: tuple[Rule, ...] = ()

    def due(self, beat_index: int, timeline: Timeline) -> list[ScheduledAction]:
        """The actions due in ``beat_index``, ordered by time, then priority (higher
        first), then rule order. Each deadline is the end of the rule's phase."""
        phase_len = timeline.beat_seconds() / 3.0
        starts: dict[Phase, float] = {}
        out: list[ScheduledAction] = []
        for index, rule in enumerate(self.rules):
            if not rule.plays(beat_index, timeline):
                continue
            start = starts.get(rule.phase)
            if start is None:
                start = starts[rule.phase] = timeline.phase_start(beat_index, rule.phase)
            out.append(
                ScheduledAction(
                    beat_index=beat_index,
                    at=start + rule.offset * phase_len,
                    deadline=start + phase_len,
                    action=rule.action,
                    rule=index,
                )
            )
        out.sort(key=lambda s: (s.at, -s.action.priority, s.rule))
        return out

    def fit(self, tempo_bpm: float) -> list[FitProblem]:
        """Rules whose action cannot be done inside its phase at ``tempo_bpm``."""
        phase_len = 60.0 / tempo_bpm / 3.0
        problems: list[FitProblem] = []
        for index, rule in enumerate(self.rules):
            available = phase_len * (1.0 - rule.offset)
            span = rule.action.span_s
            if span > available:
                problems.append(
                    FitProblem(
                        rule=index,
                        action=rule.action.name,
                        tempo_bpm=tempo_bpm,
                        span_s=span,
                        available_s=available,
                        max_tempo_bpm=rule.max_tempo_bpm(),
                    )
                )
        return problems

    def call_job(self, sa: ScheduledAction, timeline: Timeline) -> CallJob:
        """What the python device of the ``call`` ``sa`` needs to run it on time."""
        return CallJob(
            slot=(sa.beat_index, sa.rule),
            action=sa.action,
            at=sa.at,
            deadline=sa.deadline,
            phase=self.rules[sa.rule].phase,
            downbeat=timeline.is_downbeat(sa.beat_index),
            tempo_bpm=60.0 / timeline.beat_seconds(),
        )

    def devices(self) -> frozenset[str]:
        """Every device the score touches (for ``Hardware.warm``)."""
        return frozenset(rule.action.device for rule in self.rules)


# --------------------------------------------------------------------------- parsing

#: The largest beat count, beat index or priority a score may give (2**53: exact in a
#: float, so every comparison with a beat position holds).
MAX_SCORE_INT = 2**53


def _int(
    table: Mapping[str, object], key: str, where: str, problems: ConfigProblems, low: int
) -> int | None:
    # Beat counts and priorities: far beyond any real score, still exact in a float.
    return read_integer(table, key, where, problems, low, MAX_SCORE_INT)


def _check_value(
    action: str, value: float | None, spec: DeviceSpec, where: str, problems: ConfigProblems
) -> None:
    needs_value = action in ("set", "fade", "move")
    if value is None:
        if needs_value:
            problems.add(f"{where}.value", f"is required for {action}")
        return
    if action not in ("set", "fade", "move", "on", "beep"):
        problems.add(f"{where}.value", f"does not apply to {action}")
        return
    low, high = spec.value_range
    if spec.family == "digital" and value not in (0.0, 1.0):
        problems.add(f"{where}.value", f"must be 0 or 1 for a {spec.kind}, got {value:g}")
    elif spec.family == "tone" and value <= 0:
        problems.add(f"{where}.value", f"must be a tone in Hz above 0, got {value:g}")
    elif not low <= value <= high:
        problems.add(
            f"{where}.value", f"must be between {low:g} and {high:g} for {spec.name}, got {value:g}"
        )


def _action(
    table: Mapping[str, object], profile: Profile, where: str, problems: ConfigProblems
) -> Action | None:
    device = table.get("device")
    do = table.get("do")
    spec: DeviceSpec | None = None
    if not isinstance(device, str):
        problems.add(f"{where}.device", f"must name a device, got {device!r}")
    elif device not in profile.devices:
        known = ", ".join(profile.devices) or "none"
        problems.add(f"{where}.device", f"no device {device!r} in the profile (devices: {known})")
    else:
        spec = profile.devices[device]
    if not isinstance(do, str) or not do:
        problems.add(f"{where}.do", f"must name an action, got {do!r}")
        return None
    if spec is not None and do not in spec.info.actions:
        allowed = ", ".join(sorted(spec.info.actions))
        problems.add(f"{where}.do", f"a {spec.kind} cannot {do!r} (it can: {allowed})")
        spec = None

    value = read_number(table, "value", where, problems)
    duration = read_number(table, "duration_s", where, problems, 0.0, 86_400.0)
    cost = read_number(table, "cost_s", where, problems, 0.0, 86_400.0)
    priority = _int(table, "priority", where, problems, -1000)
    essential = read_bool(table, "essential", where, problems, False)

    argv: tuple[str, ...] | None = None
    raw_argv = table.get("argv")
    if do == "command":
        if (
            not isinstance(raw_argv, list)
            or not raw_argv
            or not all(isinstance(a, str) and a for a in raw_argv)
        ):
            problems.add(f"{where}.argv", f"must be a non-empty list of strings, got {raw_argv!r}")
        else:
            argv = tuple(raw_argv)
    elif raw_argv is not None:
        problems.add(f"{where}.argv", "only a command takes argv")
    params: dict[str, object] | None = None
    if "params" in table:
        if do != "call":
            problems.add(f"{where}.params", "only a call (a python device) takes params")
        else:
            params = read_params(table["params"], f"{where}.params", problems)

    if spec is None or not isinstance(device, str):
        return None
    _check_value(do, value, spec, where, problems)
    if do == "fade" and duration is None:
        problems.add(f"{where}.duration_s", "is required for fade")
    if duration is not None and do not in TIMED_ACTIONS | {"move"}:
        problems.add(f"{where}.duration_s", f"does not apply to {do}")
        duration = None
    if duration is None and do in ("pulse", "beep"):
        duration = spec.pulse_s
    if do == "command":
        if duration is None:
            duration = spec.number("timeout_s", DEFAULT_COMMAND_TIMEOUT_S)
        if cost is None:
            cost = duration
    merged: dict[str, object] | None = None
    if do == "call":
        # The rule's params over the device's: a rule changes only what it names.
        merged = {**spec.params, **(params or {})}
    return Action(
        device=device,
        do=do,
        value=value,
        duration_s=duration,
        argv=argv,
        cost_s=DEFAULT_PIN_COST_S if cost is None else cost,
        priority=priority or 0,
        essential=essential,
        params=merged,
    )


def _rule(
    table: Mapping[str, object], profile: Profile, where: str, problems: ConfigProblems
) -> Rule | None:
    for key in table:
        if key not in _RULE_KEYS:
            problems.add(f"{where}.{key}", "is not a key of a score rule (see hw/README.md)")
    action = _action(table, profile, where, problems)
    every = _int(table, "every", where, problems, 1) or 1
    every_at = _int(table, "every_at", where, problems, 0) or 0
    downbeat = read_bool(table, "downbeat", where, problems, False)
    from_beat = _int(table, "from_beat", where, problems, 0)
    to_beat = _int(table, "to_beat", where, problems, 0)
    if from_beat is not None and to_beat is not None and to_beat < from_beat:
        problems.add(f"{where}.to_beat", f"must be >= from_beat ({from_beat}), got {to_beat}")
    bar_beats: frozenset[int] | None = None
    if "bar_beats" in table:
        raw = table["bar_beats"]
        if (
            not isinstance(raw, list)
            or not raw
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in raw)
        ):
            problems.add(
                f"{where}.bar_beats",
                f"must be a list of bar positions counted from 1 (the downbeat), got {raw!r}",
            )
        else:
            bar_beats = frozenset(raw)
    offset = read_number(table, "offset", where, problems, 0.0, None)
    if offset is not None and offset >= 1.0:
        problems.add(f"{where}.offset", f"must be a phase fraction in [0, 1), got {offset:g}")
        offset = None
    phase_raw = table.get("phase", "execute")
    phase: Phase = "execute"
    if phase_raw in PHASES:
        phase = next(p for p in PHASES if p == phase_raw)
    else:
        problems.add(f"{where}.phase", f"must be one of plan, execute, review; got {phase_raw!r}")
    name = table.get("name", "")
    if not isinstance(name, str):
        problems.add(f"{where}.name", f"must be a string, got {name!r}")
        name = ""
    if action is None:
        return None
    return Rule(
        action=action,
        every=every,
        every_at=every_at,
        downbeat=downbeat,
        bar_beats=bar_beats,
        from_beat=from_beat,
        to_beat=to_beat,
        offset=offset or 0.0,
        phase=phase,
        name=name or action.name,
    )


def parse_score(raw: object, profile: Profile, problems: ConfigProblems) -> Score:
    """Check the ``[[score]]`` array of tables against ``profile``.

    ``raw`` is the array (``None`` or absent means an empty score). Each rule must name a
    device of the profile and an action its kind can do; every problem is added to
    ``problems`` as ``score[i].key``. Rules with problems are left out. Never raises.
    """
    if raw is None:
        return Score()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        given = "one [score] table" if isinstance(raw, Mapping) else type(raw).__name__
        problems.add("score", f"must be an array of tables, each written [[score]]; got {given}")
        return Score()
    rules: list[Rule] = []
    for index, table in enumerate(raw):
        where = f"score[{index}]"
        if not isinstance(table, Mapping):
            problems.add(where, f"must be a table, got {type(table).__name__}")
            continue
        rule = _rule(table, profile, where, problems)
        if rule is not None:
            rules.append(rule)
    return Score(rules=tuple(rules))
