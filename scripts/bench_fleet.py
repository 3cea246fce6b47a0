#!/usr/bin/env python3
"""A fleet on one machine: N agent processes following one pulse, first through one
Mosquitto, then through a three-node NATS cluster with one node killed mid-run.

Every agent toggles a mock pin once a beat at the start of one phase (``--phase``; by
default execute, where a score's actions belong; ``plan`` puts the action on the frame's
own arrival, so the frame's work queues with the actuations). All processes share this
host's monotonic clock, so each actuation is compared with the pulse's own beat start (its
trace) plus the phase's offset. It prints, per broker:

* the spread of actuation times against the pulse: p50 / p99 / max of |fired - intended|
  over all agents and locked beats (for NATS also before and after the kill);
* claims lost: gaps in each agent's ``metadata.seq`` at the claim collector;
* after the kill (NATS): how many agents moved, their reconnect times (kill to "moved to
  broker" in their logs, ms resolution) as p50 / max, and the most reconnects in any 50 ms;
* the broker's CPU (share of one core), each agent's CPU (share of one core) and peak RSS;
* the floor: agents x CPU per actuation / cores, where the CPU per actuation is the
  agents' measured CPU time over the run divided by the actuations: on one machine every
  agent wakes at the same instant, so their wake-ups queue for the cores.

Bounded: at most 300 agents and 600 s per broker. The machine is shared: run it with a
small N (``--agents 30``).

Usage: .venv/bin/python scripts/bench_fleet.py [--agents N] [--bpm B] [--seconds S]
       [--skip-mosquitto] [--skip-nats] [--move-leaders]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edge.broker import start_mosquitto
from edge.harness import (
    ClaimRecorder,
    Proc,
    read_trace,
    start_agent,
    start_pulse,
    wait_until,
    write_agent_config,
)
from edge.nats_cluster import MQTT_STREAMS, start_nats_cluster
from edge.testing.profiles import MOCK_LED, rule

MAX_AGENTS = 300
MAX_SECONDS = 600.0
PHASES = ("plan", "execute", "review")


def profile(phase: str) -> str:
    """The agents' profile: the mock LED toggled at the start of ``phase`` every beat."""
    return MOCK_LED + rule("led", "toggle", every=1, essential=True, phase=phase)


def phase_offset_s(phase: str, bpm: float) -> float:
    """How long after the beat start ``phase`` starts (a phase is a third of a beat)."""
    return PHASES.index(phase) * 20.0 / bpm


_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ns(pid: int) -> int:
    """CPU time (ns) of every thread of ``pid`` so far (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_at_beats(
    pids: list[int],
    pulse_trace: Path,
    bpm: float,
    beats: int,
    offset_s: float,
    before_s: float,
    after_s: float,
) -> float:
    """Median CPU (ms) one agent spends in [action - before_s, action + after_s], the
    action ``offset_s`` after each beat start: its wake-up, spin and action (with the
    frame and the claim when the action is at the beat start); measured over ``beats``
    beats predicted from the pulse's trace."""
    period = 60.0 / bpm
    samples: list[float] = []
    for _ in range(beats):
        rows = read_trace(pulse_trace)
        if not rows:
            return float("nan")
        start = float(rows[-1]["intended_mono"]) + period + offset_s  # type: ignore[arg-type]
        while start - before_s < time.monotonic():
            start += period
        time.sleep(max(0.0, start - before_s - time.monotonic()))
        first = [run_ns(pid) for pid in pids]
        time.sleep(max(0.0, start + after_s - time.monotonic()))
        second = [run_ns(pid) for pid in pids]
        samples.append(statistics.mean(b - a for a, b in zip(first, second, strict=True)) / 1e6)
    return statistics.median(samples)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log_times(log: str, marker: str) -> list[float]:
    """Wall times of the log lines containing ``marker``."""
    found = []
    for line in log.splitlines():
        if marker in line:
            match = _STAMP.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                found.append(stamp + int(match.group(2)) / 1000.0)
    return found


