"""The probe: this machine's load, memory, temperature and throttling as a :class:`Sample`.

The only module that imports psutil. Every reading is optional and cheap:

* system CPU: ``psutil.cpu_percent(interval=None)``, which never blocks and reports the
  usage since the previous call. Its first call always returns 0.0, so the constructor
  makes that call (primes it) and the first real sample is meaningful. The same holds for
  this process's ``cpu_percent``.
* memory and swap in use, percent (swap is ``None`` when the device had none at start);
* load average over one minute (``os.getloadavg``);
* SoC temperature: ``psutil.sensors_temperatures()`` when it knows a sensor (the Pi's
  ``cpu_thermal``, x86 ``coretemp``...; the hottest entry of the chosen sensor), otherwise
  the kernel's thermal zones ``<thermal_root>/thermal_zone*/temp`` (millidegrees), choosing
  a CPU/SoC zone by its ``type`` if there is one, else the first zone. The source is chosen
  once, at construction;
* Raspberry Pi throttling flags from the firmware's sysfs file (hex, as the kernel prints
  it; ``throttled=0x...`` as ``vcgencmd`` prints it is accepted too). Spawning
  ``vcgencmd`` costs milliseconds, so it is never used;
* free disk space for the outbox directory (its nearest existing ancestor if it does not
  exist yet).

A missing sensor is ``None``, never zero. A sensor that exists but fails (unreadable file,
garbage in it, a psutil error) is also ``None``, and the failure is counted in ``errors``
by reading name with the last message in ``last_errors``: bad readings are survived.

A *light* sample reads only what the guard needs most often and is cheapest (system CPU,
memory, load, throttle flags); the rest is ``None`` for that sample, and the guard keeps
its previous view of those readings. Every sample records what it cost (``cost_s``).

Paths are arguments, so tests run against a fake sysfs tree in a temporary directory, and
the psutil sensor call is an argument too (``sensors=None`` skips it).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

from edge.guard import Sample

#: Where Raspberry Pi OS kernels expose the firmware's throttling flags.
DEFAULT_THROTTLED_PATH = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
DEFAULT_THERMAL_ROOT = Path("/sys/class/thermal")

_MIB = 1024.0 * 1024.0
# psutil sensor names, most wanted first: Raspberry Pi, then common SoCs and x86.
_SENSOR_NAMES = (
    "cpu_thermal",
    "cpu-thermal",
    "soc_thermal",
    "coretemp",
    "k10temp",
    "zenpower",
    "acpitz",
)
_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "soc-thermal", "x86_pkg_temp")
_ZONE_NUMBER = re.compile(r"thermal_zone(\d+)")

SensorsFn = Callable[[], Mapping[str, Sequence[Any]]]
_AUTO: Any = object()


class Probe:
    """Takes :class:`edge.guard.Sample` readings of this machine; see the module docstring.

    ``disk_path``: the outbox directory (``None``: no disk reading). ``thermal_root``: the
    kernel's thermal class directory. ``throttled_path``: the firmware flags file (``None``
    or a missing file: no reading). ``sensors``: the temperature sensor call (default
    ``psutil.sensors_temperatures`` where psutil has it; ``None`` to use thermal zones
    only).
    """

    def __init__(
        self,
        disk_path: Path | None = None,
        thermal_root: Path = DEFAULT_THERMAL_ROOT,
        throttled_path: Path | None = DEFAULT_THROTTLED_PATH,
        *,
        sensors: SensorsFn | None = _AUTO,
    ) -> None:
        self._errors: dict[str, int] = {}
        self._last_errors: dict[str, str] = {}
        self._disk_path = disk_path
        self._throttled_path = (
            throttled_path if throttled_path is not None and throttled_path.exists() else None
        )
        self._process = psutil.Process()
        # Swap is configured at boot (dphys-swapfile, zram); a device without it does not
        # pay for reading /proc/vmstat on every sample.
        try:
            self._has_swap = psutil.swap_memory().total > 0
        except (OSError, RuntimeError, psutil.Error) as exc:
            self._fail("swap", exc)
            self._has_swap = False
        if sensors is _AUTO:
            sensors = getattr(psutil, "sensors_temperatures", None)
        self._sensors: SensorsFn | None = None
        self._sensor_name: str | None = None
        self._zone: Path | None = None
        self._choose_temperature_source(sensors, thermal_root)
        # Prime both CPU counters: their first call returns a meaningless 0.0.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    # ----------------------------------------------------------------- sources

    def _choose_temperature_source(self, sensors: SensorsFn | None, root: Path) -> None:
        if sensors is not None:
            try:
                found = {name: entries for name, entries in sensors().items() if entries}
            except (OSError, RuntimeError, ValueError, psutil.Error) as exc:
                self._fail("temperature", exc)
                found = {}
            if found:
                preferred = [name for name in _SENSOR_NAMES if name in found]
                self._sensors = sensors
                self._sensor_name = preferred[0] if preferred else sorted(found)[0]
                return
        zones: list[tuple[int, Path]] = []
        try:
            for entry in root.glob("thermal_zone*"):
                match = _ZONE_NUMBER.fullmatch(entry.name)
                if match and (entry / "temp").exists():
                    zones.append((int(match.group(1)), entry))
        except OSError as exc:
            self._fail("temperature", exc)
        zones.sort()
        for _, zone in zones:
            try:
                kind = (zone / "type").read_text().strip()
            except OSError:
                continue
            if kind in _ZONE_TYPES:
                self._zone = zone / "temp"
                return
        if zones:
            self._zone = zones[0][1] / "temp"

    @property
    def temperature_source(self) -> str | None:
        """``"psutil:<sensor>"``, the thermal zone file, or ``None`` when there is none."""
        if self._sensor_name is not None:
            return f"psutil:{self._sensor_name}"
        return str(self._zone) if self._zone is not None else None

    # ----------------------------------------------------------------- readings

    def _fail(self, reading: str, exc: BaseException) -> None:
        self._errors[reading] = self._errors.get(reading, 0) + 1
        self._last_errors[reading] = f"{type(exc).__name__}: {exc}"

    def temperature_c(self) -> float | None:
        """The SoC temperature in deg C, or ``None``."""
        if self._sensors is not None and self._sensor_name is not None:
            try:
                entries = self._sensors().get(self._sensor_name) or ()
                values = [float(e.current) for e in entries if e.current is not None]
            except (OSError, RuntimeError, ValueError, AttributeError, psutil.Error) as exc:
                self._fail("temperature", exc)
                return None
            if not values:
                self._fail("temperature", LookupError(f"sensor {self._sensor_name} vanished"))
                return None
            return max(values)
        if self._zone is None:
            return None
        try:
            return int(self._zone.read_text().strip()) / 1000.0
        except (OSError, ValueError) as exc:
            self._fail("temperature", exc)
            return None

    def throttled(self) -> int | None:
        """The firmware's throttling bit field, or ``None`` where it is not exposed."""
        if self._throttled_path is None:
            return None
        try:
            text = self._throttled_path.read_text().strip()
            if text.startswith("throttled="):
                text = text[len("throttled=") :]
            return int(text, 16)
        except (OSError, ValueError) as exc:
            self._fail("throttled", exc)
            return None

    def disk_free_mb(self) -> float | None:
        """Free MiB on the file system holding ``disk_path``, or ``None``."""
        if self._disk_path is None:
            return None
        path = self._disk_path
        while not path.exists() and path.parent != path:
            path = path.parent
        try:
            return float(psutil.disk_usage(str(path)).free) / _MIB
        except (OSError, psutil.Error) as exc:
            self._fail("disk", exc)
            return None

    def _read(self, reading: str, read: Callable[[], float | None]) -> float | None:
        try:
            return read()
        except (OSError, RuntimeError, ValueError, psutil.Error) as exc:
            self._fail(reading, exc)
            return None

    def sample(self, now: float, full: bool = True) -> Sample:
        """Take a sample stamped ``at=now``; a light one (``full=False``) skips the costly
        readings. Never blocks and never raises for a bad sensor."""
        started = time.perf_counter()
        cpu = self._read("cpu", lambda: float(psutil.cpu_percent(interval=None)))
        memory = self._read("memory", lambda: float(psutil.virtual_memory().percent))
        load1 = self._read("load", lambda: float(os.getloadavg()[0]))
        throttled = self.throttled()
        process_cpu = process_rss = swap = temperature = disk = None
        if full:
            # Two plain reads: measured cheaper than psutil's oneshot() cache for just two.
            process_cpu = self._read("process", self._process_cpu)
            process_rss = self._read("process", self._process_rss)
            if self._has_swap:
                swap = self._read("swap", self._swap_percent)
            temperature = self.temperature_c()
            disk = self.disk_free_mb()
        return Sample(
            at=now,
            cpu_percent=cpu,
            process_cpu_percent=process_cpu,
            process_rss_mb=process_rss,
            memory_percent=memory,
            swap_percent=swap,
            load1=load1,
            temperature_c=temperature,
            throttled=throttled,
            disk_free_mb=disk,
            cost_s=time.perf_counter() - started,
        )

    def _process_cpu(self) -> float:
        return float(self._process.cpu_percent(interval=None))

    def _process_rss(self) -> float:
        return float(self._process.memory_info().rss) / _MIB

    @staticmethod
    def _swap_percent() -> float | None:
        swap = psutil.swap_memory()
        # No swap configured is a missing reading, not 0% of nothing.
        return float(swap.percent) if swap.total else None

    # ----------------------------------------------------------------- health

    @property
    def errors(self) -> Mapping[str, int]:
        """Failed readings so far, by reading name (cpu, memory, temperature, ...)."""
        return MappingProxyType(dict(self._errors))

    @property
    def last_errors(self) -> Mapping[str, str]:
        """The last failure message of each reading that has failed."""
        return MappingProxyType(dict(self._last_errors))
