"""Hostile configs: refused by ``check`` and ``run`` in one report without a traceback, and
refused by a SIGHUP to a running agent, which keeps firing, its beat and its watchdog.

Each case writes ``agent.toml`` (and what it names) into a directory and says which key the
refusal must name. The process test runs one agent (real Mosquitto, real pulse) through
every case in turn, to keep the suite short.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.broker import Mosquitto
from edge.cli import EXIT_CONFIG, EXIT_HARDWARE
from edge.harness import read_trace, start_agent, start_pulse
from edge.testing.notify import NotifySocket
from edge.testing.profiles import MOCK_LED, RELAY, TOGGLE_EVERY_BEAT

GOOD_PROFILE = MOCK_LED + RELAY + TOGGLE_EVERY_BEAT


def _config(
    tmp: Path,
    broker_url: str,
    broker: str = "",
    profile: str = "profile.toml",
    agent: str = "",
    tail: str = "",
) -> None:
    (tmp / "agent.toml").write_text(
        f'[agent]\nid = "bench:pi-01"\ncluster = "bench"\nprofile = "{profile}"\n{agent}'
        f'[broker]\nurl = "{broker_url}"\n{broker}'
        f'[outbox]\ndirectory = "{tmp / "outbox"}"\n{tail}',
        encoding="utf-8",
    )


def _good(tmp: Path, url: str) -> None:
    (tmp / "profile.toml").write_text(GOOD_PROFILE, encoding="utf-8")
    _config(tmp, url)


def _broker_key(line: str) -> Callable[[Path, str], None]:
    def make(tmp: Path, url: str) -> None:
        _good(tmp, url)
        _config(tmp, url, broker=line + "\n")

    return make


def _deep(tmp: Path, url: str) -> None:
    _good(tmp, url)
    (tmp / "profile.toml").write_text(GOOD_PROFILE + "x = " + "[" * 5000 + "]" * 5000 + "\n")


def _deep_config(tmp: Path, url: str) -> None:
    _good(tmp, url)
    with (tmp / "agent.toml").open("a") as f:
        f.write("[sync]\n" + "a" + ".a" * 5000 + " = 1\n")


def _dev_zero(tmp: Path, url: str) -> None:
    _good(tmp, url)
    _config(tmp, url, profile="/dev/zero")


def _fifo(tmp: Path, url: str) -> None:
    _good(tmp, url)
    fifo = tmp / "fifo.toml"
    if not fifo.exists():
        os.mkfifo(fifo)
    _config(tmp, url, profile="fifo.toml")


def _password_dir(tmp: Path, url: str) -> None:
    _good(tmp, url)
    (tmp / "pw.d").mkdir(exist_ok=True)
    _config(tmp, url, broker=f'username = "u"\npassword_file = "{tmp / "pw.d"}"\n')


def _password_missing(tmp: Path, url: str) -> None:
    _good(tmp, url)
    _config(tmp, url, broker=f'username = "u"\npassword_file = "{tmp / "no-such-file"}"\n')


def _garbage_ca(tmp: Path, url: str) -> None:
    _good(tmp, url)
    (tmp / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    _config(tmp, url, broker=f'ca_file = "{tmp / "ca.pem"}"\n')


def _agent_key(line: str) -> Callable[[Path, str], None]:
    def make(tmp: Path, url: str) -> None:
        _good(tmp, url)
        _config(tmp, url, agent=line + "\n")

    return make


def _tail(lines: str) -> Callable[[Path, str], None]:
    """Lines after the ``[outbox]`` table: more outbox keys, or other tables."""

    def make(tmp: Path, url: str) -> None:
        _good(tmp, url)
        _config(tmp, url, tail=lines)

    return make


def _key_file_fifo(key: str) -> Callable[[Path, str], None]:
    def make(tmp: Path, url: str) -> None:
        _good(tmp, url)
        fifo = tmp / "key.fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        _config(tmp, url, tail=f"[security]\n{key}\n")

    return make


def _profile_not_a_path(tmp: Path, url: str) -> None:
    _good(tmp, url)
    path = tmp / "agent.toml"
    path.write_text(path.read_text().replace('profile = "profile.toml"', "profile = 5"))


def _no_cluster(tmp: Path, url: str) -> None:
    _good(tmp, url)
    path = tmp / "agent.toml"
    path.write_text(path.read_text().replace('cluster = "bench"\n', ""))


def _score_as_one_table(tmp: Path, url: str) -> None:
    _good(tmp, url)
    (tmp / "profile.toml").write_text(
        MOCK_LED + '[score]\ndevice = "led"\ndo = "toggle"\n', encoding="utf-8"
    )


def _profile_with(extra: str) -> Callable[[Path, str], None]:
    def make(tmp: Path, url: str) -> None:
        _good(tmp, url)
        (tmp / "profile.toml").write_text(GOOD_PROFILE + extra, encoding="utf-8")

    return make


#: id -> (make it in a directory, what the refusal names)
HOSTILE: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "keepalive-nan": (_broker_key("keepalive_s = nan"), "broker.keepalive_s: must be an integer"),
    "keepalive-inf": (_broker_key("keepalive_s = inf"), "broker.keepalive_s: must be an integer"),
    "keepalive-1e12": (
        _broker_key("keepalive_s = 1e12"),
        "broker.keepalive_s: must be an integer between 5 and 65535, got 1000000000000.0",
    ),
    "keepalive-2**40": (
        _broker_key("keepalive_s = 1099511627776"),
        "broker.keepalive_s: must be an integer between 5 and 65535, got 1099511627776",
    ),
    "reconnect-nan": (_broker_key("reconnect_min_s = nan"), "broker.reconnect_min_s: must be"),
    "deep-profile": (_deep, "nests tables or arrays more than 32 deep"),
    "deep-dotted-config": (_deep_config, "nests tables or arrays more than 32 deep"),
    "profile-dev-zero": (_dev_zero, "agent.profile: '/dev/zero' is a device, not a regular file"),
    "profile-fifo": (_fifo, "fifo.toml' is a FIFO (named pipe), not a regular file"),
    "password-dir": (_password_dir, "broker.password_file: "),
    "password-missing": (_password_missing, "no-such-file' does not exist"),
    "garbage-ca": (_garbage_ca, "broker.ca_file: "),
    "pin-17-and-board11": (
        _profile_with('[devices.fan]\nkind = "output"\npin = "BOARD11"\n'),
        "devices.fan.pin: 'BOARD11' is GPIO17, already used by devices.led (given as 17)",
    ),
    "pin-17-and-j8-11": (
        _profile_with('[devices.fan]\nkind = "output"\npin = "J8:11"\n'),
        "devices.fan.pin: 'J8:11' is GPIO17, already used by devices.led",
    ),
    # A huge figure would switch a safety off, not wait long: the lost-beat safe state,
    # the load guard's sampling.
    "safe-after-lost-1e300": (
        _agent_key("safe_after_lost_s = 1e300"),
        "agent.safe_after_lost_s: must be a number between 0 and 3600",
    ),
    "sample-interval-1e300": (
        _agent_key("sample_interval_s = 1e300"),
        "agent.sample_interval_s: must be a number between 0.05 and 60",
    ),
    "outbox-retry-1e300": (
        _tail("retry_interval_s = 1e300\n"),
        "outbox.retry_interval_s: must be a number between 0.001 and 3600",
    ),
    "beat-keys-fifo": (
        _key_file_fifo('beat_keys = ["key.fifo"]'),
        "key.fifo' is a FIFO (named pipe), not a regular file",
    ),
    "beat-keys-dev-zero": (
        _tail('[security]\nbeat_keys = ["/dev/zero"]\n'),
        "security.beat_keys[0]: '/dev/zero' is a device, not a regular file",
    ),
    "signing-key-fifo": (
        _key_file_fifo('signing_key = "key.fifo"'),
        "key.fifo' is a FIFO (named pipe), not a regular file",
    ),
    # Settings a plain mqtt:// link never uses, which an operator would believe in.
    "ca-file-without-tls": (
        _broker_key('ca_file = "agent.toml"'),
        "broker.ca_file: is set but the broker URLs are mqtt:// (no TLS); use mqtts://",
    ),
    "password-without-username": (
        _broker_key('password_file = "agent.toml"'),
        "broker.password_file: is set without username",
    ),
    "profile-not-a-path": (
        _profile_not_a_path,
        "agent.profile: must be a file path (a string), got 5",
    ),
    # Shown as TOML writes them, and a missing key said to be missing.
    "retry-interval-a-date": (
        _tail("retry_interval_s = 1979-05-27T07:32:00Z\n"),
        "outbox.retry_interval_s: must be a number between 0.001 and 3600, got the datetime "
        "1979-05-27T07:32:00+00:00",
    ),
    "cluster-missing": (_no_cluster, "agent.cluster: is required; is missing"),
    "score-one-table": (
        _score_as_one_table,
        "score: must be an array of tables, each written [[score]]; got one [score] table",
    ),
    "gpio99": (
        _profile_with('[devices.fan]\nkind = "output"\npin = "GPIO99"\n'),
        "devices.fan.pin: 'GPIO99' is not a GPIO pin of a Raspberry Pi",
    ),
}


def _cli(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,  # a FIFO or /dev/zero must never hang or eat memory
        env={k: v for k, v in full.items() if v},
    )


@pytest.mark.parametrize("case", list(HOSTILE))
def test_check_refuses_a_hostile_config_in_one_report(tmp_path: Path, case: str) -> None:
    make, named = HOSTILE[case]
    make(tmp_path, "mqtt://127.0.0.1:1")
    result = _cli("check", "--config", str(tmp_path / "agent.toml"), timeout=5.0)
    assert result.returncode == EXIT_CONFIG, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("backbeat-edge check: ") and "problem" in lines[0], lines
    assert [line for line in lines[1:] if named in line], result.stderr
    assert all(line.startswith("  - ") for line in lines[1:]), lines  # one line each


def test_check_refuses_a_claim_signing_key_that_is_not_one(tmp_path: Path) -> None:
    _good(tmp_path, "mqtt://127.0.0.1:1")
    (tmp_path / "agent.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    )
    with (tmp_path / "agent.toml").open("a") as f:
        f.write('[security]\nsigning_key = "agent.pem"\n')
    result = _cli("check", "--config", str(tmp_path / "agent.toml"), timeout=5.0)
    assert result.returncode == EXIT_CONFIG, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "security.signing_key" in line]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["keepalive-1e12", "profile-fifo", "password-missing", "gpio99"])
def test_run_refuses_a_hostile_config_without_a_traceback(tmp_path: Path, case: str) -> None:
    make, named = HOSTILE[case]
    make(tmp_path, "mqtt://127.0.0.1:1")
    result = _cli("run", "--config", str(tmp_path / "agent.toml"), timeout=15.0)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("backbeat-edge run: ")
    assert named in result.stderr


def test_no_pin_factory_is_a_hardware_error_with_the_bench_hint(tmp_path: Path) -> None:
    (tmp_path / "profile.toml").write_text(GOOD_PROFILE.replace('pin_factory = "mock"', ""))
    _config(tmp_path, "mqtt://127.0.0.1:1")
    env = {"GPIOZERO_PIN_FACTORY": ""}  # removed: gpiozero looks for real GPIO, finds none
    result = _cli("check", "--config", str(tmp_path / "agent.toml"), timeout=10.0, env=env)
    if result.returncode == 0:
        pytest.skip("this machine has real GPIO")
    assert result.returncode == EXIT_HARDWARE, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert 'pin_factory = "mock"' in result.stderr


# ---------------------------------------------------------------------- SIGHUP


RELOAD_CASES = [
    "keepalive-1e12",
    "keepalive-nan",
    "deep-profile",
    "profile-dev-zero",
    "profile-fifo",
    "password-dir",
    "garbage-ca",
    "pin-17-and-board11",
    "gpio99",
]


@pytest.mark.broker
@pytest.mark.slow
def test_a_running_agent_refuses_every_hostile_reload_and_keeps_its_beat(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    _good(tmp_path, mosquitto.url)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    trace = tmp_path / "agent.jsonl"
    agent = start_agent(tmp_path / "agent.toml", trace, tmp_path / "agent.log", env=env)
    pulse = start_pulse(mosquitto.url, "bench", 240, None, tmp_path / "pulse.log")
    sent: list[tuple[str, float]] = []
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and len([r for r in read_trace(trace) if r["ok"]]) < 8:
            notify.drain(0.1)
        assert len(read_trace(trace)) >= 8, agent.log()
        for case in RELOAD_CASES:
            make, _ = HOSTILE[case]
            make(tmp_path, mosquitto.url)
            sent.append((case, time.monotonic()))
            agent.signal(signal.SIGHUP)
            notify.drain(0.6)
        last_hup = time.monotonic()
        notify.drain(3.0)  # it goes on after the last refusal
        alive = agent.process.poll() is None
        agent.signal(signal.SIGTERM)
        code = agent.process.wait(timeout=10)
    finally:
        pulse.stop()
        agent.kill()
        notify.sock.close()
    log = agent.log()
    assert alive and code == 0, log
    assert "Traceback" not in log, log
    refusals = [line for line in log.splitlines() if "reload refused" in line]
    assert len(refusals) == len(RELOAD_CASES), "\n".join(refusals)
    for (case, _), line in zip(sent, refusals, strict=True):
        assert HOSTILE[case][1] in line, (case, line)
    # the running config stayed: the LED toggled on every beat, before, during and after
    rows = [r for r in read_trace(trace) if r["device"] == "led" and r["ok"]]
    beats = [int(r["beat_index"]) for r in rows]  # type: ignore[call-overload]
    assert beats == list(range(beats[0], beats[-1] + 1)), beats  # no beat lost
    first_hup = sent[0][1]
    fired = [float(r["fired_mono"]) for r in rows]  # type: ignore[arg-type]
    assert fired[-1] > last_hup + 2.0, "it stopped firing after the reloads"
    assert len(beats) >= 8 + 4 * int(last_hup - first_hup)  # 240 BPM: 4 a second
    # the watchdog was pinged all along (every 0.5 s of a 1 s period)
    pings = [t for t in notify.times("WATCHDOG=1") if first_hup - 1.0 < t < last_hup + 3.0]
    assert pings and max(b - a for a, b in itertools.pairwise(pings)) < 0.9, pings
    assert len(notify.times("READY=1")) >= 1 + len(RELOAD_CASES)


@pytest.mark.parametrize(
    "failure", [RecursionError("maximum recursion depth"), MemoryError(), KeyError("bug")]
)
def test_whatever_a_reload_raises_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    from gpiozero.pins.mock import MockFactory

    import edge.agent

    _good(tmp_path, "mqtt://127.0.0.1:1")
    agent = edge.agent.Agent(tmp_path / "agent.toml", pin_factory=MockFactory())
    try:

        def load(*args: object, **kwargs: object) -> None:
            raise failure

        monkeypatch.setattr(edge.agent, "load_config", load)
        agent._reload_config()
        assert agent.runner.counters.reload_errors == 1
        assert agent.runner._pending_reload is None
        assert agent.config.source == str(tmp_path / "agent.toml")
    finally:
        agent.outbox.close()
        agent.hardware.close()


def test_check_says_what_it_checked_beyond_the_file(tmp_path: Path) -> None:
    _good(tmp_path, "mqtt://127.0.0.1:1")
    (tmp_path / "pw").write_text("secret\n")
    _config(
        tmp_path,
        "mqtt://127.0.0.1:1",
        broker=f'username = "u"\npassword_file = "{tmp_path / "pw"}"\n',
    )
    result = _cli("check", "--config", str(tmp_path / "agent.toml"), timeout=10.0)
    assert result.returncode == 0, result.stderr
    assert (
        "checked: broker files readable; every pin a GPIO of a Raspberry Pi 3B (revision "
        "a02082), used once; every device built on mock pins"
    ) in result.stdout
    assert result.stderr == ""  # the mock build's own logs stay quiet


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_run_refuses_a_trace_that_is_no_file_before_it_starts(tmp_path: Path, kind: str) -> None:
    _good(tmp_path, "mqtt://127.0.0.1:1")
    trace = tmp_path / "trace"
    if kind == "directory":
        trace.mkdir()
    else:
        os.mkfifo(trace)  # with no reader: opening it to write would wait for one
    result = _cli(
        "run", "--config", str(tmp_path / "agent.toml"), "--trace", str(trace), timeout=10.0
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    said = "is a directory" if kind == "directory" else "is a FIFO (named pipe)"
    assert f"backbeat-edge run: --trace '{trace}' {said}" in result.stderr, result.stderr


def test_monitor_refuses_a_key_that_is_a_fifo(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    os.mkfifo(keys / "pi-01.pub.pem")
    result = _cli(
        "monitor",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--cluster",
        "bench",
        "--keys",
        str(keys),
        timeout=10.0,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "is a FIFO (named pipe), not a regular file" in result.stderr, result.stderr
