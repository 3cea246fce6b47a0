"""The reload rules: which settings a reload applies at the next beat and which wait for
a restart (``edge.config.apply_reload``), on configs loaded from plain TOML."""

from __future__ import annotations

from pathlib import Path

from edge.config import Config, apply_reload, load_config
from edge.testing.profiles import MOCK_LED, rule

BASE = (
    """
[agent]
id = "bench:pi-01"
cluster = "bench"
safe_after_lost_s = 2.0
[broker]
url = "mqtt://127.0.0.1:1883"
[sync]
lost_after_s = 3.0
[guard]
[status]
"""
    + MOCK_LED
    + rule("led", "toggle", offset=0.25)
)


def _load(tmp_path: Path, text: str, name: str = "agent.toml") -> Config:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_a_reload_of_the_same_file_keeps_nothing_back(tmp_path: Path) -> None:
    old = _load(tmp_path, BASE)
    new = _load(tmp_path, BASE, "again.toml")
    merged, kept = apply_reload(new, old)
    assert kept == [] and merged is new


def test_beat_boundary_settings_are_applied(tmp_path: Path) -> None:
    old = _load(tmp_path, BASE)
    text = (
        BASE.replace("offset = 0.25", "offset = 0.5")
        .replace("safe_after_lost_s = 2.0", "safe_after_lost_s = 5.0")
        .replace("pin = 17", "pin = 22")
    )
    new = _load(tmp_path, text, "new.toml")
    merged, kept = apply_reload(new, old)
    assert kept == [] and merged is new
    assert merged.score != old.score and merged.profile.devices["led"].pin == 22
    assert merged.agent.safe_after_lost_s == 5.0


def test_restart_only_settings_keep_their_running_values_and_are_named(tmp_path: Path) -> None:
    old = _load(tmp_path, BASE)
    text = (
        BASE.replace('id = "bench:pi-01"', 'id = "bench:pi-99"')
        .replace('cluster = "bench"', 'cluster = "stage"\ntopic_prefix = "bb"')
        .replace("lost_after_s = 3.0", "lost_after_s = 4.0")
        .replace("127.0.0.1:1883", "127.0.0.1:1884")
        .replace("[status]", "[outbox]\nmax_count = 50\n[status]")
        .replace("safe_after_lost_s = 2.0", "safe_after_lost_s = 5.0")
        .replace("offset = 0.25", "offset = 0.5")
    )
    new = _load(tmp_path, text, "new.toml")
    merged, kept = apply_reload(new, old)
    assert kept == [
        "[broker]",
        "[outbox]",
        "[sync]",
        "agent.id",
        "agent.cluster",
        "agent.topic_prefix",
    ]
    assert (merged.broker, merged.outbox, merged.sync) == (old.broker, old.outbox, old.sync)
    assert (merged.agent.id, merged.agent.cluster, merged.agent.topic_prefix) == (
        "bench:pi-01",
        "bench",
        "backbeat",
    )
    # and the rest of the same reload is applied
    assert merged.agent.safe_after_lost_s == 5.0 and merged.score == new.score
    assert merged.digest == new.digest and merged.source == new.source
