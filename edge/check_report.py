"""What ``backbeat-edge check`` says of a config that passed: the agent, devices, rules, plan.

One line each for the config (source, agent, cluster, broker, hash) and what was checked
beyond the file, then the devices (kind, pin, safe state), the score's rules (when they
fire, how essential, the fastest tempo each fits) and, for each tempo asked about, which
rules do not fit. Pure: the lines are returned, the command prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.config import Config

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
        lines.append(
            f"  [{i}] {a.device}.{a.do} every {rule.every} in {rule.phase} +{rule.offset:.2f}"
            f" {'essential' if a.essential else 'optional'} prio {a.priority}; "
            f"fits up to {rule.max_tempo_bpm():.1f} BPM"
        )
    lines.append("plan by tempo:")
    for bpm in tempos:
        problems = config.score.fit(bpm)
        verdict = "all rules fit" if not problems else "; ".join(str(p) for p in problems)
        lines.append(f"  {bpm:>7.1f} BPM: {verdict}")
    return lines
