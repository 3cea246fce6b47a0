"""The agent's running totals (frames, actions, claims, reloads), shared by the loop's parts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counters:
    frames: int = 0
    frames_bad: int = 0
    bar_reports: int = 0
    bar_reports_bad: int = 0
    fired: int = 0
    missed: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    safe_states: int = 0
    claims: int = 0
    claims_acked: int = 0
    reloads: int = 0
    reload_errors: int = 0
