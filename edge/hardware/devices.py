"""The device kinds: gpiozero devices built from profile specs, their pin writes and
reads, and the isolation of one that fails (see the package doc).

:class:`Devices` is the base of :class:`~edge.hardware.driver.Hardware` that holds the
per-device state; the other parts (switching, commands) build on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from gpiozero import (
    LED,
    PWMLED,
    AngularServo,
    Button,
    Buzzer,
    DigitalInputDevice,
    DigitalOutputDevice,
    PWMOutputDevice,
    Servo,
    TonalBuzzer,
)
from gpiozero.pins.mock import MockFactory, MockPWMPin
from gpiozero.tones import Tone

from edge.errors import HardwareError
from edge.hardware.results import ActionResult, InputEvent, _describe
from edge.profile import DeviceSpec, Profile

if TYPE_CHECKING:
    from edge.hardware.commands import _Run
    from edge.hardware.switching import _Fade

log = logging.getLogger(__name__)

#: Input edges kept between two calls of ``input_events``; older ones are dropped, counted.
MAX_INPUT_EVENTS = 1024


@dataclass(slots=True)
class _Device:
    """Mutable per-device state; only this module sees it."""

    spec: DeviceSpec
    dev: Any = None  # the gpiozero device (None for commands and failed builds)
    isolated: bool = False
    value: float = 0.0  # last commanded logical value
    last_switch: float = -math.inf
    min_interval: float = 0.0
    deadman_at: float | None = None
    off_at: float | None = None  # end of a pulse / beep
    off_do: str = "pulse_off"
    safe_at: float | None = None  # a return to safe deferred by the rate limit
    fade: _Fade | None = None
    running: list[_Run] | None = None

    def cancel_followups(self) -> None:
        self.off_at = None
        self.safe_at = None
        self.fade = None

    def earliest(self) -> float | None:
        times = [t for t in (self.deadman_at, self.off_at, self.safe_at) if t is not None]
        if self.fade is not None:
            times.append(self.fade.next_at)
        for run in self.running or ():
            times.append(run.poll_at if run.killed else min(run.poll_at, run.deadline))
        return min(times) if times else None


def load_pin_factory(name: str) -> Any:
    """Build gpiozero's pin factory called ``name`` (``mock``, ``lgpio``...).

    Raises :class:`HardwareError` when it cannot be loaded (lgpio missing off a Pi).
    """
    if name == "mock":
        return MockFactory()
    try:
        for point in entry_points(group="gpiozero_pin_factories"):
            if point.name == name:
                return point.load()()
    except Exception as exc:
        raise HardwareError(
            f"pin factory {name!r} could not be loaded ({_describe(exc)}); on a bench use "
            'pin_factory = "mock" or GPIOZERO_PIN_FACTORY=mock'
        ) from exc
    raise HardwareError(f"gpiozero has no pin factory called {name!r}")


class Devices:
    """Every device of a profile and its state: built, written, read, isolated.

    :class:`~edge.hardware.driver.Hardware` sets these attributes up; only this package
    sees them.
    """

    profile: Profile
    factory: Any
    errors: dict[str, str]
    _clock: Callable[[], float]
    _dropped: dict[str, int]
    _failures: dict[str, int]
    _events: deque[InputEvent]
    _devices: dict[str, _Device]

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    # ----------------------------------------------------------------------- building

    def _build(self, spec: DeviceSpec) -> _Device:
        state = _Device(spec=spec, value=spec.safe_state)
        if spec.max_switch_hz:
            state.min_interval = 1.0 / spec.max_switch_hz
        if spec.family == "command":
            state.running = []
            return state
        if spec.family == "python":  # its worker process is PyCalls'
            return state
        try:
            state.dev = self._make(spec)
        except Exception as exc:
            self._fail(state, exc, "build")
        return state

    def _make(self, spec: DeviceSpec) -> Any:
        factory = self.factory
        if spec.family in ("pwm", "servo", "tone") and isinstance(factory, MockFactory):
            # The mock factory's default pin class has no PWM: build this device with the
            # PWM-capable one (pin_class is a documented, settable attribute).
            saved = factory.pin_class
            factory.pin_class = MockPWMPin
            try:
                return self._make_device(spec)
            finally:
                factory.pin_class = saved
        return self._make_device(spec)

    def _make_device(self, spec: DeviceSpec) -> Any:
        factory = self.factory
        family = spec.family
        kw: dict[str, Any] = {"pin_factory": factory}
        safe = spec.safe_state
        if spec.kind == "led":
            return LED(spec.pin, active_high=spec.active_high, initial_value=bool(safe), **kw)
        if spec.kind == "buzzer":
            return Buzzer(spec.pin, active_high=spec.active_high, initial_value=bool(safe), **kw)
        if family == "digital":
            return DigitalOutputDevice(
                spec.pin, active_high=spec.active_high, initial_value=bool(safe), **kw
            )
        if family == "pwm":
            cls = PWMLED if spec.kind == "pwmled" else PWMOutputDevice
            return cls(
                spec.pin,
                active_high=spec.active_high,
                initial_value=safe,
                frequency=int(spec.number("frequency_hz", 100.0)),
                **kw,
            )
        if family == "servo":
            widths = {
                "min_pulse_width": spec.number("min_pulse_width_s", 0.001),
                "max_pulse_width": spec.number("max_pulse_width_s", 0.002),
                "frame_width": spec.number("frame_width_s", 0.02),
            }
            if spec.kind == "angular_servo":
                return AngularServo(
                    spec.pin,
                    initial_angle=safe,
                    min_angle=spec.number("min_angle", -90.0),
                    max_angle=spec.number("max_angle", 90.0),
                    **widths,
                    **kw,
                )
            return Servo(spec.pin, initial_value=safe, **widths, **kw)
        if family == "tone":
            buzzer = TonalBuzzer(
                spec.pin,
                mid_tone=Tone(spec.text("mid_tone", "A4")),
                octaves=int(spec.number("octaves", 1)),
                **kw,
            )
            if safe > 0:
                buzzer.play(Tone.from_frequency(safe))
            return buzzer
        # Inputs: edges are queued from gpiozero's callback (its thread on a real Pi, ours
        # on mock pins); a deque append is atomic, so no lock is needed.
        if spec.kind == "button":
            dev = Button(
                spec.pin,
                pull_up=spec.flag("pull_up", True),
                bounce_time=spec.options.get("bounce_s"),
                **kw,
            )
        else:
            dev = DigitalInputDevice(
                spec.pin,
                pull_up=spec.flag("pull_up", False),
                bounce_time=spec.options.get("bounce_s"),
                **kw,
            )
        name = spec.name
        dev.when_activated = lambda: self._edge(name, True)
        dev.when_deactivated = lambda: self._edge(name, False)
        return dev

    def _edge(self, name: str, active: bool) -> None:
        if len(self._events) >= MAX_INPUT_EVENTS:
            return
        self._events.append(InputEvent(name, active, self._clock()))

    def _fail(self, d: _Device, exc: BaseException, doing: str) -> str:
        """Isolate ``d`` after ``exc``; try once to leave it in its safe state."""
        name = d.spec.name
        message = f"{name}: {doing} failed ({_describe(exc)}); device isolated"
        self._failures[name] = self._failures.get(name, 0) + 1
        self.errors[name] = message
        if not d.isolated:
            log.error("%s", message)
        d.isolated = True
        d.cancel_followups()
        d.deadman_at = None
        if d.dev is not None and d.spec.is_output:
            with contextlib.suppress(Exception):
                self._write(d, d.spec.safe_state)
        return message

    # ----------------------------------------------------------------------- pin I/O

    def _write(self, d: _Device, value: float) -> None:
        """Put ``value`` on the device (no checks, may raise what gpiozero raises)."""
        family = d.spec.family
        dev = d.dev
        if family == "digital":
            if value:
                dev.on()
            else:
                dev.off()
        elif family == "pwm":
            dev.value = value
        elif family == "servo":
            if d.spec.kind == "angular_servo":
                dev.angle = value
            else:
                dev.value = value
        elif family == "tone":
            if value > 0:
                dev.play(Tone.from_frequency(value))
            else:
                dev.stop()
        d.value = value

    def _read(self, d: _Device) -> float | bool | None:
        dev = d.dev
        family = d.spec.family
        if family in ("digital", "input"):
            return bool(dev.value)
        if family == "servo":
            raw = dev.angle if d.spec.kind == "angular_servo" else dev.value
            return None if raw is None else float(raw)
        if family == "tone":
            tone = dev.tone
            return 0.0 if tone is None else float(tone.frequency)
        if family == "command":
            return float(len(d.running or ()))
        return float(dev.value)

    def _guarded_write(self, d: _Device, value: float, now: float, do: str) -> ActionResult | None:
        """Write ``value``; on failure isolate and return the failed result."""
        try:
            self._write(d, value)
        except (ValueError, TypeError) as exc:
            return ActionResult(d.spec.name, do, False, "bad_value", _describe(exc), None, now)
        except Exception as exc:
            return ActionResult(d.spec.name, do, False, None, self._fail(d, exc, do), None, now)
        return None
