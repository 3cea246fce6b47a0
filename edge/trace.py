"""The action trace: one typed row per planned action's fate, written as JSON lines.

``backbeat-edge run --trace FILE`` (and the end-to-end tests) read it: a row says which
action of which beat was due when, and whether it fired (when, how late, how long), was
shed by the guard, dropped by its device or missed its deadline, and how sure the agent
was of the beat at that moment: the follower's error bound (``error_bound_ms``) and sync
state (``sync_state``) when it fired (or was shed, or found overdue). Rows keep the raw
times; rounding happens only when a row is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from edge.score import ScheduledAction


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One action's fate. Times are local monotonic seconds.

    ``fired_mono`` is None when it did not fire (shed, missed); ``late_ms`` is None when it
    was shed; ``shed`` names the guard's reason, ``dropped`` the device's (or
    ``"deadline_passed"`` with ``missed``). ``error_bound_ms`` and ``sync_state`` are the
    follower's at that moment (None when the caller did not say).
    """

    beat_index: int
    device: str
    do: str
    rule: int
    essential: bool
    intended_mono: float
    deadline_mono: float
    fired_mono: float | None
    late_ms: float | None
    duration_ms: float
    ok: bool
    shed: str | None = None
    dropped: str | None = None
    missed: bool = False
    error_bound_ms: float | None = None
    sync_state: str | None = None

    @classmethod
    def applied(
        cls,
        sa: ScheduledAction,
        at: float,
        duration_s: float,
        ok: bool,
        dropped: str | None,
        *,
        bound_ms: float | None = None,
        sync_state: str | None = None,
    ) -> TraceRow:
        """``sa`` was handed to the hardware at ``at`` and took ``duration_s``."""
        return cls._of(
            sa,
            at,
            (at - sa.at) * 1000.0,
            duration_s * 1000.0,
            ok,
            dropped=dropped,
            bound_ms=bound_ms,
            sync_state=sync_state,
        )

    @classmethod
    def missed_at(
        cls,
        sa: ScheduledAction,
        at: float,
        *,
        bound_ms: float | None = None,
        sync_state: str | None = None,
    ) -> TraceRow:
        """``sa`` was due at ``at``, after its deadline, so it was not applied."""
        return cls._of(
            sa,
            None,
            (at - sa.at) * 1000.0,
            0.0,
            False,
            dropped="deadline_passed",
            missed=True,
            bound_ms=bound_ms,
            sync_state=sync_state,
        )

    @classmethod
    def shed_by(
        cls,
        sa: ScheduledAction,
        reason: str,
        *,
        bound_ms: float | None = None,
        sync_state: str | None = None,
    ) -> TraceRow:
        """The guard shed ``sa`` for ``reason``."""
        return cls._of(
            sa, None, None, 0.0, False, shed=reason, bound_ms=bound_ms, sync_state=sync_state
        )

    @classmethod
    def _of(
        cls,
        sa: ScheduledAction,
        fired: float | None,
        late_ms: float | None,
        duration_ms: float,
        ok: bool,
        *,
        shed: str | None = None,
        dropped: str | None = None,
        missed: bool = False,
        bound_ms: float | None = None,
        sync_state: str | None = None,
    ) -> TraceRow:
        return cls(
            beat_index=sa.beat_index,
            device=sa.action.device,
            do=sa.action.do,
            rule=sa.rule,
            essential=sa.action.essential,
            intended_mono=sa.at,
            deadline_mono=sa.deadline,
            fired_mono=fired,
            late_ms=late_ms,
            duration_ms=duration_ms,
            ok=ok,
            shed=shed,
            dropped=dropped,
            missed=missed,
            error_bound_ms=bound_ms,
            sync_state=sync_state,
        )

    def line(self) -> str:
        """The row as one compact JSON object (no newline)."""
        return json.dumps(
            {
                "beat_index": self.beat_index,
                "device": self.device,
                "do": self.do,
                "rule": self.rule,
                "essential": self.essential,
                "intended_mono": round(self.intended_mono, 7),
                "deadline_mono": round(self.deadline_mono, 7),
                "fired_mono": None if self.fired_mono is None else round(self.fired_mono, 7),
                "late_ms": None if self.late_ms is None else round(self.late_ms, 4),
                "duration_ms": round(self.duration_ms, 4),
                "ok": self.ok,
                "shed": self.shed,
                "dropped": self.dropped,
                "missed": self.missed,
                "error_bound_ms": (
                    None
                    if self.error_bound_ms is None or not math.isfinite(self.error_bound_ms)
                    else round(self.error_bound_ms, 4)
                ),
                "sync_state": self.sync_state,
            }
        )


def write_rows(rows: Iterable[TraceRow], out: IO[str]) -> None:
    """Write ``rows`` to ``out`` as JSON lines and flush (nothing at all for no rows)."""
    lines = [row.line() for row in rows]
    if not lines:
        return
    out.write("\n".join(lines) + "\n")
    out.flush()
