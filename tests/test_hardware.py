"""The hardware adapter on gpiozero's mock pins: pin histories for every action kind, the
rate limiter, the dead-man, safe state, failing pins and external commands.

Times are plain numbers handed to ``apply`` / ``tick``; nothing here sleeps on the clock.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory, MockPin

from edge.errors import ConfigProblems, HardwareError
from edge.hardware import ActionResult, Hardware, InputEvent
from edge.profile import Profile, parse_profile
from edge.score import Action

BENCH = """
[devices.led]
kind = "led"
pin = 17
[devices.relay]
kind = "relay"
pin = 27
active_high = false
max_switch_hz = 2.0
max_on_s = 3.0
[devices.fan]
kind = "output"
pin = 22
safe_state = 1
[devices.glow]
kind = "pwmled"
pin = 18
fade_step_s = 0.1
[devices.arm]
kind = "servo"
pin = 12
[devices.dial]
kind = "angular_servo"
pin = 13
min_angle = 0
max_angle = 180
safe_state = 90
[devices.buzz]
kind = "buzzer"
pin = 23
pulse_s = 0.05
[devices.tone]
kind = "tone"
pin = 19
[devices.btn]
kind = "button"
pin = 5
[devices.door]
kind = "input"
pin = 6
pull_up = true
[devices.sh]
kind = "command"
timeout_s = 0.5
"""


def profile_of(text: str) -> Profile:
    problems = ConfigProblems("test")
    profile = parse_profile(tomllib.loads(text), problems)
    problems.raise_if_any()
    return profile


@pytest.fixture
def hw(mock_hardware: Callable[..., Hardware], factory: MockFactory) -> Hardware:
    hardware = mock_hardware(profile_of(BENCH), clock=lambda: 0.0)
    fresh_history(factory)
    return hardware


def pin_of(factory: MockFactory, number: int) -> MockPin:
    """The mock pin GPIO``number`` as built (plain or PWM), without creating one."""
    for pin in factory.pins.values():
        if pin.info.name == f"GPIO{number}":
            return pin
    raise KeyError(number)


def states(factory: MockFactory, number: int) -> list[float | bool]:
    return [s.state for s in pin_of(factory, number).states]


def fresh_history(factory: MockFactory) -> None:
    """Start every pin's history at its state after the build."""
    for pin in factory.pins.values():
        pin.clear_states()


def run_until(hw: Hardware, end: float) -> list[ActionResult]:
    """Call tick() at every due-time up to ``end``, as the runner would."""
    results: list[ActionResult] = []
    while (due := hw.next_deadline()) is not None and due <= end:
        results.extend(hw.tick(due))
    return results


# --------------------------------------------------------------------------- building


def test_every_device_is_built_at_its_safe_state(hw: Hardware, factory: MockFactory) -> None:
    assert hw.isolated == frozenset() and hw.errors == {}
    s = hw.states()
    assert s["led"] is False and s["relay"] is False and s["fan"] is True
    assert s["glow"] == 0.0 and s["arm"] == pytest.approx(0.0) and s["dial"] == pytest.approx(90)
    assert s["tone"] == 0.0 and s["btn"] is False and s["sh"] == 0.0
    assert pin_of(factory, 27).state is True  # active-low relay rests with its pin high
    assert pin_of(factory, 22).state is True  # fan's safe state is on
    assert hw.next_deadline() is None


# --------------------------------------------------------------------------- digital


def test_on_off_toggle_set_history(hw: Hardware, factory: MockFactory) -> None:
    for t, action in enumerate(
        [
            Action("led", "on"),
            Action("led", "off"),
            Action("led", "toggle"),
            Action("led", "toggle"),
            Action("led", "set", value=1.0),
            Action("led", "on"),
        ]
    ):
        result = hw.apply(action, float(t))
        assert result.ok and result.dropped is None
    assert states(factory, 17) == [False, True, False, True, False, True]
    pin_of(factory, 17).assert_states([False, True, False, True, False, True])
    assert hw.commanded()["led"] == 1.0


def test_active_low_relay_inverts_the_pin(hw: Hardware, factory: MockFactory) -> None:
    assert hw.apply(Action("relay", "on"), 10.0).ok
    assert hw.apply(Action("relay", "off"), 11.0).ok
    pin_of(factory, 27).assert_states([True, False, True])
    assert hw.states()["relay"] is False


