"""The runner's and the command's parts, each alone: the wait (edge.wait), check's report
(edge.check_report) and the tools' broker link (edge.tool_link). The runner tests drive
them through the loop; these pin down what each promises by itself."""

from __future__ import annotations

import gc
import queue
from pathlib import Path

import pytest

from edge.check_report import DEFAULT_TEMPOS, report, when
from edge.clock import FakeClock
from edge.config import load_config
from edge.inbox import Inbound
from edge.score import Action, Rule
from edge.spin import SpinLead
from edge.tool_link import reach
from edge.wait import DRAIN_MAX, precise_next, wait

BENCH = Path(__file__).resolve().parent.parent / "hw" / "bench.toml"

# ---------------------------------------------------------------------------- the wait


def _message(i: int) -> Inbound:
    return Inbound("message", arrived_at=float(i), topic=f"t/{i}")


def test_precise_next_is_the_earlier_of_an_action_and_a_follow_up() -> None:
    assert precise_next(None, None) is None
    assert precise_next(2.0, None) == 2.0
    assert precise_next(None, 3.0) == 3.0
    assert precise_next(2.0, 3.0) == 2.0
    assert precise_next(4.0, 3.0) == 3.0


def test_a_message_ends_the_wait_and_what_is_queued_behind_it_comes_too() -> None:
    clock = FakeClock()
    inbox: queue.Queue[Inbound] = queue.Queue()
    for i in range(DRAIN_MAX + 3):
        inbox.put(_message(i))
    fired: list[float] = []
    start = clock.monotonic()
    items = wait(clock, inbox, start, start + 1.0, None, 1.0, SpinLead(), fired.append)
    # the first and at most DRAIN_MAX more, in order; the rest waits for the next wake-up
    assert [item.topic for item in items] == [f"t/{i}" for i in range(DRAIN_MAX + 1)]
    assert inbox.qsize() == 2 and not fired and clock.monotonic() == start


def test_a_plain_deadline_is_waited_for_without_a_spin_or_a_fire() -> None:
    clock = FakeClock()
    fired: list[float] = []
    start = clock.monotonic()
    assert wait(clock, None, start, start + 0.5, None, 1.0, SpinLead(), fired.append) == []
    assert clock.monotonic() == pytest.approx(start + 0.5) and not fired


def test_a_precise_deadline_is_spun_to_and_fired_at_with_the_collector_held_off() -> None:
    clock = FakeClock()
    spin = SpinLead()
    start = clock.monotonic()
    deadline = start + 0.5
    seen: list[tuple[float, bool]] = []

    def fire_due(at: float) -> None:
        seen.append((at, gc.isenabled()))

    assert gc.isenabled()
    assert wait(clock, None, start, deadline, deadline, 1.0, spin, fire_due) == []
    # warmed at the wake (the spin's lead before the deadline), fired at the deadline,
    # never with a collection allowed in between; the collector is back on after
    assert seen == [(pytest.approx(deadline - spin.seconds), False), (deadline, False)]
    assert clock.monotonic() == deadline and gc.isenabled()


class QuietClock(FakeClock):
    """A fake clock whose wait, like a real one, runs to its time-out without seeing what
    was queued quietly meanwhile (an ack, a time response), then takes it."""

    def wait(self, inbox, timeout):  # type: ignore[no-untyped-def]
        if timeout > 0:
            self.advance(timeout)
        try:
            return inbox.get_nowait() if inbox is not None else None
        except queue.Empty:
            return None


def test_what_was_queued_quietly_is_handed_out_after_the_spin_and_the_action() -> None:
    clock = QuietClock()
    spin = SpinLead()
    inbox: queue.Queue[Inbound] = queue.Queue()
    inbox.put(_message(1))  # queued without waking the wait, as acks and responses are
    start = clock.monotonic()
    deadline = start + 0.5
    fired: list[float] = []
    items = wait(clock, inbox, start, deadline, deadline, 1.0, spin, fired.append)
    assert [item.topic for item in items] == ["t/1"]
    # spun to the action and fired at its time, before the item is taken in
    assert fired == [pytest.approx(deadline - spin.seconds), deadline]
    assert clock.monotonic() == deadline


def test_a_quiet_item_at_a_plain_deadline_is_handed_out_there() -> None:
    clock = QuietClock()
    inbox: queue.Queue[Inbound] = queue.Queue()
    inbox.put(_message(2))
    start = clock.monotonic()
    fired: list[float] = []
    items = wait(clock, inbox, start, start + 0.5, None, 1.0, SpinLead(), fired.append)
    assert [item.topic for item in items] == ["t/2"] and not fired
    assert clock.monotonic() == pytest.approx(start + 0.5)


