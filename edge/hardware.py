"""The hardware adapter: gpiozero devices behind one interface that never blocks.

Theory of operation
-------------------
:class:`Hardware` builds one gpiozero device per :class:`~edge.profile.DeviceSpec` (the only
module that imports gpiozero) and applies :class:`~edge.score.Action` values to them. It
never sleeps: anything that must happen later (the end of a pulse or a beep, the steps of a
fade, a dead-man switch-off, the deadline of an external command) is a due-time the runner
learns from :meth:`Hardware.next_deadline` and carries out by calling :meth:`Hardware.tick`
with the time. gpiozero's own ``blink``/``pulse`` threads are never used. Times are plain
seconds on the runner's monotonic clock, passed in.

Pins need no thread: a write is microseconds. Starting an external command needs one:
``subprocess.Popen`` returns only once the child has exec'd (0.3 ms on a quiet machine,
7-31 ms under CPU load), and the beat loop must never wait for that. So a profile with a
``command`` device gets one launcher thread, made with the :class:`Hardware` (not at the
first command: ``Thread.start`` waits until the new thread runs, 1-4 ms under load, which
the loop must not pay either) and stopped by :meth:`Hardware.close`; it only calls
``Popen`` and hands the process back. A profile of pins only has no thread. ``apply`` of a
command returns at once (``ok``, with a ``run`` id); the start failure, the end or the
kill of that run come later from :meth:`tick`, carrying the same ``run`` and the run's
duration counted from the ``apply`` (its deadline counts from there too, so a command
that has not even started by its deadline is reported killed, and killed once it exists).
A run is polled 2 ms after it is applied, then at doubling intervals up to 20 ms, and at
its deadline: a short command's duration is measured to a few ms, a long one's to 20 ms,
always rounded up (the guard would rather over- than under-estimate).

Safety rules, which no tempo can override:

* **Safe state.** Every output is built at its configured ``safe_state`` and
  :meth:`Hardware.safe_state` puts every output there at once (and kills running commands).
* **Switching rate.** An output with ``max_switch_hz`` changes at most once per
  ``1 / max_switch_hz`` seconds. A change *away* from the safe state that comes too soon is
  dropped and counted (``dropped["rate_limit"]``); a change *back to* the safe state that
  comes too soon is deferred to the earliest allowed moment, never dropped, so a pulse on a
  relay is never left on. Repeating the current value is not a switch.
* **Dead-man.** An output with ``max_on_s`` that leaves its safe state is put back after
  ``max_on_s`` unless an action renews it (any action that keeps it away, e.g. another
  ``on`` or ``pulse``). Dead-man and safe-state writes ignore the rate limit.
* **Isolation.** An exception from gpiozero while building, writing or reading a device
  marks that device isolated (counted in ``failures``, reported with the error); later
  actions on it are dropped as ``"isolated"``. The other devices carry on.
  :meth:`Hardware.revive` (run on every reload) builds isolated devices anew.

A value outside a device's range (a wrong tone, say) is the caller's error, not a failing
pin: it is reported in the result and does not isolate the device.

On a bench gpiozero's ``MockFactory`` stands in for the pins; because its default
``MockPin`` has no PWM, PWM, servo and tone devices get ``MockPWMPin`` pins automatically.
On a Raspberry Pi 5 gpiozero uses lgpio (``pin_factory = "lgpio"`` or gpiozero's default).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any

from gpiozero import (
    LED,
    PWMLED,
    AngularServo,
    Button,
    Buzzer,
    Device,
    DigitalInputDevice,
    DigitalOutputDevice,
    PWMOutputDevice,
    Servo,
    TonalBuzzer,
)
from gpiozero.pins.mock import MockFactory, MockPWMPin
from gpiozero.tones import Tone

from edge.errors import HardwareError
from edge.profile import DEFAULT_COMMAND_TIMEOUT_S, DEFAULT_FADE_STEP_S, DeviceSpec, Profile
from edge.score import Action

log = logging.getLogger(__name__)

#: How soon after its apply a command is first polled (for a start or an end); each later
#: poll waits twice as long as the one before, up to COMMAND_POLL_S.
COMMAND_POLL_MIN_S = 0.002
#: The longest wait between two polls of a running command.
COMMAND_POLL_S = 0.02
#: How long close() waits for the launcher to finish a start it is in (an exec, bounded).
LAUNCHER_STOP_S = 5.0
#: Bytes of a command's stderr kept for its result.
COMMAND_STDERR_BYTES = 2048
#: Input edges kept between two calls of ``input_events``; older ones are dropped, counted.
MAX_INPUT_EVENTS = 1024
#: A tone device's default tone when an action gives none.
DEFAULT_TONE_HZ = 440.0


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What happened to one action or follow-up.

    ``ok`` is true when the device is now as asked (or will be at ``deferred_to``).
    ``dropped`` names why the action was not applied: ``"rate_limit"``, ``"isolated"``,
    ``"busy"`` (a command device already running its maximum), ``"unknown_device"``,
    ``"bad_action"``. ``error`` carries an exception's text; ``value`` the value read back
    (inputs, ``read``) or written.

    Commands: ``apply`` of a ``command`` is ``ok`` once handed to the launcher and carries
    the ``run`` id; :meth:`Hardware.tick` later reports the same ``run`` exactly once as
    ``command_done`` (``value`` = exit code, ``ok`` when 0), ``command_killed`` (it overran
    its deadline) or ``command_not_started`` (``error`` names the program), with
    ``duration_s`` counted from the ``apply``. A run killed by :meth:`Hardware.safe_state`
    reports nothing more.

    ``tag`` is the caller's own tag given to ``apply``, echoed unchanged in its result and,
    for a command, in that run's end: the caller needs no map from run ids to its actions.
    """

    device: str
    do: str
    ok: bool
    dropped: str | None = None
    error: str | None = None
    value: float | bool | None = None
    at: float = 0.0
    deferred_to: float | None = None
    run: int | None = None
    duration_s: float | None = None
    tag: object = None


