"""The runner through ``step()`` with a fake clock: hundreds of beats in milliseconds.

Frames are fed as the link would hand them over (payload bytes stamped with an arrival
time); the clock jumps straight to each deadline the runner asks for, so every action
fires exactly at its time and the tests check *what* fires *when*, not how fast.
"""

from __future__ import annotations

import itertools
import json
import queue
from dataclasses import replace
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPin

from edge.clock import FakeClock
from edge.config import Config, OutboxConfig, load_config
from edge.errors import HardwareError
from edge.guard import Guard, Level, Sample, Verdict
from edge.hardware import Hardware
from edge.inbox import Inbound
from edge.messages import BeatFrame, decode_status_claim, encode
from edge.outbox import Outbox
from edge.profile import Profile
from edge.runner import MAX_WAIT_S, Runner
from edge.sync import SyncState
from edge.view import render

PROFILE = """
[agent]
id = "bench:pi-01"
cluster = "bench"
safe_after_lost_s = 2.0
[sync]
lost_after_s = 3.0
[gpio]
pin_factory = "mock"
[devices.led]
kind = "led"
pin = 17
[devices.relay]
kind = "relay"
pin = 27
max_switch_hz = 100
[[score]]
device = "led"
do = "toggle"
offset = 0.25
essential = true
[[score]]
device = "relay"
do = "on"
downbeat = true
phase = "plan"
offset = 0.5
essential = true
[[score]]
device = "relay"
do = "off"
downbeat = true
phase = "review"
essential = true
"""
BPM = 120.0
BEAT = 60.0 / BPM
DELAY = 0.0007  # fixed one-way delay of every frame


def _config(tmp_path: Path, text: str = PROFILE) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _frame(k: int, start_wall: float, index: int | None = None) -> bytes:
    beat = k if index is None else index
    return encode(
        BeatFrame(
            cluster_id="bench",
            beat_index=beat,
            downbeat=beat % 4 == 0,
            phase="plan",
            hlc=f"{int(start_wall) & 0xFFFF:04x}:0000:0001",  # the pulse's HLC: its wall clock
            deadline_at=datetime.fromtimestamp(start_wall + BEAT / 3, UTC),
            tempo_bpm=BPM,
            window_id=f"{beat // 4:032x}",
        ),
        "json",
    )


class FakeRun:
    """A command that "runs" on the fake clock: it ends ``seconds`` after it was started."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.end = clock.monotonic() + seconds
        self.returncode: int | None = None
        self.stderr = None
        self.pid = 0

    def poll(self) -> int | None:
        if self.returncode is None and self.clock.monotonic() >= self.end:
            self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self.returncode = -9

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class FakePopen:
    """Starts ``["fake-run", SECONDS]`` as a FakeRun; anything else cannot be started."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def __call__(self, argv: list[str], **kwargs: Any) -> FakeRun:
        if argv[0] != "fake-run":
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return FakeRun(self.clock, float(argv[1]))


class RecordingGuard(Guard):
    """The real guard, noting every duration it is taught."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.records: list[tuple[str, float, bool]] = []

    def record(self, name: str, duration_s: float, late_s: float, missed: bool) -> None:
        self.records.append((name, duration_s, missed))
        super().record(name, duration_s, late_s, missed)


class FakeLink:
    """The runner's view of the MQTT link: an inbox, a connected flag, what it published."""

    def __init__(self, connected: bool = True) -> None:
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.connected = connected
        self.published: list[tuple[str, bytes]] = []
        self.dropped_inbound = 0

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry_s: int | None = None,
    ) -> int:
        self.published.append((topic, payload))
        return len(self.published)


