"""The real agent process under a systemd-like supervisor.

A unix datagram socket stands in for systemd's NOTIFY_SOCKET; the agent runs with a
private Mosquitto and the real pulse. Checked: READY=1, readable STATUS= lines, WATCHDOG=1
at least twice per watchdog period, pings stopping when the loop is hung on purpose,
RELOADING=1 + MONOTONIC_USEC / READY=1 around SIGHUP, STOPPING=1 on SIGTERM; a reload
switching the score exactly at a beat boundary, and a broken reload keeping the old score.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from edge.broker import Mosquitto
from edge.harness import (
    ClaimRecorder,
    Proc,
    read_trace,
    start_agent,
    start_pulse,
    write_agent_config,
)
from edge.testing.notify import NotifySocket
from edge.testing.profiles import MOCK_LED, RELAY, TOGGLE_EVERY_BEAT

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROFILE_A = MOCK_LED + RELAY + TOGGLE_EVERY_BEAT
PROFILE_B = PROFILE_A.replace('device = "led"\ndo = "toggle"', 'device = "relay"\ndo = "toggle"')


def _start(
    tmp: Path, broker: Mosquitto, watchdog_s: float, hang: bool = False, bpm: float = 120
) -> tuple[NotifySocket, Proc, Proc, Path]:
    notify = NotifySocket(tmp / "notify.sock")
    config = write_agent_config(tmp, broker.url, PROFILE_A)
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    if hang:
        env["BACKBEAT_DEBUG_HANG"] = "1"
    agent = start_agent(config, tmp / "agent.jsonl", tmp / "agent.log", env=env)
    pulse = start_pulse(broker.url, "bench", bpm, None, tmp / "pulse.log")
    return notify, agent, pulse, config


def test_ready_status_watchdog_and_stopping(tmp_path: Path, mosquitto: Mosquitto) -> None:
    notify, agent, pulse, _ = _start(tmp_path, mosquitto, watchdog_s=1.0)
    try:
        assert notify.wait_for("READY=1", 15), agent.log()
        ready_at = notify.times("READY=1")[0]
        notify.drain(5.0)
        agent.signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 10)
        assert agent.process.wait(timeout=10) == 0
    finally:
        pulse.stop()
        agent.kill()
        notify.close()
    pings = [t for t in notify.times("WATCHDOG=1") if t > ready_at]
    # at least two pings in every 1 s watchdog period after start-up
    span = pings[-1] - pings[0]
    assert len(pings) >= 2 * int(span) and span > 3.5, pings
    assert max(b - a for a, b in itertools.pairwise(pings)) <= 0.5 + 0.15, pings
    statuses = [m for _, m in notify.messages if m.startswith("STATUS=")]
    assert any("sync locked" in s and "beat" in s and "backlog" in s for s in statuses), statuses
    assert notify.times("STOPPING=1"), notify.messages


def test_watchdog_pings_stop_when_the_loop_hangs(tmp_path: Path, mosquitto: Mosquitto) -> None:
    notify, agent, pulse, _ = _start(tmp_path, mosquitto, watchdog_s=1.0, hang=True)
    try:
        assert notify.wait_for("READY=1", 15), agent.log()
        notify.drain(2.0)
        before = len(notify.times("WATCHDOG=1"))
        assert before >= 3
        agent.signal(signal.SIGUSR2)  # the debug hook hangs the loop
        notify.drain(0.3)
        hung_at = time.monotonic()
        notify.drain(3.0)
    finally:
        pulse.stop()
        agent.kill()
        notify.close()
    assert not [t for t in notify.times("WATCHDOG=1") if t > hung_at], "pinged while hung"
    assert "deliberately hung" in agent.log()


def test_reload_switches_score_at_a_beat_boundary(tmp_path: Path, mosquitto: Mosquitto) -> None:
    notify, agent, pulse, _config = _start(tmp_path, mosquitto, watchdog_s=5.0)
    trace = tmp_path / "agent.jsonl"
    try:
        assert notify.wait_for("READY=1", 15)
        end = time.monotonic() + 20
        while time.monotonic() < end and len(read_trace(trace)) < 6:
            notify.drain(0.1)
        (tmp_path / "profile.toml").write_text(PROFILE_B)
        agent.signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1", 5)
        notify.drain(3.0)
        # a broken config: the old (B) score stays, with a clear error
        (tmp_path / "profile.toml").write_text(PROFILE_B + "\n[[score]]\ndevice = 'nope'\n")
        agent.signal(signal.SIGHUP)
        notify.drain(3.0)
        agent.signal(signal.SIGTERM)
        assert agent.process.wait(timeout=10) == 0
        notify.drain(0.2)
    finally:
        pulse.stop()
        agent.kill()
        notify.close()
    reloading = [m for _, m in notify.messages if "RELOADING=1" in m]
    assert reloading and all("MONOTONIC_USEC=" in m for m in reloading)
    assert len(notify.times("READY=1")) >= 3  # start-up, and after each reload
    rows = [r for r in read_trace(trace) if r["fired_mono"]]
    devices = [(int(r["beat_index"]), str(r["device"])) for r in rows]  # type: ignore[call-overload]
    log = agent.log()
    first_b = next((i for i, (_, d) in enumerate(devices) if d == "relay"), None)
    assert first_b is not None, f"the new score never played: {devices}\n{log}"
    before, after = devices[:first_b], devices[first_b:]
    assert before and all(d == "led" for _, d in before)
    assert len(after) >= 8 and all(d == "relay" for _, d in after), devices
    # the switch falls exactly on a beat boundary: no beat lost, none doubled
    assert after[0][0] == before[-1][0] + 1, devices
    assert "reload refused" in log and "devices.nope" not in log.split("reload refused")[0]
    assert "score[1]" in log or "nope" in log


# A pin that exists on the board but fails on the real pins (busy with another process, say)
# passes check and preflight, which build on a mock of the board, and is isolated when the
# agent builds it. This stands in for it: the agent's own pin factory (made without a
# revision, as gpiozero makes its default) refuses GPIO23; the preflight mock does not.
BUSY_PIN_SITE = """
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory

