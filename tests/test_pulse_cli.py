"""The pulse and timekeeper commands' edges: what their command lines refuse before they
connect, the files they read and write, the tempo topic, and their broker client ids (and
the link saying when another client took its id)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge.broker import Mosquitto
from edge.cli import main
from edge.clock import SystemClock
from edge.config import BrokerConfig
from edge.files import FileRefused, open_append
from edge.harness import read_trace, start_pulse, wait_until
from edge.messages import decode_beat_frame
from edge.mqtt_link import MqttLink
from edge.pulse import (
    PulseOptions,
    TempoRequest,
    TempoStep,
    limit_change,
    parse_tempo_request,
    run_pulse,
    snap_tempo,
)
from edge.pulse_command import TempoRequests
from edge.tool_link import tool_client_id

if TYPE_CHECKING:
    from conftest import CliRun

#: No broker listens here: a command that got as far as connecting would say so instead.
NOWHERE = "mqtt://127.0.0.1:9"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "-1"], "--start-beat"),
        (
            ["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "9" * 20],
            "--start-beat",
        ),
        (["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "x"], "--start-beat"),
        (["pulse", "--cluster", "bad/+", "--bpm", "60"], "--cluster"),
        (["pulse", "--cluster", "bench", "--bpm", "60", "--prefix", "a/#"], "--prefix"),
        (["monitor", "--cluster", "bench", "--prefix", "a/#"], "--prefix"),
        (["monitor", "--cluster", "b/#"], "--cluster"),
        (["timekeeper", "--cluster", "bench", "--prefix", "a/+"], "--prefix"),
        (["timekeeper", "--cluster", "b/+"], "--cluster"),
    ],
)
def test_a_bad_cluster_prefix_or_start_beat_is_a_usage_error(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--broker", NOWHERE, "--connect-timeout", "0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"backbeat-edge {argv[0]}: error: argument {option}:" in err, err
    assert "usage:" in err and "Traceback" not in err and "broker" not in err.splitlines()[-1]


def test_the_tools_take_the_agents_rule_for_clusters_and_prefixes() -> None:
    from edge.cli import build_parser

    args = build_parser().parse_args(
        ["pulse", "--cluster", "bench-2_a", "--bpm", "60", "--prefix", "site/backbeat/"]
    )
    assert (args.cluster, args.prefix) == ("bench-2_a", "site/backbeat")  # as agent.topic_prefix
    assert build_parser().parse_args(["pulse", "--cluster", "b", "--bpm", "1"]).start_beat == 0


# ---------------------------------------------------------------------------- the tempo topic

#: What the tempo topic must refuse: not a number, not finite, or outside 0.1..1000 BPM
#: (``inf force`` once stopped the beat for every agent with decimal.InvalidOperation).
BAD_TEMPOS = [
    b"nan",
    b"nan force",
    b"inf force",
    b"1e400 force",
    b"-inf force",
    b"1e400",
    b"-5",
    b"0.05 force",
    b"1000.1 force",
    b"",
    b"fast",
    b"72 force extra",  # nothing but "force" after the tempo
    b"72 forced",
    "\uff11\uff12\uff10".encode(),  # full-width digits, which float() would take
]


@pytest.mark.parametrize("payload", BAD_TEMPOS)
def test_the_tempo_topic_refuses_what_is_not_a_tempo_and_says_so(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    controls: queue.Queue[TempoRequest] = queue.Queue()
    requests = TempoRequests(controls)
    with caplog.at_level(logging.WARNING, logger="edge.pulse_command"):
        assert requests.take(payload, now=0.0) is False
    assert controls.empty() and requests.refused == 1
    assert f"refused tempo request {payload!r}" in caplog.text
    with pytest.raises(ValueError):
        parse_tempo_request(payload)


@pytest.mark.parametrize(
    ("payload", "asked"),
    [
        (b"72", (72.0, False)),
        (b"600 force", (600.0, True)),
        (b"0.1", (0.1, False)),
        (b" 1000 force\n", (1000.0, True)),
    ],
)
def test_the_tempo_topic_takes_a_tempo_in_range(payload: bytes, asked: tuple[float, bool]) -> None:
    controls: queue.Queue[TempoRequest] = queue.Queue()
    requests = TempoRequests(controls)
    assert requests.take(payload, now=0.0) is True
    assert controls.get_nowait() == asked and requests.refused == 0


def _tempos_sent(bpm: float, *requests: TempoRequest) -> set[float]:
    """The tempos a pulse at ``bpm`` sends for 0.2 s, ``requests`` taken before its first
    beat."""
    controls: queue.Queue[TempoRequest] = queue.Queue()
    for request in requests:
        controls.put(request)
    frames: list[bytes] = []
    options = PulseOptions(cluster="bench", bpm=bpm, duration_s=0.2)
    run_pulse(options, lambda t, p: frames.append(p), SystemClock(), threading.Event(), controls)
    assert frames
    return {decode_beat_frame(f).tempo_bpm for f in frames}


def test_a_signal_steps_from_the_tempo_in_force() -> None:
    # 600 asked of a 300 BPM pulse is cut to 330 (+10 %); a slower step then goes from 330
    # to 297, not from the 600 asked for to a faster 540.
    requests = TempoRequests(queue.Queue())
    requests.step(0.9)
    step = requests.controls.get_nowait()
    assert step == TempoStep(0.9)
    assert _tempos_sent(300.0, (600.0, False), step) == {297.0}


def test_signals_never_step_the_tempo_out_of_range() -> None:
    many = [TempoStep(1.1)] * 8000  # 1.1 ** 8000 is inf
    assert _tempos_sent(990.0, *many) == {1000.0}
    assert _tempos_sent(0.1, TempoStep(0.9)) == {0.1}


@pytest.mark.parametrize("requested", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("force", [False, True])
def test_the_schedule_refuses_a_tempo_that_is_not_finite(requested: float, force: bool) -> None:
    with pytest.raises(ValueError, match="finite"):
        limit_change(108.0, requested, force)
    with pytest.raises(ValueError, match="finite"):
        snap_tempo(requested)


def test_a_bad_request_that_reaches_the_loop_costs_no_beat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controls: queue.Queue[TempoRequest] = queue.Queue()
    for request in ((math.inf, True), (math.nan, False), (600.0, True)):
        controls.put(request)
    frames: list[bytes] = []
    options = PulseOptions(cluster="bench", bpm=1000, duration_s=0.2)
    sent = run_pulse(
        options,
        lambda topic, payload: frames.append(payload),
        SystemClock(),
        threading.Event(),
        controls,
    )
    assert sent == len(frames) > 0
    assert {decode_beat_frame(f).tempo_bpm for f in frames} == {600.0}
    assert caplog.text.count("tempo request refused") == 2


@pytest.mark.broker
@pytest.mark.slow
def test_the_running_pulse_refuses_bad_tempos_and_beats_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    import paho.mqtt.publish as publish

    trace = tmp_path / "pulse.jsonl"
    pulse = start_pulse(mosquitto.url, "bench", 300, trace, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(read_trace(trace)) >= 3, 15), pulse.log()
        topic = "backbeat/bench/pulse/tempo"
        # One connection, so the broker keeps their order: the good one comes last.
        messages: list[publish.MessageTuple] = [(topic, p, 0, False) for p in BAD_TEMPOS]
        messages.append((topic, b"120 force", 0, False))
        publish.multiple(list(messages), hostname="127.0.0.1", port=mosquitto.port)
        assert wait_until(lambda: any(r["tempo_bpm"] == 120.0 for r in read_trace(trace)), 15), (
            pulse.log()
        )
    finally:
        assert pulse.stop() == 0, pulse.log()
    log = pulse.log()
    assert {r["tempo_bpm"] for r in read_trace(trace)} == {300.0, 120.0}
    assert "refused tempo request b'nan'" in log
    assert f"refused {len(BAD_TEMPOS)} tempo requests" in log
    assert "Traceback" not in log


# ---------------------------------------------------------------------------- files


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_trace_is_created_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with open_append(path) as trace:
        trace.write("one\n")
    with open_append(path) as trace:
        trace.write("two\n")
    assert path.read_text(encoding="utf-8") == "one\ntwo\n"


def test_a_trace_that_is_not_a_regular_file_is_refused(tmp_path: Path, fifo: Path) -> None:
    for path, what in [
        (tmp_path, "is a directory"),
        (fifo, "is a FIFO"),  # no reader: the kernel refuses the non-blocking open
        (Path("/dev/zero"), "is a device"),
        (tmp_path / "missing" / "trace.jsonl", "cannot be opened"),
    ]:
        with pytest.raises(FileRefused, match=what):
            open_append(path)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with one, the fstat after
    try:
        with pytest.raises(FileRefused, match="is a FIFO"):
            open_append(fifo)
    finally:
        os.close(reader)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_pulse_refuses_a_bad_trace_before_it_starts(
    kind: str, tmp_path: Path, fifo: Path, cli: CliRun
) -> None:
    path = tmp_path if kind == "directory" else fifo
    result = cli(
        "pulse", "--cluster", "b", "--bpm", "60", "--broker", NOWHERE, "--trace", str(path)
    )
    assert result.returncode == 2, result.stderr
    assert f"backbeat-edge pulse: --trace: {str(path)!r} is a" in result.stderr
    assert "Traceback" not in result.stderr and "broker" not in result.stderr


@pytest.mark.parametrize("command", ["pulse", "timekeeper"])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_signing_key_that_is_not_a_regular_file_is_refused(
    command: str, kind: str, tmp_path: Path, fifo: Path, cli: CliRun
) -> None:
    key = {"fifo": fifo, "device": Path("/dev/zero"), "directory": tmp_path}[kind]
    argv = ["--cluster", "b", "--broker", NOWHERE, "--signing-key", str(key)]
    if command == "pulse":
        argv += ["--bpm", "60"]
    result = cli(command, *argv, timeout=30)  # it once waited on the FIFO for ever
    assert result.returncode == 2, result.stderr
    assert f"--signing-key: {str(key)!r} is a" in result.stderr
    assert "Traceback" not in result.stderr and "broker" not in result.stderr


# ---------------------------------------------------------------------------- client ids


def test_a_tool_client_id_cannot_be_guessed() -> None:
    ids = {tool_client_id("pulse", "bench") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"backbeat-pulse-bench-[0-9a-f]{16}", i) for i in ids)
    assert tool_client_id("timekeeper", "b").startswith("backbeat-timekeeper-b-")


class TakeoverBroker:
    """A one-trick MQTT 5 broker on loopback: each client it accepts gets a CONNACK and then
    a DISCONNECT with reason 0x8E, "session taken over", as a broker sends when another
    client connects with the same id. (Mosquitto 2.0.11 closes the old connection without
    sending it, so there a takeover looks like the broker going away.)"""

    CONNACK = bytes([0x20, 3, 0, 0, 0])
    DISCONNECT_TAKEN_OVER = bytes([0xE0, 2, 0x8E, 0])

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                self.accepted += 1
                with conn:
                    conn.recv(4096)  # the CONNECT
                    conn.sendall(self.CONNACK + self.DISCONNECT_TAKEN_OVER)
                    conn.recv(4096)  # until the client closes

    def close(self) -> None:
        self.server.close()


def test_a_session_taken_over_is_said_as_such(caplog: pytest.LogCaptureFixture) -> None:
    broker = TakeoverBroker()
    url = f"mqtt://127.0.0.1:{broker.port}"
    link = MqttLink(
        BrokerConfig(url=url, host="127.0.0.1", port=broker.port), tool_client_id("pulse", "b")
    )
    with caplog.at_level(logging.WARNING, logger="edge.mqtt_link"):
        link.start()
        try:
            assert wait_until(lambda: link.taken_over >= 1, 10)
        finally:
            link.stop(timeout=1.0)
            broker.close()
    assert (
        f"broker 127.0.0.1:{broker.port} closed the connection: session taken over (another"
        f" client connected with our client id {link.client_id!r}" in caplog.text
    )
