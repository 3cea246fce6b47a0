"""The newest signed beat an agent followed, kept across its restarts.

With signed beats, a frame sent again later is refused as ``replayed`` when its stamp lags
what a fresh one's would be, given the local time since the newest frame followed
(:mod:`edge.intake`). That needs a frame followed to compare with: an agent that starts
while the pulse is silent would take a recording of old signed frames for the beat and
drive its outputs by it. So the newest frame followed is kept in the agent's state
directory (the outbox's), in ``beat.newest``: its ``deadline_at``, its stamp (the HLC's
wall second), when it arrived (local monotonic) and the boot it arrived in.

At the next start on the same boot the monotonic clock runs on, so the check goes on as if
the agent had never stopped: a recording played any later than 2 s after its time is
refused, its last seconds too. After a reboot the time between is unknown: frames due up to
2 s after the mark are refused (a reboot takes longer than that, so the real pulse is past
it), and frames recorded while the agent was down can pass; the broker's ACL is what keeps
a recorder from publishing on the beat topic.

:meth:`BeatMark.note` only keeps the newest in memory (it runs in the frame's step, beside
actions); :meth:`BeatMark.flush` writes it, in the loop's side work, once it has moved on by
:data:`WRITE_EVERY_S`, and :meth:`BeatMark.close` at exit, by a rename (a crash mid-write
leaves the old mark). A pulse whose clock was set back is
refused until it passes the mark; the log at start names the file, so an operator can
delete it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from edge.config_file import FileRefused
from edge.errors import FrameError
from edge.files import read_regular
from edge.outbox_seq import NO_BOOT
from edge.wire_values import parse_rfc3339

log = logging.getLogger(__name__)

FILE_NAME = "beat.newest"
#: The mark is written again once the newest deadline has moved on this far.
WRITE_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Followed:
    """A signed frame the agent followed: when it was due, its stamp (the HLC's wall second,
    unwrapped), when it arrived (local monotonic), and the boot it arrived in (hex)."""

    deadline: datetime
    stamped: int
    arrived: float
    boot: str

    def to_line(self) -> str:
        deadline = self.deadline.isoformat().replace("+00:00", "Z")
        fields = {"deadline": deadline, "stamped": self.stamped, "arrived": self.arrived}
        return json.dumps({**fields, "boot": self.boot}) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Followed:
        """Raises ValueError (or FrameError for the deadline) saying what is wrong."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        stamped, arrived, boot = data.get("stamped"), data.get("arrived"), data.get("boot")
        if type(stamped) is not int or not isinstance(arrived, int | float):
            raise ValueError("stamped must be an integer and arrived a number")
        if not isinstance(boot, str):
            raise ValueError("boot must be a string")
        return cls(parse_rfc3339("deadline", data.get("deadline")), stamped, float(arrived), boot)


class BeatMark:
    """``beat.newest`` in ``directory`` (None: nothing is kept), for the boot ``boot``."""

    def __init__(self, directory: Path | None, boot: str) -> None:
        self.path = None if directory is None else directory / FILE_NAME
        self.boot = boot
        self._newest: Followed | None = None
        self._written: datetime | None = None
        #: Writes that failed (each kind logged once).
        self.failures = 0
        self._said: set[str] = set()

    def same_boot(self, mark: Followed) -> bool:
        """Whether ``mark`` was made in this boot (never where the system gives no id)."""
        return mark.boot == self.boot and self.boot != NO_BOOT.hex()

    def load(self) -> Followed | None:
        """The mark the last run left, or None (none kept, none yet, or unreadable: said)."""
        if self.path is None:
            return None
        try:
            mark = Followed.from_text(read_regular(self.path, limit=1024).decode("utf-8"))
        except FileRefused as exc:
            if exc.problem != "does not exist":
                log.warning("beat mark %s; replays of older frames are not refused", exc)
            return None
        except (UnicodeDecodeError, ValueError, FrameError) as exc:
            log.warning("beat mark %s is unreadable (%s); it is written anew", self.path, exc)
            return None
        self._newest, self._written = mark, mark.deadline
        log.info(
            "signed beat frames older than the newest this agent followed (due %s%s) are"
            " refused as replays; if the pulse's clock was set back, delete %s",
            mark.deadline.isoformat(),
            "" if self.same_boot(mark) else ", before a reboot",
            self.path,
        )
        return mark

    def note(self, deadline: datetime, stamped: int, arrived: float) -> None:
        """A signed frame due at ``deadline`` was followed (kept in memory only)."""
        if self._newest is None or deadline > self._newest.deadline:
            self._newest = Followed(deadline, stamped, arrived, self.boot)

    def flush(self) -> None:
        """Write the newest once it has moved on by WRITE_EVERY_S since the last write."""
        newest = self._newest
        if newest is not None and (
            self._written is None
            or newest.deadline - self._written >= timedelta(seconds=WRITE_EVERY_S)
        ):
            self._write()

    def close(self) -> None:
        """At exit: keep the newest."""
        if self._newest is not None and self._newest.deadline != self._written:
            self._write()

    def _write(self) -> None:
        if self.path is None or self._newest is None:
            return
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        try:
            tmp.write_text(self._newest.to_line(), "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self.failures += 1
            kind = type(exc).__name__
            if kind not in self._said:
                self._said.add(kind)
                log.warning("cannot keep the beat mark in %s: %s", self.path, exc)
            return
        self._written = self._newest.deadline
