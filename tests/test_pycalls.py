"""Python devices: the profile and score keys, the values a function may return, what each
call end means, the claim's ``metadata.calls`` / ``metadata.values``, the monitor's and
the view's lines, and (slow: real worker processes) the hardware driving a worker: a call
handed over ahead of its time, a hang killed at its deadline, an exception counted, an
exit restarted, a bad ``call`` refused by ``check``."""

from __future__ import annotations

import math
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.errors import ConfigError, ConfigProblems
from edge.hardware import ActionResult, Hardware
from edge.hlc import HybridLogicalClock
from edge.messages import decode_status_claim, encode
from edge.monitor import FleetView, values_text
from edge.plan import CALL_ENDS, Fate, outcome
from edge.preflight import check_calls
from edge.profile import parse_profile
from edge.pyworker import MAX_VALUES, check_values, describe
from edge.score import Action, CallJob, parse_score
from edge.status import BeatReview, StatusBuilder, StatusConfig
from edge.topics import Topics


def parse(
    devices: dict[str, Any], score: list[Any] | None = None, base: str | None = "/base"
) -> tuple[Any, Any, list[str]]:
    problems = ConfigProblems("t")
    profile = parse_profile({"devices": devices}, problems, base=base)
    parsed = parse_score(score or [], profile, problems)
    return profile, parsed, problems.items


# --------------------------------------------------------------------------- profile, score


def test_a_python_device_reads_its_keys() -> None:
    profile, _, problems = parse(
        {
            "s": {
                "kind": "python",
                "call": "pkg.mod:read",
                "path": "sensors",
                "params": {"bus": 1, "names": ["a", "b"], "cal": {"k": 1.5}},
                "safe_call": "rest",
                "deadline_beats": 0.5,
            }
        }
    )
    assert problems == []
    spec = profile.devices["s"]
    assert spec.family == "python" and spec.pin is None
    assert spec.text("call", "") == "pkg.mod:read"
    assert spec.text("path", "") == "/base/sensors"  # relative to the profile's file
    assert spec.params == {"bus": 1, "names": ["a", "b"], "cal": {"k": 1.5}}
    assert spec.number("deadline_beats", 0.0) == 0.5


def test_an_absolute_path_is_kept() -> None:
    profile, _, problems = parse({"s": {"kind": "python", "call": "m:f", "path": "/opt/x"}})
    assert problems == [] and profile.devices["s"].text("path", "") == "/opt/x"


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"kind": "python"}, "devices.s.call", "required"),
        ({"kind": "python", "call": "nomodule"}, "devices.s.call", "package.module:function"),
        ({"kind": "python", "call": "a.b:c:d"}, "devices.s.call", "package.module:function"),
        ({"kind": "python", "call": "m:f", "pin": 17}, "devices.s.pin", "no pin"),
        ({"kind": "python", "call": "m:f", "params": 3}, "devices.s.params", "a table"),
        (
            {"kind": "python", "call": "m:f", "params": {"x": {"y": {"z": 1}}}},
            "devices.s.params",
            "at most",
        ),
        ({"kind": "python", "call": "m:f", "safe_call": "a b"}, "devices.s.safe_call", "name"),
        ({"kind": "python", "call": "m:f", "deadline_beats": 0}, "devices.s.deadline_beats", ""),
        ({"kind": "python", "call": "m:f", "max_on_s": 1}, "devices.s.max_on_s", "apply"),
        ({"kind": "python", "call": "m:f", "argv": ["x"]}, "devices.s.argv", "not a key"),
    ],
)
def test_bad_python_device_keys_are_named(body: dict[str, Any], where: str, says: str) -> None:
    _, _, problems = parse({"s": body})
    assert any(p.startswith(where) and says in p for p in problems), problems


