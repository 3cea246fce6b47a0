"""The outbox by default, with a real Mosquitto and the real agent process.

No ``[outbox] directory``: the agent keeps claims under ``$XDG_STATE_HOME`` (a tmp dir
here). A broker cut with a SIGKILL in it loses no claim, and seq only ever goes up, also
across a run whose directory was read-only (claims in memory), with a new incarnation.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from test_status_faults import (
    PROFILE,
    Subscriber,
    _connected_times,
    assert_complete_and_ordered,
)

from edge.broker import Mosquitto
from edge.harness import Proc, start_agent, start_pulse, wait_until, write_agent_config
from edge.messages import StatusClaim

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def meta(claim: StatusClaim, key: str) -> object:
    return dict(claim.metadata or {})[key]


def agent(tmp_path: Path, config: Path, name: str) -> Proc:
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "STATE_DIRECTORY": ""}
    return start_agent(config, None, tmp_path / f"{name}.log", env=env)


def outbox_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "backbeat-edge" / "bench%3Api-01" / "outbox"


def test_default_outbox_keeps_claims_through_a_cut_and_a_sigkill(
    tmp_path: Path, durable_mosquitto: Mosquitto
) -> None:
    broker = durable_mosquitto
    sub = Subscriber(broker.port)
    config = write_agent_config(tmp_path, broker.url, PROFILE, default_outbox=True)
    first = agent(tmp_path, config, "agent1")
    # 240 BPM: the claims that pile up take half the time they took at 120
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    second: Proc | None = None
    try:
        assert wait_until(lambda: len(sub.claims) >= 4, 30), first.log()
        broker.stop()  # by its pid; back on the same port in 9 s
        cut_at = time.monotonic()
        time.sleep(3.0)  # ~12 claims pile up on disk
        first.kill()  # SIGKILL during the cut
        second = agent(tmp_path, config, "agent2")
        time.sleep(max(0.0, 9.0 - (time.monotonic() - cut_at)))
        broker.restart()
        assert wait_until(lambda: len(_connected_times(second.log())) >= 1, 15), second.log()
        time.sleep(3.0)  # the backlog, then live claims (~12)
    finally:
        pulse.stop()
        if second is not None:
            second.stop()
        first.kill()
        time.sleep(0.5)
        sub.close()
    assert "claims kept on disk in " + str(outbox_dir(tmp_path)) in first.log()
    # Every claim either run made arrived, in order, seq strictly increasing; only the
    # beats while no agent ran have none.
    claims = assert_complete_and_ordered(sub, beat_gaps=1)
    seqs = [int(meta(c, "seq")) for c in claims]  # type: ignore[call-overload]
    assert seqs == sorted(set(seqs)) and len(claims) >= 20
    incarnations = [meta(c, "incarnation") for c in claims]
    assert len(set(incarnations)) == 2  # the restart shows
    assert incarnations == sorted(incarnations, key=incarnations.index)  # one run, then the next


def make_read_only(directory: Path) -> bool:
    return subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0


def test_seq_never_goes_back_across_a_run_in_memory(
    tmp_path: Path, durable_mosquitto: Mosquitto
) -> None:
    broker = durable_mosquitto
    sub = Subscriber(broker.port)
    config = write_agent_config(tmp_path, broker.url, PROFILE, default_outbox=True)
    pulse = start_pulse(broker.url, "bench", 240, None, tmp_path / "pulse.log")
    runs: list[list[StatusClaim]] = []
    logs = []
    try:
        for number in range(3):
            before = len(sub.claims)
            run = agent(tmp_path, config, f"agent{number}")
            assert wait_until(lambda: len(sub.claims) >= before + 6, 30), run.log()  # noqa: B023
            if number == 1:
                run.kill()  # a run in memory, killed: nothing of it was kept but seq.hw
            else:
                assert run.stop() == 0, run.log()
            logs.append(run.log())
            time.sleep(0.3)
            runs.append(list(sub.claims[before:]))
            if number == 0 and not make_read_only(outbox_dir(tmp_path)):
                pytest.skip("cannot make a directory read-only here (chattr +i)")
            if number == 1:
                subprocess.run(["chattr", "-i", str(outbox_dir(tmp_path))], check=True)
    finally:
        subprocess.run(["chattr", "-i", str(outbox_dir(tmp_path))], capture_output=True)
        pulse.stop()
        sub.close()
    assert "claims kept in memory only" in logs[1], logs[1]
    seqs = [[int(meta(c, "seq")) for c in run] for run in runs]  # type: ignore[call-overload]
    flat = [s for run in seqs for s in run]
    assert flat == sorted(flat) and len(flat) == len(set(flat)), seqs  # never back, no repeat
    incarnations = [{meta(c, "incarnation") for c in run} for run in runs]
    assert all(len(i) == 1 for i in incarnations) and len(set.union(*incarnations)) == 3
