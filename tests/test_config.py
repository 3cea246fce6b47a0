"""load_config: every section's numbers read by the one settings reader, worded alike."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from edge.config import BrokerConfig, OutboxConfig, config_from_tables, load_config
from edge.errors import ConfigError

HEAD = '[agent]\nid = "bench:pi-01"\ncluster = "bench"\n'


def load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "agent.toml"
    path.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return list(info.value.problems)


def test_the_numbers_of_every_section_read_as_given(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        HEAD + "safe_after_lost_s = 5\nsample_interval_s = 0.05\n"
        "[broker]\nkeepalive_s = 30\nreconnect_min_s = 1\nreconnect_max_s = 1\n"
        'will_delay_s = 0\ninbox_size = 10\nclient_id = "pi"\n'
        '[outbox]\ndirectory = "spool"\nmax_bytes = 2048\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert (config.agent.safe_after_lost_s, config.agent.sample_interval_s) == (5.0, 0.05)
    assert isinstance(config.agent.safe_after_lost_s, float)
    broker = config.broker
    assert (broker.keepalive_s, broker.will_delay_s, broker.inbox_size) == (30, 0, 10)
    assert (broker.reconnect_min_s, broker.reconnect_max_s, broker.client_id) == (1.0, 1.0, "pi")
    assert broker.username is None and BrokerConfig().keepalive_s == 15
    # A segment may not outgrow the backlog: the default one is cut to fit, silently.
    assert config.outbox == OutboxConfig(Path("spool"), max_bytes=2048, segment_bytes=2048)


def test_nan_and_infinity_are_refused_in_every_section(tmp_path: Path) -> None:
    problems = load(
        tmp_path,
        "safe_after_lost_s = nan\nsample_interval_s = inf\n"
        "[broker]\nreconnect_max_s = -inf\n"
        "[guard]\ncpu_enter = nan\n"
        "[outbox]\nfsync_interval_s = inf\nretry_interval_s = nan\n",
    )
    assert problems == [
        "agent.safe_after_lost_s: must be a number between 0 and 3600, got nan",
        "agent.sample_interval_s: must be a number between 0.05 and 60, got inf",
        "broker.reconnect_max_s: must be a number between 0.01 and 3600, got -inf",
        "guard.cpu_enter: must be a number between 0 and 100, got nan",
        "outbox.fsync_interval_s: must be a number between 0 and 3600, got inf",
        "outbox.retry_interval_s: must be a number between 0.001 and 3600, got nan",
    ]


def test_integers_are_integers_and_a_boolean_is_not_one(tmp_path: Path) -> None:
    problems = load(
        tmp_path,
        "[broker]\nkeepalive_s = 15.5\nwill_delay_s = true\ninbox_size = 1e3\n"
        "[status]\nevery = 1.0\n[outbox]\nmax_count = false\n",
    )
    assert problems == [
        "broker.keepalive_s: must be an integer between 5 and 65535, got 15.5",
        "broker.will_delay_s: must be an integer between 0 and 4294967295, got true",
        "broker.inbox_size: must be an integer between 1 and 1000000, got 1000.0",
        "status.every: must be an integer between 1 and 1000000, got 1.0",
        "outbox.max_count: must be an integer between 1 and 1000000000, got false",
    ]


def test_every_problem_is_listed_at_once_with_its_full_key(tmp_path: Path) -> None:
    problems = load(
        tmp_path,
        "sample_interval_s = 0.01\nsafe_after = 3\n"
        '[broker]\nclient_id = ""\nreconnect_min_s = 1.0\nreconnect_max_s = 0.5\n'
        '[status]\nmode = "sometimes"\n'
        "[outbox]\nmax_bytes = 2048\nsegment_bytes = 4096\n",
    )
    assert problems[0] == "agent.sample_interval_s: must be a number between 0.05 and 60, got 0.01"
    assert problems[1].startswith(
        "agent.safe_after: is not a known key (known: cluster, hlc_max_ahead_s, id, profile, "
    )
    assert problems[2:] == [
        "broker.client_id: must be a non-empty string, got ''",
        "broker.reconnect_max_s: must not be below reconnect_min_s (1), got 0.5",
        'status.mode: must be one of "every", "on_change", got \'sometimes\'',
        "outbox.segment_bytes: must not be above max_bytes (2048), got 4096",
    ]


def test_a_problem_in_the_profiles_own_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "bench.toml").write_text(
        '[gpio]\npin_factory = "mock"\n[devices.led]\nkind = "led"\npin = 17\n'
        '[devices.lamp]\nkind = "lamp"\npin = 18\n',
        encoding="utf-8",
    )
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nid = "a"\ncluster = "c"\nprofile = "bench.toml"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1883"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lamp = [p for p in info.value.problems if "devices.lamp" in p]
    assert lamp and all(p.startswith("agent.profile (bench.toml): devices.lamp") for p in lamp)
    # A section the config file itself holds is named as before.
    path.write_text(
        path.read_text(encoding="utf-8") + '[devices.bell]\nkind = "bell"\npin = 22\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith("devices.bell") for p in info.value.problems), info.value.problems


def test_tables_already_parsed_make_the_config_the_file_makes(tmp_path: Path) -> None:
    (tmp_path / "bench.toml").write_text('[gpio]\npin_factory = "mock"\n', encoding="utf-8")
    text = HEAD + 'profile = "bench.toml"\n[status]\nevery = 4\n[outbox]\ndirectory = "q"\n'
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    raw = tomllib.loads(text)
    data = text.encode("utf-8")
    config = config_from_tables(raw, tmp_path, source=str(path), data=data)
    assert config == load_config(path)
    assert config.status.every == 4 and config.profile.pin_factory == "mock"
    # the digest: the tables' bytes, then the profile file's
    profile = (tmp_path / "bench.toml").read_bytes()
    assert config.digest == hashlib.sha256(data + profile).hexdigest()[:16]
    # the same problems, in the same words, named by the source given
    raw["status"] = {"every": 0}
    with pytest.raises(ConfigError) as info:
        config_from_tables(raw, tmp_path, source="options", data=b"")
    assert info.value.source == "options"
    assert list(info.value.problems) == load(tmp_path, "[status]\nevery = 0\n")


def test_a_profile_given_as_the_config_is_told_for_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text('[devices.led]\nkind = "output"\npin = 17\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "it looks like a profile" in text and 'agent.profile = "FILE"' in text
    path.write_text('[agent]\ncluster = "bench"\n', encoding="utf-8")  # a config, id missing
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "agent.id" in str(info.value) and "looks like a profile" not in str(info.value)
