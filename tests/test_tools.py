"""No silent failure in the tools: demo, pulse, monitor, check and the link say what went
wrong and exit non-zero, with no traceback (subprocesses bounded in time, loopback only)."""

from __future__ import annotations

import argparse
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from edge.broker import Mosquitto, free_port, start_mosquitto
from edge.cli import EXIT_PIPE_CLOSED, build_parser, main
from edge.config import parse_broker
from edge.errors import ConfigProblems
from edge.harness import wait_until
from edge.mqtt_link import MqttLink

if TYPE_CHECKING:
    from conftest import CliRun, LockedDemo

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there


# --------------------------------------------------------------------------- demo


@pytest.mark.broker
@pytest.mark.slow
def test_demo_shows_the_pulse_error_and_fails(locked_demo: LockedDemo) -> None:
    demo = locked_demo.process
    [pulse] = [child for child in psutil.Process(demo.pid).children() if "pulse" in child.cmdline()]
    pulse.kill()  # the pulse dies under the running demo
    started = time.monotonic()
    code = demo.wait(timeout=20)
    out, err = locked_demo.out.read_text(), locked_demo.err.read_text()
    assert time.monotonic() - started < 10, "the demo waited for a pulse that had died"
    assert code == 1, err
    assert "the pulse exited with code -9" in err
    assert "Traceback" not in err
    # It said where its broker was and how to watch it.
    url = re.search(r"broker (mqtt://127\.0\.0\.1:\d+)", out)
    assert url is not None, out
    assert f"monitor --broker {url.group(1)} --cluster demo" in out


#: A pulse command line that parses, for the cases below to add one bad option to.
_PULSE = ("pulse", "--broker", "mqtt://127.0.0.1:1", "--cluster", "x", "--bpm", "60")


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("demo", "--bpm", "0"), "argument --bpm: must be between 0.1 and 1000 BPM, got '0'"),
        (("demo", "--duration", "-1"), "argument --duration: must be a finite number of seconds"),
        (
            (*_PULSE, "--duration", "nan"),
            "argument --duration: must be a finite number of seconds above 0, got 'nan'",
        ),
        (
            (*_PULSE, "--connect-timeout", "-1"),
            "argument --connect-timeout: must be a finite number of seconds above 0, got '-1'",
        ),
        (("run", "--config", "x.toml", "--duration", "inf"), "argument --duration"),
        (
            ("monitor", "--broker", "mqtt://127.0.0.1:1", "--cluster", "x", "--duration", "0"),
            "argument --duration",
        ),
        (
            (
                "timekeeper",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--cluster",
                "x",
                "--connect-timeout",
                "x",
            ),
            "argument --connect-timeout: must be a number of seconds",
        ),
    ],
)
def test_bad_tempos_durations_and_time_outs_are_refused_before_anything_starts(
    args: tuple[str, ...], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    assert shown in capsys.readouterr().err


# --------------------------------------------------------------------------- pulse


@pytest.mark.slow
def test_pulse_fails_when_it_never_reached_the_broker(cli: CliRun) -> None:
    url = _closed_port()
    args = ("pulse", "--broker", url, "--cluster", "bench", "--bpm", "240")
    result = cli(*args, "--duration", "2", "--connect-timeout", "1", timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the broker at {url} in 1 s" in result.stderr
    assert "Connection refused" in result.stderr and "no beat sent" in result.stderr
    assert "pulse sent" not in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- monitor


@pytest.mark.slow
def test_monitor_fails_when_it_never_reached_the_broker(cli: CliRun) -> None:
    url = _closed_port()
    result = cli("monitor", "--broker", url, "--cluster", "bench", "--duration", "2", timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"connecting to {url}" in result.stdout  # shown, not an empty table
    assert f"never reached the broker at {url}" in result.stderr
    assert "Traceback" not in result.stderr
    # With no --duration it gives up after --connect-timeout; --json says it on stderr.
    started = time.monotonic()
    result = cli(
        "monitor", "--broker", url, "--cluster", "bench", "--json", "--connect-timeout", "1",
        timeout=30,
    )  # fmt: skip
    assert time.monotonic() - started < 15
    assert result.returncode == 1 and result.stdout == ""
    assert f"backbeat-edge monitor: connecting to {url}" in result.stderr
    assert f"cannot reach the broker at {url} in 1 s" in result.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_monitor_says_disconnected_when_the_broker_dies(tmp_path: Path) -> None:
    broker: Mosquitto = start_mosquitto()
    out = tmp_path / "monitor.out"
    with out.open("w") as sink:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "monitor", "--broker", broker.url,
             "--cluster", "bench", "--duration", "20"],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    try:
        assert wait_until(lambda: f"connected to {broker.url}" in out.read_text(), 15)
        broker.close()
        assert wait_until(lambda: "DISCONNECTED" in out.read_text(), 10), out.read_text()[-500:]
        time.sleep(1.0)  # it keeps saying so while the broker is away
        last_screen = out.read_text().split("\x1b[H\x1b[2J")[-1]
        assert f"DISCONNECTED from {broker.url}" in last_screen
        assert "the rows below are as last seen" in last_screen
    finally:
        broker.close()
        monitor.terminate()
        _, err = monitor.communicate(timeout=10)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- link


def test_the_link_logs_a_broker_that_never_sends_connack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A listening socket nobody accepts on: the kernel completes the TCP handshake, and
    # then nothing ever answers the CONNECT.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    broker = parse_broker(
        {"url": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.05, "reconnect_max_s": 0.1},
        ConfigProblems("test"),
        ROOT,
    )
    link = MqttLink(broker, "silent-test", connack_timeout_s=0.5)
    caplog.set_level(logging.WARNING, logger="edge.mqtt_link")
    link.start()
    try:
        assert wait_until(lambda: "sent no CONNACK" in caplog.text, 10), caplog.text
    finally:
        link.stop(timeout=2.0)
        silent.close()
    line = next(r.getMessage() for r in caplog.records if "CONNACK" in r.getMessage())
    assert f"127.0.0.1:{port}" in line and "0.5 s" in line
    assert not link.connected


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize("tempo", ["abc", "0", "nan", "inf", "5000", ""])
def test_check_refuses_a_bad_tempo_cleanly(
    tempo: str, bench_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", str(bench_config), "--tempo", "60", tempo])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --tempo" in err and repr(tempo) in err, err


@pytest.mark.parametrize(
    "args",
    [("check", "--config", "{config}"), ("--help",), ("check", "--help")],
    ids=["check", "help", "check-help"],
)
def test_a_closed_pipe_is_no_traceback(args: tuple[str, ...], bench_config: Path) -> None:
    config = bench_config
    argv = [a.replace("{config}", str(config)) for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command writes (| head, at once)
    _, err = proc.communicate(timeout=30)
    # argparse's own --help ignores the closed pipe and exits 0; our output says so.
    assert proc.returncode == (0 if "--help" in args else EXIT_PIPE_CLOSED), err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


# --------------------------------------------------------------------------- help


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["run", "pulse", "check", "demo", "monitor"])
def test_every_option_help_shows_its_default(command: str) -> None:
    parser = _subparsers()[command]
    text = " ".join(parser.format_help().split())
    shown = 0
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        assert f"(default: {action.default})" in text, (action.dest, text)
        shown += 1
    assert command in ("run", "check") or shown > 0
    if command == "check":
        assert "(default: 1 10 60 240 1000)" in text
