#!/usr/bin/env python3
"""Side by side with a peer: backbeat-edge and mqtt-io 2.7.0 on the same work.

One private Mosquitto (``edge.broker``); one action per beat at 120 BPM on a gpiozero mock
pin, run by each in turn:

* backbeat-edge follows beat frames and toggles its pin at the start of every beat's
  execute phase (it fires on its own timeline, not on receipt);
* mqtt-io (installed by this script into a throwaway virtual environment outside the
  checkout, with its ``gpiozero`` GPIO module on ``GPIOZERO_PIN_FACTORY=mock``) fires on
  receipt, so this script publishes its command (``{prefix}/output/{name}/set``, ``ON`` /
  ``OFF`` in turn) at that same intended time.

This script is the only publisher, for both: beat k's message goes out at its time plus a
delay drawn from one seeded generator, the same draws for both (0, then 0-50 ms). Every pin
change is stamped in the process that makes it (a ``sitecustomize`` shim on ``PYTHONPATH``
wraps gpiozero's ``MockPin._change_state``, identical for both), on the host's monotonic
clock, and compared with the intended time. It prints lateness p50/p99/max, misses, CPU (%
of one core and CPU seconds per minute, psutil ``cpu_times``) and RSS of each, and the
ratios. Bounded: about 4 x (warm-up + beats) seconds plus the first venv install.

Usage: .venv/bin/python scripts/bench_peer.py [--beats N] [--warmup-s S] [--venv DIR]
If PyPI cannot be reached it says so and prints the backbeat-edge half.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import start_mosquitto
from edge.clock import SystemClock
from edge.harness import start_agent, write_agent_config
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import encode
from edge.pulse import PulseSchedule, precise_sleep_until
from edge.testing.measure import pct, peak_rss_mb

MQTT_IO = "mqtt-io==2.7.0"
#: What the throwaway venv gets: mqtt-io and its gpiozero module's requirement.
PEER = (MQTT_IO, "gpiozero")
BPM = 120.0
PIN = 17
PREFIX_IO = "benchio"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "backbeat-edge/bench_peer/venv-mqtt-io-2.7.0"
)

PROFILE = f"""
[gpio]
pin_factory = "mock"
[devices.out]
kind = "output"
pin = {PIN}
[[score]]
device = "out"
do = "toggle"
phase = "execute"
offset = 0.0
essential = true
"""

MQTT_IO_CONFIG = f"""
mqtt:
  host: 127.0.0.1
  port: {{port}}
  topic_prefix: {PREFIX_IO}
  client_id: bench-mqtt-io
gpio_modules:
  - name: mock
    module: gpiozero
digital_outputs:
  - name: out
    module: mock
    pin: {PIN}
    publish_initial: false
logging:
  version: 1
  handlers:
    console:
      class: logging.StreamHandler
      level: WARNING
  loggers:
    mqtt_io:
      level: WARNING
      handlers: [console]
"""

# Wraps gpiozero's mock pin: every real change is stamped (before it is made) and
# written as one line, "monotonic pin value", to the file named by BENCH_PIN_LOG.
SHIM = """
import os
_path = os.environ.get("BENCH_PIN_LOG")
if _path:
    import time
    from gpiozero.pins import mock as _mock
    _fd = os.open(_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _orig = _mock.MockPin._change_state
    def _change_state(self, value, _orig=_orig, _now=time.monotonic, _write=os.write):
        t = _now()
        changed = _orig(self, value)
        if changed:
            _write(_fd, f"{t:.7f} {self.info.name} {int(bool(value))}\\n".encode())
        return changed
    _mock.MockPin._change_state = _change_state
"""


# ------------------------------------------------------------------ the throwaway venv


def ensure_peer_venv(venv: Path) -> Path | str:
    """The python of a venv with mqtt-io 2.7.0 and gpiozero, made once; or why not."""
    python = venv / "bin" / "python"
    stamp = venv / ".bench-peer-installed"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == MQTT_IO:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=False)
    if made.returncode != 0:
        return f"could not create a virtual environment in {venv}"
    print(f"installing {MQTT_IO} into {venv} (once) ...", file=sys.stderr, flush=True)
    try:
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return f"pip install {MQTT_IO} took over 300 s (is PyPI reachable?)"
    if pip.returncode != 0:
        tail = " | ".join((pip.stderr or pip.stdout).strip().splitlines()[-3:])
        return f"pip install {MQTT_IO} failed (is PyPI reachable?): {tail}"
    stamp.write_text(MQTT_IO + "\n")
    return python


# ------------------------------------------------------------------ the delaying publisher


@dataclass
class Schedule:
    """What one run sends: beat starts, intended pin times and per-beat extra delays."""

    start: float
    beat_s: float
    delays: list[float]

    def beat_start(self, k: int) -> float:
        return self.start + k * self.beat_s

    def intended(self, k: int) -> float:
        return self.beat_start(k) + self.beat_s / 3.0  # the execute phase's start


def delays(beats: int, jitter_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0 for _ in range(beats)]


def publish_run(
    port: int, schedule: Schedule, message: Callable[[int], tuple[str, bytes, float]]
) -> None:
    """Send ``message(k)`` = (topic, payload, send time before its delay) for every beat,
    each at that time plus its delay, from a thread of this process."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer-pulse")
    client.connect("127.0.0.1", port)
    client.loop_start()
    sock = client.socket()
    if sock is not None:
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for k, extra in enumerate(schedule.delays):
            topic, payload, at = message(k)
            precise_sleep_until(at + extra)
            client.publish(topic, payload, qos=0)
    finally:
        client.loop_stop()
        client.disconnect()


