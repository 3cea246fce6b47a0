"""Profile parsing: every problem reported with where it is, sane defaults, examples valid."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.errors import ConfigError, ConfigProblems
from edge.profile import RELAY_MAX_SWITCH_HZ, Profile, parse_profile
from edge.score import parse_score

HW = Path(__file__).resolve().parent.parent / "hw"


def parse(text: str) -> tuple[Profile, list[str]]:
    problems = ConfigProblems("test")
    profile = parse_profile(tomllib.loads(text), problems)
    return profile, problems.items


def test_minimal_profile_defaults() -> None:
    profile, problems = parse(
        """
        [gpio]
        pin_factory = "mock"
        [devices.status_led]
        kind = "led"
        pin = 17
        """
    )
    assert problems == []
    spec = profile.devices["status_led"]
    assert profile.pin_factory == "mock"
    assert (spec.kind, spec.pin, spec.active_high, spec.safe_state) == ("led", 17, True, 0.0)
    assert spec.max_switch_hz is None and spec.max_on_s is None
    assert spec.family == "digital" and spec.is_output


def test_relay_gets_a_default_switching_limit_and_active_low() -> None:
    profile, problems = parse(
        """
        [devices.r]
        kind = "relay"
        pin = "GPIO27"
        active_high = false
        max_on_s = 2
        """
    )
    assert problems == []
    spec = profile.devices["r"]
    assert spec.max_switch_hz == RELAY_MAX_SWITCH_HZ
    assert spec.active_high is False and spec.max_on_s == 2.0 and spec.pin == "GPIO27"


def test_no_pin_factory_leaves_the_choice_to_gpiozero() -> None:
    profile, problems = parse("[devices.a]\nkind='led'\npin=4\n")
    assert problems == [] and profile.pin_factory is None


def test_every_problem_is_reported_at_once() -> None:
    _, problems = parse(
        """
        [gpio]
        pin_factory = "warp"
        colour = 3
        [devices.a]
        kind = "laser"
        pin = 4
        [devices.b]
        kind = "led"
        pin = 99
        [devices.c]
        kind = "led"
        [devices.d]
        kind = "relay"
        pin = 5
        safe_state = 0.5
        max_switch_hz = -1
        max_on_s = "long"
        frequency_hz = 100
        [devices.e]
        kind = "led"
        pin = "GPIO5"
        [devices.f]
        kind = "servo"
        pin = 12
        safe_state = 2
        min_pulse_width_s = 0.003
        [devices.g]
        kind = "command"
        pin = 3
        timeout_s = 0
        """
    )
    wheres = [p.split(":")[0] for p in problems]
    for where in [
        "gpio.pin_factory",
        "gpio.colour",
        "devices.a.kind",
        "devices.b.pin",
        "devices.c.pin",
        "devices.d.safe_state",
        "devices.d.max_switch_hz",
        "devices.d.max_on_s",
        "devices.d.frequency_hz",
        "devices.e.pin",
        "devices.f.safe_state",
        "devices.f",
        "devices.g.pin",
        "devices.g.timeout_s",
    ]:
        assert where in wheres, (where, problems)
    assert any("already used by d" in p for p in problems)


def test_problems_raise_one_config_error_listing_all() -> None:
    problems = ConfigProblems("hw/x.toml")
    parse_profile({"devices": {"a": {"kind": "led"}, "b": {"kind": "nope"}}}, problems)
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert len(info.value.problems) == 2 and "hw/x.toml" in str(info.value)


def test_wrong_shapes_do_not_crash() -> None:
    problems = ConfigProblems()
    profile = parse_profile({"gpio": 3, "devices": {"x": 5}}, problems)
    assert profile.devices == {}
    assert [p.split(":")[0] for p in problems.items] == ["gpio", "devices.x"]


def test_options_are_typed_and_checked_per_kind() -> None:
    profile, problems = parse(
        """
        [devices.s]
        kind = "angular_servo"
        pin = 12
        min_angle = 0
        max_angle = 180
        safe_state = 90
        [devices.b]
        kind = "button"
        pin = 5
        pull_up = "yes"
        """
    )
    assert problems == ["devices.b.pull_up: must be true or false, got 'yes'"]
    spec = profile.devices["s"]
    assert spec.value_range == (0.0, 180.0) and spec.safe_state == 90.0


@pytest.mark.parametrize("name", ["bench", "relay-board", "traffic-light", "python-sensor"])
def test_shipped_profiles_are_valid(name: str) -> None:
    raw = tomllib.loads((HW / f"{name}.toml").read_text())
    problems = ConfigProblems(name)
    profile = parse_profile(raw, problems)
    score = parse_score(raw.get("score"), profile, problems)
    assert problems.items == []
    assert profile.devices and score.rules


def test_bench_profile_exercises_every_required_kind_and_fits_60_bpm() -> None:
    raw = tomllib.loads((HW / "bench.toml").read_text())
    problems = ConfigProblems()
    profile = parse_profile(raw, problems)
    score = parse_score(raw.get("score"), profile, problems)
    kinds = {spec.kind for spec in profile.devices.values()}
    assert {"led", "relay", "servo", "button"} <= kinds
    assert kinds & {"pwm", "pwmled"}
    assert {r.action.do for r in score.rules} >= {"pulse", "fade", "move", "read"}
    assert profile.pin_factory == "mock"
    assert score.fit(60.0) == []


def test_readme_documents_every_key() -> None:
    from edge.profile import _COMMON_KEYS, _OPTIONS, KINDS
    from edge.score import _RULE_KEYS

    readme = (HW / "README.md").read_text()
    keys = set(_COMMON_KEYS) | set(_RULE_KEYS) | {"pin_factory"}
    for options in _OPTIONS.values():
        keys |= set(options)
    missing = [k for k in sorted(keys) if f"`{k}`" not in readme]
    assert missing == []
    assert [k for k in KINDS if f"`{k}`" not in readme] == []


def test_keep_running_when_lost_is_a_flag_per_device() -> None:
    profile, problems = parse(
        """
        [devices.pump]
        kind = "relay"
        pin = 17
        keep_running_when_lost = true
        [devices.led]
        kind = "led"
        pin = 18
        [devices.fan]
        kind = "relay"
        pin = 19
        keep_running_when_lost = "yes"
        """
    )
    assert profile.devices["pump"].keep_running_when_lost
    assert not profile.devices["led"].keep_running_when_lost
    assert profile.keep_running_when_lost == {"pump"}
    assert problems == ["devices.fan.keep_running_when_lost: must be true or false, got 'yes'"]
