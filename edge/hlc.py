"""Hybrid logical clock in the BACKBEAT wire format ``wall:logical:node``.

Each field is 16 bits, written as exactly 4 hex digits (either case is read; lower case is
written): ``wall`` is the wall-clock second, ``logical`` counts events within one wall
second, ``node`` names the emitter.

Rules (Kulkarni et al., "Logical Physical Clocks", 2014, narrowed to 16-bit fields):

* ``now()``: ``wall' = max(last.wall, physical)``; if the wall part did not move, the
  logical part counts up, else it resets to 0. So timestamps never go backwards even when
  the wall clock steps back (NTP, an operator), and they stay close to physical time.
* ``merge(received)``: ``wall' = max(last.wall, received.wall, physical)``, the logical part
  one past the largest logical part among those that share ``wall'``.
* **Wrapping.** Internally the wall part is an unbounded count of seconds; only its low 16
  bits go on the wire, so the wire value wraps every 65536 s (about 18.2 hours). Received
  values are unwrapped with serial-number arithmetic (RFC 1982): of all seconds whose low 16
  bits match, the one nearest our own current wall second is taken, so timestamps within
  +/- 9.1 hours of each other compare correctly across a wrap. :func:`compare` orders two
  wire timestamps by the same rule.
* **Logical overflow.** If 65536 events fall in one second, the wall part borrows the next
  second (the logical part restarts at 0), which keeps every timestamp unique and ordered.
* **The bound.** A received timestamp more than ``max_ahead_s`` ahead of the local wall
  clock (an agent's default: :data:`DEFAULT_MAX_AHEAD_S`, 60 s) is refused with
  :class:`HlcAheadError` (reason ``hlc_ahead``) and leaves the clock as it was: one forged
  or misdirected frame must not push every later timestamp hours ahead for good.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from edge.clock import Clock
from edge.errors import FrameError

DEFAULT_MAX_AHEAD_S = 60.0  # far above NTP error, far below the 9.1 h wrap
_WIRE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4}):([0-9a-fA-F]{4})")
_MASK = 0xFFFF
_HALF = 0x8000


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """A decoded HLC value; ``wall`` is unwrapped seconds, ``logical`` and ``node`` 16-bit."""

    wall: int
    logical: int
    node: int

    def wire(self) -> str:
        """The wire form: low 16 bits of the wall second, logical, node; 4 hex digits each."""
        return f"{self.wall & _MASK:04x}:{self.logical:04x}:{self.node:04x}"


class HlcAheadError(FrameError):
    """A received HLC is further ahead of our wall clock than the bound allows.

    ``reason`` is the name the caller counts it under; ``ahead_s`` how far ahead it was.
    """

    reason = "hlc_ahead"

    def __init__(self, received: str, ahead_s: int, bound_s: float) -> None:
        super().__init__(
            f"hlc {received!r} is {ahead_s} s ahead of the local wall clock "
            f"(at most {bound_s:g} s is merged)",
            field="hlc",
        )
        self.ahead_s = ahead_s
        self.bound_s = bound_s


def parse(text: str) -> tuple[int, int, int]:
    """Split a wire HLC into its three 16-bit fields; raises FrameError if malformed."""
    m = _WIRE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise FrameError(
            f"hlc must be wall:logical:node in 4 hex digits each, got {text!r}", field="hlc"
        )
    return int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)


def unwrap(wall16: int, near: int) -> int:
    """The second nearest ``near`` whose low 16 bits are ``wall16`` (RFC 1982 style)."""
    delta = (wall16 - near) & _MASK
    if delta >= _HALF:
        delta -= 0x10000
    return near + delta


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as wire timestamp ``a`` is before, equal to or after ``b``.

    The wall fields are compared in serial-number arithmetic, so the order holds across a
    wrap as long as the two are within 9.1 hours of each other.
    """
    wa, la, na = parse(a)
    wb, lb, nb = parse(b)
    key_a = (unwrap(wa, wb), la, na)
    key_b = (wb, lb, nb)
    return (key_a > key_b) - (key_a < key_b)


