"""The probe against a fake sysfs tree (tmp_path) and, for shape, against real psutil."""

from __future__ import annotations

import ast
import math
import re
from collections import namedtuple
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.guard import Sample
from edge.probe import Probe

# The shape of psutil's shwtemp entries, built by hand so tests need no real sensor.
Temp = namedtuple("Temp", "label current high critical")

ROOT = Path(__file__).resolve().parent.parent


def zone(root: Path, number: int, kind: str, millideg: str) -> Path:
    path = root / f"thermal_zone{number}"
    path.mkdir(parents=True)
    (path / "type").write_text(kind + "\n")
    (path / "temp").write_text(millideg + "\n")
    return path


def no_file(tmp_path: Path) -> Path:
    return tmp_path / "absent"


# --------------------------------------------------------------------------- boundaries


def imports_psutil(source: Path) -> bool:
    text = source.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        # A file someone is halfway through editing: fall back to reading its lines.
        return re.search(r"^\s*(import|from)\s+psutil\b", text, re.MULTILINE) is not None
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] == "psutil" for n in names):
            return True
    return False


def test_probe_is_the_only_importer_of_psutil() -> None:
    edge = ROOT / "edge"  # subpackages too
    importers = [p.relative_to(edge).as_posix() for p in sorted(edge.rglob("*.py"))]
    assert [name for name in importers if imports_psutil(edge / name)] == ["probe.py"]


# --------------------------------------------------------------------------- temperature


def test_thermal_zone_prefers_the_cpu_zone(tmp_path: Path) -> None:
    zone(tmp_path, 0, "acpitz", "40000")
    zone(tmp_path, 1, "cpu-thermal", "61234")
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    assert probe.temperature_c() == pytest.approx(61.234)
    assert probe.temperature_source == str(tmp_path / "thermal_zone1" / "temp")


def test_thermal_zone_falls_back_to_the_lowest_numbered_zone(tmp_path: Path) -> None:
    zone(tmp_path, 10, "gpu", "70000")
    zone(tmp_path, 2, "battery", "30500")
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    assert probe.temperature_c() == pytest.approx(30.5)


def test_thermal_zone_follows_the_file(tmp_path: Path) -> None:
    path = zone(tmp_path, 0, "cpu-thermal", "50000")
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    (path / "temp").write_text("82500\n")
    assert probe.sample(1.0).temperature_c == pytest.approx(82.5)


def test_no_thermal_zone_is_missing_not_zero(tmp_path: Path) -> None:
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    assert probe.temperature_c() is None
    assert probe.temperature_source is None
    assert probe.sample(1.0).temperature_c is None
    assert probe.errors == {}  # missing is not an error


def test_garbage_in_a_thermal_zone_is_none_and_counted(tmp_path: Path) -> None:
    path = zone(tmp_path, 0, "cpu-thermal", "50000")
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    (path / "temp").write_text("hot\n")
    assert probe.sample(1.0).temperature_c is None
    (path / "temp").unlink()
    assert probe.temperature_c() is None
    assert probe.errors == {"temperature": 2}
    assert "FileNotFoundError" in probe.last_errors["temperature"]


def test_psutil_sensor_is_preferred_over_thermal_zones(tmp_path: Path) -> None:
    zone(tmp_path, 0, "cpu-thermal", "40000")

    def sensors() -> Mapping[str, Sequence[Any]]:
        return {
            "nvme": [Temp("Composite", 35.0, None, None)],
            "cpu_thermal": [Temp("", 55.5, None, None)],
        }

    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=sensors)
    assert probe.temperature_source == "psutil:cpu_thermal"
    assert probe.temperature_c() == 55.5


def test_psutil_sensor_takes_the_hottest_entry() -> None:
    def sensors() -> Mapping[str, Sequence[Any]]:
        return {"coretemp": [Temp("Core 0", 48.0, 90, 100), Temp("Core 1", 52.0, 90, 100)]}

    probe = Probe(throttled_path=None, sensors=sensors)
    assert probe.temperature_c() == 52.0


def test_empty_psutil_sensors_fall_back_to_thermal_zones(tmp_path: Path) -> None:
    zone(tmp_path, 0, "cpu-thermal", "45000")
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=lambda: {})
    assert probe.temperature_c() == 45.0


def test_a_vanished_psutil_sensor_is_none_and_counted() -> None:
    readings: list[dict[str, list[Temp]]] = [{"cpu_thermal": [Temp("", 50.0, None, None)]}]
    probe = Probe(throttled_path=None, sensors=lambda: readings[-1])
    readings.append({})
    assert probe.temperature_c() is None
    assert probe.errors["temperature"] == 1


