"""The demo's live terminal view: beat and phase, outputs, sync, guard, lateness, and
the values python devices returned."""

from __future__ import annotations

import statistics
import sys
from typing import IO

from edge.runner import Runner

_CLEAR = "\x1b[H\x1b[2J"


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "ON " if value else "off"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(runner: Runner, now: float, banner: str = "") -> str:
    """One screenful describing the runner's state at ``now`` (``banner`` under the title:
    where the demo's broker is)."""
    f = runner.follower
    pos = f.position(now)
    lines = ["backbeat-edge demo (Ctrl-C to stop)", *banner.splitlines(), ""]
    if pos is None:
        lines.append("waiting for the first beat frame ...")
    else:
        bar = f.bar_position(pos.beat_index)
        bar_text = "-" if bar is None else str(bar + 1)
        meter = "#" * int(pos.fraction * 20)
        lines.append(
            f"beat {pos.beat_index:>6}  bar pos {bar_text:>3}  phase {pos.phase:<8} [{meter:<20}]"
        )
    tempo = f.tempo_bpm
    lines.append(
        f"sync {f.state.value:<13} error bound +/-{f.error_bound_s * 1000:.3f} ms  "
        f"tempo {_fmt(tempo)} BPM  rate {f.rate_ppm:+.1f} ppm  "
        f"drift {f.tempo_drift_ms(now):+.2f} ms"
    )
    verdict = runner.guard.verdict
    late = list(runner.recent_late_ms)
    late_text = (
        "-" if not late else (f"p50 {statistics.median(late):.3f} ms  max {max(late):.3f} ms")
    )
    lines.append(f"guard {verdict.level.value} ({verdict.reason})  lateness {late_text}")
    c = runner.counters
    lines.append(
        f"fired {c.fired}  missed {c.missed}  shed {sum(c.shed.values())}  "
        f"dropped {sum(c.dropped.values())}  bad frames {c.frames_bad}  "
        f"claims {c.claims} (acked {c.claims_acked})"
    )
    lines += ["", "outputs:"]
    isolated = runner.hardware.isolated
    for name, value in sorted(runner.hardware.states().items()):
        if name in runner.config.profile.devices and (
            runner.config.profile.devices[name].family == "python"
        ):
            continue  # shown with its values below
        lines.append(f"  {name:<16} {'ISOLATED' if name in isolated else _fmt(value)}")
    lines += python_lines(runner)
    return "\n".join(lines) + "\n"


def python_lines(runner: Runner) -> list[str]:
    """The python devices: each one's last returned values and entry lateness, and what
    became of the calls (none without python devices)."""
    hardware = runner.hardware
    if not hardware.has_calls:
        return []
    counts = hardware.call_counts()
    values = hardware.call_values()
    entry = hardware.call_entry_late_ms()
    trouble = "  ".join(f"{k} {v}" for k, v in counts.items() if v and k != "done")
    lines = ["", f"python calls: done {counts.get('done', 0)}  {trouble}".rstrip()]
    for name, spec in sorted(runner.config.profile.devices.items()):
        if spec.family != "python":
            continue
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(values.get(name, {}).items()))
        late = f"  (entered +{entry[name]:.3f} ms)" if name in entry else ""
        lines.append(f"  {name:<16} {shown or '-'}{late}")
    return lines


class TerminalView:
    """Redraws the screen (or prints a line per call with ``plain``, which leaves the
    ``banner`` to its caller: printed once, it stays on the terminal)."""

    def __init__(self, out: IO[str] = sys.stdout, plain: bool = False, banner: str = "") -> None:
        self.out = out
        self.plain = plain
        self.banner = banner
        self._last_beat: int | None = None

    def __call__(self, runner: Runner, now: float) -> None:
        if self.plain:
            if runner.last_beat != self._last_beat:
                self._last_beat = runner.last_beat
                self.out.write(runner.status_line() + "\n")
                self.out.flush()
            return
        self.out.write(_CLEAR + render(runner, now, self.banner))
        self.out.flush()
