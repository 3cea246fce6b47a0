"""Reloading: the switch to a new config at a beat boundary, or its refusal.

``Runner.request_reload`` keeps the new config until the next beat starts; there the
runner asks :func:`switch` what to run with: the new config with its restart-only
sections kept (``edge.config.apply_reload``), a new guard and status builder where their
settings changed, and the devices rebuilt when the device profile changed
(:func:`rebuild_hardware`). Everything that may fail is made before anything is replaced.
A reload is never fatal: whatever fails on the way is logged and counted in
``reload_errors``, and the running config, beat and devices stay as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge.config import Config, apply_reload
from edge.counters import Counters
from edge.errors import EdgeError
from edge.guard import Guard
from edge.hardware import Hardware
from edge.profile import Profile
from edge.status import StatusBuilder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Running:
    """What a reload may replace: the config and the parts made from it."""

    config: Config
    guard: Guard
    status: StatusBuilder
    hardware: Hardware


def switch(
    new: Config,
    running: Running,
    make_hardware: Callable[[Profile], Hardware],
    counters: Counters,
) -> tuple[Running, bool]:
    """What to run with from now on, and whether it is ``new``'s. On any failure the
    running parts (with the old devices built again if the new profile could not be
    built), the failure logged and counted in ``reload_errors``. Never raises."""
    old = running.config
    try:
        new, kept = apply_reload(new, old)
        if kept:
            log.warning("reload: %s changes take effect at the next restart", ", ".join(kept))
        # Everything that may fail is made before anything is replaced.
        guard = Guard(new.guard) if new.guard != old.guard else running.guard
        status = running.status
        if new.status != old.status or new.digest != old.digest:
            status = status.reconfigured(new.status, new.digest)
        hardware = running.hardware
        if new.profile != old.profile:
            hardware, rebuilt = rebuild_hardware(hardware, new.profile, old.profile, make_hardware)
            if not rebuilt:
                counters.reload_errors += 1
                return replace(running, hardware=hardware), False
        elif hardware.isolated:
            hardware.revive()
    except Exception as exc:  # the beat loop outlives any reload
        _refuse(exc, counters)
        return running, False
    return Running(new, guard, status, hardware), True


def rebuild_hardware(
    hardware: Hardware,
    profile: Profile,
    old_profile: Profile,
    make_hardware: Callable[[Profile], Hardware],
) -> tuple[Hardware, bool]:
    """Swap in the devices of ``profile``: the old ones (``hardware``) go to their safe
    state and are released (their running commands killed, as in any safe state, so they
    report no end), then the new ones are built. This takes a few milliseconds of the loop,
    once, at the beat boundary. Returns the devices to run with and whether they are the
    new ones: False, with ``old_profile`` built again, if the new one cannot be built."""
    hardware.close()
    try:
        built = make_hardware(profile)
    except Exception as exc:  # any failure: back to the old devices
        log.error(
            "reload refused: the new device profile cannot be built (%s: %s); "
            "the old devices are built again",
            type(exc).__name__,
            exc,
        )
        return make_hardware(old_profile), False
    log.info("reload: devices rebuilt from the new profile (%d devices)", len(profile.devices))
    return built, True


def _refuse(exc: Exception, counters: Counters) -> None:
    """A reload failed on the way with ``exc``: counted and logged, the running config
    kept."""
    counters.reload_errors += 1
    log.error(
        "reload refused, keeping the running config: %s: %s",
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, EdgeError),  # a bug: say where
    )