# --------------------------------------------------------------------------- throttling


@pytest.mark.parametrize(
    ("text", "flags"),
    [("0\n", 0), ("50005\n", 0x50005), ("throttled=0x4\n", 0x4), ("80008", 0x80008)],
)
def test_throttled_file_is_read_as_hex(tmp_path: Path, text: str, flags: int) -> None:
    path = tmp_path / "get_throttled"
    path.write_text(text)
    probe = Probe(thermal_root=tmp_path, throttled_path=path, sensors=None)
    assert probe.throttled() == flags
    assert probe.sample(1.0, full=False).throttled == flags


def test_no_throttled_file_is_missing(tmp_path: Path) -> None:
    probe = Probe(thermal_root=tmp_path, throttled_path=no_file(tmp_path), sensors=None)
    assert probe.throttled() is None
    assert Probe(thermal_root=tmp_path, throttled_path=None, sensors=None).throttled() is None
    assert probe.errors == {}


def test_garbage_throttled_file_is_none_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "get_throttled"
    path.write_text("0\n")
    probe = Probe(thermal_root=tmp_path, throttled_path=path, sensors=None)
    path.write_text("not hex\n")
    assert probe.sample(1.0).throttled is None
    assert probe.errors == {"throttled": 1}


# --------------------------------------------------------------------------- disk


def test_disk_free_for_the_outbox_directory(tmp_path: Path) -> None:
    probe = Probe(disk_path=tmp_path, thermal_root=tmp_path, throttled_path=None, sensors=None)
    free = probe.disk_free_mb()
    assert isinstance(free, float) and free > 0


def test_disk_free_for_an_outbox_not_created_yet(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    probe = Probe(disk_path=outbox, thermal_root=tmp_path, throttled_path=None, sensors=None)
    free = probe.disk_free_mb()
    assert isinstance(free, float) and free > 0


def test_no_disk_path_is_missing(tmp_path: Path) -> None:
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    assert probe.sample(1.0).disk_free_mb is None


# --------------------------------------------------------------------------- real psutil


def check_optional(value: object, kind: type, low: float, high: float = math.inf) -> None:
    if value is None:
        return
    assert isinstance(value, kind), value
    assert low <= value <= high, value  # type: ignore[operator]


def test_full_sample_shape_against_real_psutil(tmp_path: Path) -> None:
    probe = Probe(disk_path=tmp_path)  # the machine's real sensors, whatever they are
    s = probe.sample(123.5)
    assert isinstance(s, Sample)
    assert s.at == 123.5
    # These exist on every Linux box the agent runs on.
    assert isinstance(s.cpu_percent, float) and 0.0 <= s.cpu_percent <= 100.0
    assert isinstance(s.memory_percent, float) and 0.0 < s.memory_percent <= 100.0
    assert isinstance(s.process_rss_mb, float) and s.process_rss_mb > 1.0
    assert isinstance(s.process_cpu_percent, float) and s.process_cpu_percent >= 0.0
    assert isinstance(s.load1, float) and s.load1 >= 0.0
    assert isinstance(s.disk_free_mb, float) and s.disk_free_mb > 0.0
    # These depend on the hardware: present with the right type, or None.
    check_optional(s.swap_percent, float, 0.0, 100.0)
    check_optional(s.temperature_c, float, -40.0, 150.0)
    check_optional(s.throttled, int, 0)
    assert isinstance(s.cost_s, float) and s.cost_s > 0.0
    assert probe.errors == {}


def test_light_sample_skips_the_costly_readings(tmp_path: Path) -> None:
    probe = Probe(disk_path=tmp_path)
    s = probe.sample(1.0, full=False)
    assert isinstance(s.cpu_percent, float) and isinstance(s.memory_percent, float)
    assert isinstance(s.load1, float)
    assert s.process_cpu_percent is None and s.process_rss_mb is None
    assert s.swap_percent is None and s.temperature_c is None and s.disk_free_mb is None
    assert s.cost_s > 0.0


def test_cpu_counter_is_primed_so_busy_work_shows(tmp_path: Path) -> None:
    probe = Probe(thermal_root=tmp_path, throttled_path=None, sensors=None)
    # Burn CPU in this process between samples; unprimed, the first call would say 0.0.
    # Two million additions: a fixed amount of work, not a timed wait.
    total = 0
    for i in range(2_000_000):
        total += i
    s = probe.sample(1.0)
    assert total > 0
    assert s.process_cpu_percent is not None and s.process_cpu_percent > 0.0
    assert s.cpu_percent is not None and s.cpu_percent > 0.0