# ------------------------------------------------------------------ one run


@dataclass
class Result:
    name: str
    jitter_ms: float
    late_ms: list[float]
    missed: int
    cpu_s: float
    wall_s: float
    rss_mb: float
    peak_mb: float

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s

    @property
    def cpu_s_per_min(self) -> float:
        return 60.0 * self.cpu_s / self.wall_s


def lateness(pin_log: Path, schedule: Schedule, first: int) -> tuple[list[float], int]:
    """Each measured beat's pin change nearest its intended time (within half a beat)."""
    changes = []
    if pin_log.exists():
        for line in pin_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                changes.append(float(parts[0]))
    late, missed = [], 0
    for k in range(first, len(schedule.delays)):
        want = schedule.intended(k)
        near = [t for t in changes if abs(t - want) < schedule.beat_s / 2.0]
        if not near:
            missed += 1
            continue
        late.append((min(near, key=lambda t: abs(t - want)) - want) * 1000.0)
    return late, missed


def measure(
    name: str,
    proc: subprocess.Popen[bytes],
    port: int,
    schedule: Schedule,
    first: int,
    message: Callable[[int], tuple[str, bytes, float]],
) -> tuple[float, float, float, float]:
    """Publish the whole schedule, measuring the process's CPU over beats ``first``..end."""
    ps = psutil.Process(proc.pid)
    marks: dict[str, tuple[float, float]] = {}

    def mark(key: str, at: float) -> None:
        precise_sleep_until(at)
        times = ps.cpu_times()
        marks[key] = (times.user + times.system, time.monotonic())

    n = len(schedule.delays)
    watcher = threading.Thread(
        target=lambda: (
            mark("a", schedule.beat_start(first)),
            mark("b", schedule.beat_start(n - 1) + schedule.beat_s * 0.9),
        ),
        daemon=True,
    )
    watcher.start()
    publish_run(port, schedule, message)
    watcher.join(timeout=schedule.beat_s * 2 + 5)
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited early with {proc.returncode}")
    rss = ps.memory_info().rss / (1024.0 * 1024.0)
    peak = peak_rss_mb(proc.pid)
    (cpu0, t0), (cpu1, t1) = marks["a"], marks["b"]
    return cpu1 - cpu0, t1 - t0, rss, peak


def run_edge(
    port: int, url: str, work: Path, shim: Path, jitter_ms: float, beats: int, warm: int
) -> Result:
    config = write_agent_config(work, url, PROFILE, cluster="bench")
    pin_log = work / "pins.log"
    env = {"PYTHONPATH": str(shim), "BENCH_PIN_LOG": str(pin_log)}
    agent = start_agent(config, None, work / "agent.log", env=env)
    try:
        time.sleep(1.5)  # imports done, connected
        beat_s = 60.0 / BPM
        n = warm + beats
        clock = SystemClock()
        start = clock.monotonic() + 0.2
        pulse = PulseSchedule("bench", BPM, 4, start, clock.wall() + 0.2)
        slots = [pulse.advance() for _ in range(n)]
        hlc = HybridLogicalClock(clock, node_id("pulse:bench"))
        schedule = Schedule(start, beat_s, delays(n, jitter_ms / 1000.0, seed=16))

        def message(k: int) -> tuple[str, bytes, float]:
            frame = pulse.frame(slots[k], 0, hlc.now_wire())
            return "backbeat/bench/beat", encode(frame, "cbor"), slots[k].start_mono

        cpu, wall, rss, peak = measure(
            "backbeat-edge", agent.process, port, schedule, warm, message
        )
        time.sleep(schedule.beat_s)
    finally:
        agent.signal(signal.SIGTERM)
        try:
            agent.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
    late, missed = lateness(pin_log, schedule, warm)
    return Result("backbeat-edge", jitter_ms, late, missed, cpu, wall, rss, peak)