@dataclass(frozen=True, slots=True)
class InputEvent:
    """An input became active (``True``) or inactive at local time ``at``."""

    device: str
    active: bool
    at: float


@dataclass(slots=True)
class _Fade:
    """A ramp from ``v0`` at ``t0`` to ``v1`` at ``t1``, written on a grid of ``step``s
    (grid times are computed from ``t0``, so late ticks do not make the ramp drift)."""

    t0: float
    v0: float
    t1: float
    v1: float
    step: float
    do: str
    k: int = 0  # the last grid step written

    @property
    def next_at(self) -> float:
        return min(self.t0 + (self.k + 1) * self.step, self.t1)

    def advance(self, now: float) -> tuple[float, bool]:
        """Move to the latest grid step at or before ``now``: (its value, whether done)."""
        self.k = max(self.k + 1, math.floor((now - self.t0) / self.step + 1e-9))
        fraction = self.k * self.step / (self.t1 - self.t0)
        if fraction >= 1.0 - 1e-9:
            return self.v1, True
        return self.v0 + (self.v1 - self.v0) * fraction, False


@dataclass(slots=True)
class _Run:
    """One command run, from its apply (``applied``) until it is reaped."""

    run_id: int
    argv: tuple[str, ...]
    applied: float  # the deadline and the reported duration count from here
    deadline: float
    poll_at: float
    poll_every: float = COMMAND_POLL_MIN_S
    proc: subprocess.Popen[bytes] | None = None  # None until the launcher has started it
    killed: bool = False
    tag: object = None  # the caller's, echoed in the run's end

    def schedule_poll(self, now: float) -> None:
        # Doubling intervals: a short command is seen ending within a few ms, a long one
        # costs few wake-ups; the deadline itself is always a due-time (see earliest()).
        self.poll_at = now + self.poll_every
        self.poll_every = min(self.poll_every * 2.0, COMMAND_POLL_S)


Popen = Callable[..., "subprocess.Popen[bytes]"]


