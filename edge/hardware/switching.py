"""The output actions (on, off, toggle, pulse, beep, set, move, fade) under the switching
rate limit and the dead-man, and the fade ramps that :meth:`Hardware.tick` steps (see the
package doc's safety rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.hardware.devices import Devices, _Device
from edge.hardware.results import ActionResult
from edge.profile import DEFAULT_FADE_STEP_S
from edge.score import Action

#: A tone device's default tone when an action gives none.
DEFAULT_TONE_HZ = 440.0


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


class Switching(Devices):
    """Moves outputs to new values, within the rate limit, arming and clearing the dead-man."""

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
