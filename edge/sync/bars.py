"""The bar tracker: bars and windows learnt from ``downbeat`` flags and ``window_id``.

The bar length is the distance between downbeats (a multiple of the known length is taken
as lost frames); a window changes only at a bar line. Until two downbeats are seen the bar
is unknown and the answers are None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from edge.messages import BeatFrame
from edge.sync.events import NewWindow

_KNOWN_BEATS = 512  # beats whose downbeat flag is remembered


class BarTracker:
    """Bar length, the last downbeat, the current window and the windows not yet emitted."""

    def __init__(self) -> None:
        self._bar_len: int | None = None
        self._last_downbeat: int | None = None
        self._known_downbeat: dict[int, bool] = {}
        self._window_id: tuple[int, str] | None = None  # (first beat, window id)
        self._new_windows: list[NewWindow] = []

    @property
    def bar_length(self) -> int | None:
        """Beats per bar as learnt from downbeats; None until two downbeats were seen."""
        return self._bar_len

    def reset(self) -> None:
        """Forget everything (a new timeline)."""
        self._bar_len = None
        self._last_downbeat = None
        self._known_downbeat.clear()
        self._window_id = None
        self._new_windows.clear()

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to every beat index kept."""
        if self._last_downbeat is not None:
            self._last_downbeat += shift
        self._known_downbeat = {k + shift: v for k, v in self._known_downbeat.items()}
        if self._window_id is not None:
            self._window_id = (self._window_id[0] + shift, self._window_id[1])
        self._new_windows = [
            NewWindow(w.beat_index + shift, w.window_id, w.at) for w in self._new_windows
        ]

    def is_downbeat(self, beat_index: int) -> bool | None:
        """Whether the beat is the first of a bar; None while the bar is not known."""
        if beat_index in self._known_downbeat:
            return self._known_downbeat[beat_index]
        if self._bar_len is None or self._last_downbeat is None:
            return None
        return (beat_index - self._last_downbeat) % self._bar_len == 0

    def bar_position(self, beat_index: int) -> int | None:
        """0-based position of the beat in its bar; None while the bar is not known."""
        if self._bar_len is None or self._last_downbeat is None:
            return None
        return (beat_index - self._last_downbeat) % self._bar_len

    def learn(
        self, frame: BeatFrame, prev_beat: int | None, beat_start: Callable[[int], float]
    ) -> None:
        """Learn bars from downbeat flags and window changes (``prev_beat``: the latest
        beat accepted before this frame, None on a fresh timeline; ``beat_start``: the
        local start of a beat, for a new window's NewWindow)."""
        k = frame.beat_index
        current = self._window_id
        changed = current is not None and frame.window_id != current[1] and k >= current[0]
        # A window changes only at a bar line; if we saw the beat before, this is it.
        downbeat = frame.downbeat or (changed and prev_beat == k - 1)
        if k not in self._known_downbeat:
            self._known_downbeat[k] = downbeat
            if len(self._known_downbeat) > _KNOWN_BEATS:
                del self._known_downbeat[next(iter(self._known_downbeat))]
        last = self._last_downbeat
        if downbeat and (last is None or k > last):
            if last is not None:
                diff = k - last
                # A multiple of the known length means downbeats were lost, not a new bar.
                if self._bar_len is None or diff % self._bar_len != 0:
                    self._bar_len = diff
            self._last_downbeat = k
        elif (
            not downbeat
            and self._bar_len is not None
            and last is not None
            and k > last
            and (k - last) % self._bar_len == 0
        ):
            self._bar_len = None  # the bar changed length: learn it again
        if current is None or changed:
            start = k
            position = self.bar_position(k)
            if not downbeat and position is not None:
                start = k - position
                if current is not None and start <= current[0]:
                    start = k
            self._window_id = (start, frame.window_id)
            self._new_windows.append(NewWindow(start, frame.window_id, beat_start(start)))

    def window_for(self, beat: int) -> str | None:
        """The window ``beat`` belongs to, if known."""
        if self._window_id is None:
            return None
        start, wid = self._window_id
        if beat < start:
            return None
        if self._bar_len is not None and self._last_downbeat is not None:
            bar_start = start + (self._last_downbeat - start) % self._bar_len
            nxt = bar_start + self._bar_len if bar_start <= start else bar_start
            if beat >= nxt:
                return None
        return wid

    def due_windows(self, beat: int) -> Iterator[NewWindow]:
        """New windows not yet emitted that start at or before ``beat``."""
        return (w for w in self._new_windows if w.beat_index <= beat)

    def flush(self, beat: int) -> list[NewWindow]:
        """Take the new windows that start at or before ``beat``, in order."""
        due: list[NewWindow] = []
        keep: list[NewWindow] = []
        for w in self._new_windows:
            if w.beat_index <= beat:
                due.append(w)
            else:
                keep.append(w)
        self._new_windows = keep
        return due
