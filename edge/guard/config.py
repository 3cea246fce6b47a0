"""The ``[guard]`` settings: :class:`GuardConfig` and its table-driven reader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from edge.errors import ConfigProblems
from edge.settings import Section, check_order, flag, integer, number

# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Guard thresholds; the defaults suit a Raspberry Pi 4/5 that shares its CPU.

    ``*_enter`` / ``*_exit`` pairs form hysteresis bands (raise above enter, clear at or
    below exit; exit < enter). Temperatures follow the Pi firmware, which starts soft
    throttling at 80 deg C and hard throttling at 85. ``throttle_mask`` selects the
    "happening now" bits of ``get_throttled`` (under-voltage, frequency capped, throttled,
    soft temperature limit); the sticky "has happened" bits 16-19 are ignored by default.
    """

    enabled: bool = True
    cpu_enter: float = 85.0
    cpu_exit: float = 70.0
    #: weight of the newest CPU reading in its EWMA (1.0 = no smoothing).
    cpu_smoothing: float = 0.5
    memory_enter: float = 85.0
    memory_exit: float = 75.0
    memory_critical_enter: float = 95.0
    memory_critical_exit: float = 90.0
    swap_enter: float = 80.0
    swap_exit: float = 60.0
    temperature_enter: float = 80.0
    temperature_exit: float = 75.0
    temperature_critical_enter: float = 85.0
    temperature_critical_exit: float = 80.0
    throttle_mask: int = 0x000F
    miss_rate_enter: float = 0.05
    miss_rate_exit: float = 0.02
    miss_min_actions: int = 10
    #: beats in the sliding window the miss rate is taken over.
    window_beats: int = 20
    backoff_miss_rate: float = 0.02
    backoff_factor: float = 0.8
    min_work_factor: float = 0.1
    recovery_step: float = 0.1
    recovery_beats: int = 3
    decimate_every: int = 2
    target_utilisation: float = 0.8
    queue_bound: int = 64
    recover_hold_s: float = 5.0
    stale_after_s: float = 60.0
    estimate_alpha_up: float = 0.5
    estimate_alpha_down: float = 0.1


#: The range every key of GuardConfig must lie in; percentages are 0..100, rates 0..1.
_SECTION = Section(
    GuardConfig,
    (
        flag("enabled"),
        number("cpu_enter", 0.0, 100.0),
        number("cpu_exit", 0.0, 100.0),
        number("cpu_smoothing", 0.0, 1.0, low_inclusive=False),
        number("memory_enter", 0.0, 100.0),
        number("memory_exit", 0.0, 100.0),
        number("memory_critical_enter", 0.0, 100.0),
        number("memory_critical_exit", 0.0, 100.0),
        number("swap_enter", 0.0, 100.0),
        number("swap_exit", 0.0, 100.0),
        number("temperature_enter", -40.0, 150.0),
        number("temperature_exit", -40.0, 150.0),
        number("temperature_critical_enter", -40.0, 150.0),
        number("temperature_critical_exit", -40.0, 150.0),
        integer("throttle_mask", 0, 0xFFFFFFFF),
        number("miss_rate_enter", 0.0, 1.0),
        number("miss_rate_exit", 0.0, 1.0),
        integer("miss_min_actions", 1, 1_000_000),
        integer("window_beats", 1, 100_000),
        number("backoff_miss_rate", 0.0, 1.0),
        number("backoff_factor", 0.0, 1.0, low_inclusive=False),
        number("min_work_factor", 0.0, 1.0, low_inclusive=False),
        number("recovery_step", 0.0, 1.0, low_inclusive=False),
        integer("recovery_beats", 1, 100_000),
        integer("decimate_every", 1, 100_000),
        number("target_utilisation", 0.0, 1.0, low_inclusive=False),
        integer("queue_bound", 1, 1_000_000),
        number("recover_hold_s", 0.0, 86_400.0),
        number("stale_after_s", 0.0, 86_400.0, low_inclusive=False),
        number("estimate_alpha_up", 0.0, 1.0, low_inclusive=False),
        number("estimate_alpha_down", 0.0, 1.0, low_inclusive=False),
    ),
)
_BANDS: tuple[tuple[str, str], ...] = (
    ("cpu_enter", "cpu_exit"),
    ("memory_enter", "memory_exit"),
    ("memory_critical_enter", "memory_critical_exit"),
    ("swap_enter", "swap_exit"),
    ("temperature_enter", "temperature_exit"),
    ("temperature_critical_enter", "temperature_critical_exit"),
    ("miss_rate_enter", "miss_rate_exit"),
)


def parse_guard(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "guard"
) -> GuardConfig:
    """Build a :class:`GuardConfig` from the ``[guard]`` TOML table.

    Every problem (unknown key, wrong type, out of range, an exit threshold not below its
    enter threshold, a critical band below its high band) is added to ``problems`` with its
    place (``guard.cpu_enter``), worded as :mod:`edge.settings` words them; a bad key keeps
    its default, and a band whose exit is not below its enter falls back to the default
    band. Never raises.
    """
    config = _SECTION.read(raw, problems, where)
    defaults = GuardConfig()
    for enter, leave in _BANDS:
        if not check_order(config, leave, enter, problems, where, strict=True, blame="lower"):
            config = replace(
                config, **{enter: getattr(defaults, enter), leave: getattr(defaults, leave)}
            )
    for band, critical in (
        ("memory_enter", "memory_critical_enter"),
        ("temperature_enter", "temperature_critical_enter"),
    ):
        check_order(config, band, critical, problems, where, strict=False, blame="upper")
    return config
