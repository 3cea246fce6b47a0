"""A BACKBEAT-compatible beat generator for benches and demos (``backbeat-edge pulse``).

It sends one valid BeatFrame at the start of every beat (or of every phase, with
``per_phase``), with downbeats every ``bar`` beats, a new 32-hex ``window_id`` per bar, an
HLC, and ``deadline_at`` = the wall-clock end of the announced phase. The tempo can be
changed while it runs, from a control topic (``{prefix}/{cluster}/pulse/tempo``, payload
``"72"`` or ``"72 force"``) or by signals (SIGUSR1 +10 %, SIGUSR2 -10 %); like upstream's
Pulse it limits one change to +/-10 % unless forced. A change takes effect at the next
beat boundary.

``PulseSchedule`` is the pure part (beat times and frames); ``run_pulse`` is the loop that
sleeps to each beat start and publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO

from edge.clock import Clock
from edge.hlc import HybridLogicalClock, node_id
from edge.messages import MAX_TEMPO_BPM, MIN_TEMPO_BPM, PHASES, BeatFrame, Format, encode
from edge.trust import Signer, sign_message

log = logging.getLogger(__name__)

#: A signed frame is built and signed this long before its send time (signing takes
#: ~50 us on a Pi-class core; it must not make the frame late).
SIGN_LEAD_S = 0.002


def parse_tempo_request(payload: bytes) -> tuple[float, bool]:
    """The (bpm, force) a control-topic payload asks for: ``"72"`` or ``"72 force"``.

    Raises ValueError saying what is wrong unless the tempo is a finite number in the
    contract's 0.1 to 1000 BPM: ``nan``, ``inf`` or ``1e400`` never reach the schedule
    (its Decimal rounding cannot take them, and a clamp would turn them into a tempo
    nobody asked for).
    """
    words = payload.decode("utf-8", "replace").split()
    # ASCII only (float() takes other scripts' digits) and nothing but "force" after it.
    if not words or not payload.isascii() or words[1:] not in ([], ["force"]):
        raise ValueError("expected e.g. '72' or '72 force'")
    try:
        bpm = float(words[0])
    except ValueError:
        raise ValueError("expected e.g. '72' or '72 force'") from None
    if not (math.isfinite(bpm) and MIN_TEMPO_BPM <= bpm <= MAX_TEMPO_BPM):
        span = f"{MIN_TEMPO_BPM:g} to {MAX_TEMPO_BPM:g}"
        raise ValueError(f"the tempo must be a number from {span} BPM")
    return bpm, words[1:] == ["force"]


def snap_tempo(bpm: float) -> float:
    """Round a tempo onto the contract's 0.1 grid and into 0.1..1000; raises ValueError
    for one that is not finite."""
    if not math.isfinite(bpm):
        raise ValueError(f"a tempo must be a finite number, got {bpm!r}")
    snapped = float(Decimal(repr(bpm)).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN))
    return min(MAX_TEMPO_BPM, max(MIN_TEMPO_BPM, snapped))


def limit_change(current: float, requested: float, force: bool) -> float:
    """Upstream's rule: one runtime change moves the tempo by at most +/-10 %; raises
    ValueError for a ``requested`` tempo that is not finite."""
    if not math.isfinite(requested):
        raise ValueError(f"a tempo must be a finite number, got {requested!r}")
    if force:
        return snap_tempo(requested)
    low, high = current * 0.9, current * 1.1
    snapped = snap_tempo(min(high, max(low, requested)))
    # Snapping to the 0.1 grid may round just past the limit (118.8 * 1.1 = 130.68 -> 130.7,
    # +10.02 %), which a follower then holds as an unconfirmed jump: round inwards instead.
    tenth = Decimal("0.1")
    if snapped > high:
        snapped = float(Decimal(repr(high)).quantize(tenth, rounding=ROUND_FLOOR))
    elif snapped < low:
        snapped = float(Decimal(repr(low)).quantize(tenth, rounding=ROUND_CEILING))
    return min(MAX_TEMPO_BPM, max(MIN_TEMPO_BPM, snapped))


@dataclass(frozen=True, slots=True)
class BeatSlot:
    """One beat of the pulse's own timeline (local monotonic and wall time of its start)."""

    beat_index: int
    start_mono: float
    start_wall: float
    tempo_bpm: float

    @property
    def seconds(self) -> float:
        return 60.0 / self.tempo_bpm


