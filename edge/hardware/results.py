"""What the hardware reports: the result of an action or follow-up, an input edge, and
the one wording of an exception in them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What happened to one action or follow-up.

    ``ok`` is true when the device is now as asked (or will be at ``deferred_to``).
    ``dropped`` names why the action was not applied: ``"rate_limit"``, ``"isolated"``,
    ``"busy"`` (a command device already running its maximum), ``"unknown_device"``,
    ``"bad_action"``, ``"worker_down"`` (a python device whose worker is being restarted).
    ``error`` carries an exception's text; ``value`` the value read back (inputs, ``read``)
    or written.

    Commands: ``apply`` of a ``command`` is ``ok`` once handed to the launcher and carries
    the ``run`` id; :meth:`Hardware.tick` later reports the same ``run`` exactly once as
    ``command_done`` (``value`` = exit code, ``ok`` when 0), ``command_killed`` (it overran
    its deadline) or ``command_not_started`` (``error`` names the program), with
    ``duration_s`` counted from the ``apply``. A run killed by :meth:`Hardware.safe_state`
    reports nothing more.

    Python calls: ``apply`` of a ``call`` is ``ok`` once its worker has it, with a ``run``
    id; the end comes once from :meth:`Hardware.tick`: ``call_done``, ``call_failed``
    (``error``: the exception's line, refused values, or the worker's exit),
    ``call_overran``, ``call_killed`` or ``call_not_started`` (see ``edge.hardware.pycalls``).

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


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
