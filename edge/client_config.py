"""A beat client's options as the agent's config: the same reader, the same checks and words.

:func:`client_config` writes the options (tables named as the agent's TOML sections) out as
TOML with mock pins and no devices, and reads them with :func:`edge.config.load_config`, so
a client's settings are checked and worded exactly as in ``agent.toml``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from edge.config import Config, load_config
from edge.errors import ConfigError

#: Where the options' problems are said to be.
SOURCE = "BeatClient options"
#: The agent's sections a client takes as options (no devices, no score).
SECTIONS = ("agent", "broker", "sync", "guard", "status", "outbox", "security")
#: Settings given as BeatClient's own arguments (or refused: a client has no profile).
_FIXED = {("agent", "id"), ("agent", "cluster"), ("agent", "profile"), ("broker", "url")}


def toml_value(value: object, where: str, problems: list[str]) -> str | None:
    """``value`` as a TOML value, or None (with a problem) for what TOML cannot say."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"  # refused by the section's reader, in its own words
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string without ASCII escaping is a TOML basic string.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        items = [toml_value(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
        if any(item is None for item in items):
            return None
        return "[" + ", ".join(item for item in items if item is not None) + "]"
    problems.append(
        f"{where}: must be a string, number, boolean or list of them, got {type(value).__name__}"
    )
    return None


def client_config(
    broker_url: str, cluster: str, agent_id: str, options: Mapping[str, object]
) -> Config:
    """The agent's config for a client: ``[agent]`` id and cluster, ``[broker]`` url, mock
    pins and no devices, and ``options`` (tables named as the agent's sections), read by
    the agent's own reader, so every setting is checked and worded as in ``agent.toml``.
    Raises ConfigError listing every problem."""
    problems: list[str] = []
    tables: dict[str, dict[str, object]] = {
        "agent": {"id": agent_id, "cluster": cluster},
        "broker": {"url": broker_url},
    }
    for name, table in options.items():
        if name not in SECTIONS:
            problems.append(
                f"{name}: is not an option of BeatClient (options: {', '.join(SECTIONS)}; "
                "a client drives no devices and plays no score)"
            )
            continue
        if not isinstance(table, Mapping):
            problems.append(f"{name}: must be a table of settings (a dict), got {table!r}")
            continue
        for key, value in table.items():
            if (name, key) in _FIXED:
                problems.append(f"{name}.{key}: is not an option of BeatClient")
                continue
            tables.setdefault(name, {})[str(key)] = value
    lines = ["[gpio]", 'pin_factory = "mock"']
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            text = toml_value(value, f"{name}.{key}", problems)
            if text is not None:
                lines.append(f"{json.dumps(key)} = {text}")
    if problems:
        raise ConfigError(problems, SOURCE)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    return load_config(Path(SOURCE), read=lambda path: data)
