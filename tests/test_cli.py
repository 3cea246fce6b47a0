"""The backbeat-edge command as a user runs it: help, check, pulse arguments, the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge.cli import build_parser, main

if TYPE_CHECKING:
    from conftest import CliRun, LockedDemo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["run", "pulse", "check", "demo", "monitor"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"backbeat-edge {command}" in out and "--" in out


def test_check_prints_the_plan(bench_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(bench_config), "--tempo", "60", "1000"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "status_led" in out
    assert "60.0 BPM: all rules fit" in out
    assert "1000.0 BPM:" in out and "all rules fit" not in out.split("1000.0 BPM:")[1]


def test_check_lists_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "x y"\n[broker]\nurl = "mqtt://h:1883"\n'
        'password = "oops"\n[sync]\nbogus = 1\n',
        encoding="utf-8",
    )
    assert main(["check", "--config", str(config)]) == 3  # EXIT_CONFIG
    err = capsys.readouterr().err
    for where in ("agent.id", "agent.cluster", "broker.password", "sync.bogus"):
        assert where in err, err


def test_check_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(tmp_path / "nope.toml")]) == 3  # EXIT_CONFIG
    assert "nope.toml" in capsys.readouterr().err


def test_pulse_refuses_bad_arguments(cli: CliRun) -> None:
    result = cli("pulse", "--cluster", "bench", "--bpm", "5000", "--broker", "http://x")
    assert result.returncode == 2
    assert "--bpm" in result.stderr and "--broker" in result.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_cleanly(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    # 20 beats: a loaded host may take a few seconds to start and lock before 10 have fired.
    result = demo_run  # demo --duration 10 --plain --bpm 120
    assert result.returncode == 0, result.stderr
    assert "sync locked" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("demo stopped"))
    fired = int(line.split(":")[1].split()[0])
    assert fired >= 10, line
    assert re.search(r" \d+ missed, \d+ shed, \d+ dropped, \d+ claims$", line), line
    assert "outputs after safe state" in result.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_ctrl_c_in_the_terminal_stops_the_demo_cleanly(locked_demo: LockedDemo) -> None:
    # A terminal's Ctrl-C reaches its whole foreground process group: the demo and any
    # child still in that group. The pulse once died of it first, and the demo said so.
    os.killpg(locked_demo.process.pid, signal.SIGINT)
    code = locked_demo.process.wait(timeout=20)
    err = locked_demo.err.read_text()
    assert code == 0, err
    assert "the pulse exited" not in err
    assert "demo stopped" in locked_demo.out.read_text()


def test_an_unknown_option_is_told_with_its_commands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: backbeat-edge demo ")
    assert "backbeat-edge demo: error: unrecognized arguments: --bogus" in err


def test_verbose_may_come_after_the_command() -> None:
    for argv in (["-v", "check", "--config", "x"], ["check", "--config", "x", "-v"]):
        assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["check", "--config", "x"]).verbose is False
