"""End to end: a real Mosquitto, the real pulse and the real agent as processes, mock pins.

The pulse's trace says when each beat really started (on this host's monotonic clock);
the agent's trace says when each action fired. An action is right when it fired inside
the phase its rule names, of the beat it was planned for, by the pulse's own timeline.
These are correctness windows (a phase is 80+ ms here), not speed targets: lateness is
measured by scripts/bench_agent.py.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from edge.broker import Mosquitto
from edge.harness import (
    SPOOF_PROFILE,
    Proc,
    read_trace,
    safe_states,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# the spoofing tests' two rules, and the relay off early in beat 3 of each bar
PROFILE = (
    SPOOF_PROFILE
    + """
[[score]]
essential = true
device = "relay"
do = "off"
bar_beats = [3]
phase = "plan"
offset = 0.25
"""
)

PHASE_NO = {"plan": 0, "execute": 1, "review": 2}
RULE_PLACE = {0: ("execute", 0.0), 1: ("execute", 0.5), 2: ("plan", 0.25)}


def _beats(pulse_rows: list[dict[str, object]]) -> dict[int, list[tuple[float, float]]]:
    """beat_index -> [(start_mono, tempo)] (a restarted pulse repeats indices)."""
    out: dict[int, list[tuple[float, float]]] = {}
    for row in pulse_rows:
        if row["phase"] == "plan":
            out.setdefault(int(row["beat_index"]), []).append(  # type: ignore[call-overload]
                (float(row["intended_mono"]), float(row["tempo_bpm"]))  # type: ignore[arg-type]
            )
    return out


def _check_phases(
    agent_rows: list[dict[str, object]], beats: dict[int, list[tuple[float, float]]]
) -> int:
    """Assert every fired action lies in its rule's phase of its beat; return how many."""
    checked = 0
    last_sent = max(beats)
    for row in agent_rows:
        if row["fired_mono"] is None or int(row["beat_index"]) > last_sent:  # type: ignore[call-overload]
            continue  # beats after the pulse stopped were free-run: no truth to compare
        fired = float(row["fired_mono"])  # type: ignore[arg-type]
        candidates = beats.get(int(row["beat_index"]), [])  # type: ignore[call-overload]
        # The beat this action belongs to is the one whose span contains it.
        match = [(s, t) for s, t in candidates if s - 0.05 <= fired <= s + 60.0 / t + 0.05]
        assert match, f"action {row} fired at {fired:.4f} outside any beat {candidates}"
        start, tempo = match[-1]
        phase, offset = RULE_PLACE[int(row["rule"])]  # type: ignore[call-overload]
        third = 20.0 / tempo
        phase_start = start + PHASE_NO[phase] * third
        intended = phase_start + offset * third
        assert phase_start - 0.005 <= fired < phase_start + third, (
            f"{row['device']}.{row['do']} of beat {row['beat_index']} fired {fired - start:.4f} s "
            f"into the beat, outside its {phase} phase [{PHASE_NO[phase] * third:.3f}, "
            f"{(PHASE_NO[phase] + 1) * third:.3f})"
        )
        # and near where the rule put it (generous: a loaded 2-core CI box)
        assert abs(fired - intended) < 0.03, (row, intended)
        checked += 1
    return checked


def _run(tmp: Path, mosquitto: Mosquitto, bpm: float) -> tuple[Proc, Proc, Path, Path]:
    config = write_agent_config(tmp, mosquitto.url, PROFILE)
    agent_trace, pulse_trace = tmp / "agent.jsonl", tmp / "pulse.jsonl"
    agent = start_agent(config, agent_trace, tmp / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", bpm, pulse_trace, tmp / "pulse.log")
    return agent, pulse, agent_trace, pulse_trace


def test_actions_fire_in_their_beats_and_phases(tmp_path: Path, mosquitto: Mosquitto) -> None:
    agent, pulse, agent_trace, pulse_trace = _run(tmp_path, mosquitto, 240)
    try:
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 20, 25), agent.log()
    finally:
        pulse.stop()
        code = agent.stop()
    assert code == 0, agent.log()
    rows = read_trace(agent_trace)
    beats = _beats(read_trace(pulse_trace))
    assert _check_phases(rows, beats) >= 14
    fired = [r for r in rows if r["fired_mono"] is not None]
    # The downbeat rule fires only on the pulse's downbeats (every 4th beat from 0).
    relay_on = {int(r["beat_index"]) for r in fired if r["rule"] == 1}  # type: ignore[call-overload]
    assert relay_on and all(b % 4 == 0 for b in relay_on), relay_on
    # The bar-position rule fires on the 3rd beat of each bar.
    relay_off = {int(r["beat_index"]) for r in fired if r["rule"] == 2}  # type: ignore[call-overload]
    assert relay_off and all(b % 4 == 2 for b in relay_off), relay_off
    # Every beat between the first and last toggle got its toggle, none twice.
    toggles = sorted(int(r["beat_index"]) for r in fired if r["rule"] == 0)  # type: ignore[call-overload]
    assert toggles == list(range(toggles[0], toggles[-1] + 1))
    # SIGTERM drove the outputs to their safe state before the agent exited.
    assert "outputs after safe state" in agent.log()