_init, _pin = MockFactory.__init__, MockFactory.pin


def __init__(self, revision=None, pin_class=None):
    _init(self, revision=revision, pin_class=pin_class)
    self.test_busy = revision is None


def pin(self, name):
    made = _pin(self, name)
    if getattr(self, "test_busy", False) and made.info.name == "GPIO23":
        raise GPIOPinInUse("GPIO23 is busy (test: held by another process)")
    return made


MockFactory.__init__, MockFactory.pin = __init__, pin
"""

MISWIRED = (
    PROFILE_A
    + """
[devices.fan]
kind = "output"
pin = 23
[[score]]
device = "fan"
do = "toggle"
every = 1
essential = true  # the test is about the reload: a loaded machine must not shed the fan
"""
)


def test_a_reload_after_fixing_the_wiring_brings_the_device_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The fan is wired to a pin that fails on the real pins: isolated at start, named in
    # every claim. The operator moves it to a free pin and reloads: the devices are rebuilt
    # at a beat boundary and the fan plays, while the LED never misses a beat. (A pin the
    # board does not have, GPIO99, is refused by run itself: see test_hostile_configs.)
    config = write_agent_config(tmp_path, mosquitto.url, MISWIRED)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BUSY_PIN_SITE)
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    recorder = ClaimRecorder(mosquitto.port)
    trace = tmp_path / "agent.jsonl"
    agent = start_agent(config, trace, tmp_path / "agent.log", env={"PYTHONPATH": pythonpath})
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and sum(r["device"] == "fan" for r in read_trace(trace)) < 6:
            time.sleep(0.1)
        (tmp_path / "profile.toml").write_text(MISWIRED.replace("pin = 23", "pin = 22"))
        agent.signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while (
            time.monotonic() < end
            and sum(r["device"] == "fan" and r["ok"] is True for r in read_trace(trace)) < 8
        ):
            time.sleep(0.1)
        time.sleep(1.0)  # a few claims after
        assert agent.stop() == 0, agent.log()
    finally:
        pulse.stop()
        agent.kill()
        recorder.stop()
    rows = read_trace(trace)
    fan = [r for r in rows if r["device"] == "fan"]
    first_ok = next(i for i, r in enumerate(fan) if r["ok"])
    assert first_ok >= 6 and all(r["dropped"] == "isolated" for r in fan[:first_ok]), fan
    assert all(r["ok"] and r["fired_mono"] for r in fan[first_ok:]), fan
    assert len(fan) - first_ok >= 8
    led = sorted(
        int(r["beat_index"])  # type: ignore[call-overload]
        for r in rows
        if r["device"] == "led" and r["ok"]
    )
    assert led == list(range(led[0], led[-1] + 1)), led  # no beat lost to the rebuild
    meta = [dict(c.metadata or {}) for c in recorder.claims if not (c.metadata or {}).get("final")]
    isolated = [m.get("isolated") for m in meta]
    flip = isolated.index(None)
    assert flip >= 3 and all(v == ("fan",) for v in isolated[:flip]), isolated
    assert all(v is None for v in isolated[flip:]), isolated
    log = agent.log()
    assert "fan: build failed" in log and "devices rebuilt from the new profile" in log


def test_sigterm_leaves_every_output_safe(tmp_path: Path, mosquitto: Mosquitto) -> None:
    notify, agent, pulse, _ = _start(tmp_path, mosquitto, watchdog_s=5.0, bpm=240)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and len(read_trace(tmp_path / "agent.jsonl")) < 5:
            time.sleep(0.1)
        agent.signal(signal.SIGTERM)
        assert agent.process.wait(timeout=10) == 0
    finally:
        pulse.stop()
        agent.kill()
        notify.close()
    log = agent.log()
    line = next(x for x in log.splitlines() if "outputs after safe state" in x)
    assert "'led': False" in line and "'relay': False" in line, line
