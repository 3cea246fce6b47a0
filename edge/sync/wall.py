"""The wall-clock learner: the fixed path delay, from ``deadline_at`` and the wall clock.

Each frame's ``deadline_at`` says when (on the Pulse's wall clock) its phase ends, so a
local wall clock that agrees with the Pulse's gives the frame's one-way delay; the median
of those delays' offsets from the envelope is the fixed delay the envelope runs behind.
The wall clock is trusted only while the last ``wall_trust_frames`` offsets are plausible
and agree; a wall clock step (its offset from the monotonic clock jumps) freezes what was
learnt before it. ``trust_wall_clock = true/false`` overrides the decision.

*Verified readings.* When the readings come checked by a time exchange with the pulse
(``verified``: each is the pulse's clock within the exchange's bound, :mod:`edge.timesync`),
they need no vote: the newest one gives the delay (the exchange's mapping only gets
better, and a wrong envelope slope has had the least time to matter), a jump of the
readings is the exchange following the pulse's clock (the window restarts, nothing is
frozen), and the plausibility limits do not apply (the envelope may sit far above its
floor while few frames are in).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from edge.messages import PHASES, BeatFrame
from edge.sync.config import SyncConfig
from edge.sync.envelope import median

_NTP_SLEW = 500e-6  # the fastest a disciplined wall clock is slewed (ntpd/chrony limit)


class WallClock:
    """What the wall clock has taught us about the fixed path delay."""

    def __init__(self, config: SyncConfig) -> None:
        self._cfg = config
        self._bias: float | None = None
        self.spread = 0.0  # how far the delays behind the bias disagreed
        self._trusted = False
        self._frozen = False
        self._last: tuple[float, float] | None = None  # (wall - monotonic, monotonic)
        self._samples: deque[tuple[int, int, float, float]] = deque(
            maxlen=max(config.wall_trust_frames, 1)
        )
        self.steps = 0  # wall clock steps seen
        #: Whether the readings are checked by a time exchange (see the module's theory).
        self.verified = False

    @property
    def delay(self) -> float | None:
        """The learnt fixed delay, if it may be used (None: not learnt, or forced off)."""
        if self._bias is not None and self._cfg.trust_wall_clock is not False:
            return self._bias
        return None

    @property
    def trusted(self) -> bool:
        """Whether the wall clock is believed now (forced, or decided from the data)."""
        if self._cfg.trust_wall_clock is not None:
            return self._cfg.trust_wall_clock and self._bias is not None
        return self._trusted and not self._frozen

    def reset(self) -> None:
        """A new timeline: forget the samples (the learnt delay and the trust are kept)."""
        self._samples.clear()
        self._last = None

    def renumber(self, shift: int) -> None:
        """Add ``shift`` to the beat index of every sample kept."""
        self._samples = deque(
            ((k + shift, p, a, d) for k, p, a, d in self._samples),
            maxlen=self._samples.maxlen,
        )

    def learn(
        self,
        frame: BeatFrame,
        a: float,
        wall_at: float,
        envelope_at: Callable[[int, int], float],
    ) -> None:
        """Take a frame that arrived at monotonic ``a``, wall ``wall_at``; ``envelope_at``
        gives the envelope's arrival time of a (beat, phase index)."""
        self._sample(frame, a, wall_at)
        self._update(envelope_at)

    def _sample(self, frame: BeatFrame, a: float, wall_at: float) -> None:
        cfg = self._cfg
        offset = wall_at - a
        if self._last is not None:
            last_offset, last_a = self._last
            if abs(offset - last_offset) > cfg.wall_step_s + _NTP_SLEW * abs(a - last_a):
                self.steps += 1
                self._samples.clear()
                if not self.verified:
                    self._trusted = False
                    if self._bias is not None:
                        self._frozen = True
        self._last = (offset, a)
        sent = frame.deadline_at.timestamp() - frame.phase_seconds
        self._samples.append((frame.beat_index, PHASES.index(frame.phase), a, wall_at - sent))

    def _update(self, envelope_at: Callable[[int, int], float]) -> None:
        cfg = self._cfg
        if cfg.trust_wall_clock is False or (self._frozen and cfg.trust_wall_clock is None):
            return
        samples = list(self._samples)
        if self.verified and samples and cfg.trust_wall_clock is None:
            k, p, a, d = samples[-1]
            self._bias = d - (a - envelope_at(k, p))
            self.spread = 0.0
            self._trusted, self._frozen = True, False
            return
        if len(samples) < cfg.wall_trust_frames:
            return
        biases = [d - (a - envelope_at(k, p)) for k, p, a, d in samples]
        low, high = min(biases), max(biases)
        plausible = (
            low >= -cfg.wall_consistency_s
            and high <= cfg.wall_max_bias_s
            and high - low <= cfg.wall_consistency_s
        )
        if cfg.trust_wall_clock or plausible:
            self._bias = median(biases)
            self.spread = high - low
            self._trusted = True
        else:
            self._trusted = False
