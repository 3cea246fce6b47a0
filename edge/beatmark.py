"""The newest signed beat an agent followed, kept across its restarts.

With signed beats, a frame sent again later is refused as ``replayed`` when its stamp lags
what a fresh one's would be (:mod:`edge.intake`). That needs a frame followed in this
process to compare with: an agent that starts while the pulse is silent would take a
recording of old signed frames for the beat and drive its outputs by it. So the ``deadline_at``
of the newest frame followed is kept in the agent's state directory (the outbox's), in
``beat.newest``, and at the next start frames due more than the replay tolerance before it
are refused as ``replayed`` too.

It is written when it has moved on by :data:`WRITE_EVERY_S` (so recordings of the last few
seconds before a crash may still pass, and frames sent while the agent was down always
can: the broker's ACL is what keeps a recorder from publishing on the beat topic) and at
exit, by a rename (a crash mid-write leaves the old mark). A pulse whose clock was set back
is refused until its deadlines pass the mark; the log at start says where the mark is, so
an operator can delete it.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from edge.config_file import FileRefused
from edge.errors import FrameError
from edge.files import read_regular
from edge.wire_values import parse_rfc3339

log = logging.getLogger(__name__)

FILE_NAME = "beat.newest"
#: The mark is written again once the newest deadline has moved on this far.
WRITE_EVERY_S = 5.0


class BeatMark:
    """``beat.newest`` in ``directory`` (None: nothing is kept)."""

    def __init__(self, directory: Path | None) -> None:
        self.path = None if directory is None else directory / FILE_NAME
        self._newest: datetime | None = None
        self._written: datetime | None = None
        #: Writes that failed (each logged once per kind of failure).
        self.failures = 0
        self._said: set[str] = set()

    def load(self) -> datetime | None:
        """The mark the last run left, or None (none kept, none yet, or unreadable: said)."""
        if self.path is None:
            return None
        try:
            text = read_regular(self.path, limit=256).decode("ascii").strip()
            mark = parse_rfc3339("beat.newest", text)
        except FileRefused as exc:
            if exc.problem != "does not exist":
                log.warning("beat mark %s; replays of older frames are not refused", exc)
            return None
        except (UnicodeDecodeError, FrameError) as exc:
            log.warning("beat mark %s is unreadable (%s); it is written anew", self.path, exc)
            return None
        self._newest = self._written = mark
        log.info(
            "signed beat frames due before %s (the newest this agent followed) are refused as"
            " replays; if the pulse's clock was set back, delete %s",
            mark.isoformat(),
            self.path,
        )
        return mark

    def note(self, deadline: datetime) -> None:
        """A signed frame due at ``deadline`` was followed."""
        if self._newest is not None and deadline <= self._newest:
            return
        self._newest = deadline
        if self._written is None or deadline - self._written >= timedelta(seconds=WRITE_EVERY_S):
            self._write()

    def close(self) -> None:
        """At exit: keep the newest."""
        if self._newest is not None and self._newest != self._written:
            self._write()

    def _write(self) -> None:
        if self.path is None or self._newest is None:
            return
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            tmp.write_text(self._newest.isoformat().replace("+00:00", "Z") + "\n", "ascii")
            os.replace(tmp, self.path)
        except OSError as exc:
            self.failures += 1
            kind = type(exc).__name__
            if kind not in self._said:
                self._said.add(kind)
                log.warning("cannot keep the beat mark in %s: %s", self.path, exc)
            return
        self._written = self._newest
