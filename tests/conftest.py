"""Shared fixtures: a private Mosquitto per test that asks for one, a fake clock, gpiozero's
mock pins and hardware built on them, one run of the demo, and the judge of the spoofing
tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from edge.broker import BrokerUnavailable, Mosquitto, find_mosquitto, start_mosquitto
from edge.clock import FakeClock
from edge.hardware import Hardware, Popen
from edge.harness import SPOOF_PLACE, pulse_beats, read_trace, wait_until
from edge.nats_cluster import find_nats_server
from edge.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
# The agent's executables live beside the interpreter running the tests.
BIN = Path(sys.executable).parent


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``backbeat-edge ARGS`` as a user runs it (``python -m edge.cli``, from the checkout),
    its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


#: The type of the ``cli`` fixture, for the tests that take it.
CliRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def _no_terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test depends on the size of the terminal it was run from (pytest-xdist's
    workers set COLUMNS=80 and LINES=24; a plain run inherits the caller's)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture
def cli() -> CliRun:
    """``cli(*args, timeout=60)``: see run_cli."""
    return run_cli


@pytest.fixture(scope="session")
def demo_run() -> subprocess.CompletedProcess[str]:
    """``backbeat-edge demo`` run once for 10 s at 120 BPM (plain output), for the tests that
    read what it printed: each run costs seconds, and they all ask the same command."""
    return run_cli("demo", "--duration", "10", "--plain", "--bpm", "120")


@dataclass
class LockedDemo:
    """A running ``demo --plain --bpm 240`` in its own session (as a terminal's foreground
    job is), locked to its pulse; its output in ``out`` and ``err``."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path


@pytest.fixture
def locked_demo(tmp_path: Path) -> Iterator[LockedDemo]:
    """The demo started and followed until it says "sync locked" (killed with its group at
    the end, whatever the test did to it)."""
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as o, err.open("wb") as e:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "demo", "--plain", "--bpm", "240"],
            stdout=o,
            stderr=e,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        locked = wait_until(lambda: "sync locked" in out.read_text(), 30)
        assert locked, err.read_text()
        yield LockedDemo(process, out, err)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def bench_config(tmp_path: Path) -> Path:
    """An ``agent.toml`` in the test's tmp dir for agent bench:pi-01 on the shipped bench
    profile (hw/bench.toml)."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nid = "bench:pi-01"\ncluster = "bench"\n'
        f'profile = "{ROOT / "hw" / "bench.toml"}"\n',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty systemd credentials directory (``tmp_path/creds``) named by
    CREDENTIALS_DIRECTORY for the test, as a unit's LoadCredential= gives the agent."""
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    return creds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def _installed_or_skip(find: Callable[[], str], required: bool) -> str:
    """``find()``'s path; a missing program skips the test, or fails it where ``required``
    (scripts/test sets BACKBEAT_REQUIRE_BROKER: the README's set-up installs Mosquitto)."""
    try:
        return find()
    except BrokerUnavailable as exc:
        if required:
            raise
        pytest.skip(str(exc))


def _private_mosquitto(persistence: bool) -> Iterator[Mosquitto]:
    _installed_or_skip(find_mosquitto, bool(os.environ.get("BACKBEAT_REQUIRE_BROKER")))
    broker = start_mosquitto(persistence=persistence)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, stopped by its pid afterwards."""
    yield from _private_mosquitto(persistence=False)


@pytest.fixture
def durable_mosquitto() -> Iterator[Mosquitto]:
    """As ``mosquitto``, with persistence on: sessions and queued QoS 1 messages survive a
    restart (``broker.restart()``), as on a fleet's real broker."""
    yield from _private_mosquitto(persistence=True)