def test_pulse_is_switched_off_by_tick(hw: Hardware, factory: MockFactory) -> None:
    result = hw.apply(Action("led", "pulse", duration_s=0.2), 5.0)
    assert result.ok and pin_of(factory, 17).state is True
    assert hw.next_deadline() == pytest.approx(5.2)
    assert hw.tick(5.1) == []  # not yet
    [off] = hw.tick(5.2)
    assert (off.device, off.do, off.ok, off.value) == ("led", "pulse_off", True, 0.0)
    pin_of(factory, 17).assert_states([False, True, False])
    assert hw.next_deadline() is None


def test_pulse_uses_the_device_default_and_a_second_pulse_extends_it(
    hw: Hardware, factory: MockFactory
) -> None:
    hw.apply(Action("led", "pulse"), 1.0)  # default pulse_s 0.1
    assert hw.next_deadline() == pytest.approx(1.1)
    hw.apply(Action("led", "pulse", duration_s=0.1), 1.05)
    assert hw.next_deadline() == pytest.approx(1.15)
    run_until(hw, 2.0)
    assert states(factory, 17) == [False, True, False]


def test_buzzer_beep(hw: Hardware, factory: MockFactory) -> None:
    assert hw.apply(Action("buzz", "beep"), 0.0).ok
    assert [r.do for r in run_until(hw, 1.0)] == ["beep_off"]
    assert states(factory, 23) == [False, True, False]


def test_off_cancels_a_pending_pulse_end(hw: Hardware, factory: MockFactory) -> None:
    hw.apply(Action("led", "pulse", duration_s=1.0), 0.0)
    hw.apply(Action("led", "off"), 0.5)
    assert hw.next_deadline() is None
    assert states(factory, 17) == [False, True, False]


# --------------------------------------------------------------------------- pwm, servo, tone


def test_pwm_set_on_off_toggle(hw: Hardware, factory: MockFactory) -> None:
    hw.apply(Action("glow", "set", value=0.25), 0.0)
    hw.apply(Action("glow", "toggle"), 1.0)
    hw.apply(Action("glow", "off"), 2.0)
    hw.apply(Action("glow", "on"), 3.0)
    assert states(factory, 18) == [0.0, 0.25, 0.75, 0.0, 1.0]


def test_pwm_fade_steps_come_from_tick(hw: Hardware, factory: MockFactory) -> None:
    first = hw.apply(Action("glow", "fade", value=1.0, duration_s=0.5), 10.0)
    assert first.ok and first.value == 0.0
    assert hw.next_deadline() == pytest.approx(10.1)
    results = run_until(hw, 11.0)
    assert [r.do for r in results] == ["fade_done"]
    assert states(factory, 18) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # and back down; a late tick lands on the latest step of the grid, never drifting
    hw.apply(Action("glow", "fade", value=0.0, duration_s=0.5), 20.0)
    hw.tick(20.25)
    assert pin_of(factory, 18).state == pytest.approx(0.6)
    assert hw.next_deadline() == pytest.approx(20.3)
    run_until(hw, 21.0)
    assert pin_of(factory, 18).state == 0.0 and hw.next_deadline() is None


def test_servo_moves_and_sweeps(hw: Hardware, factory: MockFactory) -> None:
    assert hw.apply(Action("arm", "move", value=1.0), 0.0).ok
    assert hw.states()["arm"] == pytest.approx(1.0)
    assert pin_of(factory, 12).state == pytest.approx(0.002 / 0.02)  # 2 ms of a 20 ms frame
    hw.apply(Action("arm", "move", value=-1.0, duration_s=0.2), 1.0)
    run_until(hw, 2.0)
    assert hw.states()["arm"] == pytest.approx(-1.0)
    duties = states(factory, 12)
    assert duties[-1] == pytest.approx(0.001 / 0.02)
    assert len(duties) >= 4 and duties[-2] > duties[-1]  # swept in steps, not jumped
    hw.apply(Action("arm", "off"), 3.0)  # off = back to the safe position
    assert hw.states()["arm"] == pytest.approx(0.0)


def test_angular_servo_in_degrees(hw: Hardware) -> None:
    assert hw.apply(Action("dial", "move", value=180.0), 0.0).ok
    assert hw.states()["dial"] == pytest.approx(180.0)
    assert hw.apply(Action("dial", "read"), 0.1).value == pytest.approx(180.0)