def test_tempo_change_is_followed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import paho.mqtt.publish as publish

    agent, pulse, agent_trace, pulse_trace = _run(tmp_path, mosquitto, 120)
    try:
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 8, 25), agent.log()
        publish.single(
            "backbeat/bench/pulse/tempo", "132", hostname="127.0.0.1", port=mosquitto.port
        )
        assert wait_until(
            lambda: any(r["tempo_bpm"] == 132.0 for r in read_trace(pulse_trace)), 10
        ), pulse.log()
        publish.single(
            "backbeat/bench/pulse/tempo", "118.8", hostname="127.0.0.1", port=mosquitto.port
        )
        assert wait_until(
            lambda: any(r["tempo_bpm"] == 118.8 for r in read_trace(pulse_trace)), 10
        ), pulse.log()
        time.sleep(3.0)
    finally:
        pulse.stop()
        agent.stop()
    beats = _beats(read_trace(pulse_trace))
    rows = read_trace(agent_trace)
    assert _check_phases(rows, beats) > 10
    tempos = {t for spans in beats.values() for _, t in spans}
    assert {120.0, 132.0, 118.8} <= tempos
    # Beats at each tempo got their every-beat action: none lost or doubled across changes.
    toggles = [int(r["beat_index"]) for r in rows if r["rule"] == 0 and r["fired_mono"]]  # type: ignore[call-overload]
    assert len(toggles) == len(set(toggles))
    assert sorted(toggles) == list(range(min(toggles), max(toggles) + 1))


def test_agent_survives_pulse_stop_and_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    agent, pulse, agent_trace, _ = _run(tmp_path, mosquitto, 240)
    try:
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 8, 25), agent.log()
        pulse.stop()
        silent_from = len(read_trace(agent_trace))
        time.sleep(2.5)  # the agent free-runs on its model meanwhile
        free_run_rows = read_trace(agent_trace)[silent_from:]
        # A new pulse restarts the beat count from 1000: a beat-index jump.
        pulse = start_pulse(
            mosquitto.url,
            "bench",
            240,
            tmp_path / "pulse2.jsonl",
            tmp_path / "pulse2.log",
            start_beat=1000,
        )
        assert wait_until(
            lambda: any(
                int(r["beat_index"]) >= 1000  # type: ignore[call-overload]
                and r["fired_mono"]
                for r in read_trace(agent_trace)
            ),
            20,
        ), agent.log()
        time.sleep(2.0)
    finally:
        pulse.stop()
        code = agent.stop()
    assert code == 0
    assert agent.process.returncode == 0
    # It kept firing while the pulse was away ...
    assert any(r["fired_mono"] for r in free_run_rows), "no actions while free-running"
    # ... and after the restart, actions sit in the new pulse's phases.
    rows = [r for r in read_trace(agent_trace) if int(r["beat_index"]) >= 1000]  # type: ignore[call-overload]
    assert _check_phases(rows, _beats(read_trace(tmp_path / "pulse2.jsonl"))) >= 4
    assert "jumped" in agent.log()


def test_outputs_are_safe_within_11_s_of_the_last_frame(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The real defaults (lost after 10 s of silence, safe at once); the relay rests on.
    profile = PROFILE.replace("safe_state = 0", "safe_state = 1")
    config = write_agent_config(tmp_path, mosquitto.url, profile)
    agent_trace, pulse_trace = tmp_path / "agent.jsonl", tmp_path / "pulse.jsonl"
    agent = start_agent(config, agent_trace, tmp_path / "agent.log")
    pulse = start_pulse(mosquitto.url, "bench", 240, pulse_trace, tmp_path / "pulse.log")
    try:
        assert wait_until(lambda: len(read_trace(agent_trace)) >= 12, 25), agent.log()
        pulse.stop()
        last_frame = max(float(r["sent_mono"]) for r in read_trace(pulse_trace))  # type: ignore[arg-type]
        assert wait_until(lambda: safe_states(agent.log()), 16), agent.log()
        time.sleep(2.0)  # and then nothing moves
    finally:
        pulse.stop()
        assert agent.stop() == 0, agent.log()
    [(safe_at, states)] = safe_states(agent.log())
    # Lost after 10 s of silence, not before (it free-ran meanwhile), and safe at once.
    assert 9.9 < safe_at - last_frame < 11.0, safe_at - last_frame
    assert states == {"led": False, "relay": True}, states
    fired = [float(r["fired_mono"]) for r in read_trace(agent_trace) if r["fired_mono"]]  # type: ignore[arg-type]
    assert any(t > last_frame + 5.0 for t in fired), "it did not free-run"
    assert max(fired) < safe_at, "an action fired after the safe state"


def test_broken_config_exits_nonzero_listing_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "bad id!"\n[broker]\nurl = "http://x"\n'
        '[devices.led]\nkind = "lamp"\npin = 17\n',
        encoding="utf-8",
    )
    proc = start_agent(config, None, tmp_path / "agent.log")
    assert proc.process.wait(timeout=30) == 3  # EXIT_CONFIG
    log = proc.log()
    assert "agent.id" in log and "agent.cluster" in log and "broker.url" in log
    assert "devices.led" in log


def test_agent_waits_for_a_missing_broker(tmp_path: Path) -> None:
    from edge.broker import free_port, start_mosquitto

    port = free_port()
    config = write_agent_config(tmp_path, f"mqtt://127.0.0.1:{port}", PROFILE)
    agent = start_agent(config, tmp_path / "agent.jsonl", tmp_path / "agent.log")
    try:
        time.sleep(2.0)
        assert agent.process.poll() is None, agent.log()  # still running, retrying
        with start_mosquitto(port=port) as broker:
            pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
            try:
                assert wait_until(lambda: len(read_trace(tmp_path / "agent.jsonl")) >= 4, 25), (
                    agent.log()
                )
            finally:
                pulse.stop()
    finally:
        agent.signal(signal.SIGINT)
        assert agent.process.wait(timeout=10) == 0