class PulseSchedule:
    """The pulse's timeline: beat k starts where beat k-1 ended, at the tempo then in force."""

    def __init__(
        self,
        cluster: str,
        bpm: float,
        bar: int,
        start_mono: float,
        start_wall: float,
        first_beat: int = 0,
        seed: str = "",
    ) -> None:
        if bar < 1:
            raise ValueError(f"bar must be at least 1 beat, got {bar}")
        self.cluster = cluster
        self.bar = bar
        self.seed = seed or f"{start_wall:.6f}"
        self._tempo = snap_tempo(bpm)
        self._next = BeatSlot(first_beat, start_mono, start_wall, self._tempo)
        self._first = first_beat

    @property
    def tempo_bpm(self) -> float:
        return self._tempo

    def request_tempo(self, bpm: float, force: bool = False) -> float:
        """Set the tempo for the next beat boundary; returns the tempo actually applied."""
        self._tempo = limit_change(self._tempo, bpm, force)
        return self._tempo

    def peek(self) -> BeatSlot:
        return BeatSlot(
            self._next.beat_index, self._next.start_mono, self._next.start_wall, self._tempo
        )

    def advance(self) -> BeatSlot:
        """Take the next beat (at the tempo in force now) and move past it."""
        slot = self.peek()
        self._next = BeatSlot(
            slot.beat_index + 1,
            slot.start_mono + slot.seconds,
            slot.start_wall + slot.seconds,
            self._tempo,
        )
        return slot

    def window_id(self, beat_index: int) -> str:
        bar_no = (beat_index - self._first) // self.bar
        return hashlib.sha256(f"{self.cluster}:{self.seed}:{bar_no}".encode()).hexdigest()[:32]

    def frame(self, slot: BeatSlot, phase_no: int, hlc: str) -> BeatFrame:
        phase_len = slot.seconds / 3.0
        deadline = datetime.fromtimestamp(slot.start_wall + (phase_no + 1) * phase_len, UTC)
        return BeatFrame(
            cluster_id=self.cluster,
            beat_index=slot.beat_index,
            downbeat=(slot.beat_index - self._first) % self.bar == 0,
            phase=PHASES[phase_no],
            hlc=hlc,
            deadline_at=deadline,
            tempo_bpm=slot.tempo_bpm,
            window_id=self.window_id(slot.beat_index),
            metadata={"pulse_version": "backbeat-edge-pulse/1", "cluster_health": "healthy"},
        )


