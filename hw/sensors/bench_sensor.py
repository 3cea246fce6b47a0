"""A simulated sensor for the python-sensor bench profile: a temperature that drifts with
the beat, read on each call and reported in the claim (``metadata.values.sensor``)."""

from __future__ import annotations

import math
import time
from typing import Any

_state = {"reads": 0}


def read(ctx: Any) -> dict[str, object]:
    """Read the simulated sensor: a slow sine around ``base_c`` plus a beat-phase ripple."""
    _state["reads"] += 1
    base = float(ctx.params.get("base_c", 21.0))
    temperature = base + 2.0 * math.sin(ctx.beat_index / 16.0) + 0.1 * math.sin(ctx.beat_index)
    return {
        "temperature_c": round(temperature, 2),
        "reads": _state["reads"],
        "entry_us": round((time.monotonic() - ctx.at) * 1e6, 1),
    }


def rest(ctx: Any) -> None:
    """The sensor's safe state: nothing to switch off; say so on stdout (the worker's output goes to the agent's log)."""
    print(f"{ctx.device}: sensor at rest ({ctx.reason})", flush=True)