@pytest.fixture
def nats_server() -> str:
    """The nats-server binary's path; the test is skipped where it is not installed."""
    return _installed_or_skip(find_nats_server, required=False)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh MockFactory as gpiozero's default for one test; the previous default is put
    back afterwards (as gpiozero's own tests/conftest.py does), so no test sees another's
    pins."""
    saved = Device.pin_factory
    Device.pin_factory = mock = MockFactory()
    try:
        yield mock
    finally:
        mock.reset()
        Device.pin_factory = saved


@pytest.fixture
def mock_hardware(factory: MockFactory) -> Iterator[Callable[..., Hardware]]:
    """Builds ``Hardware(profile, clock=..., popen=...)`` on the test's mock pins; everything
    it built is closed after the test, even one that failed half-way."""
    built: list[Hardware] = []

    def build(
        profile: Profile,
        clock: Callable[[], float] = time.monotonic,
        popen: Popen = subprocess.Popen,
    ) -> Hardware:
        hardware = Hardware(profile, pin_factory=factory, clock=clock, popen=popen)
        built.append(hardware)
        return hardware

    try:
        yield build
    finally:
        for hardware in reversed(built):
            hardware.close()


def _actuations_sit_on_the_pulse(
    pulse_trace: Path, agent_trace: Path, since: float, beat_s: float, at_least: int
) -> None:
    """Every action of SPOOF_PROFILE the agent fired from monotonic ``since`` (at least
    ``at_least`` of them) sits where the pulse's own beats put it, each beat gets its toggle
    once, in order, and the downbeat action fires on every true downbeat and no other beat.

    The pulse's trace gives the intended monotonic start of every beat it sent (same host,
    same clock as the agent's trace). The time the agent's timeline gives an action (its
    intended_mono) is what a spoof would move: it must sit within 2 ms of the truth, every
    time. When it really fired adds the wake-up, which on a loaded 2-core box spikes now and
    then, so that gets a generous window (30 ms): still far below the 140 ms an early copy
    would move it by.
    """
    starts = {k: start for k, (start, _) in pulse_beats(read_trace(pulse_trace)).items()}
    last_sent = max(starts)  # after it the agent free-ran: no truth to compare with
    rows = [
        r
        for r in read_trace(agent_trace)
        if r["fired_mono"] is not None and int(r["beat_index"]) <= last_sent  # type: ignore[call-overload]
    ]
    attacked = [r for r in rows if float(r["fired_mono"]) >= since]  # type: ignore[arg-type]
    assert len(attacked) >= at_least, len(attacked)
    errors = []
    for r in attacked:
        beat = int(r["beat_index"])  # type: ignore[call-overload]
        assert beat in starts, f"an action of beat {beat}, which the pulse never sent: {r}"
        phase, offset = SPOOF_PLACE[int(r["rule"])]  # type: ignore[call-overload]
        truth = starts[beat] + (phase + offset) * beat_s / 3
        errors.append(abs(float(r["intended_mono"]) - truth))  # type: ignore[arg-type]
        assert errors[-1] < 0.002, (r, truth, sorted(errors)[-5:])
        assert abs(float(r["fired_mono"]) - truth) < 0.03, (r, truth)  # type: ignore[arg-type]
    print(f"worst timeline error under attack: {max(errors) * 1000:.3f} ms of {len(errors)}")
    toggles = [int(r["beat_index"]) for r in rows if r["rule"] == 0]  # type: ignore[call-overload]
    assert toggles == list(range(toggles[0], toggles[-1] + 1)), toggles  # once each, in order
    # the downbeat action on every true downbeat of the attack (a lone spoofed downbeat on
    # beat 4k+3 would silence it for two bars), and on no other beat
    first = min(int(r["beat_index"]) for r in attacked)  # type: ignore[call-overload]
    downbeats = sorted(int(r["beat_index"]) for r in attacked if r["rule"] == 1)  # type: ignore[call-overload]
    assert downbeats == [b for b in range(first, last_sent + 1) if b % 4 == 0], downbeats


@pytest.fixture
def actuations_sit_on_the_pulse() -> Callable[[Path, Path, float, float, int], None]:
    """``check(pulse_trace, agent_trace, since, beat_s, at_least)``: the spoofing tests'
    judge of an agent running edge.harness.SPOOF_PROFILE (see _actuations_sit_on_the_pulse)."""
    return _actuations_sit_on_the_pulse
