"""The hardware profile: which devices exist, on which pins, and how they must be kept safe.

A profile is the ``[gpio]`` table and the ``[devices.*]`` tables of a TOML file (see
``hw/README.md`` for every key). :func:`parse_profile` checks it in one pass, adds every
problem it finds to a :class:`~edge.errors.ConfigProblems` (naming the key, e.g.
``devices.relay1.pin``) and returns a frozen :class:`Profile` with documented defaults, so
that a bad file is reported whole instead of one mistake per run.

This module is pure: it knows the device kinds and which actions each kind accepts
(:data:`KINDS`), but it imports no gpiozero; :mod:`edge.hardware` turns a profile into
devices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Literal, TypeAlias

from edge.errors import ConfigProblems
from edge.settings import Field, integer, number

Family: TypeAlias = Literal["digital", "pwm", "servo", "tone", "input", "command", "python"]


@dataclass(frozen=True, slots=True)
class KindInfo:
    """What one device kind is: its family and its actions (hw/README.md names the gpiozero
    class behind each kind; edge.hardware builds it)."""

    family: Family
    actions: frozenset[str]

    @property
    def is_output(self) -> bool:
        return self.family in ("digital", "pwm", "servo", "tone")


_DIGITAL_ACTIONS = frozenset({"on", "off", "toggle", "pulse", "set", "read"})
_PWM_ACTIONS = frozenset({"on", "off", "toggle", "pulse", "set", "fade", "read"})

#: Every device kind a profile may name. Aliases share a family with their gpiozero class.
KINDS: Mapping[str, KindInfo] = MappingProxyType(
    {
        "output": KindInfo("digital", _DIGITAL_ACTIONS),
        "relay": KindInfo("digital", _DIGITAL_ACTIONS),
        "led": KindInfo("digital", _DIGITAL_ACTIONS),
        "buzzer": KindInfo("digital", _DIGITAL_ACTIONS | {"beep"}),
        "pwm": KindInfo("pwm", _PWM_ACTIONS),
        "pwmled": KindInfo("pwm", _PWM_ACTIONS),
        "servo": KindInfo("servo", frozenset({"move", "set", "off", "read"})),
        "angular_servo": KindInfo("servo", frozenset({"move", "set", "off", "read"})),
        "tone": KindInfo("tone", frozenset({"on", "off", "beep", "read"})),
        "button": KindInfo("input", frozenset({"read"})),
        "input": KindInfo("input", frozenset({"read"})),
        "command": KindInfo("command", frozenset({"command"})),
        "python": KindInfo("python", frozenset({"call"})),
    }
)

#: Pin factories a profile may name (gpiozero's own names).
PIN_FACTORIES = frozenset({"mock", "lgpio", "rpigpio", "pigpio", "native"})

#: Default maximum switching rate of a relay: contacts must not chatter at any tempo.
RELAY_MAX_SWITCH_HZ = 5.0
DEFAULT_PULSE_S = 0.1
DEFAULT_FADE_STEP_S = 0.02
DEFAULT_COMMAND_TIMEOUT_S = 1.0
#: A python device's ``call``: ``package.module:function`` (dotted names, one colon).
CALL_TARGET = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_PY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Keys, nesting and size of a python device's ``params`` (they travel to its worker with
#: every call, so they stay small).
MAX_PARAMS = 32
MAX_PARAM_TEXT = 1024

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PIN_NAME = re.compile(r"[A-Za-z0-9_:]{1,32}")
_COMMON_KEYS = frozenset(
    {
        "kind",
        "pin",
        "active_high",
        "safe_state",
        "max_switch_hz",
        "max_on_s",
        "keep_running_when_lost",
        "description",
    }
)
# Option keys each family accepts beyond the common ones, with their checks:
# (type, low, high); type "number" is a finite float, "int", "bool", "text".
_OptionRule: TypeAlias = tuple[str, float | None, float | None]
_OPTIONS: Mapping[Family, Mapping[str, _OptionRule]] = {
    "digital": {"pulse_s": ("number", 0.0, 86_400.0)},
    "pwm": {
        "pulse_s": ("number", 0.0, 86_400.0),
        "frequency_hz": ("number", 1.0, 100_000.0),
        "fade_step_s": ("number", 0.001, 10.0),
    },
    "servo": {
        "min_pulse_width_s": ("number", 0.0001, 0.01),
        "max_pulse_width_s": ("number", 0.0001, 0.01),
        "frame_width_s": ("number", 0.002, 0.1),
        "min_angle": ("number", -360.0, 360.0),
        "max_angle": ("number", -360.0, 360.0),
        "fade_step_s": ("number", 0.001, 10.0),
    },
    "tone": {
        "pulse_s": ("number", 0.0, 86_400.0),
        "tone_hz": ("number", 1.0, 20_000.0),
        "mid_tone": ("text", None, None),
        "octaves": ("int", 1.0, 9.0),
    },
    "input": {"pull_up": ("bool", None, None), "bounce_s": ("number", 0.0, 10.0)},
    "command": {"timeout_s": ("number", 0.001, 3600.0), "max_running": ("int", 1.0, 64.0)},
    "python": {
        "call": ("call", None, None),
        "path": ("text", None, None),
        "params": ("params", None, None),
        "safe_call": ("pyname", None, None),
        "deadline_beats": ("number", 0.01, 1000.0),
    },
}


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One named device of a profile, checked.

    ``safe_state`` is the device's *value* in its safe state (0 or 1 for digital outputs,
    the duty cycle for PWM, the position for a servo, 0 = silent for a tone), so an
    active-low relay with ``safe_state = 0`` rests with its pin high. ``max_switch_hz``
    limits how often the output may change (``None`` = no limit); ``max_on_s`` is the
    dead-man time after which an output away from its safe state is put back unless an
    action renews it. ``keep_running_when_lost``: when the beat is lost the device is not
    put in its safe state but keeps firing on the free-running model (the default is the
    safe state: ``agent.safe_after_lost_s``). ``options`` holds the kind-specific keys (see
    ``hw/README.md``).
    """

    name: str
    kind: str
    pin: int | str | None
    active_high: bool = True
    safe_state: float = 0.0
    max_switch_hz: float | None = None
    max_on_s: float | None = None
    keep_running_when_lost: bool = False
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    @property
    def info(self) -> KindInfo:
        return KINDS[self.kind]

    @property
    def family(self) -> Family:
        return KINDS[self.kind].family

    @property
    def is_output(self) -> bool:
        return KINDS[self.kind].is_output

    def number(self, key: str, default: float) -> float:
        """The numeric option ``key`` (already checked by the parser), else ``default``."""
        value = self.options.get(key)
        return float(value) if isinstance(value, int | float) else default

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        return value if isinstance(value, bool) else default

    def text(self, key: str, default: str) -> str:
        value = self.options.get(key)
        return value if isinstance(value, str) else default

    @property
    def params(self) -> Mapping[str, object]:
        """A python device's ``params`` (empty for other kinds)."""
        value = self.options.get("params")
        return value if isinstance(value, Mapping) else {}

    @property
    def pulse_s(self) -> float:
        """Default length of a pulse or beep on this device."""
        return self.number("pulse_s", DEFAULT_PULSE_S)

    @property
    def value_range(self) -> tuple[float, float]:
        """The values this device's outputs accept (for ``set``, ``fade``, ``move``)."""
        if self.kind == "angular_servo":
            low = self.number("min_angle", -90.0)
            high = self.number("max_angle", 90.0)
            return (min(low, high), max(low, high))
        if self.family == "servo":
            return (-1.0, 1.0)
        if self.family == "tone":
            return (0.0, 20_000.0)
        return (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Profile:
    """The checked hardware profile: a pin factory name (or ``None`` to let gpiozero pick,
    honouring ``GPIOZERO_PIN_FACTORY``) and the devices by name, in file order."""

    pin_factory: str | None = None
    devices: Mapping[str, DeviceSpec] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def keep_running_when_lost(self) -> frozenset[str]:
        """The devices that keep firing on the free-running model when the beat is lost."""
        return frozenset(name for name, d in self.devices.items() if d.keep_running_when_lost)


# --------------------------------------------------------------------------- field readers


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_number(
    table: Mapping[str, object],
    key: str,
    where: str,
    problems: ConfigProblems,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    """Read an optional finite number ``table[key]`` in ``[low, high]``; report and return
    ``None`` when it is absent or wrong. Worded by :mod:`edge.settings`, like every key."""
    if key not in table:
        return None
    return _read_field(number(key, low, high), table, where, problems)


def read_integer(
    table: Mapping[str, object],
    key: str,
    where: str,
    problems: ConfigProblems,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """Read an optional integer ``table[key]`` in ``[low, high]`` (not ``2.0``, not
    ``true``); report and return ``None`` when it is absent or wrong."""
    if key not in table:
        return None
    found = _read_field(integer(key, low, high), table, where, problems)
    return None if found is None else int(found)


def _read_field(
    spec: Field, table: Mapping[str, object], where: str, problems: ConfigProblems
) -> float | None:
    value = table[spec.name]
    ok, stored = spec.accept(value)
    if not ok:
        problems.add(f"{where}.{spec.name}", f"must be {spec.expects}, got {_show(value)}")
        return None
    assert isinstance(stored, int | float)  # a number field stores a number
    return stored


def read_bool(
    table: Mapping[str, object], key: str, where: str, problems: ConfigProblems, default: bool
) -> bool:
    """Read an optional boolean; report a non-boolean and return ``default``."""
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, bool):
        problems.add(f"{where}.{key}", f"must be true or false, got {_show(value)}")
        return default
    return value


def _pin(value: object, where: str, problems: ConfigProblems) -> int | str | None:
    if isinstance(value, bool):
        problems.add(where, f"must be a GPIO number or a pin name like 'GPIO17', got {value!r}")
        return None
    if isinstance(value, int):
        if not 0 <= value <= 63:
            problems.add(where, f"must be a GPIO number between 0 and 63, got {value}")
            return None
        return value
    if isinstance(value, str) and _PIN_NAME.fullmatch(value):
        return value
    problems.add(where, f"must be a GPIO number or a pin name like 'GPIO17', got {_show(value)}")
    return None


def _pin_key(pin: int | str) -> str:
    """A canonical spelling so that ``17``, ``"GPIO17"`` and ``"BCM17"`` are one pin."""
    text = str(pin).upper()
    for prefix in ("GPIO", "BCM"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return str(int(text[len(prefix) :]))
    return text


#: Option kinds that are a string matching a pattern -> (the pattern, the problem's words).
_PATTERN_KINDS: dict[str, tuple[re.Pattern[str], str]] = {
    "call": (CALL_TARGET, "must be 'package.module:function'"),
    "pyname": (_PY_NAME, "must name a function of the call's module"),
}


def _options(
    table: Mapping[str, object], family: Family, where: str, problems: ConfigProblems
) -> dict[str, object]:
    rules = _OPTIONS[family]
    found: dict[str, object] = {}
    for key, value in table.items():
        if key in _COMMON_KEYS:
            continue
        rule = rules.get(key)
        if rule is None:
            known = ", ".join(sorted(_COMMON_KEYS | set(rules)))
            problems.add(f"{where}.{key}", f"is not a key of a {family} device (known: {known})")
            continue
        kind, low, high = rule
        if kind == "number":
            number = read_number(table, key, where, problems, low, high)
            if number is not None:
                found[key] = number
        elif kind == "int":
            whole = read_integer(
                table,
                key,
                where,
                problems,
                None if low is None else int(low),
                None if high is None else int(high),
            )
            if whole is not None:
                found[key] = whole
        elif kind == "bool":
            if isinstance(value, bool):
                found[key] = value
            else:
                problems.add(f"{where}.{key}", f"must be true or false, got {_show(value)}")
        elif kind in _PATTERN_KINDS:
            pattern, wording = _PATTERN_KINDS[kind]
            if isinstance(value, str) and pattern.fullmatch(value):
                found[key] = value
            else:
                problems.add(f"{where}.{key}", f"{wording}, got {_show(value)}")
        elif kind == "params":
            params = read_params(value, f"{where}.{key}", problems)
            if params is not None:
                found[key] = params
        elif isinstance(value, str) and value:
            found[key] = value
        else:
            problems.add(f"{where}.{key}", f"must be a non-empty string, got {_show(value)}")
    return found


def _param_ok(value: object, depth: int) -> bool:
    if isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_PARAM_TEXT
    if isinstance(value, list) and depth < 2:
        return len(value) <= MAX_PARAMS and all(_param_ok(v, depth + 1) for v in value)
    if isinstance(value, Mapping) and depth < 2:
        return len(value) <= MAX_PARAMS and all(
            isinstance(k, str) and _param_ok(v, depth + 1) for k, v in value.items()
        )
    return False


def read_params(value: object, where: str, problems: ConfigProblems) -> dict[str, object] | None:
    """A python device's or rule's ``params``: a table of at most :data:`MAX_PARAMS`
    numbers, strings, booleans, or lists and tables of them (two levels deep); they are
    passed to the function unchanged. Reports and returns ``None`` otherwise."""
    if not isinstance(value, Mapping):
        problems.add(where, f"must be a table, got {_show(value)}")
        return None
    if len(value) > MAX_PARAMS or not all(
        isinstance(k, str) and _param_ok(v, 1) for k, v in value.items()
    ):
        problems.add(
            where,
            f"must hold at most {MAX_PARAMS} numbers, strings ({MAX_PARAM_TEXT} characters at "
            "most), booleans, or short lists and tables of them",
        )
        return None
    return dict(value)


def _device(
    name: str, table: Mapping[str, object], problems: ConfigProblems, base: str | None = None
) -> DeviceSpec | None:
    where = f"devices.{name}"
    if not _NAME.fullmatch(name):
        problems.add(where, "a device name must be 1-64 letters, digits, '_' or '-'")
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(KINDS)
        problems.add(f"{where}.kind", f"must be one of {known}; got {_show(kind)}")
        return None
    info = KINDS[kind]
    pin: int | str | None = None
    if info.family in ("command", "python"):
        if "pin" in table:
            problems.add(f"{where}.pin", f"a {kind} device has no pin")
    elif "pin" not in table:
        problems.add(f"{where}.pin", f"is required for a {kind}")
    else:
        pin = _pin(table["pin"], f"{where}.pin", problems)

    active_high = read_bool(table, "active_high", where, problems, True)
    keep_running = read_bool(table, "keep_running_when_lost", where, problems, False)
    options = _options(table, info.family, where, problems)
    spec = DeviceSpec(name=name, kind=kind, pin=pin, options=MappingProxyType(options))
    low, high = spec.value_range
    safe = read_number(table, "safe_state", where, problems, low, high)
    if safe is not None and info.family == "digital" and safe not in (0.0, 1.0):
        problems.add(f"{where}.safe_state", f"must be 0 or 1 for a {kind}, got {safe:g}")
        safe = None
    if safe is None:
        # Rest at 0 (off, silent, a servo's centre), or the nearest end of the range.
        safe = min(max(0.0, low), high)
    max_hz = read_number(table, "max_switch_hz", where, problems, 0.001, 1000.0)
    if max_hz is None and kind == "relay" and "max_switch_hz" not in table:
        max_hz = RELAY_MAX_SWITCH_HZ
    max_on = read_number(table, "max_on_s", where, problems, 0.001, 86_400.0)
    if info.family in ("input", "command", "python"):
        for key in ("safe_state", "max_switch_hz", "max_on_s", "active_high"):
            if key in table and not (key == "max_switch_hz" and info.family == "command"):
                problems.add(f"{where}.{key}", f"does not apply to a {kind}")
    if info.family == "python":
        if "call" not in table:
            problems.add(f"{where}.call", "is required for a python device")
        raw_path = options.get("path")
        if isinstance(raw_path, str) and base is not None:
            # Relative to the file that holds the profile, whatever the working directory.
            options["path"] = str(PurePosixPath(base) / raw_path)
    if info.family == "servo":
        lo_w = spec.number("min_pulse_width_s", 0.001)
        hi_w = spec.number("max_pulse_width_s", 0.002)
        frame = spec.number("frame_width_s", 0.02)
        if not lo_w < hi_w < frame:
            problems.add(
                where,
                f"servo pulse widths must satisfy min_pulse_width_s < max_pulse_width_s "
                f"< frame_width_s, got {lo_w:g} / {hi_w:g} / {frame:g}",
            )
        if spec.number("min_angle", -90.0) == spec.number("max_angle", 90.0):
            problems.add(where, "min_angle and max_angle must differ")
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.add(f"{where}.description", f"must be a string, got {_show(description)}")
        description = ""
    return DeviceSpec(
        name=name,
        kind=kind,
        pin=pin,
        active_high=active_high,
        safe_state=safe,
        max_switch_hz=max_hz,
        max_on_s=max_on,
        keep_running_when_lost=keep_running,
        options=MappingProxyType(options),
        description=description,
    )


def parse_profile(
    raw: Mapping[str, object], problems: ConfigProblems, base: str | None = None
) -> Profile:
    """Check the ``[gpio]`` and ``[devices.*]`` tables of a raw TOML mapping.

    Every problem is added to ``problems`` with where it is; the result holds every device
    that could be read (a device with a wrong ``kind`` is left out), so later checks (the
    score) can still run. Other top-level tables are ignored: they belong to other parsers.
    Never raises on bad input. ``base`` is the directory of the file that holds the
    profile: a python device's relative ``path`` is made absolute from it.
    """
    pin_factory: str | None = None
    gpio = raw.get("gpio", {})
    if not isinstance(gpio, Mapping):
        problems.add("gpio", f"must be a table, got {_show(gpio)}")
        gpio = {}
    for key, value in gpio.items():
        if key != "pin_factory":
            problems.add(f"gpio.{key}", "is not a key of [gpio] (known: pin_factory)")
        elif not isinstance(value, str) or value.lower() not in PIN_FACTORIES:
            known = ", ".join(sorted(PIN_FACTORIES))
            problems.add("gpio.pin_factory", f"must be one of {known}; got {_show(value)}")
        else:
            pin_factory = value.lower()

    devices: dict[str, DeviceSpec] = {}
    table = raw.get("devices", {})
    if not isinstance(table, Mapping):
        problems.add("devices", f"must be a table of devices, got {_show(table)}")
        table = {}
    pins: dict[str, str] = {}
    for name, body in table.items():
        if not isinstance(body, Mapping):
            problems.add(f"devices.{name}", f"must be a table, got {_show(body)}")
            continue
        spec = _device(str(name), body, problems, base)
        if spec is None:
            continue
        if spec.pin is not None:
            key = _pin_key(spec.pin)
            if key in pins:
                problems.add(
                    f"devices.{name}.pin", f"pin {spec.pin!r} is already used by {pins[key]}"
                )
            else:
                pins[key] = spec.name
        devices[spec.name] = spec
    return Profile(pin_factory=pin_factory, devices=MappingProxyType(devices))