def test_a_call_rule_merges_its_params_over_the_devices() -> None:
    _, score, problems = parse(
        {"s": {"kind": "python", "call": "m:f", "params": {"a": 1, "b": 2}}},
        [
            {"device": "s", "do": "call", "params": {"b": 3, "c": "x"}},
            {"device": "s", "do": "call"},
        ],
    )
    assert problems == []
    assert score.rules[0].action.params == {"a": 1, "b": 3, "c": "x"}
    assert score.rules[1].action.params == {"a": 1, "b": 2}
    hash(score.rules[0].action)  # params do not make an action unhashable


def test_only_a_call_takes_params_and_a_python_device_only_calls() -> None:
    _, _, problems = parse(
        {"s": {"kind": "python", "call": "m:f"}, "led": {"kind": "led", "pin": 17}},
        [
            {"device": "led", "do": "on", "params": {"a": 1}},
            {"device": "s", "do": "on"},
            {"device": "s", "do": "call", "params": [1]},
        ],
    )
    assert any(p.startswith("score[0].params") for p in problems), problems
    assert any(p.startswith("score[1].do") and "call" in p for p in problems), problems
    assert any(p.startswith("score[2].params") for p in problems), problems


# --------------------------------------------------------------------------- values


def test_small_values_pass() -> None:
    values, problem = check_values({"t": 21.5, "n": 3, "ok": True, "name": "x", "a.b-c": -1})
    assert problem is None and values == {"t": 21.5, "n": 3, "ok": True, "name": "x", "a.b-c": -1}
    assert check_values(None) == (None, None)


@pytest.mark.parametrize(
    ("result", "says"),
    [
        ([1, 2], "list"),
        ({"x": [1]}, "list"),
        ({"x": None}, "NoneType"),
        ({"x": math.nan}, "finite"),
        ({"x": 2**64}, "64 bits"),
        ({"x": "y" * 65}, "64 characters"),
        ({"bad key": 1}, "value name"),
        ({3: 1}, "value name"),
        ({f"k{i}": i for i in range(MAX_VALUES + 1)}, "more than"),
    ],
)
def test_other_values_are_refused_saying_why(result: object, says: str) -> None:
    values, problem = check_values(result)
    assert values is None and problem is not None and says in problem


def test_an_exception_is_one_line() -> None:
    assert describe(ValueError("no sensor\nat bus 1")) == "ValueError: no sensor"
    assert describe(KeyError()) == "KeyError"


# --------------------------------------------------------------------------- outcomes


def test_call_ends_mean_what_command_ends_do() -> None:
    assert outcome("call_done").fate is Fate.ENDED
    killed = outcome("call_killed")
    assert killed.fate is Fate.MISSED and killed.miss and killed.reason == "killed"
    assert outcome("call_overran").fate is Fate.MISSED
    assert outcome("call_failed", ok=False).fate is Fate.FAILED
    assert outcome("call_not_started", ok=False).fate is Fate.FAILED
    assert outcome("call", running=True).fate is Fate.RUNNING
    assert {
        "call_done",
        "call_failed",
        "call_overran",
        "call_killed",
        "call_not_started",
    } == CALL_ENDS


# --------------------------------------------------------------------------- claims


class _Clock:
    def monotonic(self) -> float:
        return 100.0

    def wall(self) -> float:
        return 1_700_000_000.0


def _review(beat_index: int = 7, **extra: Any) -> BeatReview:
    return BeatReview(
        beat_index=beat_index,
        state="reviewing",
        sync_state="locked",
        error_bound_ms=0.5,
        late_ms_p50=0.1,
        late_ms_max=0.2,
        fired=3,
        missed=0,
        shed={},
        dropped_by_limit=0,
        frames_rejected={},
        guard_level="normal",
        guard_reason="ok",
        recommended_tempo=None,
        cpu_percent=None,
        memory_mb=None,
        temperature_c=None,
        backlog=0,
        outbox_dropped=0,
        **extra,
    )


def _builder(mode: str = "every") -> StatusBuilder:
    hlc = HybridLogicalClock(_Clock(), 1)  # type: ignore[arg-type]
    return StatusBuilder("bench:pi-01", StatusConfig(mode=mode), hlc, "1", "abc")  # type: ignore[arg-type]