def test_tone_beep_plays_and_stops(hw: Hardware, factory: MockFactory) -> None:
    pin = pin_of(factory, 19)
    assert hw.apply(Action("tone", "beep", value=880.0, duration_s=0.1), 0.0).ok
    assert pin.frequency == pytest.approx(880.0) and pin.state == 0.5
    assert hw.states()["tone"] == pytest.approx(880.0)
    [stop] = run_until(hw, 1.0)
    assert stop.do == "beep_off" and pin.frequency is None
    assert hw.states()["tone"] == 0.0
    hw.apply(Action("tone", "on"), 2.0)  # the default tone
    assert pin.frequency == pytest.approx(440.0)


def test_a_value_out_of_range_is_reported_not_isolating(hw: Hardware) -> None:
    result = hw.apply(Action("tone", "on", value=5000.0), 0.0)
    assert not result.ok and result.dropped == "bad_value" and "range" in (result.error or "")
    assert "tone" not in hw.isolated
    assert hw.apply(Action("tone", "on", value=440.0), 1.0).ok


# --------------------------------------------------------------------------- inputs


def test_read_inputs_and_edges(factory: MockFactory) -> None:
    now = [50.0]
    hw = Hardware(profile_of(BENCH), pin_factory=factory, clock=lambda: now[0])
    try:
        assert hw.apply(Action("btn", "read"), 0.0).value is False
        pin_of(factory, 5).drive_low()  # pressed: the button pulls the pin to ground
        now[0] = 51.0
        pin_of(factory, 5).drive_high()
        now[0] = 52.0
        pin_of(factory, 6).drive_low()
        assert hw.apply(Action("door", "read"), 0.0).value is True
        assert hw.states()["door"] is True
        assert hw.input_events() == [
            InputEvent("btn", True, 50.0),
            InputEvent("btn", False, 51.0),
            InputEvent("door", True, 52.0),
        ]
        assert hw.input_events() == []
    finally:
        hw.close()


def test_an_action_a_kind_cannot_do_is_refused(hw: Hardware) -> None:
    result = hw.apply(Action("btn", "on"), 0.0)
    assert (result.ok, result.dropped) == (False, "bad_action")
    result = hw.apply(Action("nope", "on"), 0.0)
    assert (result.ok, result.dropped) == (False, "unknown_device")
    assert hw.dropped == {"bad_action": 1, "unknown_device": 1}


# --------------------------------------------------------------------------- rate limit


def test_relay_never_chatters_even_at_1000_bpm(hw: Hardware, factory: MockFactory) -> None:
    beat = 60.0 / 1000.0
    t = 0.0
    for _ in range(200):  # 12 s of toggling every beat
        hw.apply(Action("relay", "toggle"), t)
        hw.tick(t)
        t += beat
    run_until(hw, t + 1.0)
    pin = pin_of(factory, 27)
    changes = len(pin.states) - 1
    # at most one change per 0.5 s over 12 s (+1 for the last deferred return to safe)
    assert changes <= 12 / 0.5 + 1
    assert changes >= 12  # and it did switch: a relay that never moves cannot chatter either
    assert hw.dropped["rate_limit"] >= 80  # switches away dropped; returns deferred
    assert pin.state is True  # ended safe (pin high = off for this active-low relay)


def test_going_away_is_dropped_returning_safe_is_deferred(
    hw: Hardware, factory: MockFactory
) -> None:
    assert hw.apply(Action("relay", "on"), 0.0).ok
    back = hw.apply(Action("relay", "off"), 0.1)
    assert back.ok and back.deferred_to == pytest.approx(0.5)
    assert hw.next_deadline() == pytest.approx(0.5)
    [deferred] = hw.tick(0.5)
    assert deferred.do == "deferred_off" and deferred.ok
    again = hw.apply(Action("relay", "on"), 0.7)
    assert (again.ok, again.dropped) == (False, "rate_limit")
    assert hw.apply(Action("relay", "on"), 1.0).ok
    pin_of(factory, 27).assert_states([True, False, True, False])
    assert hw.dropped == {"rate_limit": 1}


def test_a_short_pulse_on_a_relay_lasts_the_minimum_interval(
    hw: Hardware, factory: MockFactory
) -> None:
    hw.apply(Action("relay", "pulse", duration_s=0.05), 0.0)
    results = run_until(hw, 2.0)
    assert [(r.do, r.at) for r in results] == [("pulse_off", 0.05), ("deferred_off", 0.5)]
    pin_of(factory, 27).assert_states([True, False, True])


def test_repeating_the_current_value_is_not_a_switch(hw: Hardware) -> None:
    hw.apply(Action("relay", "on"), 0.0)
    for t in (0.1, 0.2, 0.3):
        assert hw.apply(Action("relay", "on"), t).ok
    assert hw.dropped == {}


