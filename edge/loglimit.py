"""Rate-limited logging of repeated problems: the first of a kind at once, then a count.

A flood of bad input (malformed frames, refused messages) must be counted, not logged line
by line: 5,000 bad frames a second would drown the log and cost the loop its time. A
:class:`LogLimiter` logs the first problem of each *kind* when it happens and opens a quiet
period (``quiet_s``) for that kind; what comes of the kind during it is only counted, and
when the period has ended (seen by the next :meth:`note` or :meth:`tick`) one line says how
many more there were, with the last message. So each kind costs at most two lines per quiet
period, whatever the rate, and nothing is hidden: the count is always said.

Pure: the caller hands in the time (any monotonic seconds); it logs through ``logging``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass
class _Quiet:
    until: float
    started: float
    count: int = 0
    last: str = ""


class LogLimiter:
    """Logs ``note(kind, message, now)`` at ``level`` on ``logger``, rate-limited per kind."""

    def __init__(self, logger: logging.Logger, quiet_s: float = 10.0, level: int = logging.WARNING):
        if not quiet_s > 0:
            raise ValueError(f"quiet_s must be > 0, got {quiet_s!r}")
        self._log = logger
        self._level = level
        self.quiet_s = quiet_s
        self._kinds: dict[str, _Quiet] = {}
        #: Lines written so far (first-of-a-kind and summaries), for tests and views.
        self.lines = 0
        #: Notes counted without a line of their own (said later in a summary).
        self.suppressed = 0

    def note(self, kind: str, message: str, now: float) -> bool:
        """One problem of ``kind``; True if it was logged now (else it is counted)."""
        quiet = self._kinds.get(kind)
        if quiet is not None and now < quiet.until:
            quiet.count += 1
            quiet.last = message
            self.suppressed += 1
            return False
        if quiet is not None:
            self._summarise(kind, quiet, now)
        self._kinds[kind] = _Quiet(until=now + self.quiet_s, started=now)
        self._emit("%s", message)
        return True

    def tick(self, now: float) -> None:
        """Say the counts of the quiet periods that have ended by ``now``."""
        if not self._kinds:
            return
        for kind in [k for k, q in self._kinds.items() if now >= q.until]:
            self._summarise(kind, self._kinds.pop(kind), now)

    def flush(self, now: float) -> None:
        """Say every count not yet said (at shutdown), whether its period ended or not."""
        for kind, quiet in list(self._kinds.items()):
            self._summarise(kind, quiet, now)
        self._kinds.clear()

    def _summarise(self, kind: str, quiet: _Quiet, now: float) -> None:
        if quiet.count:
            self._emit(
                "%d more %s in %.1f s (last: %s)",
                quiet.count,
                kind,
                min(now, quiet.until) - quiet.started,
                quiet.last,
            )
        quiet.count = 0

    def _emit(self, fmt: str, *args: object) -> None:
        self.lines += 1
        self._log.log(self._level, fmt, *args)
