"""A beat client's options as the agent's config: the same reader, the same checks and words.

:func:`client_config` takes the options (tables named as the agent's TOML sections), adds
mock pins and no devices, and hands the tables to :func:`edge.config.config_from_tables`,
the reader of ``agent.toml``, so a client's settings are checked and worded exactly as
there. A value must be one TOML can hold (a string, number, boolean or list of them), as
in ``agent.toml``; a path or a tuple is taken as TOML would read it (a string, a list).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from edge.config import Config, config_from_tables
from edge.errors import ConfigError

#: Where the options' problems are said to be.
SOURCE = "BeatClient options"
#: The agent's sections a client takes as options (no devices, no score).
SECTIONS = ("agent", "broker", "sync", "guard", "status", "outbox", "security")
#: Settings given as BeatClient's own arguments (or refused: a client has no profile).
_FIXED = {("agent", "id"), ("agent", "cluster"), ("agent", "profile"), ("broker", "url")}


def toml_value(value: object, where: str, problems: list[str]) -> object | None:
    """``value`` as TOML would read it back (a path as a string, a tuple as a list), or
    None (with a problem) for what TOML cannot say."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)  # nan and inf too: the section's reader refuses them, in its words
    if isinstance(value, str | Path):
        return str(value)
    if isinstance(value, list | tuple):
        items = [toml_value(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
        return None if any(item is None for item in items) else items
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
        "gpio": {"pin_factory": "mock"},
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
            plain = toml_value(value, f"{name}.{key}", problems)
            if plain is not None:
                tables.setdefault(name, {})[str(key)] = plain
    if problems:
        raise ConfigError(problems, SOURCE)
    # The digest (reported in every claim) hashes the options as they were read.
    data = json.dumps(tables, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return config_from_tables(tables, Path(SOURCE).parent, source=SOURCE, data=data)
