"""A simulated Pulse and network for the beat follower's tests and benchmark (fake time).

``tests/test_sync.py`` and ``scripts/bench_sync.py`` drive the follower with it;
``tests/test_sync_sim.py`` checks the simulator itself.

Truth: the Pulse starts phase ``(beat, phase)`` at Pulse time ``tau``; local monotonic time
is ``t = start + tau / (1 + ppm * 1e-6)`` (a positive ppm: the Pulse clock runs fast). The
frame for that phase is sent then and arrives after ``delay()``; the local wall clock reads
the Pulse's wall time plus ``wall_error(t)``.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from edge.messages import PHASES, BeatFrame
from edge.sync import BeatFollower, PhaseStarted, SyncConfig, SyncEvent

DEFAULT_CONFIG = SyncConfig()
WALL0 = 1_767_225_600.0  # the Pulse's wall clock when its timeline starts


def window_id(bar: int) -> str:
    return f"{bar + 1:032x}"


@dataclass
class Pulse:
    """Beats from ``first_beat``; ``tempo(i)`` gives the tempo of the i-th beat sent."""

    tempo: Callable[[int], float] = lambda i: 60.0
    beats: int = 300
    first_beat: int = 1000
    bar: int = 4
    per_phase: bool = False
    ppm: float = 0.0
    start: float = 100.0
    cluster: str = "c1"
    jump_at: int | None = None  # beat count where the index jumps ...
    jump_to: int = 0  # ... to this index
    jump_gap_s: float = 0.0  # ... after this much more Pulse time (a stop and restart)
    truth: dict[tuple[int, int], float] = field(default_factory=dict)
    order: list[tuple[int, int]] = field(default_factory=list)

    def frames(self) -> list[tuple[float, BeatFrame, float]]:
        """(send local time, frame, send Pulse time) for every phase announced."""
        out: list[tuple[float, BeatFrame, float]] = []
        tau = 0.0
        scale = 1.0 / (1.0 + self.ppm * 1e-6)
        index = self.first_beat
        for i in range(self.beats):
            if self.jump_at is not None and i == self.jump_at:
                index = self.jump_to
                tau += self.jump_gap_s
            bpm = self.tempo(i)
            phase_len = 20.0 / bpm
            for p in range(3):
                t = self.start + (tau + p * phase_len) * scale
                self.truth[(index, p)] = t
                self.order.append((index, p))
                if p == 0 or self.per_phase:
                    deadline = WALL0 + tau + (p + 1) * phase_len
                    frame = BeatFrame(
                        cluster_id=self.cluster,
                        beat_index=index,
                        downbeat=i % self.bar == 0,
                        phase=PHASES[p],
                        hlc="0001:0000:beef",
                        deadline_at=datetime.fromtimestamp(deadline, UTC),
                        tempo_bpm=bpm,
                        window_id=window_id(i // self.bar),
                    )
                    out.append((t, frame, tau + p * phase_len))
            tau += 3 * phase_len
            index += 1
        return out


@dataclass
class Network:
    base: float = 0.0005
    jitter: Callable[[random.Random], float] = lambda rng: 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    silence: tuple[float, float] | None = None  # local send times dropped
    seed: int = 1


def heavy_tail(cap: float = 0.050) -> Callable[[random.Random], float]:
    """Mostly sub-millisecond, a Pareto tail, and 20% anywhere up to ``cap``."""

    def draw(rng: random.Random) -> float:
        if rng.random() < 0.2:
            return rng.uniform(0.0, cap)
        return min(cap, 0.0003 * (float(rng.random() ** (-1.0 / 1.5)) - 1.0))

    return draw


def uniform(cap: float = 0.050) -> Callable[[random.Random], float]:
    return lambda rng: rng.uniform(0.0, cap)


@dataclass
class Run:
    follower: BeatFollower
    pulse: Pulse
    events: list[SyncEvent]
    arrivals: list[tuple[float, BeatFrame]]
    receive_events: list[SyncEvent]
    bounds: dict[tuple[int, int], float] = field(default_factory=dict)
    receive_s: list[float] = field(default_factory=list)  # CPU time of each receive()

    def phases(self) -> list[PhaseStarted]:
        return [e for e in self.events if isinstance(e, PhaseStarted)]

    def errors(self, after: int = 0) -> list[float]:
        """Emitted phase start minus the true phase start, for phases of beat >= after."""
        out = []
        for e in self.phases():
            key = (e.beat_index, PHASES.index(e.phase))
            if key in self.pulse.truth and e.beat_index >= after:
                out.append(e.at - self.pulse.truth[key])
        return out


Sent: TypeAlias = list[tuple[float, BeatFrame, float]]  # (send local time, frame, tau)
Attacker: TypeAlias = Callable[[Sent], list[tuple[float, BeatFrame]]]


def simulate(
    pulse: Pulse,
    net: Network,
    config: SyncConfig = DEFAULT_CONFIG,
    wall_error: Callable[[float], float] | None = None,
    until: float | None = None,
    reorder: float = 0.0,
    attacker: Attacker | None = None,
) -> Run:
    """Send the Pulse's frames through the network into a follower, driving tick() at its
    deadlines; ``wall_error(t)`` None means no wall clock is given. ``attacker`` sees
    every frame the Pulse sends and returns frames of its own with their local arrival
    times; they are added to the network's, which it leaves as they were (same seed,
    same delays), so a run with an attacker compares with the same run without."""
    rng = random.Random(net.seed)
    scale = 1.0 / (1.0 + pulse.ppm * 1e-6)
    heap: list[tuple[float, int, BeatFrame, float | None]] = []
    n = 0
    sent_frames = pulse.frames()
    for sent, frame, _ in sent_frames:
        if net.silence and net.silence[0] <= sent < net.silence[1]:
            continue
        if rng.random() < net.loss:
            continue
        copies = 2 if rng.random() < net.duplicate else 1
        for _ in range(copies):
            delay = net.base + net.jitter(rng)
            if rng.random() < reorder:
                delay += rng.uniform(0.0, 60.0 / frame.tempo_bpm * 1.5)
            arrive = sent + delay
            wall = None
            if wall_error is not None:
                wall = WALL0 + (arrive - pulse.start) / scale + wall_error(arrive)
            heapq.heappush(heap, (arrive, n, frame, wall))
            n += 1
    for arrive, frame in attacker(sent_frames) if attacker is not None else ():
        wall = None
        if wall_error is not None:
            wall = WALL0 + (arrive - pulse.start) / scale + wall_error(arrive)
        heapq.heappush(heap, (arrive, n, frame, wall))
        n += 1
    follower = BeatFollower(pulse.cluster, config)
    events: list[SyncEvent] = []
    receive_events: list[SyncEvent] = []
    arrivals: list[tuple[float, BeatFrame]] = []
    end = until if until is not None else (max(pulse.truth.values()) + 1.0)
    now = 0.0
    bounds: dict[tuple[int, int], float] = {}
    receive_s: list[float] = []

    def ticked(got: list[SyncEvent]) -> None:
        for e in got:
            if isinstance(e, PhaseStarted):
                bounds[(e.beat_index, PHASES.index(e.phase))] = follower.error_bound_at(e.at)
        events.extend(got)

    while True:
        deadline = follower.next_deadline()
        t_arrive = heap[0][0] if heap else math.inf
        if deadline is not None and deadline <= t_arrive and deadline <= end:
            now = max(now, deadline)
            ticked(follower.tick(now))
            continue
        if not heap or t_arrive > end:
            break
        arrive, _, frame, wall = heapq.heappop(heap)
        now = max(now, arrive)
        started = time.perf_counter()
        got = follower.receive(frame, arrive, wall)
        receive_s.append(time.perf_counter() - started)
        receive_events.extend(got)
        events.extend(got)
        arrivals.append((arrive, frame))
        ticked(follower.tick(now))
    ticked(follower.tick(max(now, end)))
    return Run(follower, pulse, events, arrivals, receive_events, bounds, receive_s)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    idx = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[idx]