class _Launcher:
    """The one thread that starts commands (see the module doc for why there is one).

    ``submit`` queues a start and returns at once; the thread runs ``popen`` and puts
    ``(run_id, process, None)`` or ``(run_id, None, error text)`` on ``started``, which the
    loop drains in :meth:`Hardware.tick`. The thread touches nothing else of the hardware,
    so the loop needs no lock. Pins never use it: a pin write is microseconds and must
    stay in order with the other writes of the beat.
    """

    def __init__(self, popen: Popen) -> None:
        self._popen = popen
        self._requests: queue.SimpleQueue[tuple[int, tuple[str, ...]] | None] = queue.SimpleQueue()
        self.started: queue.SimpleQueue[tuple[int, subprocess.Popen[bytes] | None, str | None]] = (
            queue.SimpleQueue()
        )
        self._submitted = 0  # written by the loop only
        self._made = 0  # written by the thread only, under _settled
        self._settled = threading.Condition()
        self.thread = threading.Thread(
            target=self._serve, name="backbeat-command-launcher", daemon=True
        )
        self.thread.start()

    def submit(self, run_id: int, argv: tuple[str, ...]) -> None:
        self._submitted += 1
        self._requests.put((run_id, argv))

    def wait_made(self, timeout: float) -> bool:
        """Wait until every start submitted so far has been made (or has failed)."""
        submitted = self._submitted
        with self._settled:
            return self._settled.wait_for(lambda: self._made >= submitted, timeout)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            run_id, argv = request
            try:
                # Returns once the child has exec'd (or failed to): the wait the loop avoids.
                proc = self._popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    close_fds=True,
                    start_new_session=True,
                )
                if proc.stderr is not None:
                    os.set_blocking(proc.stderr.fileno(), False)
            except Exception as exc:  # any failure is this run's, never the thread's end
                self.started.put((run_id, None, _describe(exc)))
            else:
                self.started.put((run_id, proc, None))
            with self._settled:
                self._made += 1
                self._settled.notify_all()

    def stop(self, timeout: float) -> bool:
        """Finish the queued starts, end the thread; False if it did not end in time."""
        self._requests.put(None)
        self.thread.join(timeout)
        return not self.thread.is_alive()


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


def _program(argv: tuple[str, ...]) -> str:
    return argv[0] if argv else "(empty argv)"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


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