def test_claims_carry_the_call_counts_and_values_and_validate() -> None:
    counts = {"done": 5, "exceptions": 1, "kills": 0}
    claim = _builder().build(
        _review(calls=counts, values={"sensor": {"temperature_c": 21.5, "ok": True}})
    )
    assert claim is not None and claim.metadata is not None
    assert dict(claim.metadata["calls"]) == counts
    assert dict(claim.metadata["values"]["sensor"]) == {"temperature_c": 21.5, "ok": True}
    again = decode_status_claim(encode(claim, "cbor"))  # the contract's own check
    assert again.metadata is not None
    assert dict(again.metadata["values"]["sensor"]) == {"temperature_c": 21.5, "ok": True}
    plain = _builder().build(_review())
    assert plain is not None and plain.metadata is not None
    assert "calls" not in plain.metadata and "values" not in plain.metadata


def test_a_claim_carries_the_values_of_at_most_16_devices() -> None:
    values = {f"d{i:02}": {"v": i} for i in range(20)}
    claim = _builder().build(_review(values=values))
    assert claim is not None and claim.metadata is not None
    assert sorted(claim.metadata["values"]) == [f"d{i:02}" for i in range(16)]


def test_an_exception_is_a_change_and_a_value_is_not() -> None:
    builder = _builder("on_change")
    first = _review(beat_index=1, calls={"done": 1, "exceptions": 0}, values={"s": {"t": 1}})
    assert builder.build(first) is not None
    calm = _review(beat_index=2, calls={"done": 2, "exceptions": 0}, values={"s": {"t": 2}})
    assert builder.build(calm) is None
    raised = _review(beat_index=3, calls={"done": 2, "exceptions": 1}, values={"s": {"t": 2}})
    assert builder.build(raised) is not None


def test_the_monitor_shows_the_values() -> None:
    md = {"values": {"sensor": {"t": 21.5, "n": 2}, "b": {"ok": True}}}
    assert values_text(md) == "  values: b ok=True; sensor n=2 t=21.5"
    assert values_text({}) == ""
    view = FleetView(Topics("backbeat", "bench"))
    claim = _builder().build(_review(values={"sensor": {"temperature_c": 21.5}}))
    assert claim is not None
    view.feed("backbeat/bench/status/bench:pi-01", encode(claim, "cbor"), 1.0)
    row = next(line for line in view.table().splitlines() if line.startswith("bench:pi-01"))
    assert row.endswith("values: sensor temperature_c=21.5"), row


# --------------------------------------------------------------------------- workers (slow)

MODULE = textwrap.dedent(
    """
    import os, time, json
    def record(ctx):
        entry = time.monotonic()
        with open(ctx.params["out"], "a") as f:
            f.write(json.dumps({"entry": entry, "at": ctx.at, "beat": ctx.beat_index,
                                "phase": ctx.phase, "deadline": ctx.deadline,
                                "device": ctx.device, "params": dict(ctx.params)}) + "\\n")
        return {"beat": ctx.beat_index, "reading": 1.5}
    def hang(ctx):
        time.sleep(1000)
    def boom(ctx):
        raise ValueError("no sensor on bus " + str(ctx.params.get("bus")))
    def quit(ctx):
        os._exit(4)
    def bad(ctx):
        return {"x": [1, 2]}
    def rest(sctx):
        with open(sctx.params["out"] + ".safe", "a") as f:
            f.write(sctx.reason + "\\n")
    not_callable = 3
    def spawn_and_hang(ctx):
        import subprocess
        child = subprocess.Popen(["sleep", "1000"])
        with open(ctx.params["out"], "w") as f:
            f.write(str(child.pid))
        time.sleep(1000)
    """
)


@pytest.fixture
def mods(tmp_path: Path) -> Path:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "probe.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "mods" / "hangs_on_import.py").write_text(
        "import time\ntime.sleep(1000)\n", encoding="utf-8"
    )
    return tmp_path