def precise_sleep_until(
    deadline: float, wake: threading.Event | None = None, spin_s: float = 0.0005
) -> None:
    """Sleep until ``deadline`` (monotonic): a plain wait to just before, then a short spin.

    A plain sleep wakes 0.1-0.7 ms late here; spinning the last half millisecond brings it
    within microseconds at a tiny CPU cost. If ``wake`` is set the wait ends early.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= spin_s:
            break
        if wake is not None:
            if wake.wait(remaining - spin_s):
                return
        else:
            time.sleep(remaining - spin_s)
    while time.monotonic() < deadline:
        pass


@dataclass(frozen=True, slots=True)
class PulseOptions:
    cluster: str
    bpm: float
    bar: int = 4
    fmt: Format = "json"
    duration_s: float | None = None
    per_phase: bool = False
    start_beat: int = 0
    prefix: str = "backbeat"


@dataclass(frozen=True, slots=True)
class TempoStep:
    """A signal's change: ``factor`` times the tempo in force when the pulse takes it (not
    the last one asked for, which the +/-10 % limit may have cut short)."""

    factor: float


#: What ``run_pulse``'s controls carry: (bpm, force) from the control topic, or a step.
TempoRequest = tuple[float, bool] | TempoStep


def run_pulse(
    options: PulseOptions,
    publish: Callable[[str, bytes], object],
    clock: Clock,
    stop: threading.Event,
    controls: queue.Queue[TempoRequest] | None = None,
    trace: IO[str] | None = None,
    signer: Signer | None = None,
) -> int:
    """Send beats until ``stop`` is set or ``duration_s`` has passed; returns beats sent.

    ``controls`` carries tempo requests: (bpm, force) from the control topic, a
    :class:`TempoStep` from a signal.
    ``trace`` gets one JSON line per frame: beat_index, phase, tempo and the intended and
    actual send times on the monotonic clock (what benchmarks compare the agent against).
    With ``signer`` every frame carries ``metadata.sig`` and ``sig_kid`` (``edge.trust``);
    it is built and signed :data:`SIGN_LEAD_S` before its send time, then sent on time.
    """
    topic = f"{options.prefix}/{options.cluster}/beat"
    start = clock.monotonic() + 0.05
    schedule = PulseSchedule(
        options.cluster,
        options.bpm,
        options.bar,
        start,
        clock.wall() + 0.05,
        first_beat=options.start_beat,
    )
    hlc = HybridLogicalClock(clock, node_id(f"pulse:{options.cluster}"))
    end = None if options.duration_s is None else start + options.duration_s
    sent = 0
    while not stop.is_set():
        if controls is not None:
            while True:
                try:
                    request = controls.get_nowait()
                except queue.Empty:
                    break
                if isinstance(request, TempoStep):  # from the tempo in force, in range
                    step = schedule.tempo_bpm * request.factor
                    bpm = min(MAX_TEMPO_BPM, max(MIN_TEMPO_BPM, step))
                    force = False
                else:
                    bpm, force = request
                try:
                    applied = schedule.request_tempo(bpm, force)
                except ValueError as exc:  # the beat goes on at the tempo it had
                    log.warning("tempo request refused: %s", exc)
                    continue
                log.info(
                    "tempo request %.1f%s -> %.1f BPM from the next beat",
                    bpm,
                    " (forced)" if force else "",
                    applied,
                )
        slot = schedule.peek()
        if end is not None and slot.start_mono >= end:
            break
        slot = schedule.advance()
        phases = range(3) if options.per_phase else range(1)
        for phase_no in phases:
            at = slot.start_mono + phase_no * slot.seconds / 3.0
            if signer is not None:
                precise_sleep_until(at - SIGN_LEAD_S, stop)
                if stop.is_set():
                    return sent
                frame = sign_message(schedule.frame(slot, phase_no, hlc.now_wire()), signer)
                payload = encode(frame, options.fmt)
            precise_sleep_until(at, stop)
            if stop.is_set():
                return sent
            if signer is None:
                frame = schedule.frame(slot, phase_no, hlc.now_wire())
                payload = encode(frame, options.fmt)
            publish(topic, payload)
            sent_at = time.monotonic()
            sent += 1
            if trace is not None:
                trace.write(
                    json.dumps(
                        {
                            "beat_index": slot.beat_index,
                            "phase": PHASES[phase_no],
                            "tempo_bpm": slot.tempo_bpm,
                            "intended_mono": at,
                            "sent_mono": sent_at,
                        }
                    )
                    + "\n"
                )
                trace.flush()
    return sent


def open_trace(path: str | None) -> IO[str] | None:
    """A trace file to append to (created if missing), or None; raises FileRefused for a
    directory, a FIFO or a device (never waits on one)."""
    from edge.files import open_append

    return None if path is None else open_append(Path(path))