class Bench:
    """A runner on mock pins, a fake clock, and a pulse that is just a list of frames."""

    def __init__(
        self,
        tmp_path: Path,
        factory: MockFactory,
        text: str = PROFILE,
        link: FakeLink | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.clock = FakeClock(monotonic=500.0, wall=1_800_000_000.0)
        self.config = _config(tmp_path, text)
        self.factory = factory
        self.trace = StringIO()
        self.runner = Runner(
            self.config,
            self.make_hardware(self.config.profile),
            self.clock,
            link=link,
            outbox=outbox,
            trace=self.trace,
            make_hardware=self.make_hardware,
        )
        self.start = self.clock.monotonic() + 0.1  # beat 0 of the pulse, local time
        self.frames: list[tuple[float, bytes]] = []

    def make_hardware(self, profile: Profile) -> Hardware:
        return Hardware(
            profile,
            pin_factory=self.factory,
            clock=self.clock.monotonic,
            popen=FakePopen(self.clock),  # type: ignore[arg-type]  # a Popen in duck type only
        )

    @property
    def hardware(self) -> Hardware:
        return self.runner.hardware  # a reload may rebuild it

    def pulse(self, beats: range, index_offset: int = 0, skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        wall0 = self.clock.wall() - self.clock.monotonic()
        for k in beats:
            if k in skip:
                continue
            at = self.start + k * BEAT
            self.frames.append((at + DELAY, _frame(k, wall0 + at, k + index_offset)))
        self.frames.sort(key=lambda f: f[0])

    def run_until(self, t_end: float) -> None:
        while self.clock.monotonic() < t_end:
            now = self.clock.monotonic()
            target = min(self.runner.next_deadline(now), t_end)
            if self.frames:
                target = min(target, self.frames[0][0])
            self.clock.set(max(target, now))
            item = None
            if self.frames and self.frames[0][0] <= self.clock.monotonic():
                arrived, payload = self.frames.pop(0)
                item = Inbound(
                    "message", arrived, self.clock.wall(), "backbeat/bench/beat", payload
                )
            self.runner.step(item, self.clock.monotonic())
            # Commands start on the hardware's launcher thread: let it catch up before the
            # fake clock moves on, as real time would.
            assert self.hardware.wait_for_starts(10.0)
        self.runner.flush()

    def run_once_until(self, link: FakeLink, end: float) -> None:
        """run_once to ``end``, handing each frame to ``link``'s inbox when it arrives before
        the runner's next deadline (as the link would): only run_once moves the fake clock."""
        runner = self.runner
        for _ in range(100_000):
            now = self.clock.monotonic()
            if now >= end:
                return
            if self.frames and self.frames[0][0] <= runner.next_deadline(now):
                arrived, payload = self.frames.pop(0)
                self.clock.set(max(arrived, now))
                link.inbox.put(
                    Inbound("message", arrived, self.clock.wall(), "backbeat/bench/beat", payload)
                )
            runner.run_once()
        raise AssertionError("run_once did not move the fake clock")

    def rows(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.trace.getvalue().splitlines()]


def test_hundreds_of_beats_fire_each_action_once_at_its_time(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(300))
    bench.run_until(bench.start + 300 * BEAT)
    rows = [r for r in bench.rows() if r["fired_mono"] is not None]
    toggles = [r for r in rows if r["rule"] == 0]
    beats = [int(r["beat_index"]) for r in toggles]  # type: ignore[call-overload]
    assert beats == list(range(beats[0], 300)) and beats[0] <= 8  # locked within 8 beats
    for r in toggles[8:]:  # the execute phase, a quarter in, in the pulse's time
        truth = bench.start + int(r["beat_index"]) * BEAT + (1 + 0.25) * BEAT / 3  # type: ignore[call-overload]
        # The fake wall clock is in step with the pulse, so the follower may use deadline_at
        # and remove even the fixed 0.7 ms path delay.
        assert abs(float(r["fired_mono"]) - truth) < 0.0001, r  # type: ignore[arg-type]
    on = sorted(int(r["beat_index"]) for r in rows if r["rule"] == 1)  # type: ignore[call-overload]
    off = sorted(int(r["beat_index"]) for r in rows if r["rule"] == 2)  # type: ignore[call-overload]
    assert on == off and all(b % 4 == 0 for b in on) and len(on) >= 70
    # the pins saw it: one state change per toggle
    led = factory.pin(17)
    assert len([s for s in led.states if s.state]) >= 140
    assert bench.runner.counters.missed == 0 and bench.runner.counters.claims >= 290
    assert bench.runner.follower.state is SyncState.LOCKED


def test_a_malformed_frame_is_counted_and_survived(tmp_path: Path, factory: MockFactory) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(40))
    bench.frames.insert(10, (bench.frames[9][0] + 0.01, b'{"type": "backbeat.beatframe.v1"'))
    bench.frames.insert(20, (bench.frames[19][0] + 0.01, b"\xff" * 100))
    bench.run_until(bench.start + 40 * BEAT)
    assert bench.runner.counters.frames_bad == 2
    fired = {int(r["beat_index"]) for r in bench.rows() if r["rule"] == 0 and r["fired_mono"]}  # type: ignore[call-overload]
    assert set(range(10, 40)) <= fired


def test_free_runs_through_silence_then_goes_safe(tmp_path: Path, factory: MockFactory) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(20))
    bench.run_until(bench.start + 50 * BEAT)  # 30 beats (15 s) of silence
    fired = {int(r["beat_index"]) for r in bench.rows() if r["rule"] == 0 and r["fired_mono"]}  # type: ignore[call-overload]
    assert {20, 21, 22, 23, 24} <= fired  # free-running on the model
    # lost after 3 s (or 8 beats) of silence, safe 2 s later: then nothing fires
    assert bench.runner.follower.state is SyncState.LOST
    assert bench.runner.counters.safe_states == 1
    assert bench.hardware.states()["led"] is False and bench.hardware.states()["relay"] is False
    assert max(fired) <= 19 + int((4.0 + 2.0) / BEAT) + 1, max(fired)