# --------------------------------------------------------------------------- dead-man


def test_deadman_switches_off_what_is_not_renewed(hw: Hardware, factory: MockFactory) -> None:
    hw.apply(Action("relay", "on"), 0.0)
    assert hw.next_deadline() == pytest.approx(3.0)
    assert hw.tick(2.9) == []
    [off] = hw.tick(3.0)
    assert (off.do, off.ok) == ("deadman_off", True)
    assert hw.deadman_offs == 1
    pin_of(factory, 27).assert_states([True, False, True])


def test_deadman_is_renewed_by_actions(hw: Hardware, factory: MockFactory) -> None:
    for t in (0.0, 2.0, 4.0, 6.0):  # renewed every 2 s, limit 3 s
        hw.apply(Action("relay", "on"), t)
        assert hw.tick(t + 1.5) == []
    assert hw.deadman_offs == 0 and pin_of(factory, 27).state is False
    assert hw.next_deadline() == pytest.approx(9.0)
    hw.tick(9.0)
    assert hw.deadman_offs == 1 and pin_of(factory, 27).state is True


def test_deadman_is_disarmed_by_returning_to_safe(hw: Hardware) -> None:
    hw.apply(Action("relay", "on"), 0.0)
    assert hw.next_deadline() == pytest.approx(3.0)  # armed
    hw.apply(Action("relay", "off"), 1.0)
    assert hw.next_deadline() is None


# --------------------------------------------------------------------------- safe state


def test_safe_state_puts_every_output_back(hw: Hardware, factory: MockFactory) -> None:
    moves = [
        Action("led", "on"),
        Action("relay", "on"),
        Action("fan", "off"),
        Action("glow", "fade", value=1.0, duration_s=1.0),
        Action("arm", "move", value=1.0),
        Action("dial", "move", value=0.0),
        Action("tone", "on"),
    ]
    assert all(hw.apply(action, 0.0).ok for action in moves)  # every output left safe...
    assert pin_of(factory, 27).state is False and pin_of(factory, 22).state is False
    assert hw.apply(Action("relay", "off"), 0.1).deferred_to  # ...the relay's return deferred
    hw.safe_state("pulse lost", now=0.2)  # ...but safe state does not wait
    s = hw.states()
    assert s["led"] is False and s["relay"] is False and s["fan"] is True
    assert s["glow"] == 0.0 and s["arm"] == pytest.approx(0.0)
    assert s["dial"] == pytest.approx(90.0) and s["tone"] == 0.0
    assert pin_of(factory, 27).state is True and pin_of(factory, 22).state is True
    assert hw.next_deadline() is None  # no fade, deferral or dead-man left
    assert hw.safe_states == 1


# --------------------------------------------------------------------------- failures


class FlakyPin(MockPin):  # type: ignore[misc]  # gpiozero ships no types
    """A mock pin that raises like a lost GPIO line once ``broken`` is set."""

    broken = False

    def _set_state(self, value: bool) -> None:
        if self.broken:
            raise OSError(5, "Input/output error")
        super()._set_state(value)

    def _get_state(self) -> bool:
        if self.broken:
            raise OSError(5, "Input/output error")
        return bool(super()._get_state())


def test_a_failing_pin_isolates_only_its_device(factory: MockFactory) -> None:
    flaky = factory.pin(17, pin_class=FlakyPin)
    assert isinstance(flaky, FlakyPin)
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    try:
        assert hw.apply(Action("led", "on"), 0.0).ok
        flaky.broken = True
        failed = hw.apply(Action("led", "off"), 1.0)
        assert not failed.ok and "Input/output error" in (failed.error or "")
        assert hw.isolated == frozenset({"led"})
        assert hw.failures == {"led": 1}
        later = hw.apply(Action("led", "on"), 2.0)
        assert (later.ok, later.dropped) == (False, "isolated")
        assert hw.dropped == {"isolated": 1}
        # the others carry on
        assert hw.apply(Action("relay", "on"), 2.0).ok
        assert pin_of(factory, 27).state is False
        assert hw.states()["led"] is None
        hw.safe_state("test", now=3.0)  # does not raise on the broken pin
        assert pin_of(factory, 27).state is True
    finally:
        flaky.broken = False
        hw.close()


