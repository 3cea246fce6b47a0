"""The bar tracker: bars and windows learnt from ``downbeat`` flags and ``window_id``.

The bar length is first the distance between the first two downbeats; until a third
downbeat agrees with it, it is tentative (a lost downbeat may have doubled it) and a new
distance replaces it at once, as a frame against it forgets it. Once confirmed it
changes only when two downbeat intervals in a row agree on a new length and the latest
of them disagrees with the bar in force (it ends off the bar's grid, or a frame inside it
said "no downbeat" where the grid expects one): one stray ``downbeat`` flag, true or
false, changes nothing, while a real change of bar is followed after two of its bars. A
distance that is a multiple of the known length with nothing against it is taken as lost
frames. While the bar is known the grid answers, not a single frame's flag. A window
changes only at a bar line. Until two downbeats are seen the bar is unknown and the
answers are None.
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
        self._last_downbeat: int | None = None  # the latest downbeat on the bar's grid
        # Evidence for a change of bar: the latest downbeat frame received (on the grid
        # or not), whether a frame since then contradicted the grid, and the interval
        # that ended at it (its length, whether it disagreed with the grid).
        self._last_seen: int | None = None
        self._contradicted = False
        self._interval: tuple[int, bool] | None = None
        self._confirmed = False  # a downbeat after the first two agreed with the bar
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
        self._last_seen = None
        self._contradicted = False
        self._interval = None
        self._confirmed = False
        self._known_downbeat.clear()
        self._window_id = None
        self._new_windows.clear()

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to every beat index kept."""
        if self._last_downbeat is not None:
            self._last_downbeat += shift
        if self._last_seen is not None:
            self._last_seen += shift
        self._known_downbeat = {k + shift: v for k, v in self._known_downbeat.items()}
        if self._window_id is not None:
            self._window_id = (self._window_id[0] + shift, self._window_id[1])
        self._new_windows = [
            NewWindow(w.beat_index + shift, w.window_id, w.at) for w in self._new_windows
        ]

    def is_downbeat(self, beat_index: int) -> bool | None:
        """Whether the beat is the first of a bar; None while the bar is not known.

        Once the bar is known its grid answers (a frame's own flag could be a stray);
        before, a beat's own frame does."""
        if self._bar_len is None or self._last_downbeat is None:
            return self._known_downbeat.get(beat_index)
        return (beat_index - self._last_downbeat) % self._bar_len == 0

    def bar_position(self, beat_index: int) -> int | None:
        """0-based position of the beat in its bar; None while the bar is not known."""
        if self._bar_len is None or self._last_downbeat is None:
            return None
        return (beat_index - self._last_downbeat) % self._bar_len

    def learn(
        self, frame: BeatFrame, prev_beat: int | None, beat_start: Callable[[int], float]
    ) -> bool:
        """Learn bars from downbeat flags and window changes (``prev_beat``: the latest
        beat accepted before this frame, None on a fresh timeline; ``beat_start``: the
        local start of a beat, for a new window's NewWindow).

        True when the frame's downbeat flag disagreed with the bar in force and was not
        taken (not yet: a real change of bar is taken once two intervals agree)."""
        k = frame.beat_index
        current = self._window_id
        changed = current is not None and frame.window_id != current[1] and k >= current[0]
        # A window changes only at a bar line; if we saw the beat before, this is it.
        downbeat = frame.downbeat or (changed and prev_beat == k - 1)
        if k not in self._known_downbeat:
            self._known_downbeat[k] = downbeat
            if len(self._known_downbeat) > _KNOWN_BEATS:
                del self._known_downbeat[next(iter(self._known_downbeat))]
        seen = self._last_seen
        unconfirmed = False
        if downbeat and (seen is None or k > seen):
            unconfirmed = self._downbeat(k)
        elif not downbeat and seen is not None and k > seen and self.is_downbeat(k):
            if self._confirmed:
                unconfirmed = not self._contradicted  # once per interval
                self._contradicted = True
            else:
                self._bar_len = None  # a tentative bar is wrong: learn it again
        if current is None or changed:
            start = k
            position = self.bar_position(k)
            if not downbeat and position is not None:
                start = k - position
                if current is not None and start <= current[0]:
                    start = k
            self._window_id = (start, frame.window_id)
            self._new_windows.append(NewWindow(start, frame.window_id, beat_start(start)))
        return unconfirmed

    def _downbeat(self, k: int) -> bool:
        """A downbeat frame for beat ``k``, later than every downbeat seen before; True if
        it is off the bar's grid and did not change the bar."""
        last, seen, bar = self._last_downbeat, self._last_seen, self._bar_len
        self._last_seen = k
        contradicted, self._contradicted = self._contradicted, False
        if last is None or seen is None or bar is None:
            if last is not None:
                self._bar_len = k - last  # the first two downbeats give the bar
            self._last_downbeat = k
            return False
        length = k - seen
        # A multiple of the bar with nothing against it means downbeats were lost.
        disagrees = (k - last) % bar != 0 or contradicted
        previous, self._interval = self._interval, (length, disagrees)
        if not disagrees:
            self._last_downbeat = k
            self._confirmed = True
        elif not self._confirmed:
            self._bar_len = length  # the tentative bar was wrong: take the new distance
            self._last_downbeat = k
            return False
        elif previous is not None and previous[0] == length:
            self._bar_len = length
            self._last_downbeat = k
            return False
        return (k - last) % bar != 0

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