def most_in_window(times: Sequence[float], window_s: float) -> int:
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] > window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@dataclass
class Fleet:
    agents: list[tuple[str, Proc, Path]] = field(default_factory=list)

    def stop(self) -> None:
        for _, proc, _ in self.agents:
            proc.signal(15)
        for _, proc, _ in self.agents:
            try:
                proc.process.wait(timeout=20)
            except Exception:
                proc.kill()


def start_fleet(
    work: Path, count: int, urls: list[str], protocol: str, phase: str, wall: str
) -> Fleet:
    fleet = Fleet()
    for i in range(count):
        home = work / f"a{i:03d}"
        home.mkdir()
        agent_id = f"fleet:a{i:03d}"
        k = i % len(urls)
        mine = urls[k:] + urls[:k]  # spread over the nodes: its own first
        extra = f'protocol = "{protocol}"\n' if protocol != "5" else ""
        trust = "true" if wall == "trust" else '"auto"'
        config = write_agent_config(
            home,
            "x",
            profile(phase),
            agent_id=agent_id,
            broker_extra=extra,
            extra=f"[sync]\ntrust_wall_clock = {trust}\n",
        )
        listed = ", ".join(f'"{u}"' for u in mine)
        config.write_text(config.read_text().replace('"x"', f"[{listed}]"))
        trace = home / "agent.jsonl"
        fleet.agents.append((agent_id, start_agent(config, trace, home / "agent.log"), trace))
    return fleet


def locked_share(recorder: ClaimRecorder, fleet: Fleet) -> float:
    last: dict[str, bool] = {}
    for claim in recorder.claims:
        sync = dict(claim.metadata or {}).get("sync")
        last[claim.agent_id] = isinstance(sync, Mapping) and sync.get("state") == "locked"
    return sum(last.get(agent_id, False) for agent_id, _, _ in fleet.agents) / len(fleet.agents)


def claims_lost(recorder: ClaimRecorder, fleet: Fleet) -> tuple[int, int]:
    """(claims missing inside each agent's seq range, claims received)."""
    seqs: dict[str, set[int]] = {}
    for claim in recorder.claims:
        seq = dict(claim.metadata or {}).get("seq")
        if isinstance(seq, int):
            seqs.setdefault(claim.agent_id, set()).add(seq)
    lost = sum(max(s) - min(s) + 1 - len(s) for s in seqs.values())
    missing_agents = sum(1 for agent_id, _, _ in fleet.agents if agent_id not in seqs)
    return lost + missing_agents, sum(len(s) for s in seqs.values())


def time_refs(recorder: ClaimRecorder) -> str:
    """How many claims named each ``metadata.time_ref`` (what the agents' timelines rest on:
    ``wall``, ``exchange`` or ``envelope``)."""
    counts: dict[str, int] = {}
    for claim in recorder.claims:
        ref = str(dict(claim.metadata or {}).get("time_ref", "-"))
        counts[ref] = counts.get(ref, 0) + 1
    return ", ".join(f"{ref} {n}" for ref, n in sorted(counts.items())) or "no claims"


def worst_agent(fleet: Fleet, per_agent: list[list[float]], recorder: ClaimRecorder) -> str:
    """The agent with the largest median |error|: its median, the spread of its own errors
    (10th to 90th percentile) and what its last claim said of its sync."""
    scored = [(abs(statistics.median(each)), i, each) for i, each in enumerate(per_agent) if each]
    if not scored:
        return "-"
    _, i, errors = max(scored)
    agent_id = fleet.agents[i][0]
    last = [c for c in recorder.claims if c.agent_id == agent_id][-1:]
    meta = dict(last[0].metadata or {}) if last else {}
    sync = meta.get("sync") if isinstance(meta.get("sync"), dict) else {}
    return (
        f"{agent_id}: median {statistics.median(errors):+.3f} ms, own p10..p90 "
        f"{pct(errors, 0.1):+.3f}..{pct(errors, 0.9):+.3f}; last claim: time_ref "
        f"{meta.get('time_ref', '-')}, sync {dict(sync or {})}"
    )


