"""What ``backbeat-edge check`` says of a config that passed: the agent, devices, rules, plan.

One line each for the config (source, agent, cluster, broker, hash) and what was checked
beyond the file, then the devices (kind, pin, safe state), the score's rules (when they
fire, how essential, the fastest tempo each fits) and, for each tempo asked about, which
rules do not fit. Pure: the lines are returned, the command prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.config import Config
from edge.messages import MAX_TEMPO_BPM
from edge.score import Rule

#: The tempos planned for when none are given (BPM).
DEFAULT_TEMPOS = (1.0, 10.0, 60.0, 240.0, 1000.0)


def report(config: Config, checked: str, tempos: Iterable[float]) -> list[str]:
    """The lines ``check`` prints for ``config`` (``checked``: what preflight looked at)."""
    lines = [
        f"{config.source}: OK (agent {config.agent.id}, cluster {config.agent.cluster}, "
        f"broker {config.broker.url}, config hash {config.digest})",
        f"checked: {checked}",
    ]
    devices = config.profile.devices
    factory = config.profile.pin_factory or "(gpiozero default / GPIOZERO_PIN_FACTORY)"
    lines.append(f"pin factory: {factory}; {len(devices)} device(s):")
    for name, spec in devices.items():
        lines.append(f"  {name:<16} {spec.kind:<14} pin {spec.pin}  safe {spec.safe_state}")
    lines.append(f"score: {len(config.score.rules)} rule(s)")
    for i, rule in enumerate(config.score.rules):
        a = rule.action
        value = "" if a.value is None else f" {a.value:g}"
        lines.append(
            f"  [{i}] {a.device}.{a.do}{value} {when(rule)} in {rule.phase} +{rule.offset:.2f}"
            f" {'essential' if a.essential else 'optional'} prio {a.priority}; "
            + (
                "fits every tempo"  # past the schema's 1000 BPM: any frame's
                if rule.max_tempo_bpm() >= MAX_TEMPO_BPM
                else f"fits up to {rule.max_tempo_bpm():.1f} BPM"
            )
        )
    lines.append("plan by tempo:")
    for bpm in tempos:
        problems = config.score.fit(bpm)
        if not problems:
            lines.append(f"  {bpm:>7.1f} BPM: all rules fit")
            continue
        # Such a rule still fires at its time; what it starts (a pulse, a fade, a
        # command) runs on into the next phase.
        count = f"{len(problems)} rule{'s' if len(problems) > 1 else ''}"
        lines.append(
            f"  {bpm:>7.1f} BPM: {count} run past the end of their phase (each still fires"
            " at its time; what it starts runs on into the next phase):"
        )
        lines.extend(f"      {problem}" for problem in problems)
    return lines


def when(rule: Rule) -> str:
    """The beats ``rule`` fires on, in words: every one or every n-th (and from which),
    downbeats only, which beats of the bar, a range of beats."""
    words = ["every beat" if rule.every == 1 else f"every {rule.every} beats"]
    if rule.every > 1 and rule.every_at:
        words.append(f"(at {rule.every_at})")
    if rule.downbeat:
        words.append("on downbeats")
    if rule.bar_beats is not None:
        words.append("on bar beats " + ",".join(str(b) for b in sorted(rule.bar_beats)))
    if rule.from_beat is not None and rule.to_beat is not None:
        words.append(f"in beats {rule.from_beat}-{rule.to_beat}")
    elif rule.from_beat is not None:
        words.append(f"from beat {rule.from_beat}")
    elif rule.to_beat is not None:
        words.append(f"up to beat {rule.to_beat}")
    return " ".join(words)
