"""What the current timeline has accepted: the duplicate memory and the latest index."""

from __future__ import annotations

from collections import deque

from edge.sync.tempo import Key

_SEEN_KEYS = 512  # duplicate memory, in frames


class Accepted:
    """The keys of the last accepted frames, the latest key and how many since a reset."""

    def __init__(self) -> None:
        self._seen: deque[Key] = deque()
        self._seen_set: set[Key] = set()
        self._latest: Key = (0, 0)
        self.count = 0  # frames accepted since the timeline (re)started

    @property
    def latest(self) -> Key:
        """The latest key accepted on this timeline."""
        return self._latest

    def __contains__(self, key: Key) -> bool:
        return key in self._seen_set

    def reset(self) -> None:
        """A new timeline: forget the keys; the next frame sets the latest one."""
        self._seen.clear()
        self._seen_set.clear()
        self.count = 0

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to the beat index of every key kept."""
        self._seen = deque((k + shift, p) for k, p in self._seen)
        self._seen_set = set(self._seen)
        self._latest = (self._latest[0] + shift, self._latest[1])

    def add(self, key: Key) -> int | None:
        """Count a frame accepted at ``key``; returns the latest beat accepted before it
        on this timeline (None for the first)."""
        self.count += 1
        self._seen.append(key)
        self._seen_set.add(key)
        while len(self._seen) > _SEEN_KEYS:
            self._seen_set.discard(self._seen.popleft())
        prev_beat = self._latest[0] if self.count > 1 else None
        self._latest = max(self._latest, key) if self.count > 1 else key
        return prev_beat
