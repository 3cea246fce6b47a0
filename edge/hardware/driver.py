"""The driver: :class:`Hardware`, every device of a profile behind one interface that
never blocks (apply, tick, safe state, revive, states, warm, close; see the package doc)."""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from gpiozero import Device

from edge.errors import HardwareError
from edge.hardware.commands import LAUNCHER_STOP_S, Commands, Popen, _Launcher, _Run
from edge.hardware.devices import _Device, load_pin_factory
from edge.hardware.pycalls import PyCalls
from edge.hardware.results import ActionResult, InputEvent, _describe
from edge.hardware.switching import Switching
from edge.profile import Profile
from edge.score import Action, CallJob

log = logging.getLogger(__name__)


class Hardware(Commands, Switching, PyCalls):
    """Every device of a profile, driven by actions and follow-ups; see the module doc.

    ``pin_factory`` (a gpiozero factory) overrides the profile's ``[gpio] pin_factory``;
    with neither, gpiozero chooses (``GPIOZERO_PIN_FACTORY``, else lgpio on a Pi).
    ``clock`` stamps input edges (they arrive on gpiozero's callback); it defaults to
    ``time.monotonic``, the runner's clock. ``popen`` starts commands on the launcher
    thread (``subprocess.Popen``; tests pass a slow or failing one). ``python_workers``
    False builds python devices without their worker processes (``check`` builds a
    profile only to see that it builds; their calls are then dropped as ``worker_down``).

    Raises :class:`HardwareError` only when no pin factory can be had at all; a device that
    fails to build is isolated and reported in ``failures`` / ``errors``.
    """

    def __init__(
        self,
        profile: Profile,
        pin_factory: object | None = None,
        clock: Callable[[], float] = time.monotonic,
        popen: Popen = subprocess.Popen,
        python_workers: bool = True,
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
        self._init_calls(python_workers, clock())

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

    # ----------------------------------------------------------------------- actions

    def apply(
        self, action: Action, now: float, tag: object = None, call: CallJob | None = None
    ) -> ActionResult:
        """Apply ``action`` at local time ``now``; never blocks, never raises for a device
        fault. Follow-ups it needs (pulse end, fade steps...) become due-times for
        :meth:`tick`. ``tag`` (anything) comes back in the result's ``tag`` and, for a
        command or a call, in its run's end. ``call`` is a ``call``'s job, as handed to
        :meth:`prepare_calls` (without it the call runs at once, in an execute phase)."""
        result = self._apply(action, now, tag, call)
        if tag is not None and result.tag is not tag:
            result = replace(result, tag=tag)
        return result

    def _apply(
        self, action: Action, now: float, tag: object, call: CallJob | None = None
    ) -> ActionResult:
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
        if do == "call":
            return self._call(d, action, now, tag, call)
        return self._output(d, action, now)

    # ----------------------------------------------------------------------- follow-ups

    def tick(self, now: float) -> list[ActionResult]:
        """Carry out every follow-up due by ``now``: fade steps, pulse and beep ends,
        deferred returns to safe, dead-man offs, command starts that failed, command ends
        and kills, python calls' ends, kills and worker restarts. Returns a result for
        each (fade steps report only their last step)."""
        results = self._collect_starts(self._launcher, now)
        results.extend(self._tick_calls(now))
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
        best: float | None = self._calls_next()
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

    def safe_state(
        self,
        reason: str,
        now: float | None = None,
        keep: Collection[str] = (),
        *,
        closing: bool = False,
    ) -> None:
        """Every output to its safe state now (rate limit ignored), every command killed,
        except on the devices named in ``keep`` (left as they are). Counted in
        ``safe_states`` and logged with ``reason``. ``now`` defaults to the clock given at
        construction. ``closing`` (from :meth:`close` only): a python device at rest since
        an earlier safe state is not asked for its safe_call again."""
        if now is None:
            now = self._clock()
        self.safe_states += 1
        self._safe_calls(reason, keep, closing)
        kept = sorted(set(keep) & set(self._devices))
        if not self._devices:  # a beat client's: nothing to put at rest, nothing to say
            log.debug("safe state (no devices): %s", reason)
        elif kept:
            log.warning("outputs to safe state: %s (kept running: %s)", reason, ", ".join(kept))
        else:
            # The last one, at close, follows the shutdown's (already said): routine.
            log.log(
                logging.INFO if closing else logging.WARNING,
                "all outputs to safe state: %s",
                reason,
            )
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
        self.safe_state("close", closing=True)
        self._close_calls()
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