# The real defaults: LOST after sync.lost_after_s = 10 s of silence (more than 8 beats at
# 120 BPM), and the safe state at once (agent.safe_after_lost_s = 0). The relay rests on.
DEFAULTS = (
    PROFILE.replace("safe_after_lost_s = 2.0\n", "")
    .replace("[sync]\nlost_after_s = 3.0\n", "")
    .replace("max_switch_hz = 100\n", "max_switch_hz = 100\nsafe_state = 1\n")
)


def _safe_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[float, dict[str, object]]]:
    out = []
    for record in caplog.records:
        text = record.getMessage()
        if text.startswith("outputs in their safe state (beat lost) at monotonic "):
            at, states = text.split("monotonic ", 1)[1].split(": ", 1)
            out.append((float(at), json.loads(states)))
    return out


def test_by_default_outputs_go_safe_the_moment_the_beat_is_lost(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bench = Bench(tmp_path, factory, DEFAULTS)
    assert bench.config.agent.safe_after_lost_s == 0.0
    bench.pulse(range(20))
    last_arrival = bench.frames[-1][0]
    bench.run_until(bench.start + 70 * BEAT)  # 25 s of silence
    assert bench.runner.follower.state is SyncState.LOST
    assert bench.runner.counters.safe_states == 1
    # Safe at LOST, 10 s after the last frame, with the pins read back at their safe state.
    [(at, states)] = _safe_lines(caplog)
    assert at == pytest.approx(last_arrival + 10.0, abs=0.001)
    assert states == {"led": False, "relay": True}
    assert bench.hardware.states() == {"led": False, "relay": True}
    fired = [r for r in bench.rows() if r["fired_mono"] is not None]
    # Free-running on the model right up to LOST (beat 38's toggle is its last before it)...
    toggles = {int(r["beat_index"]) for r in fired if r["rule"] == 0}  # type: ignore[call-overload]
    assert set(range(20, 39)) <= toggles and max(toggles) == 38
    # ...and no actuation after it.
    assert max(float(r["fired_mono"]) for r in fired) < at  # type: ignore[arg-type]


def test_a_device_that_keeps_running_when_lost_fires_on_the_model(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    text = DEFAULTS.replace("pin = 17\n", "pin = 17\nkeep_running_when_lost = true\n", 1)
    bench = Bench(tmp_path, factory, text)
    assert bench.config.profile.keep_running_when_lost == {"led"}
    bench.pulse(range(20))
    bench.pulse(range(80, 100))  # the beat returns after 30 s of silence
    bench.run_until(bench.start + 100 * BEAT)
    [(at, states)] = _safe_lines(caplog)
    assert states["relay"] is True  # the relay went to its safe state; the led did not
    fired = [r for r in bench.rows() if r["fired_mono"] is not None]
    lost = [r for r in fired if at <= float(r["fired_mono"]) < bench.start + 80 * BEAT]  # type: ignore[arg-type]
    # While lost, the led kept its every-beat toggle on the free-running model, alone.
    assert {str(r["device"]) for r in lost} == {"led"}
    toggles = sorted(int(r["beat_index"]) for r in fired if r["rule"] == 0)  # type: ignore[call-overload]
    assert toggles == list(range(toggles[0], toggles[-1] + 1)), "a led beat was lost"
    # Once the beat is back the relay's downbeat rules fire again.
    back = {int(r["beat_index"]) for r in fired if r["device"] == "relay"}  # type: ignore[call-overload]
    assert {b for b in back if b >= 80} >= {84, 88, 92, 96}
    assert bench.runner.follower.state is SyncState.LOCKED


def test_the_lost_beat_grace_is_counted_from_lost(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bench = Bench(
        tmp_path,
        factory,
        DEFAULTS.replace('cluster = "bench"\n', 'cluster = "bench"\nsafe_after_lost_s = 1.5\n'),
    )
    bench.pulse(range(20))
    last_arrival = bench.frames[-1][0]
    bench.run_until(bench.start + 60 * BEAT)
    [(at, _)] = _safe_lines(caplog)
    assert at == pytest.approx(last_arrival + 10.0 + 1.5, abs=0.001)


def test_a_renumbered_pulse_does_not_double_any_action(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(60))
    bench.pulse(range(60, 120), index_offset=-58)  # same timing, numbers restart at 2
    bench.run_until(bench.start + 120 * BEAT)
    toggles = [r for r in bench.rows() if r["rule"] == 0 and r["fired_mono"]]
    times = [round(float(r["fired_mono"]), 4) for r in toggles]  # type: ignore[arg-type]
    assert len(times) >= 120 - 8, "the toggle did not fire on every beat once locked"
    assert len(times) == len(set(times)), "an action fired twice at one moment"
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(abs(step - BEAT) < 0.001 for step in steps), steps  # no beat lost either


def test_a_reload_applies_at_the_next_beat_boundary(tmp_path: Path, factory: MockFactory) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(40))
    bench.run_until(bench.start + 20.4 * BEAT)
    new = _config(
        tmp_path,
        PROFILE.replace('device = "led"\ndo = "toggle"', 'device = "relay"\ndo = "toggle"'),
    )
    bench.runner.request_reload(new)
    bench.run_until(bench.start + 40 * BEAT)
    by_beat: dict[int, set[str]] = {}
    for r in bench.rows():
        if r["rule"] == 0 and r["fired_mono"]:
            by_beat.setdefault(int(r["beat_index"]), set()).add(str(r["device"]))  # type: ignore[call-overload]
    assert by_beat[20] == {"led"} and by_beat[21] == {"relay"} and by_beat[39] == {"relay"}
    assert all(by_beat[b] == {"led"} for b in range(10, 21))
    assert bench.runner.counters.reloads == 1


def test_claims_after_a_reload_keep_the_seq_and_the_incarnation(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    bench.pulse(range(30))
    bench.run_until(bench.start + 15.4 * BEAT)
    # Another profile: another config digest, so the reload builds a new status builder.
    bench.runner.request_reload(_config(tmp_path, PROFILE.replace('do = "toggle"', 'do = "on"', 1)))
    bench.run_until(bench.start + 30 * BEAT)
    claims = [decode_status_claim(p) for t, p in link.published if "/status/" in t]
    metas = [c.metadata for c in claims if c.metadata is not None]
    assert bench.runner.counters.reloads == 1
    assert len({m["config_hash"] for m in metas}) == 2  # the reload did take effect
    assert len({m["incarnation"] for m in metas}) == 1 and "incarnation" in metas[-1]
    seqs = [m["seq"] for m in metas]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _fired(bench: Bench, device: str) -> list[int]:
    return [
        int(r["beat_index"])  # type: ignore[call-overload]
        for r in bench.rows()
        if r["device"] == device and r["fired_mono"] and r["ok"]
    ]


def test_a_reload_with_a_new_profile_rebuilds_the_devices_at_the_boundary(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(40))
    bench.run_until(bench.start + 20.4 * BEAT)
    old_led = bench.hardware
    assert factory.pin(17).state is not None
    moved = PROFILE.replace("pin = 17", "pin = 22")  # the LED was rewired to GPIO22
    bench.runner.request_reload(_config(tmp_path, moved))
    bench.run_until(bench.start + 40 * BEAT)
    assert bench.hardware is not old_led and bench.runner.counters.reloads == 1
    assert bench.hardware.profile.devices["led"].pin == 22
    toggles = [
        int(r["beat_index"])  # type: ignore[call-overload]
        for r in bench.rows()
        if r["rule"] == 0 and r["fired_mono"] and r["ok"]
    ]
    assert toggles[-1] == 39 and set(range(21, 40)) <= set(toggles)  # no beat lost
    pin17 = [st for st in factory.pin(17).states if st.timestamp > 0]
    pin22 = factory.pin(22).states
    # GPIO17 was left at the safe state (off) by the old devices and never touched again;
    # GPIO22 toggles from beat 21 on.
    assert factory.pin(17).state is False and pin17
    assert len(pin22) >= 19, pin22


def test_a_reload_brings_an_isolated_device_back(tmp_path: Path, factory: MockFactory) -> None:
    squatter = LED(27, pin_factory=factory)  # the relay's pin is taken at start-up
    bench = Bench(tmp_path, factory)
    bench.pulse(range(40))
    bench.run_until(bench.start + 12.4 * BEAT)
    assert bench.hardware.isolated == {"relay"}
    assert bench.runner.last_review is not None
    assert bench.runner.last_review.isolated == ("relay",)
    assert _fired(bench, "relay") == []
    outputs = render(bench.runner, bench.clock.monotonic()).split("outputs:")[1]
    assert "relay            ISOLATED" in outputs and "led " in outputs
    squatter.close()  # the operator frees the pin, then reloads the unchanged config
    bench.runner.request_reload(_config(tmp_path))
    bench.run_until(bench.start + 40 * BEAT)
    assert bench.hardware.isolated == frozenset()
    assert bench.runner.last_review is not None and not bench.runner.last_review.isolated
    assert "ISOLATED" not in render(bench.runner, bench.clock.monotonic())
    relay = _fired(bench, "relay")
    assert relay and min(relay) >= 13 and {16, 20, 24, 28, 32, 36} <= set(relay)


class UnreadablePin(MockPin):  # type: ignore[misc]  # gpiozero ships no types
    """A mock pin whose reads fail like a lost GPIO line once ``broken`` is set."""

    broken = False

    def _get_state(self) -> bool:
        if self.broken:
            raise OSError(5, "Input/output error")
        return bool(super()._get_state())


def hot(at: float, temperature_c: float) -> Sample:
    return Sample(at, None, None, None, None, None, None, temperature_c, None, None, 0.0)


def test_the_view_only_reads(tmp_path: Path, factory: MockFactory) -> None:
    led_pin = factory.pin(17, pin_class=UnreadablePin)
    assert isinstance(led_pin, UnreadablePin)
    bench = Bench(tmp_path, factory)
    bench.pulse(range(8))
    bench.run_until(bench.start + 4.4 * BEAT)
    now = bench.clock.monotonic()
    guard, hardware = bench.runner.guard, bench.hardware
    # The guard went to SHED and has been calm long enough that its next step recovers.
    guard.observe(hot(now, 90.0))
    assert guard.advance(now) == Verdict(Level.SHED, "temperature_critical")
    guard.observe(hot(now + 1.0, 40.0))
    # The LED's pin can no longer be read.
    led_pin.broken = True
    changes = guard.verdict_changes
    for later in (now + 10.0, now + 20.0):
        screen = render(bench.runner, later)
        assert "guard shed (temperature_critical)" in screen
        assert "led              -" in screen and "ISOLATED" not in screen
    assert guard.verdict == Verdict(Level.SHED, "temperature_critical")
    assert guard.verdict_changes == changes
    assert hardware.isolated == frozenset() and hardware.failures == {}
    # The steps still do what they did: the guard recovers one rung, the check isolates.
    assert guard.advance(now + 10.0) == Verdict(Level.ESSENTIAL, "recovering")
    assert "guard essential_only (recovering)" in render(bench.runner, now + 10.0)
    hardware.check_states()
    assert hardware.isolated == {"led"}
    assert "led              ISOLATED" in render(bench.runner, now + 10.0)
    led_pin.broken = False


def test_a_profile_that_cannot_be_built_keeps_the_old_config(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    built: list[Profile] = []

    def picky(profile: Profile) -> Hardware:
        built.append(profile)
        if profile.devices["led"].pin == 22:
            raise HardwareError("no pin factory could be loaded (test)")
        return bench.make_hardware(profile)

    bench.runner.make_hardware = picky
    bench.pulse(range(30))
    bench.run_until(bench.start + 10.4 * BEAT)
    bench.runner.request_reload(_config(tmp_path, PROFILE.replace("pin = 17", "pin = 22")))
    bench.run_until(bench.start + 30 * BEAT)
    assert [p.devices["led"].pin for p in built] == [22, 17]  # tried, then the old again
    assert bench.runner.counters.reload_errors == 1 and bench.runner.counters.reloads == 0
    assert bench.runner.config.profile.devices["led"].pin == 17
    toggles = [
        int(r["beat_index"])  # type: ignore[call-overload]
        for r in bench.rows()
        if r["rule"] == 0 and r["fired_mono"] and r["ok"]
    ]
    assert set(range(11, 30)) <= set(toggles)


@pytest.mark.parametrize("failure", [ValueError("a bug"), RecursionError("deep")])
def test_any_failure_while_applying_a_reload_refuses_it_and_the_beat_goes_on(
    tmp_path: Path, factory: MockFactory, failure: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only HardwareError: whatever a new profile raises while it is built, and
    # whatever breaks while the new settings are made, is a refused reload, never the end
    # of the loop; the old config, devices and beat stay.
    import edge.reload

    bench = Bench(tmp_path, factory)

    def broken(profile: Profile) -> Hardware:
        if profile.devices["led"].pin == 22:
            raise failure
        return bench.make_hardware(profile)

    bench.runner.make_hardware = broken
    bench.pulse(range(40))
    bench.run_until(bench.start + 10.4 * BEAT)
    bench.runner.request_reload(_config(tmp_path, PROFILE.replace("pin = 17", "pin = 22")))
    bench.run_until(bench.start + 20.4 * BEAT)
    assert bench.runner.counters.reload_errors == 1 and bench.runner.counters.reloads == 0
    assert bench.runner.config.profile.devices["led"].pin == 17

    def no_guard(config: object) -> None:
        raise failure

    monkeypatch.setattr(edge.reload, "Guard", no_guard)
    old = bench.runner.config
    bench.runner.request_reload(_config(tmp_path, PROFILE + "[guard]\ncpu_enter = 95.0\n"))
    bench.run_until(bench.start + 40 * BEAT)
    assert bench.runner.counters.reload_errors == 2 and bench.runner.counters.reloads == 0
    assert bench.runner.config is old  # nothing half-applied
    toggles = [
        int(r["beat_index"])  # type: ignore[call-overload]
        for r in bench.rows()
        if r["rule"] == 0 and r["fired_mono"] and r["ok"]
    ]
    assert set(range(11, 40)) <= set(toggles)


def test_restart_only_sections_are_kept_on_reload(
    tmp_path: Path, factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(12))
    bench.run_until(bench.start + 4.4 * BEAT)
    changed = (
        PROFILE.replace('id = "bench:pi-01"', 'id = "bench:pi-99"')
        .replace("lost_after_s = 3.0", "lost_after_s = 4.0")
        .replace("safe_after_lost_s = 2.0", "safe_after_lost_s = 5.0")
        .replace('do = "toggle"\noffset = 0.25', 'do = "toggle"\noffset = 0.5')
    )
    bench.runner.request_reload(_config(tmp_path, changed))
    bench.run_until(bench.start + 12 * BEAT)
    config = bench.runner.config
    assert config.agent.id == "bench:pi-01" and config.sync.lost_after_s == 3.0
    # what a reload does apply, applied
    assert config.score != bench.config.score and config.agent.safe_after_lost_s == 5.0
    assert "[sync], agent.id changes take effect at the next restart" in caplog.text


HEADER = PROFILE[: PROFILE.index("[devices.led]")]

TWO_RUNS = (
    HEADER
    + """
[devices.sh]
kind = "command"
timeout_s = 5
max_running = 2
[[score]]
device = "sh"
do = "command"
argv = ["fake-run", "1.2"]
every = 4
essential = true
[[score]]
device = "sh"
do = "command"
argv = ["fake-run", "0.1"]
every = 4
every_at = 1
essential = true
"""
)


def test_out_of_order_command_ends_teach_each_run_its_own_duration(
    tmp_path: Path, factory: MockFactory
) -> None:
    # A 1.2 s run starts on beats 0 mod 4, a 0.1 s one half a second later on the same
    # device: the later one ends first. Matched in start order, each would be taught the
    # other's start (0.6 s and 0.7 s); matched by run id, each gets its own.
    bench = Bench(tmp_path, factory, TWO_RUNS)
    guard = bench.runner.guard = RecordingGuard(bench.config.guard)
    bench.pulse(range(60))
    bench.run_until(bench.start + 60 * BEAT)
    taught = [d for name, d, _ in guard.records if name == "sh.command"]
    long_runs = [d for d in taught if 1.2 <= d <= 1.2 + 0.021]  # polled every <= 20 ms
    short_runs = [d for d in taught if 0.1 <= d <= 0.1 + 0.021]
    assert len(long_runs) >= 10 and len(short_runs) >= 10
    assert len(long_runs) + len(short_runs) == len(taught), taught
    assert not any(missed for _, _, missed in guard.records)
    assert bench.runner.counters.missed == 0 and not bench.runner.counters.dropped


BUSY = (
    HEADER
    + """
[devices.sh]
kind = "command"
timeout_s = 1.0
[[score]]
device = "sh"
do = "command"
argv = ["fake-run", "0.7"]
cost_s = 0.7
essential = true
"""
)


def test_a_dropped_action_does_not_lower_the_learned_estimate(
    tmp_path: Path, factory: MockFactory
) -> None:
    # A 0.7 s command every 0.5 s beat on a device that runs one at a time: every other
    # start finds it busy. Learning those drops as ~0 s runs would pull the estimate toward
    # 0.64 s; only the runs that happened may teach it.
    bench = Bench(tmp_path, factory, BUSY)
    bench.pulse(range(60))
    bench.run_until(bench.start + 60 * BEAT)
    guard = bench.runner.guard
    busy = bench.runner.counters.dropped["busy"]
    assert busy >= 20
    assert 0.7 <= guard.estimate("sh.command", 0.0) <= 0.7 + 0.021
    assert guard.dropped["busy"] == busy
    assert guard.miss_rate() > 0.3  # and the busy device shows as pressure


MISSING = (
    HEADER
    + """
[devices.sh]
kind = "command"
[[score]]
device = "sh"
do = "command"
argv = ["/nonexistent/i2cset"]
every = 4
essential = true
"""
)


def test_a_command_that_cannot_start_fails_its_beat_and_teaches_nothing(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory, MISSING)
    guard = bench.runner.guard = RecordingGuard(bench.config.guard)
    bench.pulse(range(40))
    bench.run_until(bench.start + 20.99 * BEAT)  # past beat 20's review (a command beat)
    review = bench.runner.last_review
    assert review is not None and (review.beat_index, review.state) == (20, "failed")
    bench.run_until(bench.start + 40 * BEAT)
    assert guard.records == [] and guard.dropped["not_started"] >= 5
    assert guard.miss_rate() == 0.0  # a fault, not load
    assert "/nonexistent/i2cset" in bench.hardware.errors["sh"]


def test_run_once_waits_on_the_clock_so_a_fake_clock_drives_it(
    tmp_path: Path, factory: MockFactory
) -> None:
    # Only run_once moves the fake clock here (to each deadline); the test just hands a
    # frame to the inbox when it arrives before the runner's next deadline.
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner = bench.runner
    bench.pulse(range(40))
    bench.run_once_until(link, bench.start + 40 * BEAT)
    runner.flush()
    toggles = [r for r in bench.rows() if r["rule"] == 0 and r["fired_mono"] is not None]
    beats = [int(r["beat_index"]) for r in toggles]  # type: ignore[call-overload]
    assert beats == list(range(beats[0], 40)) and beats[0] <= 8
    assert all(r["ok"] for r in toggles)
    for r in toggles:  # the spin lands each on its time exactly
        assert abs(float(r["late_ms"])) < 1e-6, r  # type: ignore[arg-type]
    for r in toggles[8:]:
        truth = bench.start + int(r["beat_index"]) * BEAT + (1 + 0.25) * BEAT / 3  # type: ignore[call-overload]
        assert abs(float(r["fired_mono"]) - truth) < 0.0001, r  # type: ignore[arg-type]
    assert runner.counters.missed == 0 and runner.counters.frames == 40
    assert len(link.published) == runner.counters.claims >= 30  # no outbox: straight out


def test_run_once_takes_a_queued_item_at_once(tmp_path: Path, factory: MockFactory) -> None:
    link = FakeLink()
    runner = Bench(tmp_path, factory, link=link).runner
    link.inbox.put(Inbound("message", 500.0, 0.0, "backbeat/bench/beat", b"not a frame"))
    runner.run_once()
    assert runner.clock.monotonic() == 500.0 and runner.counters.frames_bad == 1
    runner.run_once()  # nothing queued: it waits (on the fake clock) for its next deadline
    # not an action's deadline: waited for plainly, no spin lead
    assert runner.clock.monotonic() == pytest.approx(500.0 + MAX_WAIT_S)


def test_shutdown_goes_safe_and_gives_the_final_claim_and_offline(
    tmp_path: Path, factory: MockFactory
) -> None:
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link)
    runner = bench.runner
    assert runner.final_claim() is None  # nothing reviewed yet
    bench.pulse(range(12))
    bench.run_until(bench.start + 10.5 * BEAT)
    assert runner.last_review is not None and runner.last_review.state != "idle"
    last_seq = runner.status.seq
    final = runner.shutdown()
    assert runner.hardware.states()["relay"] is False and runner.hardware.states()["led"] is False
    [(topic, payload, retain), offline] = final
    assert (topic, retain) == ("backbeat/bench/status/bench:pi-01", False)
    claim = decode_status_claim(payload)
    assert claim.state == "idle" and claim.metadata is not None
    assert claim.metadata["final"] is True and claim.metadata["seq"] == last_seq + 1
    assert offline == ("backbeat/bench/agents/bench:pi-01/availability", b"offline", True)


def test_shutdown_while_disconnected_keeps_the_final_claim_in_the_outbox(
    tmp_path: Path, factory: MockFactory
) -> None:
    outbox = Outbox(OutboxConfig(directory=None))
    bench = Bench(tmp_path, factory, link=FakeLink(connected=False), outbox=outbox)
    runner = bench.runner
    bench.pulse(range(8))
    bench.run_until(bench.start + 6.5 * BEAT)
    backlog = outbox.backlog
    final = runner.shutdown()
    assert [topic for topic, _, _ in final] == ["backbeat/bench/agents/bench:pi-01/availability"]
    assert outbox.backlog == backlog + 1
    kept = decode_status_claim(outbox.pending()[-1].payload)
    assert kept.metadata is not None and kept.metadata["final"] is True


def _hlc_wall(hlc: str) -> int:
    return int(hlc.split(":")[0], 16)


def test_a_frame_far_ahead_or_for_another_cluster_never_moves_the_claims_hlc(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(30))
    wall0 = bench.clock.wall() - bench.clock.monotonic()
    nine_hours = f"{(int(bench.clock.wall()) + 9 * 3600) & 0xFFFF:04x}:0000:0009"
    at = bench.frames[10][0] + 0.01
    far = BeatFrame(
        cluster_id="bench",
        beat_index=10,
        downbeat=False,
        phase="plan",
        hlc=nine_hours,
        deadline_at=datetime.fromtimestamp(wall0 + at, UTC),
        tempo_bpm=BPM,
        window_id=f"{10 // 4:032x}",
    )
    other = replace(
        far, cluster_id="elsewhere", hlc=f"{(int(wall0 + at) + 30) & 0xFFFF:04x}:0000:0009"
    )
    bench.frames += [(at, encode(far, "json")), (at + 0.001, encode(other, "json"))]
    bench.frames.sort(key=lambda f: f[0])
    bench.run_until(bench.start + 30 * BEAT)
    review = bench.runner.last_review
    assert review is not None
    assert review.frames_rejected.get("hlc_ahead") == 1, review.frames_rejected
    assert review.frames_rejected.get("wrong_cluster") == 1, review.frames_rejected
    # The claims' HLC follows the local clock and the real pulse, nothing 30 s or 9 h ahead.
    now_wall = _hlc_wall(bench.runner.hlc.now_wire())
    assert (now_wall - int(bench.clock.wall())) & 0xFFFF <= 1
    assert bench.runner.counters.missed == 0


def test_early_copies_raise_the_source_conflict_alert_in_claims(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = Bench(tmp_path, factory)
    bench.pulse(range(60))
    # From beat 20 an attacker sends a copy of each real frame, earlier and earlier.
    real = list(bench.frames)
    for n, (at, payload) in enumerate(real[20:], start=1):
        bench.frames.append((at - 0.035 * n, payload))
    bench.frames.sort(key=lambda f: f[0])
    bench.run_until(bench.start + 60 * BEAT)
    review = bench.runner.last_review
    assert review is not None
    assert "beat_source_conflict" in review.alerts, review.alerts
    assert review.source_conflict_ms is not None and review.source_conflict_ms > 30
    final = bench.runner.final_claim()  # built from the last review, as every claim is
    assert final is not None
    metadata = decode_status_claim(final[1]).metadata
    assert metadata is not None and "beat_source_conflict" in metadata["alerts"]
    assert metadata["source_conflict_ms"] == round(review.source_conflict_ms, 1)
    # The copies never dragged the timeline: every toggle from beat 8 on at its true time.
    toggles = [r for r in bench.rows() if r["rule"] == 0 and r["fired_mono"]]
    for r in toggles[8:]:
        truth = bench.start + int(r["beat_index"]) * BEAT + (1 + 0.25) * BEAT / 3  # type: ignore[call-overload]
        assert abs(float(r["fired_mono"]) - truth) < 0.002, r  # type: ignore[arg-type]


def test_acks_queued_after_the_last_wakeup_are_taken_at_exit(
    tmp_path: Path, factory: MockFactory
) -> None:
    # The loop's last wake-up has passed; the broker's acks of the last claims arrive
    # after it. Left in the inbox, those claims would be kept (or said lost) at exit.
    outbox = Outbox(OutboxConfig(directory=None))
    link = FakeLink()
    bench = Bench(tmp_path, factory, link=link, outbox=outbox)
    bench.pulse(range(8))
    bench.run_until(bench.start + 6.5 * BEAT)
    claims = [mid for mid, (topic, _) in enumerate(link.published, 1) if "/status/" in topic]
    assert claims and outbox.backlog == len(claims)  # published, none acknowledged yet
    link.inbox.put(Inbound("wake", 0.0))  # of no use any more: passed over
    for mid in claims:
        link.inbox.put(Inbound("ack", 0.0, mid=mid))
    assert bench.runner.take_late_acks() == len(claims)
    assert outbox.backlog == 0 and link.inbox.empty()