def node_id(name: str) -> int:
    """A stable 16-bit node id for an agent id (CRC-32 folded to 16 bits)."""
    crc = zlib.crc32(name.encode("utf-8"))
    return (crc ^ (crc >> 16)) & _MASK


class HybridLogicalClock:
    """An HLC for one node, reading physical time from an injected :class:`Clock`."""

    def __init__(self, clock: Clock, node: int, max_ahead_s: float | None = None) -> None:
        """``max_ahead_s``: how far ahead of the local wall clock a merged timestamp may be;
        None (the default, for callers that set no bound) merges any. An agent passes its
        configured bound, whose default is :data:`DEFAULT_MAX_AHEAD_S`."""
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node <= _MASK:
            raise ValueError(f"node must be between 0 and 65535, got {node}")
        if max_ahead_s is not None and not (max_ahead_s >= 0 and math.isfinite(max_ahead_s)):
            raise ValueError(f"max_ahead_s must be a finite number >= 0, got {max_ahead_s!r}")
        self._max_ahead = max_ahead_s
        self._clock = clock
        self._wall_source: Callable[[], float] | None = None
        self._node = node
        self._wall = 0
        self._logical = 0

    @property
    def node(self) -> int:
        return self._node

    def follow(self, wall: Callable[[], float] | None) -> None:
        """Read physical time from ``wall`` instead of the clock's wall (None: the clock's
        again). An agent whose own wall clock is off follows the pulse's wall clock as the
        time exchange maps it, so the bound and its claims' stamps are in cluster time."""
        self._wall_source = wall

    def _physical(self) -> int:
        if self._wall_source is not None:
            return int(self._wall_source())
        return int(self._clock.wall())

    def _advance(self, wall: int, logical: int) -> Timestamp:
        if logical > _MASK:  # 65536 events in one second: borrow the next second.
            wall, logical = wall + 1, 0
        self._wall, self._logical = wall, logical
        return Timestamp(wall, logical, self._node)

    def now(self) -> Timestamp:
        """A new timestamp for a local or send event."""
        physical = self._physical()
        if physical > self._wall:
            return self._advance(physical, 0)
        return self._advance(self._wall, self._logical + 1)

    @property
    def max_ahead_s(self) -> float | None:
        return self._max_ahead

    def check(self, received: str) -> int:
        """Raise what :meth:`merge` would raise for ``received``, without merging it.

        FrameError if it is malformed, HlcAheadError if it is beyond the bound: a caller
        can refuse a frame before anything else sees it, and merge it once it passed.
        Returns the stamp's wall second, unwrapped (to compare stamps across the wrap).
        """
        return self._unwrapped(received)[0]

    def _unwrapped(self, received: str) -> tuple[int, int, int]:
        """(received wall unwrapped, its logical part, physical now); checks the bound."""
        r_wall16, r_logical, _ = parse(received)
        physical = self._physical()
        r_wall = unwrap(r_wall16, max(self._wall, physical))
        if self._max_ahead is not None and r_wall - physical > self._max_ahead:
            raise HlcAheadError(received, r_wall - physical, self._max_ahead)
        return r_wall, r_logical, physical

    def merge(self, received: str) -> Timestamp:
        """Fold in a received wire timestamp and return the timestamp of the receive event.

        Raises FrameError if ``received`` is not a valid wire HLC, and HlcAheadError (a
        FrameError) if it is more than ``max_ahead_s`` ahead of the local wall clock; the
        clock is then unchanged.
        """
        r_wall, r_logical, physical = self._unwrapped(received)
        wall = max(self._wall, r_wall, physical)
        if wall == self._wall == r_wall:
            logical = max(self._logical, r_logical) + 1
        elif wall == self._wall:
            logical = self._logical + 1
        elif wall == r_wall:
            logical = r_logical + 1
        else:
            logical = 0
        return self._advance(wall, logical)

    def now_wire(self) -> str:
        """:meth:`now` in the wire format (``wall:logical:node``, lower-case hex)."""
        return self.now().wire()