def _hardware(mods: Path, devices: dict[str, dict[str, Any]]) -> Hardware:
    raw = {n: {"kind": "python", "path": "mods", **body} for n, body in devices.items()}
    profile, _, problems = parse(raw, base=str(mods))
    assert problems == []
    return Hardware(profile, pin_factory=MockFactory())


def _job(device: str, beat: int, ahead: float, span: float = 0.3, **params: Any) -> CallJob:
    at = time.monotonic() + ahead
    return CallJob((beat, 0), Action(device, "call", params=params), at, at + span, "execute",
                   True, 120.0)  # fmt: skip


def _until(hw: Hardware, done: int, timeout: float = 10.0) -> list[ActionResult]:
    """Tick ``hw`` until ``done`` call ends came (or the timeout)."""
    ends: list[ActionResult] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(ends) < done:
        ends += [r for r in hw.tick(time.monotonic()) if r.do in CALL_ENDS]
        time.sleep(0.002)
    return ends


def _fire(hw: Hardware, job: CallJob, tag: object = "t") -> ActionResult:
    """Fire ``job`` at its time, ticking meanwhile as the runner's loop does."""
    while time.monotonic() < job.at:
        hw.tick(time.monotonic())
        time.sleep(0.0005)
    return hw.apply(job.action, time.monotonic(), tag=tag, call=job)


