"""edge.client_config: a beat client's options read as the agent's tables, by its reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.client_config import SOURCE, client_config
from edge.config import Config, load_config
from edge.errors import ConfigError

_AGENT_TOML = '[agent]\nid = "bench:prog"\ncluster = "bench"\n'


def _config(**options: object) -> Config:
    return client_config("mqtt://127.0.0.1:1883", "bench", "bench:prog", options)


def _problems(**options: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _config(**options)
    assert info.value.source == SOURCE
    return list(info.value.problems)


def test_the_options_reach_the_reader_as_tables_not_as_toml_text(tmp_path: Path) -> None:
    # DEL may not stand in a TOML string: only tables handed over as they are keep it.
    odd = tmp_path / "out\x7fbox"
    config = client_config(
        "mqtt://127.0.0.1:1883",
        "bench",
        "bench:prog",
        {"outbox": {"directory": odd}, "status": {"every": 4}, "broker": {"username": "u"}},
    )
    assert config.outbox.directory == odd
    assert (config.status.every, config.broker.username) == (4, "u")
    assert config.profile.pin_factory == "mock" and config.profile.devices == {}
    assert config.source == SOURCE


def test_a_bad_value_is_worded_as_in_agent_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_AGENT_TOML + "[status]\nevery = 0\n[guard]\ncpu_enter = 150\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert _problems(status={"every": 0}, guard={"cpu_enter": 150}) == list(info.value.problems)


def test_a_value_toml_cannot_hold_is_named() -> None:
    assert _problems(status={"every": {"a": 1}}, sync={"x": [1, None]}) == [
        "status.every: must be a string, number, boolean or list of them, got dict",
        "sync.x[1]: must be a string, number, boolean or list of them, got NoneType",
    ]


def test_the_digest_follows_the_options() -> None:
    four = _config(status={"every": 4})
    again = _config(status={"every": 4})
    eight = _config(status={"every": 8})
    assert four.digest == again.digest != eight.digest