class Hardware:
    """Every device of a profile, driven by actions and follow-ups; see the module doc.

    ``pin_factory`` (a gpiozero factory) overrides the profile's ``[gpio] pin_factory``;
    with neither, gpiozero chooses (``GPIOZERO_PIN_FACTORY``, else lgpio on a Pi).
    ``clock`` stamps input edges (they arrive on gpiozero's callback); it defaults to
    ``time.monotonic``, the runner's clock. ``popen`` starts commands on the launcher
    thread (``subprocess.Popen``; tests pass a slow or failing one).

    Raises :class:`HardwareError` only when no pin factory can be had at all; a device that
    fails to build is isolated and reported in ``failures`` / ``errors``.
    """

    def __init__(
        self,
        profile: Profile,
        pin_factory: object | None = None,
        clock: Callable[[], float] = time.monotonic,
        popen: Popen = subprocess.Popen,
    ) -> None:
        self.profile = profile
        self._clock = clock
        self._popen = popen
        self._launcher: _Launcher | None = None
        self._launching: dict[int, tuple[_Device, _Run]] = {}  # run id -> run not yet started
        self._next_run = 1
        self._owns_factory = False
        if pin_factory is not None:
            self.factory: Any = pin_factory
        elif profile.pin_factory is not None:
            self.factory = load_pin_factory(profile.pin_factory)
            self._owns_factory = True
        else:
            try:
                Device.ensure_pin_factory()
            except Exception as exc:
                raise HardwareError(
                    f"no gpiozero pin factory could be loaded ({_describe(exc)}); on a bench "
                    "set GPIOZERO_PIN_FACTORY=mock"
                ) from exc
            self.factory = Device.pin_factory
        self._dropped: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.deadman_offs = 0
        self.safe_states = 0
        self.commands_killed = 0
        self._events: deque[InputEvent] = deque()
        self._devices: dict[str, _Device] = {}
        for spec in profile.devices.values():
            self._devices[spec.name] = self._build(spec)
        if any(d.running is not None for d in self._devices.values()):
            self._launcher = _Launcher(popen)

    # ----------------------------------------------------------------------- counters

    @property
    def dropped(self) -> Mapping[str, int]:
        """Actions not applied, by reason."""
        return dict(self._dropped)

    @property
    def failures(self) -> Mapping[str, int]:
        """Pin or build failures, by device."""
        return dict(self._failures)

    @property
    def isolated(self) -> frozenset[str]:
        """Devices taken out of service after a failure."""
        return frozenset(name for name, d in self._devices.items() if d.isolated)

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

    def _change(
        self, d: _Device, target: float, now: float, do: str, *, force: bool = False
    ) -> ActionResult:
        """Move an output to ``target`` under the rate limit and arm/clear the dead-man."""
        spec = d.spec
        safe = spec.safe_state
        if target != d.value:
            if not force and d.min_interval and now - d.last_switch < d.min_interval:
                if target == safe:
                    # Back to safe is never dropped: it happens at the first allowed moment.
                    d.safe_at = d.last_switch + d.min_interval
                    return ActionResult(spec.name, do, True, None, None, target, now, d.safe_at)
                self._drop("rate_limit")
                return ActionResult(spec.name, do, False, "rate_limit", None, d.value, now)
            failed = self._guarded_write(d, target, now, do)
            if failed is not None:
                return failed
            d.last_switch = now
        d.safe_at = None
        if target != safe and spec.max_on_s is not None:
            d.deadman_at = now + spec.max_on_s  # armed or renewed
        elif target == safe:
            d.deadman_at = None
        return ActionResult(spec.name, do, True, None, None, target, now)

    # ----------------------------------------------------------------------- actions

    def apply(self, action: Action, now: float, tag: object = None) -> ActionResult:
        """Apply ``action`` at local time ``now``; never blocks, never raises for a device
        fault. Follow-ups it needs (pulse end, fade steps...) become due-times for
        :meth:`tick`. ``tag`` (anything) comes back in the result's ``tag`` and, for a
        command, in its run's end."""
        result = self._apply(action, now, tag)
        if tag is not None and result.tag is not tag:
            result = replace(result, tag=tag)
        return result

    def _apply(self, action: Action, now: float, tag: object) -> ActionResult:
        d = self._devices.get(action.device)
        do = action.do
        if d is None:
            self._drop("unknown_device")
            return ActionResult(action.device, do, False, "unknown_device", None, None, now)
        if d.isolated:
            self._drop("isolated")
            return ActionResult(
                action.device, do, False, "isolated", self.errors.get(action.device), None, now
            )
        if do not in d.spec.info.actions:
            self._drop("bad_action")
            return ActionResult(
                action.device, do, False, "bad_action", f"a {d.spec.kind} cannot {do}", None, now
            )
        if do == "read":
            try:
                value = self._read(d)
            except Exception as exc:
                return ActionResult(d.spec.name, do, False, None, self._fail(d, exc, do), None, now)
            return ActionResult(d.spec.name, do, True, None, None, value, now)
        if do == "command":
            return self._spawn(d, action, now, tag)
        return self._output(d, action, now)

    def _on_value(self, d: _Device, action: Action) -> float:
        if d.spec.family == "tone":
            return action.value or d.spec.number("tone_hz", DEFAULT_TONE_HZ)
        return 1.0

    def _output(self, d: _Device, action: Action, now: float) -> ActionResult:
        do = action.do
        spec = d.spec
        if do == "on":
            d.cancel_followups()
            return self._change(d, self._on_value(d, action), now, do)
        if do == "off":
            d.cancel_followups()
            return self._change(d, spec.safe_state if spec.family == "servo" else 0.0, now, do)
        if do == "toggle":
            d.cancel_followups()
            if spec.family == "digital":
                return self._change(d, 0.0 if d.value else 1.0, now, do)
            return self._change(d, 1.0 - d.value, now, do)
        if do in ("pulse", "beep"):
            duration = action.duration_s if action.duration_s is not None else spec.pulse_s
            d.fade = None
            result = self._change(d, self._on_value(d, action), now, do)
            if result.ok:
                d.off_at = now + duration
                d.off_do = f"{do}_off"
            return result
        if do in ("set", "move") and not action.duration_s:
            d.cancel_followups()
            target = action.value if action.value is not None else spec.safe_state
            if spec.family == "digital":
                target = 1.0 if target else 0.0
            return self._change(d, target, now, do)
        # fade (pwm) or a timed move (servo): counted as one switch now, steps from tick().
        target = action.value if action.value is not None else spec.safe_state
        duration = action.duration_s or 0.0
        d.cancel_followups()
        start = d.value
        if target == start or duration <= 0:
            return self._change(d, target, now, do)
        if d.min_interval and now - d.last_switch < d.min_interval:
            if target == spec.safe_state:
                d.safe_at = d.last_switch + d.min_interval  # a jump to safe, deferred
                return ActionResult(spec.name, do, True, None, None, target, now, d.safe_at)
            self._drop("rate_limit")
            return ActionResult(spec.name, do, False, "rate_limit", None, d.value, now)
        d.last_switch = now
        step = spec.number("fade_step_s", DEFAULT_FADE_STEP_S)
        d.fade = _Fade(now, start, now + duration, target, step, do)
        if target != spec.safe_state and spec.max_on_s is not None:
            d.deadman_at = now + duration + spec.max_on_s
        return ActionResult(spec.name, do, True, None, None, start, now)

    # ----------------------------------------------------------------------- commands

    def _spawn(self, d: _Device, action: Action, now: float, tag: object) -> ActionResult:
        """Hand the start to the launcher and return at once (see the module doc)."""
        name = d.spec.name
        running = d.running if d.running is not None else []
        if len([r for r in running if not r.killed]) >= int(d.spec.number("max_running", 1)):
            self._drop("busy")
            return ActionResult(name, "command", False, "busy", "still running", None, now)
        if d.min_interval and now - d.last_switch < d.min_interval:
            self._drop("rate_limit")
            return ActionResult(name, "command", False, "rate_limit", None, None, now)
        argv = action.argv or ()
        timeout = action.duration_s or d.spec.number("timeout_s", DEFAULT_COMMAND_TIMEOUT_S)
        if self._launcher is None:  # only after close(): start one again rather than fail
            self._launcher = _Launcher(self._popen)
        run = _Run(self._next_run, argv, now, now + timeout, now, tag=tag)
        self._next_run += 1
        run.schedule_poll(now)
        running.append(run)
        d.running = running
        d.last_switch = now
        self._launching[run.run_id] = (d, run)
        self._launcher.submit(run.run_id, argv)
        return ActionResult(name, "command", True, None, None, None, now, run=run.run_id, tag=tag)

    def _collect_starts(self, launcher: _Launcher | None, now: float) -> list[ActionResult]:
        """Take the launcher's finished starts: attach each process to its run, kill it at
        once if its run was killed meanwhile, report a start that failed."""
        results: list[ActionResult] = []
        if launcher is None:
            return results
        while True:
            try:
                run_id, proc, error = launcher.started.get_nowait()
            except queue.Empty:
                return results
            d, run = self._launching.pop(run_id)
            name = d.spec.name
            if proc is None:
                message = f"{name}: could not start {_program(run.argv)!r}: {error}"
                self._failures[name] = self._failures.get(name, 0) + 1
                self.errors[name] = message
                if d.running is not None and run in d.running:
                    d.running.remove(run)
                if run.killed:
                    log.warning("%s", message)  # its kill was reported already
                else:
                    results.append(
                        ActionResult(
                            name,
                            "command_not_started",
                            False,
                            None,
                            message,
                            None,
                            now,
                            run=run_id,
                            duration_s=now - run.applied,
                            tag=run.tag,
                        )
                    )
                continue
            run.proc = proc
            if run.killed:
                # Its deadline (or a safe state) came before it even started.
                with contextlib.suppress(OSError):
                    proc.kill()

    def _tick_commands(self, d: _Device, now: float) -> list[ActionResult]:
        results: list[ActionResult] = []
        keep: list[_Run] = []
        name = d.spec.name
        for run in d.running or ():
            if now < run.poll_at and (run.killed or now < run.deadline):
                keep.append(run)  # another run's due-time woke us; nothing due for this one
                continue
            code = run.proc.poll() if run.proc is not None else None
            if code is not None:
                err = self._stderr(run)
                if not run.killed:
                    ok = code == 0
                    program = _program(run.argv)
                    text = None if ok else f"{program} exited {code}: {err}".rstrip(": ")
                    if not ok:
                        self._failures[name] = self._failures.get(name, 0) + 1
                    results.append(
                        ActionResult(
                            name,
                            "command_done",
                            ok,
                            None,
                            text,
                            float(code),
                            now,
                            run=run.run_id,
                            duration_s=now - run.applied,
                            tag=run.tag,
                        )
                    )
                continue
            if not run.killed and now >= run.deadline:
                if run.proc is not None:
                    with contextlib.suppress(OSError):
                        run.proc.kill()
                    how = "was killed"
                else:  # the launcher kills it the moment it exists (_collect_starts)
                    how = "had not even started; it is killed once it does"
                run.killed = True
                self.commands_killed += 1
                limit = run.deadline - run.applied
                results.append(
                    ActionResult(
                        name,
                        "command_killed",
                        False,
                        None,
                        f"{_program(run.argv)} overran its {limit:g} s deadline and {how}",
                        None,
                        now,
                        run=run.run_id,
                        duration_s=now - run.applied,
                        tag=run.tag,
                    )
                )
            run.schedule_poll(now)
            keep.append(run)
        d.running = keep
        return results

    @staticmethod
    def _stderr(run: _Run) -> str:
        stream = run.proc.stderr if run.proc is not None else None
        if stream is None:
            return ""
        try:
            data = stream.read(COMMAND_STDERR_BYTES) or b""
        except OSError:
            data = b""
        finally:
            stream.close()
        return data.decode("utf-8", "replace").strip()

    # ----------------------------------------------------------------------- follow-ups

    def tick(self, now: float) -> list[ActionResult]:
        """Carry out every follow-up due by ``now``: fade steps, pulse and beep ends,
        deferred returns to safe, dead-man offs, command starts that failed, command ends
        and kills. Returns a result for each (fade steps report only their last step)."""
        results = self._collect_starts(self._launcher, now)
        for d in self._devices.values():
            if d.running is not None:
                if d.running:
                    results.extend(self._tick_commands(d, now))
                continue
            if d.isolated:
                continue
            if d.deadman_at is not None and now >= d.deadman_at:
                d.cancel_followups()
                result = self._change(d, d.spec.safe_state, now, "deadman_off", force=True)
                if result.ok:
                    self.deadman_offs += 1
                    log.warning("%s: dead-man switched it off (not renewed)", d.spec.name)
                results.append(result)
                continue
            fade = d.fade
            if fade is not None and now >= fade.next_at:
                value, done = fade.advance(now)
                failed = self._guarded_write(d, value, now, fade.do)
                if failed is not None:
                    results.append(failed)
                    continue
                if done:
                    d.fade = None
                    if value == d.spec.safe_state:
                        d.deadman_at = None
                    results.append(
                        ActionResult(d.spec.name, f"{fade.do}_done", True, None, None, value, now)
                    )
            if d.off_at is not None and now >= d.off_at:
                d.off_at = None
                target = d.spec.safe_state if d.spec.family == "servo" else 0.0
                results.append(self._change(d, target, now, d.off_do))
            elif d.safe_at is not None and now >= d.safe_at:
                d.safe_at = None
                results.append(self._change(d, d.spec.safe_state, now, "deferred_off"))
        return results

    def next_deadline(self) -> float | None:
        """The earliest local time at which :meth:`tick` has something to do, or None."""
        best: float | None = None
        for d in self._devices.values():
            t = d.earliest()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def wait_for_starts(self, timeout: float) -> bool:
        """Block until the launcher has made every command start handed to it so far
        (their results still come from :meth:`tick`); False on ``timeout``. For tests and
        benchmarks that step a fake clock: the beat loop never calls it."""
        launcher = self._launcher
        return True if launcher is None else launcher.wait_made(timeout)

    # ----------------------------------------------------------------------- the rest

    def warm(self, devices: Iterable[str]) -> None:
        """Run the pin path of ``devices`` shortly before a deadline, changing nothing: an
        output gets its current value written again (the pin keeps its level), an input
        is read. A cold gpiozero path costs up to ~0.2 ms, a hot one ~1 us."""
        for name in devices:
            d = self._devices.get(name)
            if d is None or d.isolated or d.dev is None:
                continue
            try:
                if d.spec.is_output and d.fade is None:
                    self._write(d, d.value)
                else:
                    self._read(d)
            except Exception as exc:
                self._fail(d, exc, "warm")

    def safe_state(self, reason: str, now: float | None = None, keep: Collection[str] = ()) -> None:
        """Every output to its safe state now (rate limit ignored), every command killed,
        except on the devices named in ``keep`` (left as they are). Counted in
        ``safe_states`` and logged with ``reason``. ``now`` defaults to the clock given at
        construction."""
        if now is None:
            now = self._clock()
        self.safe_states += 1
        kept = sorted(set(keep) & set(self._devices))
        if kept:
            log.warning("outputs to safe state: %s (kept running: %s)", reason, ", ".join(kept))
        else:
            log.warning("all outputs to safe state: %s", reason)
        for d in self._devices.values():
            if d.spec.name in keep:
                continue
            for run in d.running or ():
                if not run.killed:
                    if run.proc is not None:
                        with contextlib.suppress(OSError):
                            run.proc.kill()
                    # (one not started yet is killed when it is: _collect_starts)
                    run.killed = True
                    self.commands_killed += 1
            if not d.spec.is_output or d.dev is None:
                continue
            d.cancel_followups()
            d.deadman_at = None
            if d.isolated:
                with contextlib.suppress(Exception):
                    self._write(d, d.spec.safe_state)
                continue
            self._change(d, d.spec.safe_state, now, "safe_state", force=True)

    def revive(self) -> list[str]:
        """Give every isolated device another chance (say the wiring was fixed and the
        agent reloaded): its gpiozero device is closed and built anew from its spec, at its
        safe state. One that builds is back in service, its error cleared; one that does
        not stays isolated, the new failure counted, logged and reported as at the first.
        Returns the names back in service."""
        back: list[str] = []
        for name, d in self._devices.items():
            if not d.isolated:
                continue
            if d.dev is not None:
                with contextlib.suppress(Exception):
                    d.dev.close()
                d.dev = None
            d.isolated = False  # so that a failure now is logged again
            if d.running is None:  # a pin device (a command device has nothing to build)
                try:
                    d.dev = self._make(d.spec)
                except Exception as exc:
                    self._fail(d, exc, "rebuild")
                    continue
            d.value = d.spec.safe_state
            d.last_switch = -math.inf
            self.errors.pop(name, None)
            back.append(name)
            log.info("%s: rebuilt, back in service", name)
        return back

    def states(self) -> dict[str, float | bool | None]:
        """The value of every device read from its pin (``None`` when isolated).

        A read: it changes nothing. A pin that fails to read now shows ``None`` but is not
        isolated here; :meth:`check_states` is the call that isolates it.
        """
        return self._states(isolate=False)

    def check_states(self) -> dict[str, float | bool | None]:
        """As :meth:`states`, but a device whose pin fails to read is isolated (counted,
        logged, reported in ``errors``), as one whose write fails is. The agent calls it
        after its shutdown safe state, to log what the outputs really are."""
        return self._states(isolate=True)

    def _states(self, isolate: bool) -> dict[str, float | bool | None]:
        out: dict[str, float | bool | None] = {}
        for name, d in self._devices.items():
            if d.isolated or (d.dev is None and d.running is None):
                out[name] = None
                continue
            try:
                out[name] = self._read(d)
            except Exception as exc:
                if isolate:
                    self._fail(d, exc, "read")
                out[name] = None
        return out

    def commanded(self) -> dict[str, float]:
        """The value last written to each output (compare with :meth:`states`)."""
        return {n: d.value for n, d in self._devices.items() if d.spec.is_output}

    def input_events(self) -> list[InputEvent]:
        """Input edges seen since the last call, oldest first."""
        events: list[InputEvent] = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def close(self) -> None:
        """Outputs to safe state, commands killed and reaped, the launcher thread ended
        (after the starts it was given, each killed at once), devices released."""
        self.safe_state("close")
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            if not launcher.stop(LAUNCHER_STOP_S):
                log.error("the command launcher did not stop within %g s", LAUNCHER_STOP_S)
            self._collect_starts(launcher, self._clock())  # all runs killed: arrivals die now
        for d in self._devices.values():
            for run in d.running or ():
                if run.proc is None:
                    continue
                with contextlib.suppress(Exception):
                    run.proc.wait(timeout=1.0)
                if run.proc.stderr is not None:
                    run.proc.stderr.close()
            if d.running is not None:
                d.running = []
            if d.dev is not None:
                with contextlib.suppress(Exception):
                    d.dev.close()
                d.dev = None
        if self._owns_factory:
            with contextlib.suppress(Exception):
                self.factory.close()
