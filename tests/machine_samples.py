"""Hand-built probe samples for the pure guard and metrics tests (no psutil)."""

from __future__ import annotations

from edge.guard import Sample


def quiet_sample(at: float = 0.0, **readings: float | int | None) -> Sample:
    """A calm Pi-like machine; ``readings`` override any field (None = sensor missing)."""
    base: dict[str, float | int | None] = {
        "cpu_percent": 10.0,
        "process_cpu_percent": 1.0,
        "process_rss_mb": 30.0,
        "memory_percent": 40.0,
        "swap_percent": None,
        "load1": 0.5,
        "temperature_c": 50.0,
        "throttled": 0,
        "disk_free_mb": 1000.0,
    }
    base.update(readings)
    return Sample(at=at, cost_s=0.0001, **base)  # type: ignore[arg-type]