def test_reading_the_states_never_isolates_checking_them_does(factory: MockFactory) -> None:
    flaky = factory.pin(17, pin_class=FlakyPin)
    assert isinstance(flaky, FlakyPin)
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    try:
        assert hw.apply(Action("led", "on"), 0.0).ok
        assert hw.states() == hw.check_states() and hw.states()["led"] is True
        flaky.broken = True
        # The demo view reads every frame: a read shows the pin as unknown, nothing more.
        for _ in range(3):
            assert hw.states()["led"] is None
        assert (hw.isolated, hw.failures, hw.errors) == (frozenset(), {}, {})
        assert hw.apply(Action("relay", "on"), 0.1).ok  # (the LED is not touched)
        # The step isolates it, as a failing write would.
        assert hw.check_states()["led"] is None
        assert hw.isolated == frozenset({"led"}) and hw.failures == {"led": 1}
        assert "led: read failed (" in hw.errors["led"]
        flaky.broken = False
        assert hw.states()["led"] is None  # isolated until revived
        assert hw.apply(Action("led", "on"), 1.0).dropped == "isolated"
    finally:
        flaky.broken = False
        hw.close()


def test_a_pending_follow_up_on_a_failing_pin(factory: MockFactory) -> None:
    flaky = factory.pin(17, pin_class=FlakyPin)
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    try:
        hw.apply(Action("led", "pulse", duration_s=0.1), 0.0)
        flaky.broken = True
        [failed] = hw.tick(0.1)
        assert not failed.ok and failed.do == "pulse_off" and "led" in hw.isolated
        assert hw.next_deadline() is None
    finally:
        flaky.broken = False
        hw.close()


def test_a_device_that_cannot_be_built_is_isolated(factory: MockFactory) -> None:
    profile = profile_of(BENCH + '[devices.ghost]\nkind = "led"\npin = "GPIO99"\n')
    hw = Hardware(profile, pin_factory=factory)
    try:
        assert hw.isolated == frozenset({"ghost"})
        assert "build failed" in hw.errors["ghost"]
        assert hw.apply(Action("ghost", "on"), 0.0).dropped == "isolated"
        assert hw.apply(Action("led", "on"), 0.0).ok
    finally:
        hw.close()


def test_revive_brings_a_repaired_device_back_and_leaves_a_broken_one_isolated(
    factory: MockFactory,
) -> None:
    flaky = factory.pin(17, pin_class=FlakyPin)
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    try:
        assert hw.apply(Action("led", "on"), 0.0).ok
        flaky.broken = True
        assert not hw.apply(Action("led", "off"), 1.0).ok and hw.isolated == {"led"}
        # still broken: rebuilding fails, it stays out, and the new failure is counted
        assert hw.revive() == []
        assert hw.isolated == {"led"} and hw.failures == {"led": 2}
        assert "rebuild failed" in hw.errors["led"]
        assert hw.apply(Action("led", "on"), 2.0).dropped == "isolated"
        # repaired: back in service at its safe state, error cleared, actions apply
        flaky.broken = False
        assert hw.revive() == ["led"]
        assert hw.isolated == frozenset() and "led" not in hw.errors
        assert hw.states()["led"] is False and hw.commanded()["led"] == 0.0
        assert hw.apply(Action("led", "on"), 3.0).ok and pin_of(factory, 17).state is True
        assert hw.revive() == []  # nothing isolated: nothing touched
        assert pin_of(factory, 17).state is True
    finally:
        flaky.broken = False
        hw.close()


def test_revive_rebuilds_a_device_whose_pin_was_taken(factory: MockFactory) -> None:
    # The pin was held by something else when the agent started; once it is free, a
    # reload gets the device.
    holder = LED(22, pin_factory=factory)
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    try:
        assert hw.isolated == {"fan"} and "build failed" in hw.errors["fan"]
        holder.close()
        assert hw.revive() == ["fan"]
        assert hw.states()["fan"] is True  # fan's safe state is on
        assert hw.apply(Action("fan", "off"), 0.0).ok and pin_of(factory, 22).state is False
    finally:
        holder.close()
        hw.close()


def test_unknown_pin_factory_is_a_hardware_error() -> None:
    profile = Profile(pin_factory="warp")
    with pytest.raises(HardwareError, match="warp"):
        Hardware(profile)


