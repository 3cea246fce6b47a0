"""scripts/install into a temporary root: layout, user, idempotence, config kept, uninstall.

The script runs for real (a virtual environment, pip, useradd --prefix, systemctl --root);
only the root directory is a temporary one. Dependencies are not installed into the test
venv (--no-deps): what is checked is the installer, not pip.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge import __version__
from edge.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install"
UNIT = ROOT / "systemd" / "backbeat-edge.service"
EXAMPLE = ROOT / "systemd" / "agent.example.toml"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and shadow's useradd --prefix",
)


def seed_root(root: Path) -> Path:
    """A fresh root with the minimal account files that useradd --prefix edits."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    return root


def run_install(
    root: Path, *args: str, profile: Path | None = None, env_extra: dict[str, str] | None = None
) -> str:
    cmd = [str(INSTALL), "--prefix", str(root), *args]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    env = {**os.environ, "BACKBEAT_PIP_ARGS": "--no-deps", **(env_extra or {})}
    env.pop("BACKBEAT_ROOT", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"install failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stderr


def accounts(root: Path, name: str) -> list[list[str]]:
    return [line.split(":") for line in (root / "etc" / name).read_text().splitlines()]


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "relay-board.toml"
    path.write_text("[gpio]\n# a stand-in profile for the installer test\n")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout built once as a wheel, so each install below is a quick one."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("backbeat_edge-*.whl")
    return built


@pytest.mark.slow
@needs_root
def test_install_lays_out_a_device_and_a_second_run_changes_nothing(
    tmp_path: Path, profile: Path, wheel: Path
) -> None:
    root = seed_root(tmp_path / "root")
    log = run_install(root, profile=profile)

    opt = root / "opt" / "backbeat-edge"
    assert (opt / "venv" / "bin" / "backbeat-edge").is_file()
    assert (opt / "VERSION").read_text().strip() == __version__
    # The venv sees Debian's python3-lgpio on a Pi.
    assert "include-system-site-packages = true" in (opt / "venv" / "pyvenv.cfg").read_text()

    etc = root / "etc" / "backbeat-edge"
    assert (etc / "agent.toml").read_text() == EXAMPLE.read_text()
    assert (etc / "agent.example.toml").read_text() == EXAMPLE.read_text()
    assert (etc / "profile.toml").read_text() == profile.read_text()
    assert stat.S_IMODE((etc / "agent.toml").stat().st_mode) == 0o640
    password = etc / "broker-password"
    assert password.read_text() == ""
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert password.stat().st_uid == 0

    unit = root / "etc" / "systemd" / "system" / "backbeat-edge.service"
    assert unit.read_text() == UNIT.read_text()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/backbeat-edge.service"
        assert wants.is_symlink()

    users = {u[0]: u for u in accounts(root, "passwd")}
    groups = {g[0]: g for g in accounts(root, "group")}
    backbeat = users["backbeat"]
    assert backbeat[6] == "/usr/sbin/nologin"
    assert int(backbeat[2]) < 1000  # a system user
    assert "backbeat" in groups["gpio"][3].split(",")
    # The config is readable by the agent's group, not by everyone.
    assert (etc / "agent.toml").stat().st_gid == int(groups["backbeat"][2])
    assert "creating system user backbeat" in log

    # The operator edits the config; a re-run (an upgrade) keeps it and keeps the venv.
    (etc / "agent.toml").write_text('[agent]\nid = "edited"\n')
    (etc / "profile.toml").write_text("# edited profile\n")
    password.write_text("s3cret\n")
    venv_cfg = (opt / "venv" / "pyvenv.cfg").stat()
    # The first run built the checkout; the upgrade installs it from the wheel built once
    # for this module (the same package, without a second build).
    log = run_install(root, "--wheel", str(wheel), profile=profile)
    assert (etc / "agent.toml").read_text() == '[agent]\nid = "edited"\n'
    assert (etc / "profile.toml").read_text() == "# edited profile\n"
    assert password.read_text() == "s3cret\n"
    assert "keeping the existing" in log
    assert (opt / "venv" / "pyvenv.cfg").stat().st_ino == venv_cfg.st_ino
    assert [u[0] for u in accounts(root, "passwd")].count("backbeat") == 1
    assert [g[0] for g in accounts(root, "group")].count("gpio") == 1
    assert (opt / "VERSION").read_text().strip() == __version__


@pytest.mark.slow
@needs_root
def test_uninstall_keeps_config_and_purge_removes_it(
    tmp_path: Path, profile: Path, wheel: Path
) -> None:
    root = seed_root(tmp_path / "root")
    # An existing gpio group (as on Raspberry Pi OS) is reused, not duplicated.
    with (root / "etc" / "group").open("a") as f:
        f.write("gpio:x:997:pi\n")
    with (root / "etc" / "gshadow").open("a") as f:
        f.write("gpio:!::pi\n")
    run_install(root, "--wheel", str(wheel), profile=profile)  # a build is not what is tested
    gpio = {g[0]: g for g in accounts(root, "group")}["gpio"]
    assert gpio[2] == "997" and gpio[3].split(",") == ["pi", "backbeat"]

    log = run_install(root, "--uninstall")
    assert not (root / "opt" / "backbeat-edge").exists()
    assert not (root / "etc/systemd/system/backbeat-edge.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/backbeat-edge.service").exists()
    assert (root / "etc/backbeat-edge/agent.toml").is_file()
    assert "backbeat" in [u[0] for u in accounts(root, "passwd")]
    assert "kept" in log

    run_install(root, "--uninstall", "--purge")
    assert not (root / "etc/backbeat-edge").exists()
    assert "backbeat" not in [u[0] for u in accounts(root, "passwd")]
    assert "gpio" in [g[0] for g in accounts(root, "group")]  # shared with other users


class FakeSystemctl:
    """A systemctl that notes every call; ``--root`` ones (enable, disable) it hands on
    to the real one, when there is one, which lays the links in the prefix."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "systemctl.log"
        self.path = tmp_path / "systemctl"
        real = shutil.which("systemctl")
        body = f'#!/bin/sh\necho "$*" >> "{self.log}"\n'
        if real:
            body += f'case "$1" in --root=*) exec "{real}" "$@" ;; esac\n'
        self.path.write_text(body)
        self.path.chmod(0o755)

    @property
    def env(self) -> dict[str, str]:
        return {"BACKBEAT_SYSTEMCTL": str(self.path)}

    def calls(self) -> list[list[str]]:
        """The calls so far, each without a leading --root=..., then forgotten."""
        if not self.log.exists():
            return []
        lines = [line.split() for line in self.log.read_text().splitlines()]
        self.log.unlink()
        return [args[1:] if args and args[0].startswith("--root=") else args for args in lines]


@pytest.mark.slow
def test_install_enables_but_does_not_start_until_the_config_is_not_the_example(
    tmp_path: Path, profile: Path, wheel: Path
) -> None:
    root = tmp_path / "root"
    systemctl = FakeSystemctl(tmp_path)
    unit = "backbeat-edge.service"
    log = run_install(
        root, "--no-users", "--wheel", str(wheel), profile=profile, env_extra=systemctl.env
    )
    etc = root / "etc" / "backbeat-edge"
    assert (etc / "agent.toml").read_text() == EXAMPLE.read_text()
    calls = systemctl.calls()
    assert ["enable", unit] in calls
    assert not any(c[0] in ("start", "restart") for c in calls), calls
    assert ["try-restart", unit] in calls  # only an agent already running is replaced
    # The copy the unit's ExecCondition compares with: a reboot does not start it either.
    assert (etc / "agent.example.toml").read_text() == EXAMPLE.read_text()
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    # The operator is told why, and what to do, in the README's order.
    assert "enabled but not started" in log and "still the example" in log
    steps = [
        "sudoedit /etc/backbeat-edge/agent.toml",
        "sudo backbeat-edge check --config /etc/backbeat-edge/agent.toml",
        "sudo systemctl start backbeat-edge",
    ]
    assert all(step in log for step in steps), log
    assert [log.index(step) for step in steps] == sorted(log.index(step) for step in steps)

    # backbeat-edge is on PATH: a link in /usr/local/bin to the venv's command, as the
    # device sees it.
    link = root / "usr" / "local" / "bin" / "backbeat-edge"
    assert link.is_symlink()
    target = os.readlink(link)
    assert target == "/opt/backbeat-edge/venv/bin/backbeat-edge"
    assert (root / target.lstrip("/")).is_file()

    # --start starts it with the example all the same (the operator said so).
    log = run_install(
        root,
        "--no-users",
        "--wheel",
        str(wheel),
        "--start",
        profile=profile,
        env_extra=systemctl.env,
    )
    assert ["restart", unit] in systemctl.calls()
    assert "starting backbeat-edge.service" in log
    assert not (etc / "agent.example.toml").exists()  # nor skipped at the next boot

    # Once the config is the operator's, an install (an upgrade) restarts the agent.
    (etc / "agent.toml").write_text(EXAMPLE.read_text().replace("pi-relay-01", "pi-relay-02"))
    run_install(root, "--no-users", "--wheel", str(wheel), profile=profile, env_extra=systemctl.env)
    assert ["restart", unit] in systemctl.calls()
    # ...unless told not to.
    log = run_install(
        root,
        "--no-users",
        "--wheel",
        str(wheel),
        "--no-start",
        profile=profile,
        env_extra=systemctl.env,
    )
    assert not any(c[0] in ("start", "restart", "try-restart") for c in systemctl.calls())
    assert "enabled but not started (--no-start)" in log

    run_install(root, "--uninstall", env_extra=systemctl.env)
    assert not link.is_symlink() and not link.exists()
    assert ["disable", unit] in systemctl.calls()


@pytest.mark.slow
def test_an_example_left_by_an_older_install_still_counts_as_the_example(
    tmp_path: Path, profile: Path, wheel: Path
) -> None:
    root = tmp_path / "root"
    etc = root / "etc" / "backbeat-edge"
    etc.mkdir(parents=True)
    older = "# the example of an older version\n[agent]\n"
    (etc / "agent.toml").write_text(older)
    (etc / "agent.example.toml").write_text(older)
    systemctl = FakeSystemctl(tmp_path)
    log = run_install(
        root, "--no-users", "--wheel", str(wheel), profile=profile, env_extra=systemctl.env
    )
    assert not any(c[0] in ("start", "restart") for c in systemctl.calls())
    assert "still the example" in log
    assert (etc / "agent.toml").read_text() == older  # kept, as every existing config


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wheel", "x.whl", "--version", "1.0"], "not both"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
        (["--wheel", "/nonexistent/backbeat.whl", "--no-users"], "no wheel at"),
    ],
)
def test_install_refuses_bad_arguments_with_a_reason(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [str(INSTALL), "--prefix", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_the_installed_example_config_loads_with_the_shipped_profile(tmp_path: Path) -> None:
    # What scripts/install lays down on a fresh device must be a config the agent accepts.
    (tmp_path / "agent.toml").write_text(EXAMPLE.read_text())
    shutil.copy(ROOT / "hw" / "relay-board.toml", tmp_path / "profile.toml")
    loaded = load_config(tmp_path / "agent.toml")
    assert loaded.agent.id == "stage-left:pi-relay-01"
    assert loaded.broker.tls and loaded.broker.username == "pi-relay-01"
    # The file name is the systemd credential name that the unit's LoadCredential= uses.
    assert loaded.broker.password_file is not None
    assert loaded.broker.password_file.name == "broker-password"
    assert "LoadCredential=broker-password:" + str(loaded.broker.password_file) in UNIT.read_text()