def offsets_ms(
    fleet: Fleet, pulse_trace: Path, offset_s: float, since: float, until: float
) -> list[float]:
    """fired - intended (ms; the beat start plus ``offset_s``) for locked actuations of
    beats starting in [since, until)."""
    return [
        x for each in agent_offsets_ms(fleet, pulse_trace, offset_s, since, until) for x in each
    ]


def agent_offsets_ms(
    fleet: Fleet, pulse_trace: Path, offset_s: float, since: float, until: float
) -> list[list[float]]:
    """:func:`offsets_ms`, one list per agent."""
    starts = {
        int(r["beat_index"]): float(r["intended_mono"])  # type: ignore[call-overload, arg-type]
        for r in read_trace(pulse_trace)
    }
    out = []
    for _, _, trace in fleet.agents:
        mine: list[float] = []
        out.append(mine)
        for row in read_trace(trace):
            if not row["fired_mono"] or row.get("sync_state") != "locked":
                continue
            start = starts.get(int(row["beat_index"]))  # type: ignore[call-overload]
            if start is None or not since <= start < until:
                continue
            fired = float(row["fired_mono"])  # type: ignore[arg-type]
            mine.append((fired - start - offset_s) * 1000.0)
    return out


def spread(values: list[float]) -> str:
    mags = [abs(v) for v in values]
    return (
        f"{pct(mags, 0.5):7.3f} {pct(mags, 0.99):7.3f} {max(mags, default=float('nan')):7.3f}"
        f"  (n={len(mags)})"
    )