def test_profile_and_environment_choose_the_factory(
    factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Hardware(profile_of('[gpio]\npin_factory = "mock"\n' + BENCH))
    try:
        assert isinstance(own.factory, MockFactory) and own.factory is not factory
        assert own.apply(Action("glow", "set", value=0.5), 0.0).ok
    finally:
        own.close()
    Device.pin_factory = None
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    from_env = Hardware(profile_of(BENCH))
    try:
        assert isinstance(from_env.factory, MockFactory)
        assert from_env.apply(Action("arm", "move", value=0.5), 0.0).ok
    finally:
        from_env.close()
        from_env.factory.reset()


# --------------------------------------------------------------------------- commands

SLEEP_30 = (sys.executable, "-c", "import time; time.sleep(30)")


def finish(hw: Hardware, start: float) -> list[ActionResult]:
    """Tick (with fake times) until the command reports, waiting at most 10 s of real time
    for the launcher to start it and the child process to exit."""
    t = start
    limit = time.monotonic() + 10.0
    while time.monotonic() < limit:
        t += 0.001
        results = hw.tick(t)
        if results:
            return results
        time.sleep(0.005)
    raise AssertionError("command never reported")


def drain(hw: Hardware, start: float) -> list[ActionResult]:
    """Tick (with fake times) until nothing is left to do (every run reaped), at most 10 s
    of real time; return everything reported on the way."""
    t = start
    results: list[ActionResult] = []
    limit = time.monotonic() + 10.0
    while hw.next_deadline() is not None:
        assert time.monotonic() < limit, "commands never reaped"
        t = max(t + 0.001, hw.next_deadline() or t)
        results.extend(hw.tick(t))
        time.sleep(0.005)
    return results


class GatedPopen:
    """A ``popen`` that holds each start until ``gate`` is set, as a slow exec would, then
    starts the real process; ``order`` records when it returned."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.order: list[str] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        self.gate.wait(10.0)
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        self.order.append("popen returned")
        return proc


@pytest.fixture
def gated(mock_hardware: Callable[..., Hardware]) -> Iterator[tuple[Hardware, GatedPopen]]:
    popen = GatedPopen()
    try:
        yield mock_hardware(profile_of(BENCH), clock=lambda: 0.0, popen=popen), popen
    finally:
        popen.gate.set()  # before mock_hardware closes it: a held start would stall close


def test_command_runs_and_reports(hw: Hardware) -> None:
    started = hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.0)
    assert (started.ok, started.do, started.value) == (True, "command", None)
    assert started.run is not None
    assert hw.next_deadline() == pytest.approx(0.002)  # first poll 2 ms after the apply
    [done] = finish(hw, 0.0)
    assert (done.do, done.ok, done.value, done.run) == ("command_done", True, 0.0, started.run)
    assert done.duration_s == pytest.approx(done.at)  # counted from the apply, at 0.0


def test_command_failure_carries_stderr(hw: Hardware) -> None:
    argv = (sys.executable, "-c", "import sys; sys.stderr.write('no such bus'); sys.exit(3)")
    hw.apply(Action("sh", "command", argv=argv), 0.0)
    [done] = finish(hw, 0.0)
    assert not done.ok and done.value == 3.0 and "no such bus" in (done.error or "")
    assert hw.failures == {"sh": 1}


def test_command_overrunning_its_deadline_is_killed(hw: Hardware) -> None:
    started = hw.apply(Action("sh", "command", argv=SLEEP_30, duration_s=0.3), 0.0)
    assert started.ok
    busy = hw.apply(Action("sh", "command", argv=SLEEP_30), 0.1)
    assert (busy.ok, busy.dropped) == (False, "busy")
    assert hw.tick(0.29) == []
    [killed] = hw.tick(0.3)
    assert (killed.do, killed.ok, killed.run) == ("command_killed", False, started.run)
    assert killed.duration_s == pytest.approx(0.3)
    assert "deadline" in (killed.error or "") and hw.commands_killed == 1
    assert drain(hw, 0.3) == []  # reaped on later ticks, silently


def test_command_that_cannot_start(hw: Hardware) -> None:
    started = hw.apply(Action("sh", "command", argv=("/nonexistent/i2cset",)), 0.0)
    assert started.ok  # the start is the launcher's; its failure comes from tick
    [failed] = finish(hw, 0.0)
    assert (failed.do, failed.ok, failed.run) == ("command_not_started", False, started.run)
    assert "/nonexistent/i2cset" in (failed.error or "") and hw.failures == {"sh": 1}
    assert hw.next_deadline() is None
    # and the device is free again
    assert hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.1).ok


def test_safe_state_leaves_the_kept_devices_as_they_are(hw: Hardware) -> None:
    hw.apply(Action("led", "on"), 0.0)
    hw.apply(Action("glow", "fade", value=1.0, duration_s=1.0), 0.0)
    hw.apply(Action("relay", "on"), 0.0)
    hw.tick(0.5)  # the fade half way
    hw.safe_state("beat lost", now=0.5, keep={"led", "glow", "no-such-device"})
    s = hw.states()
    assert s["led"] is True and s["relay"] is False
    assert 0.0 < float(s["glow"]) < 1.0  # type: ignore[arg-type]
    assert hw.next_deadline() is not None  # the kept fade goes on
    assert hw.safe_states == 1


def test_safe_state_kills_running_commands(hw: Hardware) -> None:
    hw.apply(Action("sh", "command", argv=SLEEP_30), 0)
    hw.safe_state("stop", now=0.1)
    assert hw.commands_killed == 1
    assert drain(hw, 0.1) == []  # reaped, and nothing reported: the safe state said it all


def test_apply_returns_before_the_process_has_started(gated: tuple[Hardware, GatedPopen]) -> None:
    hw, popen = gated
    result = hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.0)
    popen.order.append("apply returned")
    popen.gate.set()
    [done] = finish(hw, 0.0)
    assert popen.order == ["apply returned", "popen returned"]
    assert result.ok and done.run == result.run and done.ok


def test_wait_for_starts_waits_for_the_launcher(gated: tuple[Hardware, GatedPopen]) -> None:
    hw, popen = gated
    assert hw.wait_for_starts(0.0)  # nothing handed over yet
    started = hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.0)
    assert not hw.wait_for_starts(0.05)  # the start is held at the gate
    popen.gate.set()
    assert hw.wait_for_starts(10.0) and len(popen.procs) == 1
    [done] = finish(hw, 0.0)
    assert done.run == started.run


def test_polls_come_fast_then_slower_and_at_the_deadline(
    gated: tuple[Hardware, GatedPopen],
) -> None:
    hw, _ = gated  # the gate stays shut: the run never starts
    hw.apply(Action("sh", "command", argv=SLEEP_30, duration_s=0.05), 0.0)
    seen = []
    while (due := hw.next_deadline()) is not None and due <= 0.05:
        seen.append(round(due, 6))
        assert hw.tick(due) == [] or due == 0.05
    assert seen == [0.002, 0.006, 0.014, 0.03, 0.05]


def test_a_command_not_started_by_its_deadline_is_killed_once_it_starts(
    gated: tuple[Hardware, GatedPopen],
) -> None:
    hw, popen = gated
    started = hw.apply(Action("sh", "command", argv=SLEEP_30, duration_s=0.1), 0.0)
    [killed] = hw.tick(0.1)
    assert (killed.do, killed.run, killed.duration_s) == ("command_killed", started.run, 0.1)
    assert "not even started" in (killed.error or "") and hw.commands_killed == 1
    assert hw.apply(Action("sh", "command", argv=SLEEP_30), 0.11).ok  # no longer busy
    popen.gate.set()
    results = drain(hw, 0.11)
    assert [r.do for r in results] == ["command_killed"]  # the second one's deadline
    assert popen.procs[0].returncode == -signal.SIGKILL  # killed the moment it existed


def test_safe_state_kills_a_command_still_starting(gated: tuple[Hardware, GatedPopen]) -> None:
    hw, popen = gated
    hw.apply(Action("sh", "command", argv=SLEEP_30), 0.0)
    hw.safe_state("stop", now=0.001)
    assert hw.commands_killed == 1
    popen.gate.set()
    assert drain(hw, 0.001) == []  # nothing more to report: it was killed by the safe state
    assert popen.procs[0].returncode == -signal.SIGKILL


def test_close_kills_a_command_still_starting(factory: MockFactory) -> None:
    popen = GatedPopen()
    hw = Hardware(profile_of(BENCH), pin_factory=factory, clock=lambda: 0.0, popen=popen)
    hw.apply(Action("sh", "command", argv=SLEEP_30), 0.0)
    popen.gate.set()
    hw.close()  # waits for the launcher's start in progress, kills and reaps it
    [proc] = popen.procs
    assert proc.returncode == -signal.SIGKILL


TWO_AT_ONCE = """
[devices.sh]
kind = "command"
timeout_s = 60
max_running = 2
"""


def test_out_of_order_finishes_carry_their_own_run_and_duration(
    factory: MockFactory,
    tmp_path: Path,
) -> None:
    flag = tmp_path / "go"
    slow = (
        sys.executable,
        "-c",
        f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.005)",
    )
    hw = Hardware(profile_of(TWO_AT_ONCE), pin_factory=factory, clock=lambda: 0.0)
    try:
        first = hw.apply(Action("sh", "command", argv=slow), 0.0)
        second = hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.01)
        assert first.ok and second.ok and first.run != second.run
        [quick] = finish(hw, 0.01)
        flag.touch()
        [late] = finish(hw, quick.at)
    finally:
        hw.close()
    assert (quick.run, late.run) == (second.run, first.run)
    assert quick.duration_s is not None and late.duration_s is not None
    assert quick.duration_s == pytest.approx(quick.at - 0.01)
    assert late.duration_s == pytest.approx(late.at - 0.0)
    assert late.duration_s > quick.duration_s


# --------------------------------------------------------------------------- the contract

PINS_ONLY = BENCH[: BENCH.index("[devices.sh]")]


def test_pins_start_no_threads_and_warm_writes_nothing(factory: MockFactory) -> None:
    hw = Hardware(profile_of(PINS_ONLY), pin_factory=factory, clock=lambda: 0.0)
    fresh_history(factory)
    before = threading.active_count()  # (gpiozero's own, for the inputs, are there now)
    try:
        hw.apply(Action("led", "pulse"), 0.0)
        hw.apply(Action("glow", "fade", value=1.0, duration_s=0.3), 0.0)
        hw.apply(Action("arm", "move", value=1.0, duration_s=0.3), 0.0)
        hw.warm(["led", "relay", "glow", "arm", "btn", "nope"])
        run_until(hw, 1.0)
        assert threading.active_count() == before
        assert states(factory, 27) == [True]  # warm touched the relay without switching it
    finally:
        hw.close()


def test_commands_use_one_launcher_thread_that_close_stops(factory: MockFactory) -> None:
    before = set(threading.enumerate())
    hw = Hardware(profile_of(TWO_AT_ONCE), pin_factory=factory, clock=lambda: 0.0)
    # Made with the hardware, so the first command does not wait for a thread to start.
    [launcher] = set(threading.enumerate()) - before
    assert launcher.name == "backbeat-command-launcher" and launcher.daemon
    quick = (sys.executable, "-c", "pass")
    hw.apply(Action("sh", "command", argv=quick), 0.0)
    hw.apply(Action("sh", "command", argv=quick), 0.0)
    assert set(threading.enumerate()) - before == {launcher}
    drain(hw, 0.0)
    hw.apply(Action("sh", "command", argv=quick), 1.0)
    assert set(threading.enumerate()) - before == {launcher}  # the same one, reused
    hw.close()
    assert not launcher.is_alive()


def test_close_leaves_outputs_safe_and_releases_pins(factory: MockFactory) -> None:
    hw = Hardware(profile_of(BENCH), pin_factory=factory)
    hw.apply(Action("led", "on"), 0.0)
    hw.close()
    assert pin_of(factory, 17).state is False
    again = Hardware(profile_of(BENCH), pin_factory=factory)  # the pins are free again
    try:
        assert again.isolated == frozenset()
    finally:
        again.close()


# ----------------------------------------------------------------------- caller's tags


def test_apply_echoes_the_callers_tag_in_its_result(hw: Hardware) -> None:
    tag = ("toggle", 7)
    assert hw.apply(Action("led", "on"), 0.0, tag=tag).tag is tag
    assert hw.apply(Action("nowhere", "on"), 0.0, tag=tag).tag is tag  # dropped, still tagged
    assert hw.apply(Action("led", "off"), 0.1).tag is None  # no tag given, none back


def test_each_command_end_carries_the_tag_its_start_had(hw: Hardware) -> None:
    quick = hw.apply(Action("sh", "command", argv=(sys.executable, "-c", "pass")), 0.0, tag="a")
    assert (quick.ok, quick.tag) == (True, "a")
    [done] = finish(hw, 0.0)
    assert (done.do, done.tag) == ("command_done", "a")
    slow = hw.apply(Action("sh", "command", argv=SLEEP_30, duration_s=0.3), 1.0, tag="b")
    assert slow.tag == "b"
    [killed] = hw.tick(1.3)
    assert (killed.do, killed.tag) == ("command_killed", "b")
    assert drain(hw, 1.3) == []
    hw.apply(Action("sh", "command", argv=("/nonexistent/i2cset",)), 2.0, tag="c")
    [failed] = finish(hw, 2.0)
    assert (failed.do, failed.tag) == ("command_not_started", "c")