@pytest.mark.slow
def test_a_call_handed_over_ahead_runs_at_its_time(mods: Path) -> None:
    out = mods / "out.jsonl"
    hw = _hardware(mods, {"p": {"call": "probe:record", "params": {"out": str(out)}}})
    try:
        job = _job("p", 5, 0.3, out=str(out), extra=1)
        hw.prepare_calls([job], time.monotonic())
        fired = _fire(hw, job)
        assert fired.ok and fired.run is not None
        hw.prepare_calls([], time.monotonic())  # fired: not cancelled by the plan's sync
        (end,) = _until(hw, 1)
        assert end.do == "call_done" and end.ok and end.tag == "t", end
        import json

        (row,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert row["beat"] == 5 and row["phase"] == "execute" and row["device"] == "p"
        assert row["params"] == {"out": str(out), "extra": 1}
        offset = row["entry"] - job.at
        print(f"entry {offset * 1e6:.0f} us after its time")
        assert 0.0 <= offset < 0.3 and row["entry"] < row["deadline"]
        assert hw.call_values() == {"p": {"beat": 5, "reading": 1.5}}
        assert hw.call_counts()["done"] == 1
    finally:
        hw.close()
    assert (mods / "out.jsonl.safe").exists() is False  # no safe_call configured


@pytest.mark.slow
def test_a_hang_is_killed_at_its_deadline_and_the_next_call_runs(mods: Path) -> None:
    out = mods / "out.jsonl"
    hw = _hardware(
        mods,
        {
            "h": {"call": "probe:hang"},
            "p": {"call": "probe:record", "params": {"out": str(out)}},
        },
    )
    try:
        job = _job("h", 1, 0.3, span=0.2)
        hw.prepare_calls([job], time.monotonic())
        _fire(hw, job)
        (end,) = _until(hw, 1)
        assert end.do == "call_killed" and not end.ok
        assert job.deadline <= end.at < job.deadline + 0.5, end.at - job.deadline
        assert hw.call_counts()["kills"] == 1
        # restarted, and the next call on it runs (a hang again: killed again)
        again = _job("h", 2, 1.5, span=0.2)
        hw.prepare_calls([again], time.monotonic())
        _fire(hw, again)
        (end,) = _until(hw, 1)
        assert end.do == "call_killed"
        counts = hw.call_counts()
        assert counts["kills"] == 2 and counts["restarts"] >= 1
    finally:
        hw.close()


@pytest.mark.slow
def test_an_exception_and_bad_values_are_counted_and_logged_once(
    mods: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hw = _hardware(
        mods, {"b": {"call": "probe:boom", "params": {"bus": 7}}, "v": {"call": "probe:bad"}}
    )
    try:
        for beat in (1, 2):
            jobs = [_job("b", beat, 0.3), _job("v", beat, 0.3)]
            jobs[1] = CallJob((beat, 1), jobs[1].action, jobs[1].at, jobs[1].deadline,
                              "execute", None, 120.0)  # fmt: skip
            hw.prepare_calls(jobs, time.monotonic())
            for job in jobs:
                _fire(hw, job)
            ends = _until(hw, 2)
            assert sorted(e.do for e in ends) == ["call_failed", "call_failed"]
            assert any(e.error == "ValueError: no sensor on bus 7" for e in ends), ends
        counts = hw.call_counts()
        assert counts["exceptions"] == 2 and counts["bad_values"] == 2
        assert hw.call_values() == {}
    finally:
        hw.close()
    logged = [r.getMessage() for r in caplog.records if "no sensor on bus 7" in r.getMessage()]
    assert len(logged) == 1, logged


@pytest.mark.slow
def test_a_worker_that_exits_is_restarted(mods: Path) -> None:
    out = mods / "out.jsonl"
    hw = _hardware(
        mods,
        {"q": {"call": "probe:quit"}, "p": {"call": "probe:record", "params": {"out": str(out)}}},
    )
    try:
        job = _job("q", 1, 0.3)
        hw.prepare_calls([job], time.monotonic())
        _fire(hw, job)
        (end,) = _until(hw, 1)
        assert end.do == "call_failed" and "exited with code 4" in (end.error or ""), end
        assert hw.call_counts()["exits"] == 1
        # It died within a second of starting? No: it lived 0.3 s+, restarted at once.
        deadline = time.monotonic() + 10
        while hw.call_counts()["restarts"] < 1 and time.monotonic() < deadline:
            hw.tick(time.monotonic())
            time.sleep(0.01)
        assert hw.call_counts()["restarts"] == 1
    finally:
        hw.close()


@pytest.mark.slow
def test_a_call_that_ran_before_the_loop_fired_it_runs_once(mods: Path) -> None:
    """A loop late to its own spin finds the call done: it reports it, never resends it."""
    out = mods / "out.jsonl"
    hw = _hardware(mods, {"p": {"call": "probe:record", "params": {"out": str(out)}}})
    try:
        job = _job("p", 3, 0.2, span=1.0, out=str(out))
        hw.prepare_calls([job], time.monotonic())
        time.sleep(0.5)
        hw.tick(time.monotonic())  # the worker's "done" arrives before the fire
        hw.prepare_calls([job], time.monotonic())
        assert hw.apply(job.action, time.monotonic(), tag="late", call=job).ok
        (end,) = _until(hw, 1)
        assert end.do == "call_done" and end.tag == "late"
        time.sleep(0.2)
        assert len(out.read_text().splitlines()) == 1
    finally:
        hw.close()


def _resting(mods: Path) -> tuple[Hardware, Path]:
    """A python device ``p`` that records its calls in ``out.jsonl`` and its safe_calls'
    reasons in ``out.jsonl.safe``; the hardware and ``out.jsonl``."""
    out = mods / "out.jsonl"
    body = {"call": "probe:record", "params": {"out": str(out)}, "safe_call": "rest"}
    return _hardware(mods, {"p": body}), out


@pytest.mark.slow
def test_a_dropped_call_is_cancelled_and_safe_call_runs(mods: Path) -> None:
    hw, out = _resting(mods)
    try:
        job = _job("p", 3, 0.4, out=str(out))
        hw.prepare_calls([job], time.monotonic())
        time.sleep(0.05)
        hw.prepare_calls([], time.monotonic())  # the plan dropped it
        time.sleep(0.6)
        hw.tick(time.monotonic())
        assert not out.exists()
        hw.safe_state("beat lost")
        time.sleep(0.3)
    finally:
        hw.close()
    # At rest after "beat lost" with no call since: close() does not call it a second time.
    assert (mods / "out.jsonl.safe").read_text().splitlines() == ["beat lost"]


@pytest.mark.slow
def test_only_close_skips_a_worker_at_rest_whatever_the_reason_says(mods: Path) -> None:
    hw, _ = _resting(mods)
    try:
        hw.safe_state("beat lost")
        hw.safe_state("close")  # a reason like any other: asked again, though at rest
        time.sleep(0.3)
    finally:
        hw.close()  # the closing one: at rest, not asked a third time
    assert (mods / "out.jsonl.safe").read_text().splitlines() == ["beat lost", "close"]


@pytest.mark.slow
def test_check_names_the_device_of_a_bad_call(mods: Path) -> None:
    devices = {
        "nomod": {"call": "no_such_module:f"},
        "noattr": {"call": "probe:missing"},
        "notcallable": {"call": "probe:not_callable"},
        "badpath": {"call": "probe:record", "path": "no/such/dir"},
        "badsafe": {"call": "probe:record", "safe_call": "missing"},
        "hangs": {"call": "hangs_on_import:f"},
        "good": {"call": "probe:record"},
    }
    raw = {n: {"kind": "python", "path": "mods", **body} for n, body in devices.items()}
    profile, _, problems = parse(raw, base=str(mods))
    assert problems == []
    found = ConfigProblems("t")
    started = time.monotonic()
    check_calls(profile, found, timeout=3.0)
    assert time.monotonic() - started < 8.0
    text = "\n".join(found.items)
    for name, says in [
        ("nomod.call", "ModuleNotFoundError"),
        ("noattr.call", "no attribute 'missing'"),
        ("notcallable.call", "not callable"),
        ("badpath.path", f"'{mods}/no/such/dir' is not a directory"),
        ("badsafe.call", "safe_call 'missing'"),
        ("hangs.call", "did not finish within 3 s"),
    ]:
        assert any(p.startswith(f"devices.{name}") and says in p for p in found.items), text
    assert not any(p.startswith("devices.good") for p in found.items), text
    with pytest.raises(ConfigError):
        found.raise_if_any()


@pytest.mark.slow
def test_a_hung_worker_never_blocks_the_loop_on_its_pipe(mods: Path) -> None:
    """A hung worker reads nothing: re-timed calls must not fill its pipe (a full pipe
    would block the loop's write until the kill)."""
    import threading

    hw = _hardware(mods, {"h": {"call": "probe:hang", "deadline_beats": 100}})
    big = {f"k{i}": "x" * 1000 for i in range(30)}  # ~30 KB a job
    stuck = threading.Event()

    def retime_forever() -> None:
        for i in range(200):  # ~6 MB of jobs if each were sent
            at = time.monotonic() + 5.0 + i * 1e-3
            action = Action("h", "call", params=big)
            job = CallJob((2, 0), action, at, at + 0.2, "execute", None, 120.0)
            hw.prepare_calls([job], time.monotonic())
        stuck.set()

    try:
        first = _job("h", 1, 0.2)
        hw.prepare_calls([first], time.monotonic())
        _fire(hw, first)
        time.sleep(0.3)  # it hangs now (its deadline is 50 s away)
        thread = threading.Thread(target=retime_forever, daemon=True)
        thread.start()
        done = stuck.wait(20.0)
        if not done:  # unblock the write (EPIPE) so the test fails instead of hanging
            proc = hw._workers["h"].proc
            assert proc is not None
            proc.kill()
        assert done, "prepare_calls blocked on a full pipe"
    finally:
        hw.close()


def test_only_a_real_move_sends_a_call_again() -> None:
    from edge.hardware.pyjobs import Job, moved

    context = {"beat_index": 1, "phase": "execute", "downbeat": True, "tempo_bpm": 120.0}
    job = Job(1, (1, 0), Action("p", "call"), 10.0, 10.1, {**context, "params": {}})
    same = {**context, "params": {}}
    assert not moved(job, 10.00001, 10.10001, {**same, "tempo_bpm": 120.001})
    assert moved(job, 10.001, 10.101, same)
    assert moved(job, 10.0, 10.1, {**same, "tempo_bpm": 121.0})
    assert moved(job, 10.0, 10.1, {**same, "downbeat": False})
    assert moved(job, 10.0, 10.1, {**same, "params": {"a": 1}})


def test_a_done_comes_to_one_count_one_end_and_the_values_kept() -> None:
    from edge.hardware.pyjobs import Job, done_end

    job = Job(1, (1, 0), Action("p", "call"), 10.0, 10.1, {})
    counted, end, kept = done_end(job, 10.0, 10.05, {"a": 1}, None, None)
    assert (counted, end[0], end[1], end[3], kept) == ("done", "call_done", True, None, {"a": 1})
    assert end[2] == pytest.approx(0.05)
    counted, end, kept = done_end(job, 10.0, 10.125, {"a": 2}, None, None)
    assert (counted, end[:2], kept) == ("overruns", ("call_overran", False), {"a": 2})
    assert end[3] == "returned 25.0 ms after its deadline"
    counted, end, kept = done_end(job, 10.0, 10.01, None, "ValueError: x", "exception")
    assert (counted, end[0], end[3], kept) == ("exceptions", "call_failed", "ValueError: x", None)
    counted, end, kept = done_end(job, 10.0, 10.01, [1], None, None)  # checked again here
    assert (counted, end[0], kept) == ("bad_values", "call_failed", None)
    assert end[3] == "returned a list, not a mapping of values"


def test_a_worker_that_dies_young_waits_longer_before_each_restart() -> None:
    from edge.hardware.pyprocess import RESTART_MAX_S, RESTART_MIN_S, Worker

    spec = parse({"p": {"kind": "python", "call": "m:f"}})[0].devices["p"]
    worker = Worker(spec, started_at=100.0)
    worker.lost(100.5, killed=False)  # an import that fails, say
    assert (worker.restart_at, worker.backoff) == (100.5 + RESTART_MIN_S, 2 * RESTART_MIN_S)
    worker.spawn_failed(101.0)
    assert (worker.restart_at, worker.backoff) == (101.0 + 2 * RESTART_MIN_S, 4 * RESTART_MIN_S)
    worker.backoff = RESTART_MAX_S
    worker.spawn_failed(102.0)
    assert worker.backoff == RESTART_MAX_S
    worker.lost(200.0, killed=True)  # ours: at once, and the backoff starts again
    assert (worker.restart_at, worker.backoff) == (200.0, RESTART_MIN_S)


@pytest.mark.slow
def test_a_retimed_call_runs_at_its_new_time(mods: Path) -> None:
    import json

    out = mods / "out.jsonl"
    hw = _hardware(mods, {"p": {"call": "probe:record", "params": {"out": str(out)}}})
    try:
        job = _job("p", 4, 0.3, out=str(out))
        hw.prepare_calls([job], time.monotonic())
        later = CallJob(job.slot, job.action, job.at + 0.2, job.deadline + 0.2, "execute",
                        True, 120.0)  # fmt: skip
        hw.prepare_calls([later], time.monotonic())  # the follower's model moved
        _fire(hw, later)
        (end,) = _until(hw, 1)
        assert end.do == "call_done"
        (row,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert row["at"] == later.at and row["entry"] >= later.at
    finally:
        hw.close()


def _gone(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped yet (a container's init may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


@pytest.mark.slow
def test_a_kill_takes_what_the_function_started_with_it(mods: Path) -> None:
    out = mods / "child.pid"
    hw = _hardware(mods, {"h": {"call": "probe:spawn_and_hang", "params": {"out": str(out)}}})
    try:
        job = _job("h", 1, 0.3, span=0.5, out=str(out))
        hw.prepare_calls([job], time.monotonic())
        _fire(hw, job)
        (end,) = _until(hw, 1)
        assert end.do == "call_killed"
        pid = int(out.read_text())
        deadline = time.monotonic() + 5.0
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"the function's child {pid} outlived the kill"
    finally:
        hw.close()
