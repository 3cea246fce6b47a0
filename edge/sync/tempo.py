"""The tempo map: beat and phase to Pulse time ``u`` and back, across tempo changes.

``u`` is in nominal Pulse seconds since the timeline started. The map is a list of
segments (first beat, tempo, ``u`` at that beat); a tempo change adds a segment, so it
moves only the beats after it. A key is ``(beat index, phase index 0..2)``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import TypeAlias

Key: TypeAlias = tuple[int, int]  # (beat index, phase index 0..2)

_MAX_SEGMENTS = 512  # tempo segments kept (older ones are not needed by the window)


def next_key(key: Key) -> Key:
    return (key[0], key[1] + 1) if key[1] < 2 else (key[0] + 1, 0)


def prev_key(key: Key) -> Key:
    return (key[0], key[1] - 1) if key[1] > 0 else (key[0] - 1, 2)


class TempoMap:
    """Segments of constant tempo; empty until :meth:`reset` starts a timeline."""

    def __init__(self) -> None:
        # Parallel lists of segment starts (beat), tempos and u at the start.
        self._beat: list[int] = []
        self._bpm: list[float] = []
        self._u: list[float] = []

    def __bool__(self) -> bool:
        return bool(self._bpm)

    @property
    def latest_bpm(self) -> float:
        """Tempo of the last segment (the latest beat we know of)."""
        return self._bpm[-1]

    @property
    def last_start(self) -> int:
        """First beat of the last segment."""
        return self._beat[-1]

    def reset(self, beat: int, bpm: float) -> None:
        """Start a fresh map: ``beat`` at ``u = 0``, at ``bpm``."""
        self._beat = [beat]
        self._bpm = [bpm]
        self._u = [0.0]

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to every beat index, keeping every ``u``."""
        self._beat = [b + shift for b in self._beat]

    def bpm_at(self, beat: int) -> float:
        """Tempo in force at ``beat``."""
        return self._bpm[self._index_for_beat(beat)]

    def u(self, beat: int, phase: int) -> float:
        """Pulse time at which ``phase`` of ``beat`` starts."""
        i = self._index_for_beat(beat)
        phase_len = 20.0 / self._bpm[i]
        return self._u[i] + ((beat - self._beat[i]) * 3 + phase) * phase_len

    def key_at(self, u: float) -> Key:
        """The phase under Pulse time ``u``."""
        i = max(bisect_right(self._u, u) - 1, 0)
        phase_len = 20.0 / self._bpm[i]
        n = math.floor((u - self._u[i]) / phase_len)
        return (self._beat[i] + n // 3, n % 3)

    def add(self, beat: int, bpm: float) -> bool:
        """The tempo becomes ``bpm`` from ``beat`` on.

        True if it rather changed the tempo of the last segment (the same beat announced
        again with another tempo: the later word wins), which moves every ``u`` after the
        segment's start: the caller recomputes what it keeps.
        """
        if self._beat and beat <= self._beat[-1]:
            self._bpm[-1] = bpm
            return True
        u = self.u(beat, 0)
        self._beat.append(beat)
        self._bpm.append(bpm)
        self._u.append(u)
        if len(self._beat) > _MAX_SEGMENTS:
            del self._beat[0], self._bpm[0], self._u[0]
        return False

    def _index_for_beat(self, beat: int) -> int:
        return max(bisect_right(self._beat, beat) - 1, 0)