def run_mqtt_io(
    python: Path, port: int, work: Path, shim: Path, jitter_ms: float, beats: int, warm: int
) -> Result:
    config = work / "mqtt-io.yml"
    config.write_text(MQTT_IO_CONFIG.format(port=port), encoding="utf-8")
    pin_log = work / "pins.log"
    env = dict(os.environ)
    env.update(PYTHONPATH=str(shim), BENCH_PIN_LOG=str(pin_log), GPIOZERO_PIN_FACTORY="mock")
    with (work / "mqtt-io.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "mqtt_io", str(config)], stdout=log, stderr=log, env=env
        )
    try:
        time.sleep(3.0)  # imports, connect, subscribe
        beat_s = 60.0 / BPM
        n = warm + beats
        start = time.monotonic() + 0.2
        schedule = Schedule(start, beat_s, delays(n, jitter_ms / 1000.0, seed=16))
        topic = f"{PREFIX_IO}/output/out/set"

        def message(k: int) -> tuple[str, bytes, float]:
            return topic, b"ON" if k % 2 == 0 else b"OFF", schedule.intended(k)

        cpu, wall, rss, peak = measure("mqtt-io", proc, port, schedule, warm, message)
        time.sleep(schedule.beat_s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    late, missed = lateness(pin_log, schedule, warm)
    if not late:
        tail = (work / "mqtt-io.log").read_text(errors="replace")[-800:]
        print(f"mqtt-io changed no pin; its log ends:\n{tail}", file=sys.stderr)
    return Result("mqtt-io 2.7.0", jitter_ms, late, missed, cpu, wall, rss, peak)


# ------------------------------------------------------------------ report


def row(r: Result) -> str:
    errors = [abs(v) for v in r.late_ms]
    return (
        f"{r.name:<14} {r.jitter_ms:>6.0f} {len(r.late_ms):>5d} {r.missed:>6d} "
        f"{statistics.median(r.late_ms) if r.late_ms else float('nan'):>8.3f} "
        f"{pct(r.late_ms, 0.99):>8.3f} {max(r.late_ms, default=float('nan')):>8.3f} "
        f"{pct(errors, 0.99):>8.3f} "
        f"{r.cpu_pct:>6.2f} {r.cpu_s_per_min:>7.3f} {r.rss_mb:>6.1f} {r.peak_mb:>7.1f}"
    )


def ratio(peer: float, edge: float) -> str:
    return f"x{peer / edge:.1f}" if edge > 0 else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beats", type=int, default=120, help="measured beats per run")
    parser.add_argument("--warmup-s", type=float, default=8.0, help="beats sent before")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="mqtt-io's venv")
    parser.add_argument("--edge-only", action="store_true", help="skip mqtt-io")
    args = parser.parse_args()
    warm = max(4, round(args.warmup_s * BPM / 60.0))
    python: Path | str = "skipped (--edge-only)"
    if not args.edge_only:
        python = ensure_peer_venv(args.venv)
        if isinstance(python, str):
            print(f"mqtt-io half skipped: {python}", file=sys.stderr)
    results: list[Result] = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, start_mosquitto() as broker:
        shim = Path(tmp) / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SHIM, encoding="utf-8")
        for jitter in (0.0, 50.0):
            work = Path(tmp) / f"edge-{jitter:.0f}"
            work.mkdir()
            results.append(run_edge(broker.port, broker.url, work, shim, jitter, args.beats, warm))
            if isinstance(python, Path):
                work = Path(tmp) / f"io-{jitter:.0f}"
                work.mkdir()
                results.append(
                    run_mqtt_io(python, broker.port, work, shim, jitter, args.beats, warm)
                )
    load1 = os.getloadavg()
    print(
        f"one action per beat at {BPM:.0f} BPM, {args.beats} measured beats per row; "
        f"lateness of pin changes vs the intended time (ms)"
    )
    head = (
        f"{'agent':<14} {'jit ms':>6} {'fired':>5} {'missed':>6} {'p50':>8} {'p99':>8} "
        f"{'max':>8} {'p99 |e|':>8} {'cpu %':>6} {'cpu s/m':>7} {'RSS MB':>6} {'peak MB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(row(r))
    edge = {r.jitter_ms: r for r in results if r.name == "backbeat-edge"}
    peer = {r.jitter_ms: r for r in results if r.name != "backbeat-edge"}
    if peer:
        print("\nratios mqtt-io / backbeat-edge (above 1: backbeat-edge better or lighter)")
        for jitter, e in edge.items():
            p = peer.get(jitter)
            if p is None or not e.late_ms or not p.late_ms:
                continue
            pe = [abs(v) for v in p.late_ms]
            ee = [abs(v) for v in e.late_ms]
            print(
                f"  0-{jitter:.0f} ms: |error| p50 "
                f"{ratio(statistics.median(pe), statistics.median(ee))}, p99 "
                f"{ratio(pct(pe, 0.99), pct(ee, 0.99))}, max {ratio(max(pe), max(ee))}; "
                f"CPU {ratio(p.cpu_s, e.cpu_s)}, RSS {ratio(p.rss_mb, e.rss_mb)}"
            )
    print(
        f"\nbox: {os.cpu_count()} cores, load average {load0[0]:.2f} at start, "
        f"{load1[0]:.2f} at end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
