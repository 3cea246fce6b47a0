#!/usr/bin/env python3
"""Cost of applying each action kind through edge.hardware on gpiozero's mock pins.

Run with the project's interpreter: .venv/bin/python scripts/bench_hardware.py [-n N]

For each action it times ``Hardware.apply`` (and the ``tick`` that finishes it, where there
is one) and prints the median and p99 in microseconds. The "raw gpiozero" row is the same
pin write without our layer; the layer's overhead per digital action is the difference of
medians and must stay under 100 us. The cold rows apply after a 25 ms pause (as at one
action per beat phase), without ``Hardware.warm``, with it 1 ms before (a sleep in
between cools the caches again) and with it right before (as a runner that spins the last
~2 ms to its deadline would call it).

The command rows: what ``apply`` of a command costs the caller (the loop) now that the
start is the launcher thread's (microseconds), the same followed at once by an LED write
(an essential action scheduled right after a command: the launcher's Popen must not hold
it up), how long after the ``apply`` the process exists (the launcher's latency, off the
loop), and a bare ``subprocess.Popen`` of the same program: what the loop used to wait.
``--hogs N`` runs the command rows beside N CPU-burning processes, as on a loaded Pi.

The python rows (a ``python`` device, its worker process): what ``prepare_calls`` (the
hand-off, done ahead of the call's time) and ``apply`` of a prepared call cost the loop,
and the hand-off itself, the target being 0.5 ms: how long after its intended time the
function is entered (the worker's ``time.monotonic()`` against the time the call was
handed over with), when it is handed over 50 ms ahead, and, for comparison, when it is
sent only at its time. ``--hogs`` applies to them too.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory

from edge.errors import ConfigProblems
from edge.hardware import Hardware
from edge.hardware.commands import start_command
from edge.profile import parse_profile
from edge.score import Action, CallJob

#: The hand-off target: a python call starts within this long of its time.
HANDOFF_LIMIT_US = 500.0

PROFILE = """
[devices.led]
kind = "led"
pin = 17
[devices.relay]
kind = "relay"
pin = 27
active_high = false
max_switch_hz = 1000
max_on_s = 60
[devices.glow]
kind = "pwmled"
pin = 18
[devices.arm]
kind = "servo"
pin = 12
[devices.tone]
kind = "tone"
pin = 13
[devices.btn]
kind = "button"
pin = 5
[devices.sh]
kind = "command"
timeout_s = 5
"""

DIGITAL_LIMIT_US = 100.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(
    n: int,
    step: Callable[[int], None],
    pause: float = 0.0,
    before: Callable[[], None] | None = None,
    gap: float = 0.001,
) -> list[float]:
    """Run ``step(i)`` n times; return each call's duration in microseconds."""
    out: list[float] = []
    clock = time.perf_counter_ns
    for i in range(n):
        if pause:
            time.sleep(pause)
            if before is not None:
                before()
                if gap:
                    time.sleep(gap)
        t0 = clock()
        step(i)
        out.append((clock() - t0) / 1000.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="repetitions per hot row")
    parser.add_argument("--cold", type=int, default=200, help="repetitions per cold row")
    parser.add_argument("--commands", type=int, default=100, help="repetitions per command row")
    parser.add_argument("--calls", type=int, default=100, help="repetitions per python row")
    parser.add_argument(
        "--hogs", type=int, default=0, help="CPU-burning processes beside the command rows"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the bench's dead-man and close are expected
    n = args.n

    problems = ConfigProblems("bench")
    profile = parse_profile(tomllib.loads(PROFILE), problems)
    problems.raise_if_any()
    factory = MockFactory()
    Device.pin_factory = factory
    hw = Hardware(profile, pin_factory=factory)
    now = [0.0]

    def apply(action: Action) -> None:
        now[0] += 0.01
        result = hw.apply(action, now[0])
        if not result.ok:
            raise SystemExit(f"benchmark action failed: {result}")

    def apply_tick(action: Action, span: float) -> Callable[[int], None]:
        def run(_: int) -> None:
            apply(action)
            now[0] += span
            hw.tick(now[0])

        return run

    on, off = Action("led", "on"), Action("led", "off")
    rows: list[tuple[str, list[float]]] = []

    raw_factory = MockFactory()
    raw = LED(4, pin_factory=raw_factory)
    rows.append(("raw gpiozero LED.on/off", timed(n, lambda i: raw.on() if i % 2 else raw.off())))
    rows.append(("led on/off", timed(n, lambda i: apply(on if i % 2 else off))))
    rows.append(("led toggle", timed(n, lambda i: apply(Action("led", "toggle")))))
    rows.append(
        (
            "relay on/off (rate limit, dead-man)",
            timed(n, lambda i: apply(Action("relay", "on" if i % 2 else "off"))),
        )
    )
    rows.append(
        (
            "led pulse + tick(off)",
            timed(n, apply_tick(Action("led", "pulse", duration_s=0.005), 0.005)),
        )
    )
    rows.append(("led read", timed(n, lambda i: apply(Action("led", "read")))))
    rows.append(("button read", timed(n, lambda i: apply(Action("btn", "read")))))
    rows.append(("pwm set", timed(n, lambda i: apply(Action("glow", "set", value=(i % 10) / 10)))))
    rows.append(
        (
            "pwm fade start",
            timed(n, lambda i: apply(Action("glow", "fade", value=float(i % 2), duration_s=0.1))),
        )
    )

    def fade_step(_: int) -> None:
        now[0] += 0.02
        hw.tick(now[0])

    apply(Action("glow", "fade", value=1.0, duration_s=1e6))
    rows.append(("pwm fade step (tick)", timed(n, fade_step)))
    apply(Action("glow", "off"))
    rows.append(
        ("servo move", timed(n, lambda i: apply(Action("arm", "move", value=(i % 3) - 1.0))))
    )
    rows.append(
        (
            "tone beep + tick(stop)",
            timed(n // 5, apply_tick(Action("tone", "beep", value=440.0, duration_s=0.01), 0.01)),
        )
    )
    rows.append(("tick, nothing due", timed(n, lambda i: hw.tick(now[0]))))
    rows.append(("next_deadline", timed(n, lambda i: hw.next_deadline())))

    cold = args.cold
    rows.append(
        (
            "led on/off cold (25 ms idle)",
            timed(cold, lambda i: apply(on if i % 2 else off), pause=0.025),
        )
    )
    rows.append(
        (
            "led on/off cold, warm() 1 ms before",
            timed(
                cold,
                lambda i: apply(on if i % 2 else off),
                pause=0.024,
                before=lambda: hw.warm(["led"]),
            ),
        )
    )
    rows.append(
        (
            "led on/off cold, warm() just before",
            timed(
                cold,
                lambda i: apply(on if i % 2 else off),
                pause=0.025,
                before=lambda: hw.warm(["led"]),
                gap=0.0,
            ),
        )
    )

    argv = ("/bin/true",) if os.path.exists("/bin/true") else (sys.executable, "-c", "")
    start = Action("sh", "command", argv=argv, duration_s=5.0)

    def settle() -> None:
        """Let the launcher start it and the loop reap it (off the clock)."""
        hw.wait_for_starts(10.0)
        while hw.next_deadline() is not None:
            time.sleep(0.001)
            now[0] += 0.02
            hw.tick(now[0])

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        apply(start)  # a first start warms the path (exec of the program): not timed
        settle()
        applies: list[float] = []
        with_led: list[float] = []
        to_started: list[float] = []
        clock = time.perf_counter_ns
        for i in range(args.commands):
            t0 = clock()
            apply(start)
            t1 = clock()
            apply(on if i % 2 else off)
            t2 = clock()
            hw.wait_for_starts(10.0)
            t3 = clock()
            applies.append((t1 - t0) / 1000.0)
            with_led.append((t2 - t0) / 1000.0)
            to_started.append((t3 - t0) / 1000.0)
            settle()
        bare: list[float] = []
        for _ in range(args.commands):
            t0 = clock()
            proc = start_command(subprocess.Popen, argv)
            bare.append((clock() - t0) / 1000.0)
            proc.communicate()
        calls = python_rows(args.calls)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    load = f", {args.hogs} hogs" if args.hogs else ""
    rows.append((f"command start: apply() to caller{load}", applies))
    rows.append((f"command start + led on/off{load}", with_led))
    rows.append((f"command apply -> process exists{load}", to_started))
    rows.append((f"bare Popen {argv[0]} (old loop cost){load}", bare))
    rows += [(name + load, values) for name, values in calls]

    hw.close()
    raw.close()

    print(f"{'action':44} {'n':>6} {'median us':>10} {'p99 us':>10} {'max us':>10}")
    print("-" * 84)
    for name, values in rows:
        print(
            f"{name:44} {len(values):6d} {statistics.median(values):10.2f} "
            f"{percentile(values, 0.99):10.2f} {max(values):10.2f}"
        )
    raw_median = statistics.median(rows[0][1])
    ours = statistics.median(rows[1][1])
    added = ours - raw_median
    ours_p99 = percentile(rows[1][1], 0.99) - percentile(rows[0][1], 0.99)
    verdict = "OK" if added < DIGITAL_LIMIT_US else "TOO SLOW"
    print("-" * 84)
    print(
        f"layer overhead per digital action: median {added:.2f} us, p99 {ours_p99:.2f} us "
        f"(limit {DIGITAL_LIMIT_US:.0f} us): {verdict}"
    )
    ahead = calls[2][1]
    handoff = "OK" if percentile(ahead, 0.99) < HANDOFF_LIMIT_US else "OVER"
    print(
        f"python hand-off (handed over ahead): median {statistics.median(ahead):.1f} us, "
        f"p99 {percentile(ahead, 0.99):.1f} us (target {HANDOFF_LIMIT_US:.0f} us): {handoff}"
    )
    return 0 if added < DIGITAL_LIMIT_US else 1


CALL_MODULE = """
def noop(ctx):
    return None
"""


def python_rows(n: int) -> list[tuple[str, list[float]]]:
    """The python rows (see the module doc), on the real clock and a real worker."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_call.py").write_text(CALL_MODULE, encoding="utf-8")
        problems = ConfigProblems("bench")
        raw = {"devices": {"py": {"kind": "python", "call": "bench_call:noop", "path": tmp}}}
        profile = parse_profile(raw, problems)
        problems.raise_if_any()
        hw = Hardware(profile, pin_factory=MockFactory())
        action = Action("py", "call", params={})
        clock = time.perf_counter_ns
        prepare: list[float] = []
        fire: list[float] = []
        ahead: list[float] = []
        at_instant: list[float] = []

        def finish(deadline: float) -> float:
            while time.monotonic() < deadline:
                time.sleep(0.001)
                for result in hw.tick(time.monotonic()):
                    if result.do == "call_done":
                        return hw.call_entry_late_ms()["py"] * 1000.0
            raise SystemExit("benchmark call did not end")

        try:
            time.sleep(0.5)  # the worker imports its module
            for i in range(-3, n):  # three warm-up calls, not counted
                at = time.monotonic() + 0.05
                job = CallJob((i, 0), action, at, at + 0.2, "execute", None, 120.0)
                t0 = clock()
                hw.prepare_calls([job], time.monotonic())
                t1 = clock()
                time.sleep(max(0.0, at - time.monotonic() - 0.001))
                while time.monotonic() < at:
                    pass
                t2 = clock()
                hw.apply(action, time.monotonic(), call=job)
                t3 = clock()
                hw.prepare_calls([], time.monotonic())
                late = finish(at + 1.0)
                if i >= 0:
                    prepare.append((t1 - t0) / 1000.0)
                    fire.append((t3 - t2) / 1000.0)
                    ahead.append(late)
            for _ in range(n):
                time.sleep(0.02)
                hw.apply(action, time.monotonic())  # not prepared: sent at its time
                at_instant.append(finish(time.monotonic() + 1.0))
        finally:
            hw.close()
    return [
        ("call prepare_calls(): hand-off, loop cost", prepare),
        ("call apply() of a prepared call", fire),
        ("call entry after its time, handed ahead", ahead),
        ("call entry after its time, sent at it", at_instant),
    ]


if __name__ == "__main__":
    sys.exit(main())
