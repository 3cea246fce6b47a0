"""Agent profiles (TOML text) for the process tests and the benchmarks, built from one set
of parts: gpiozero's mock pins, the devices on them and the score's rules, so a profile
the tests share is written once and each test says only what is its own."""

from __future__ import annotations

import json

#: gpiozero's mock pins (no GPIO needed).
MOCK_GPIO = '[gpio]\npin_factory = "mock"\n'


def _table(header: str, keys: dict[str, object]) -> str:
    # JSON writes booleans, numbers, strings and lists of them as TOML does.
    return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def device(name: str, kind: str, pin: int, **keys: object) -> str:
    """One ``[devices.NAME]`` table: ``device("relay", "relay", 27, safe_state=0)``."""
    return _table(f"[devices.{name}]", {"kind": kind, "pin": pin, **keys})


def rule(device: str, do: str, **keys: object) -> str:
    """One ``[[score]]`` rule: ``rule("led", "toggle", every=1, essential=True)``."""
    return _table("[[score]]", {"device": device, "do": do, **keys})


#: The mock pins with an LED on GPIO17.
MOCK_LED = MOCK_GPIO + device("led", "led", 17)
#: A relay on GPIO27, to add to MOCK_LED.
RELAY = device("relay", "relay", 27)
#: The LED toggled on every beat, essential.
TOGGLE_EVERY_BEAT = rule("led", "toggle", every=1, essential=True)
#: The profile most process tests run: the mock LED toggled on every beat.
LED_TOGGLE = MOCK_LED + TOGGLE_EVERY_BEAT
#: The two essential toggles (LED then relay, by priority) of the guard's stress runs.
PRIORITY_TOGGLES = rule("led", "toggle", offset=0.2, essential=True, priority=10) + rule(
    "relay", "toggle", offset=0.6, essential=True, priority=5
)
#: Three mock outputs, each toggled once a beat at its own offset in the execute phase:
#: the agent benchmarks' score (scripts/bench_agent.py, scripts/bench_signing.py).
THREE_TOGGLES_OFFSETS = {0: 0.0, 1: 0.25, 2: 0.5}
THREE_TOGGLES = (
    MOCK_GPIO
    + device("a", "output", 17)
    + device("b", "output", 18)
    + device("c", "output", 19)
    + "".join(
        rule(name, "toggle", offset=THREE_TOGGLES_OFFSETS[i], essential=True)
        for i, name in enumerate("abc")
    )
)
