"""systemd notify protocol: a real unix datagram socket plays systemd's side."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.service import MAX_STATUS_CHARS, Notifier, WatchdogGate


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects what the agent sends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        fields = {}
        for line in data.split("\n"):
            key, _, value = line.partition("=")
            fields[key] = value
        return fields

    def pending(self) -> bool:
        try:
            self.sock.recv(4096, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


def env_for(fake: FakeSystemd, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": fake.address, **extra}


# --------------------------------------------------------------------------- Notifier


def test_off_systemd_every_call_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready() is False
    assert notifier.status("following beat 12") is False
    assert notifier.watchdog() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert (notifier.sent, notifier.failures) == (0, 0)


def test_ready_status_watchdog_stopping_reach_systemd(systemd: FakeSystemd) -> None:
    with Notifier.from_env(env_for(systemd)) as notifier:
        assert notifier.enabled
        assert notifier.ready(status="configured, waiting for broker")
        assert systemd.receive() == {"READY": "1", "STATUS": "configured, waiting for broker"}
        assert notifier.status("beat 42 locked, tempo 120.0")
        assert systemd.receive() == {"STATUS": "beat 42 locked, tempo 120.0"}
        assert notifier.watchdog()
        assert systemd.receive() == {"WATCHDOG": "1"}
        assert notifier.stopping()
        assert systemd.receive() == {"STOPPING": "1"}
        assert (notifier.sent, notifier.failures) == (4, 0)


def test_status_is_one_bounded_line(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(env_for(systemd))
    notifier.status("line one\nline two\r\nthree")
    assert systemd.receive() == {"STATUS": "line one line two three"}
    notifier.status("x" * 1000)
    assert systemd.receive()["STATUS"] == "x" * MAX_STATUS_CHARS


def test_reloading_carries_the_monotonic_time_in_microseconds(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address, monotonic_ns=lambda: 123_456_789_012)
    assert notifier.reloading()
    assert systemd.receive() == {"RELOADING": "1", "MONOTONIC_USEC": "123456789"}
    assert notifier.ready()
    assert systemd.receive() == {"READY": "1"}


def test_reloading_uses_clock_monotonic_by_default(systemd: FakeSystemd) -> None:
    before = time_usec()
    Notifier.from_env(env_for(systemd)).reloading()
    after = time_usec()
    sent = int(systemd.receive()["MONOTONIC_USEC"])
    assert before <= sent <= after


def time_usec() -> int:
    # systemd compares MONOTONIC_USEC with CLOCK_MONOTONIC, so read exactly that clock.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket_address() -> None:
    name = f"backbeat-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.ready()
        assert fake.receive() == {"READY": "1"}
    finally:
        fake.sock.close()


def test_watchdog_interval_is_half_the_period_for_this_process(systemd: FakeSystemd) -> None:
    env = env_for(systemd, WATCHDOG_USEC="10000000", WATCHDOG_PID=str(os.getpid()))
    assert Notifier.from_env(env).watchdog_interval_s == 5.0
    # Without WATCHDOG_PID the watchdog is for whoever reads it.
    assert Notifier.from_env(env_for(systemd, WATCHDOG_USEC="3000000")).watchdog_interval_s == 1.5


def test_watchdog_meant_for_another_process_is_ignored(systemd: FakeSystemd) -> None:
    env = env_for(systemd, WATCHDOG_USEC="10000000", WATCHDOG_PID="1")
    notifier = Notifier.from_env(env, pid=4242)
    assert notifier.enabled
    assert notifier.watchdog_interval_s is None


@pytest.mark.parametrize("usec", ["ten", "0", "-5"])
def test_bad_watchdog_usec_disables_the_watchdog_and_says_why(
    systemd: FakeSystemd, usec: str
) -> None:
    notifier = Notifier.from_env(env_for(systemd, WATCHDOG_USEC=usec))
    assert notifier.watchdog_interval_s is None
    assert notifier.problem is not None and "WATCHDOG_USEC" in notifier.problem
    assert notifier.enabled  # the rest of the protocol still works
    assert notifier.ready()


def test_unusable_notify_socket_is_disabled_not_fatal() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.problem is not None and "vsock:2:1234" in notifier.problem
    assert notifier.ready() is False


def test_send_to_a_vanished_socket_is_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.failures == 2
    assert notifier.sent == 0
    assert notifier.last_error is not None and "FileNotFoundError" in notifier.last_error


def test_a_full_socket_never_blocks_the_sender(systemd: FakeSystemd) -> None:
    # Nobody reads: the receive queue fills. A blocking send would hang here, so an alarm
    # turns a hang into a failure instead of a stuck test run.
    def hung(signum: int, frame: object) -> None:
        raise AssertionError("Notifier blocked on a full socket")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        notifier = Notifier.from_env(env_for(systemd))
        results = [notifier.status(f"beat {i} " + "x" * 150) for i in range(20_000)]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert results[0] is True
    assert False in results
    assert notifier.failures == results.count(False)
    assert notifier.sent == results.count(True)
    assert notifier.last_error is not None and "BlockingIOError" in notifier.last_error
    # Once systemd drains the queue, sends succeed again.
    systemd.sock.setblocking(False)
    while systemd.pending():
        systemd.sock.recv(4096)
    assert notifier.watchdog()


def test_close_then_send_reopens(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env(env_for(systemd))
    notifier.ready()
    notifier.close()
    assert notifier.watchdog()
    assert systemd.receive() == {"READY": "1"}
    assert systemd.receive() == {"WATCHDOG": "1"}


# --------------------------------------------------------------------------- WatchdogGate


def run_loop(
    gate: WatchdogGate, start: float, end: float, step: float, alive_until: float
) -> list[float]:
    """Simulate the runner: wake every ``step``; the loop iterates until ``alive_until``."""
    pings = []
    now = start
    while now <= end:
        if now <= alive_until:
            gate.beat_alive(now)
        if gate.due(now):
            gate.pinged(now)
            pings.append(now)
        now = round(now + step, 9)
    return pings


def test_gate_pings_at_least_twice_per_period_while_the_loop_iterates() -> None:
    period = 10.0
    gate = WatchdogGate(interval_s=period / 2)
    pings = run_loop(gate, start=0.0, end=60.0, step=0.1, alive_until=60.0)
    assert pings[0] == 0.0  # the first ping goes out at once
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) <= period / 2 + 0.1 + 1e-9
    # Every window of one period holds at least two pings.
    for t in range(0, 51):
        assert sum(1 for p in pings if t <= p < t + period) >= 2
    assert gate.pings == len(pings)


def test_gate_does_not_ping_more_than_needed() -> None:
    gate = WatchdogGate(interval_s=5.0)
    pings = run_loop(gate, start=0.0, end=20.0, step=0.01, alive_until=20.0)
    assert pings == [0.0, 5.0, 10.0, 15.0, 20.0]


def test_gate_stops_pinging_when_the_loop_hangs() -> None:
    gate = WatchdogGate(interval_s=5.0)
    # Something still wakes up (e.g. a helper thread) but the loop stopped at t=12.
    pings = run_loop(gate, start=0.0, end=60.0, step=0.5, alive_until=12.0)
    assert pings == [0.0, 5.0, 10.0, 15.0]  # 15.0: the loop iterated 3 s earlier
    assert gate.withheld == 1
    # No ping for a whole period after the hang: systemd restarts the service.
    assert 60.0 - pings[-1] > 10.0


def test_gate_resumes_when_the_loop_recovers() -> None:
    gate = WatchdogGate(interval_s=5.0, stale_after_s=2.0)
    assert run_loop(gate, 0.0, 10.0, 1.0, alive_until=10.0) == [0.0, 5.0, 10.0]
    assert run_loop(gate, 11.0, 20.0, 1.0, alive_until=0.0) == []  # stalled
    assert run_loop(gate, 21.0, 26.0, 1.0, alive_until=26.0) == [21.0, 26.0]
    assert gate.withheld == 1


def test_gate_waits_for_the_first_iteration() -> None:
    gate = WatchdogGate(interval_s=5.0)
    assert not gate.due(0.0)
    assert gate.next_deadline(0.0) == pytest.approx(1.25)
    gate.beat_alive(1.0)
    assert gate.due(1.0)
    assert gate.next_deadline(1.0) == 1.0


def test_gate_next_deadline_tells_the_loop_when_to_wake() -> None:
    gate = WatchdogGate(interval_s=5.0)
    gate.beat_alive(0.0)
    gate.pinged(0.0)
    assert gate.next_deadline(1.0) == 5.0
    assert not gate.due(4.999)
    gate.beat_alive(4.9)
    assert gate.due(5.0)
    # Overdue but the loop is stale: look again a quarter interval later, do not spin.
    assert gate.next_deadline(30.0) == pytest.approx(31.25)


def test_gate_ignores_time_going_backwards_for_liveness() -> None:
    gate = WatchdogGate(interval_s=5.0)
    gate.beat_alive(10.0)
    gate.beat_alive(3.0)
    assert gate.last_alive == 10.0


@pytest.mark.parametrize(
    "kwargs", [{"interval_s": 0.0}, {"interval_s": -1.0}, {"interval_s": 1.0, "stale_after_s": 0.0}]
)
def test_gate_rejects_nonsense_intervals(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        WatchdogGate(**kwargs)


def test_notifier_and_gate_together(systemd: FakeSystemd) -> None:
    env = env_for(systemd, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval_s == 1.0
    gate = WatchdogGate(interval_s=notifier.watchdog_interval_s)
    for tick in range(0, 31):  # the loop runs 3 s in 0.1 s steps
        now = tick / 10
        gate.beat_alive(now)
        if gate.due(now) and notifier.watchdog():
            gate.pinged(now)
    got = []
    systemd.sock.setblocking(False)
    while systemd.pending():
        got.append(systemd.receive())
    assert got == [{"WATCHDOG": "1"}] * 4  # at 0, 1, 2 and 3 s
