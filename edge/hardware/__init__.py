"""The hardware adapter: gpiozero devices behind one interface that never blocks.

Theory of operation
-------------------
:class:`Hardware` builds one gpiozero device per :class:`~edge.profile.DeviceSpec` (the only
package that imports gpiozero) and applies :class:`~edge.score.Action` values to them. It
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
The package, one job a module
-----------------------------
``results``  what the hardware reports: :class:`ActionResult`, :class:`InputEvent`.
``devices``  the device kinds: building gpiozero devices from specs, pin writes and reads,
             isolation, the pin factory.
``switching`` the output actions under the rate limit and the dead-man, and fades.
``commands`` command runs, their launcher thread, their polls, ends and kills.
``pycalls``  python devices: a worker process each (``edge.pyworker``), calls handed over
             ahead of their time, their ends, kills at the deadline and restarts.
``pyjobs``   a python call's record, what its function is told, what each end reports.
``pyprocess`` their worker processes: start (on a spawner thread), pipe writes under a
             budget, kill with the process group, restart backoff, the stop.
``driver``   :class:`Hardware`, the driver: apply, tick, safe state, revive, states, warm,
             prepare_calls.
"""

from edge.hardware.commands import (
    COMMAND_POLL_MIN_S,
    COMMAND_POLL_S,
    COMMAND_STDERR_BYTES,
    LAUNCHER_STOP_S,
    Popen,
)
from edge.hardware.devices import MAX_INPUT_EVENTS, load_pin_factory
from edge.hardware.driver import Hardware
from edge.hardware.results import ActionResult, InputEvent
from edge.hardware.switching import DEFAULT_TONE_HZ

__all__ = [
    "COMMAND_POLL_MIN_S",
    "COMMAND_POLL_S",
    "COMMAND_STDERR_BYTES",
    "DEFAULT_TONE_HZ",
    "LAUNCHER_STOP_S",
    "MAX_INPUT_EVENTS",
    "ActionResult",
    "Hardware",
    "InputEvent",
    "Popen",
    "load_pin_factory",
]
