"""What the current timeline has accepted: the duplicate memory and the latest index.

A key is remembered with whether its frame was held back by the envelope (arrived too
early to enter the fit): a later copy of it that fits is then the better evidence.
"""

from __future__ import annotations

from collections import deque

from edge.sync.tempo import Key

_SEEN_KEYS = 512  # duplicate memory, in frames


class Accepted:
    """The keys of the last accepted frames, the latest key and how many since a reset."""

    def __init__(self) -> None:
        self._seen: deque[Key] = deque()
        self._seen_set: set[Key] = set()
        self._held_back: set[Key] = set()
        self._latest: Key = (0, 0)
        self.count = 0  # frames accepted since the timeline (re)started

    @property
    def latest(self) -> Key:
        """The latest key accepted on this timeline."""
        return self._latest

    def __contains__(self, key: Key) -> bool:
        return key in self._seen_set

    def held_back(self, key: Key) -> bool:
        """Whether the frame accepted at ``key`` was held back from the fit."""
        return key in self._held_back

    def settle(self, key: Key) -> None:
        """A later copy of ``key`` entered the fit: it is no longer held back."""
        self._held_back.discard(key)

    def reset(self) -> None:
        """A new timeline: forget the keys; the next frame sets the latest one."""
        self._seen.clear()
        self._seen_set.clear()
        self._held_back.clear()
        self.count = 0

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to the beat index of every key kept."""
        self._seen = deque((k + shift, p) for k, p in self._seen)
        self._seen_set = set(self._seen)
        self._held_back = {(k + shift, p) for k, p in self._held_back}
        self._latest = (self._latest[0] + shift, self._latest[1])

    def add(self, key: Key, held_back: bool = False) -> int | None:
        """Count a frame accepted at ``key`` (``held_back``: the envelope kept it out of the
        fit); returns the latest beat accepted before it on this timeline (None for the
        first)."""
        self.count += 1
        self._seen.append(key)
        self._seen_set.add(key)
        if held_back:
            self._held_back.add(key)
        while len(self._seen) > _SEEN_KEYS:
            old = self._seen.popleft()
            self._seen_set.discard(old)
            self._held_back.discard(old)
        prev_beat = self._latest[0] if self.count > 1 else None
        self._latest = max(self._latest, key) if self.count > 1 else key
        return prev_beat