def test_the_longest_wait_is_not_spun_to() -> None:
    clock = FakeClock()
    fired: list[float] = []
    for later in (5.0, 0.0):  # an action after it, or (by chance) right at its end
        now = clock.monotonic()
        capped = now + 1.0  # the deadline is the longest wait itself
        assert wait(clock, None, now, capped, capped + later, 1.0, SpinLead(), fired.append) == []
        assert not fired and clock.monotonic() == pytest.approx(capped)


# ---------------------------------------------------------------------------- check's report


def test_check_reports_the_config_its_devices_rules_and_each_tempo(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nid = "bench:pi-01"\ncluster = "bench"\nprofile = "{BENCH}"\n', "utf-8"
    )
    config = load_config(path)
    lines = report(config, "everything", [60.0, 1000.0])
    assert lines[0].startswith(f"{path}: OK (agent bench:pi-01, cluster bench, broker ")
    assert lines[0].endswith(f"config hash {config.digest})")
    assert lines[1] == "checked: everything"
    devices = [line for line in lines if line.startswith("  ") and " pin " in line]
    assert len(devices) == len(config.profile.devices)
    rules = [line for line in lines if line.startswith("  [")]
    assert len(rules) == len(config.score.rules)
    # Each says the fastest tempo it fits, and none a tempo past what a frame may carry.
    for line, rule in zip(rules, config.score.rules, strict=True):
        fastest = rule.max_tempo_bpm()
        said = "fits every tempo" if fastest >= 1000 else f"fits up to {fastest:.1f} BPM"
        assert line.endswith(said), line
    plan = lines[lines.index("plan by tempo:") + 1 :]
    assert plan[0] == "     60.0 BPM: all rules fit"
    too_long = config.score.fit(1000.0)
    assert too_long, "the bench score should not all fit at 1000 BPM"
    assert plan[1].startswith(f"   1000.0 BPM: {len(too_long)} rules run past the end of their")
    assert plan[2:] == [f"      {problem}" for problem in too_long]  # one problem a line
    tempos = report(config, "x", DEFAULT_TEMPOS)
    planned = tempos[tempos.index("plan by tempo:") + 1 :]
    assert len(planned) == len(DEFAULT_TEMPOS) + sum(
        len(config.score.fit(bpm)) for bpm in DEFAULT_TEMPOS
    )


def test_check_says_when_each_rule_fires() -> None:
    led = Action("led", "set", value=0.5)
    assert when(Rule(led)) == "every beat"
    assert when(Rule(led, every=2, every_at=1)) == "every 2 beats (at 1)"
    assert when(Rule(led, downbeat=True)) == "every beat on downbeats"
    assert when(Rule(led, bar_beats=frozenset({3, 1}))) == "every beat on bar beats 1,3"
    assert when(Rule(led, from_beat=8)) == "every beat from beat 8"
    assert when(Rule(led, to_beat=12)) == "every beat up to beat 12"
    assert when(Rule(led, every=4, from_beat=8, to_beat=12)) == "every 4 beats in beats 8-12"


# ---------------------------------------------------------------------------- the tools' link


class _Link:
    def __init__(self, connects: bool, last_error: str | None = None) -> None:
        self.connects = connects
        self.last_error = last_error
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def wait_connected(self, timeout: float) -> bool:
        self.calls.append(f"wait {timeout:g}")
        return self.connects

    def stop(self, *, timeout: float) -> None:
        self.calls.append("stop")


def test_a_tool_that_reaches_its_broker_keeps_its_link(capsys: pytest.CaptureFixture[str]) -> None:
    link = _Link(connects=True)
    assert reach(link, "pulse", "mqtt://h:1883", 2.5)
    assert link.calls == ["start", "wait 2.5"] and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("error", "lost", "said"),
    [
        (
            "cannot reach broker h:1883: refused",
            "; no beat sent",
            "cannot reach broker h:1883: refused",
        ),
        (None, "", "no answer"),
    ],
)
def test_a_tool_that_cannot_reach_its_broker_stops_and_says_why(
    error: str | None, lost: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    link = _Link(connects=False, last_error=error)
    assert not reach(link, "timekeeper", "mqtt://h:1883", 5.0, lost=lost)
    assert link.calls == ["start", "wait 5", "stop"]
    assert capsys.readouterr().err == (
        "backbeat-edge timekeeper: cannot reach the broker at mqtt://h:1883 in 5 s "
        f"({said}){lost}\n"
    )
