"""Real-pin tests: run on a Raspberry Pi with pins named in the environment, skip elsewhere.

    BACKBEAT_TEST_OUTPUT_PIN=17              an output pin (an LED or nothing attached)
    BACKBEAT_TEST_INPUT_PIN=27               optional: an input wired to the output pin
    BACKBEAT_TEST_PWM_PIN=18                 optional: a PWM-capable pin
    BACKBEAT_TEST_PIN_FACTORY=lgpio          optional: the pin factory (gpiozero's default)

Wire the input to the output through a 1 kohm resistor to check read-back end to end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from edge.errors import ConfigProblems
from edge.hardware import Hardware
from edge.profile import Profile, parse_profile
from edge.score import Action

pytestmark = pytest.mark.realpins

OUTPUT_PIN = os.environ.get("BACKBEAT_TEST_OUTPUT_PIN")
INPUT_PIN = os.environ.get("BACKBEAT_TEST_INPUT_PIN")
PWM_PIN = os.environ.get("BACKBEAT_TEST_PWM_PIN")
FACTORY = os.environ.get("BACKBEAT_TEST_PIN_FACTORY")

if OUTPUT_PIN is None:
    pytest.skip("BACKBEAT_TEST_OUTPUT_PIN is not set (not on a Pi)", allow_module_level=True)


def real_profile() -> Profile:
    devices: dict[str, object] = {
        "out": {"kind": "output", "pin": int(OUTPUT_PIN or 0), "max_on_s": 1.0},
    }
    if INPUT_PIN:
        devices["inp"] = {"kind": "input", "pin": int(INPUT_PIN), "pull_up": False}
    if PWM_PIN:
        devices["dim"] = {"kind": "pwm", "pin": int(PWM_PIN)}
    raw: dict[str, object] = {"devices": devices}
    if FACTORY:
        raw["gpio"] = {"pin_factory": FACTORY}
    problems = ConfigProblems("realpins")
    profile = parse_profile(raw, problems)
    problems.raise_if_any()
    return profile


@pytest.fixture
def hw() -> Iterator[Hardware]:
    hardware = Hardware(real_profile())
    try:
        yield hardware
    finally:
        hardware.close()


def test_output_reads_back_what_was_written(hw: Hardware) -> None:
    assert hw.isolated == frozenset(), hw.errors
    assert hw.apply(Action("out", "on"), 0.0).ok
    assert hw.states()["out"] is True
    assert hw.apply(Action("out", "off"), 1.0).ok
    assert hw.states()["out"] is False


def test_deadman_on_a_real_pin(hw: Hardware) -> None:
    hw.apply(Action("out", "on"), 0.0)
    hw.tick(1.0)
    assert hw.deadman_offs == 1 and hw.states()["out"] is False


@pytest.mark.skipif(not INPUT_PIN, reason="BACKBEAT_TEST_INPUT_PIN is not set")
def test_input_wired_to_output_follows_it(hw: Hardware) -> None:
    hw.apply(Action("out", "on"), 0.0)
    assert hw.apply(Action("inp", "read"), 0.0).value is True
    hw.apply(Action("out", "off"), 0.1)
    assert hw.apply(Action("inp", "read"), 0.1).value is False


@pytest.mark.skipif(not PWM_PIN, reason="BACKBEAT_TEST_PWM_PIN is not set")
def test_pwm_value_on_a_real_pin(hw: Hardware) -> None:
    assert hw.apply(Action("dim", "set", value=0.25), 0.0).ok
    assert hw.states()["dim"] == pytest.approx(0.25, abs=0.01)
    hw.safe_state("test", now=0.1)
    assert hw.states()["dim"] == 0.0
