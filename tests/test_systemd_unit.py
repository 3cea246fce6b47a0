"""The device unit: systemd-analyze accepts it, and it says what the agent relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "backbeat-edge.service"
EXEC_START = "/opt/backbeat-edge/venv/bin/backbeat-edge run --config /etc/backbeat-edge/agent.toml"


def settings(text: str) -> dict[str, list[str]]:
    """Section.Key -> every value given (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def verify(tmp_path: Path, text: str) -> list[str]:
    """Run systemd-analyze verify on a copy whose ExecStart exists here; return complaints.

    This machine has no /opt/backbeat-edge, so the copy runs /bin/true instead; every other
    line is the real unit. verify exits 0 even for settings it ignores, so its output is
    the verdict: any line that mentions the unit is a complaint.
    """
    copy = tmp_path / "backbeat-edge.service"
    copy.write_text(text.replace("/opt/backbeat-edge/venv/bin/backbeat-edge", "/bin/true"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    complaints = [line for line in lines if "backbeat-edge" in line or "ignoring" in line]
    if proc.returncode != 0:
        complaints.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return complaints


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(tmp_path, UNIT.read_text()) == []


@needs_analyze
def test_the_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = (
        UNIT.read_text()
        .replace("Type=notify", "Type=notfy")
        .replace("DeviceAllow=char-gpiochip rw", "DeviceAllow=char-gpiochip rwx")
    )
    complaints = verify(tmp_path, broken)
    assert any("notfy" in c for c in complaints)
    assert any("rwx" in c for c in complaints)


def test_the_unit_runs_the_agent_under_the_notify_protocol_with_a_watchdog() -> None:
    unit = settings(UNIT.read_text())
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.ExecStart"] == [EXEC_START]
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    watchdog = unit["Service.WatchdogSec"][0]
    assert re.fullmatch(r"\d+s", watchdog) and int(watchdog[:-1]) >= 2
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartSec"][0] not in ("0", "0s")
    assert "Service.TimeoutStopSec" in unit
    assert unit["Service.KillMode"] == ["mixed"]


def test_the_network_is_wanted_not_required() -> None:
    unit = settings(UNIT.read_text())
    assert "network-online.target" in unit["Unit.Wants"][0]
    assert "network.target" in unit["Unit.After"][0]
    assert "Unit.Requires" not in unit
    assert "Unit.BindsTo" not in unit


def test_it_runs_unprivileged_with_its_state_and_its_secret() -> None:
    unit = settings(UNIT.read_text())
    assert unit["Service.User"] == ["backbeat"]
    assert unit["Service.SupplementaryGroups"] == ["gpio"]
    assert unit["Service.StateDirectory"] == ["backbeat-edge"]
    assert unit["Service.LoadCredential"] == ["broker-password:/etc/backbeat-edge/broker-password"]
    assert unit["Service.CapabilityBoundingSet"] == [""]
    assert unit["Service.NoNewPrivileges"] == ["yes"]


def test_it_is_hardened_but_can_reach_gpio_i2c_and_the_network() -> None:
    unit = settings(UNIT.read_text())
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
    }.items():
        assert unit[f"Service.{key}"] == [value], key
    allowed = unit["Service.DeviceAllow"]
    assert "char-gpiochip rw" in allowed
    assert "char-i2c rw" in allowed
    assert any("gpiomem" in a for a in allowed)
    # PrivateDevices would hide /dev/gpiochip*.
    assert "Service.PrivateDevices" not in unit
    assert unit["Service.RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in unit["Service.SystemCallFilter"]


def test_a_config_error_does_not_restart_loop() -> None:
    """run's documented exit codes: 2 usage and 3 config error are never restarted; the
    hardware code (4) and a crash still are (Restart=on-failure)."""
    from edge.cli import EXIT_CONFIG, EXIT_HARDWARE, EXIT_USAGE, build_parser

    unit = settings(UNIT.read_text())
    prevented = {
        int(code) for value in unit["Service.RestartPreventExitStatus"] for code in value.split()
    }
    assert prevented == {EXIT_USAGE, EXIT_CONFIG}
    assert EXIT_HARDWARE not in prevented
    assert unit["Service.Restart"] == ["on-failure"]
    # The codes the unit names are the ones run documents.
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr,index]
    assert f"{EXIT_CONFIG} config error" in " ".join(run_help.split())


@pytest.mark.parametrize(
    ("agent", "example", "starts"),
    [
        ("the example", "the example", False),  # not configured yet: skipped, even at boot
        ("edited", "the example", True),
        ("the example", None, True),  # no copy (install --start, or a manual install)
    ],
)
def test_the_unit_does_not_start_while_the_config_is_the_example(
    tmp_path: Path, agent: str, example: str | None, starts: bool
) -> None:
    (condition,) = settings(UNIT.read_text())["Service.ExecCondition"]
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text(agent)
    if example is not None:
        (etc / "agent.example.toml").write_text(example)
    command = condition.replace("/etc/backbeat-edge", str(etc))
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    result = subprocess.run(["/bin/sh", "-c", command[len("/bin/sh -c '") : -1]], check=False)
    # ExecCondition: 0 starts the unit; 1-254 skips it (not a failure, no restart).
    assert (result.returncode == 0) is starts
    assert result.returncode != 255