def run(
    name: str,
    count: int,
    bpm: float,
    seconds: float,
    urls: list[str],
    pulse_url: str,
    collector_port: int,
    broker_pids: list[int],
    protocol: str,
    work: Path,
    phase: str,
    wall: str,
    kill: object = None,
) -> dict[str, object]:
    """One fleet run; ``kill`` (a callable) is called halfway and returns what it killed."""
    recorder = ClaimRecorder(collector_port)
    fleet = start_fleet(work, count, urls, protocol, phase, wall)
    offset_s = phase_offset_s(phase, bpm)
    pulse_trace = work / "pulse.jsonl"
    pulse = start_pulse(pulse_url, "bench", bpm, pulse_trace, work / "pulse.log", protocol=protocol)
    result: dict[str, object] = {"name": name}
    try:
        ok = wait_until(lambda: locked_share(recorder, fleet) == 1.0, 60 + count, poll_s=0.5)
        result["locked_at_start"] = locked_share(recorder, fleet)
        if not ok:
            print(
                f"{name}: only {locked_share(recorder, fleet):.0%} of the agents locked",
                file=sys.stderr,
            )
        pids = [proc.process.pid for _, proc, _ in fleet.agents]
        # The action instant's CPU, read in a window around it: 6 ms before (the spin
        # starts at most 1 ms ahead) to 12 ms after.
        result["beat_cpu_ms"] = cpu_at_beats(pids, pulse_trace, bpm, 6, offset_s, 0.006, 0.012)
        agent_cpu0 = [cpu_seconds(pid) for pid in pids]
        broker_cpu0 = {pid: cpu_seconds(pid) for pid in broker_pids}
        broker_seen = dict(broker_cpu0)  # a killed node keeps its last reading

        def sample_brokers() -> None:
            for pid in broker_pids:
                broker_seen[pid] = max(broker_seen[pid], cpu_seconds(pid))

        t0 = time.monotonic()
        killed_mono = killed_wall = None
        if kill is not None:
            time.sleep(seconds / 2)
            sample_brokers()
            killed_mono, killed_wall = time.monotonic(), time.time()
            result["killed"] = kill()  # type: ignore[operator]
            time.sleep(seconds / 2)
        else:
            time.sleep(seconds)
        t1 = time.monotonic()
        wall = t1 - t0
        agent_cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, agent_cpu0, strict=True)]
        sample_brokers()
        broker_cpu = sum(broker_seen[pid] - broker_cpu0[pid] for pid in broker_pids)
        rss = [peak_rss_mb(pid) for pid in pids]
        result["locked_at_end"] = locked_share(recorder, fleet)
    finally:
        pulse.stop()
        fleet.stop()
        time.sleep(1.0)  # the final claims reach the collector
        recorder.stop()
    result["lost"], result["claims"] = claims_lost(recorder, fleet)
    result["time_refs"] = time_refs(recorder)
    per_agent = agent_offsets_ms(fleet, pulse_trace, offset_s, t0, t1)
    all_offsets = [x for each in per_agent for x in each]
    # An agent always late by the same amount has a biased timeline (its frames reach it
    # late, in the same place of the queue each beat); one late by a different amount
    # each beat queued for a core at the action instant.
    medians = sorted(statistics.median(each) for each in per_agent if each)
    result["agent_medians"] = (
        (medians[0], medians[len(medians) // 2], medians[-1]) if medians else None
    )
    result["worst_agent"] = worst_agent(fleet, per_agent, recorder)
    result["spread"] = spread(all_offsets)
    actuations = len(all_offsets)
    result["agent_cpu_pct"] = 100.0 * statistics.mean(agent_cpu) / wall
    result["agent_cpu_max_pct"] = 100.0 * max(agent_cpu) / wall
    result["rss_mb"] = (statistics.mean(rss), max(rss))
    result["broker_cpu_pct"] = 100.0 * broker_cpu / wall
    cores = os.cpu_count() or 1
    result["cpu_per_beat_ms"] = 1000.0 * sum(agent_cpu) / max(1, actuations)
    per_actuation_ms = float(result["beat_cpu_ms"])  # type: ignore[arg-type]
    result["floor_ms"] = count * per_actuation_ms / cores
    result["undelivered"] = sum(
        int(m.group(1))
        for _, proc, _ in fleet.agents
        for m in re.finditer(r"outbox: (\d+) claims not delivered yet", proc.log())
    )
    if killed_mono is not None and killed_wall is not None:
        result["before"] = spread(offsets_ms(fleet, pulse_trace, offset_s, t0, killed_mono))
        result["after"] = spread(offsets_ms(fleet, pulse_trace, offset_s, killed_mono, t1))
        moved = []
        lost_links = 0
        for _, proc, _ in fleet.agents:
            log = proc.log()
            lost_links += sum(1 for t in log_times(log, "connection lost") if t >= killed_wall)
            moved += [
                t - killed_wall for t in log_times(log, "broker connected") if t > killed_wall
            ]
        result["drops"] = lost_links
        result["reconnects"] = moved
    return result


def report(results: list[dict[str, object]], count: int, bpm: float, phase: str, wall: str) -> None:
    cores = os.cpu_count() or 1
    print(
        f"\nbench_fleet: {count} agents at {bpm:g} BPM on {cores} cores, action at {phase} start,"
        f" wall clock: {wall}"
    )
    print(
        "actuation vs the pulse's intended time, ms: |error| p50 p99 max (all agents, locked beats)"
    )
    for r in results:
        print(f"\n== {r['name']}")
        print(f"  spread                      {r['spread']}")
        if r.get("agent_medians"):
            lo, mid, hi = r["agent_medians"]  # type: ignore[misc]
            print(
                f"  agents' own median error    {lo:+.3f} / {mid:+.3f} / {hi:+.3f}"
                " (signed ms: best / middle / worst agent)"
            )
        print(f"  claims' time_ref            {r['time_refs']}")
        print(f"  worst agent                 {r['worst_agent']}")
        if "before" in r:
            print(f"  spread before the kill      {r['before']}")
            print(f"  spread after the kill       {r['after']}")
            print(f"  killed                      {r['killed']}")
            times = [1000.0 * t for t in r["reconnects"]]  # type: ignore[attr-defined]
            if times:
                print(
                    f"  reconnects after the kill   {len(times)} (after {r['drops']} drops): "
                    f"p50 {pct(times, 0.5):.0f} ms, max {max(times):.0f} ms, "
                    f"most in any 50 ms: {most_in_window([t / 1000 for t in times], 0.05)}"
                )
            else:
                print("  reconnects after the kill   none")
        print(
            f"  claims lost                 {r['lost']} of {r['claims']} received "
            f"({r['undelivered']} still in outboxes at the stop, kept for the next start)"
        )
        print(
            f"  locked at start / end       {r['locked_at_start']:.0%} / {r['locked_at_end']:.0%}"
        )
        print(f"  broker CPU                  {r['broker_cpu_pct']:.1f} % of one core")
        print(
            f"  agent CPU                   {r['agent_cpu_pct']:.2f} % of one core each "
            f"(max {r['agent_cpu_max_pct']:.2f} %)"
        )
        mean_rss, max_rss = r["rss_mb"]  # type: ignore[misc]
        print(f"  agent peak RSS              {mean_rss:.1f} MB each (max {max_rss:.1f} MB)")
        print(
            f"  floor                       {r['floor_ms']:.3f} ms = {count} agents x "
            f"{r['beat_cpu_ms']:.3f} ms CPU per actuation / {cores} cores"
        )
        print(
            "                              (CPU per actuation: around the action, -6..+12 ms;"
            f" all of an agent's CPU per beat: {r['cpu_per_beat_ms']:.3f} ms)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=100, help=f"agent processes (max {MAX_AGENTS})")
    p.add_argument("--bpm", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=30.0, help="measured run per broker")
    p.add_argument("--phase", choices=PHASES, default="execute", help="the phase the action starts")
    p.add_argument(
        "--wall",
        choices=("trust", "auto"),
        default="trust",
        help="the agents' sync.trust_wall_clock: trust (every process here reads this host's"
        " one clock) or auto (decided from the frames, as on a device by default)",
    )
    p.add_argument("--skip-mosquitto", action="store_true")
    p.add_argument("--skip-nats", action="store_true")
    p.add_argument(
        "--move-leaders",
        action="store_true",
        help="before the kill, move the gateway's stream leaders off the node to die",
    )
    args = p.parse_args(argv)
    if not 1 <= args.agents <= MAX_AGENTS:
        p.error(f"--agents must be 1..{MAX_AGENTS}")
    if not 5 <= args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be 5..{MAX_SECONDS:g}")
    if not 10 <= args.bpm <= 600:
        p.error("--bpm must be 10..600")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        if not args.skip_mosquitto:
            work = Path(tmp) / "mosquitto"
            work.mkdir()
            with start_mosquitto() as broker:
                results.append(
                    run(
                        "one Mosquitto",
                        args.agents,
                        args.bpm,
                        args.seconds,
                        [broker.url],
                        broker.url,
                        broker.port,
                        [broker.pid],
                        "5",
                        work,
                        args.phase,
                        args.wall,
                    )
                )
        if not args.skip_nats:
            work = Path(tmp) / "nats"
            work.mkdir()
            with start_nats_cluster() as cluster:
                victim = cluster.nodes[1]

                def kill() -> str:
                    led = []
                    try:
                        if args.move_leaders:
                            cluster.move_leaders_off(victim)
                        leaders = cluster.stream_leaders()
                        led = [s for s in MQTT_STREAMS if leaders.get(s) == victim.name]
                    except (OSError, ValueError):
                        pass
                    victim.kill()
                    return f"{victim.name} (leading {', '.join(led) or 'no MQTT stream'})"

                results.append(
                    run(
                        "NATS cluster, 3 nodes, one killed halfway",
                        args.agents,
                        args.bpm,
                        args.seconds,
                        cluster.urls,
                        cluster.nodes[0].url,
                        cluster.nodes[2].mqtt_port,
                        [n.pid for n in cluster.nodes],
                        "3.1.1",
                        work,
                        args.phase,
                        args.wall,
                        kill=kill,
                    )
                )
    report(results, args.agents, args.bpm, args.phase, args.wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
