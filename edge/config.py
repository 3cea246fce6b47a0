"""The agent's one frozen config, loaded from TOML with every problem reported at once.

A config file holds the agent's own sections and, directly or through ``agent.profile``,
a hardware profile (``[gpio]``, ``[devices.*]``, ``[[score]]``)::

    [agent]
    id = "bench:pi-01"          # StatusClaim agent_id
    cluster = "bench"           # the cluster_id to follow
    profile = "hw/bench.toml"   # optional; relative to this file
    [broker]
    url = "mqtt://127.0.0.1:1883"

Each section is checked by the module that owns it (``edge.profile``, ``edge.score``,
``edge.sync``, ``edge.guard``, ``edge.status``); this module reads the files, checks
``[agent]``, ``[broker]`` and ``[outbox]`` (whose :class:`OutboxConfig` lives here, so the
core imports no adapter), and gathers every problem into one
:class:`~edge.errors.ConfigError`. Keys with a type and a range are read by
:mod:`edge.settings`, which words every problem alike. It also holds the reload rules
(:func:`apply_reload`): which settings a reload applies at the next beat boundary and which
wait for a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from edge.errors import ConfigError, ConfigProblems
from edge.guard import GuardConfig, parse_guard
from edge.profile import Profile, parse_profile
from edge.score import Score, parse_score
from edge.settings import Section, check_order, flag, integer, number, pathname, text
from edge.status import StatusConfig, parse_status
from edge.sync import SyncConfig, parse_sync

_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_CLUSTER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOPIC_PREFIX = re.compile(r"[^#+\s]+")
_PROFILE_SECTIONS = ("gpio", "devices", "score")
_KNOWN_SECTIONS = frozenset(
    ("agent", "broker", "sync", "guard", "status", "outbox", *_PROFILE_SECTIONS)
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``[agent]``: who we are and what we follow."""

    id: str
    cluster: str
    topic_prefix: str = "backbeat"
    #: Once the follower says the beat is lost (``sync.lost_after_s`` of silence) the agent
    #: keeps firing on its free-running model this long, then drives every output to its
    #: safe state and stops until the beat returns.
    safe_after_lost_s: float = 60.0
    #: Process-wide sampling period of the probe (seconds; CPU, memory, temperature).
    sample_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[broker]``: where the broker is and how to reach it."""

    url: str = "mqtt://127.0.0.1:1883"
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    client_id: str | None = None
    username: str | None = None
    #: File holding the password (a systemd credential); never the password itself.
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 15
    reconnect_min_s: float = 0.25
    #: Cap of the jittered exponential reconnect backoff; raise it for large fleets.
    reconnect_max_s: float = 2.0
    #: MQTT 5 will delay: a reboot faster than this leaves no stale ``offline``.
    will_delay_s: int = 10
    #: Bounded hand-over queue between the network thread and the loop.
    inbox_size: int = 1000


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """``[outbox]``: where and how much of the claim backlog :mod:`edge.outbox` stores.

    ``directory``: the segment directory (created if missing); ``None`` = not given, the
    agent picks the default place (``edge.agent.outbox_config_for``).
    ``memory``: keep claims in memory only (the seq high-water file still goes to the
    directory, so seq numbers never repeat).
    ``max_bytes`` / ``max_count``: bounds of the pending queue (oldest dropped past them).
    ``fsync_every`` / ``fsync_interval_s``: the fsync policy (see :mod:`edge.outbox`).
    ``segment_bytes``: size after which a new segment is started.
    ``retry_interval_s``: how often a degraded outbox tries the disk again.
    """

    directory: Path | None
    memory: bool = False
    max_bytes: int = 4 * 1024 * 1024
    max_count: int = 10_000
    fsync_every: int = 10
    fsync_interval_s: float = 1.0
    segment_bytes: int = 256 * 1024
    retry_interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    agent: AgentConfig
    broker: BrokerConfig
    profile: Profile
    score: Score
    sync: SyncConfig
    guard: GuardConfig
    status: StatusConfig
    outbox: OutboxConfig
    #: Where it came from and a hash of its bytes (reported in every status claim).
    source: str
    digest: str


#: What a reload does not apply: the link, the outbox, the follower and the topics were
#: built from these and live as long as the process. The rest (the score, the devices,
#: [guard], [status], the other [agent] settings) applies at the next beat boundary.
RESTART_ONLY_SECTIONS = ("broker", "outbox", "sync")
RESTART_ONLY_AGENT = ("id", "cluster", "topic_prefix")


def apply_reload(new: Config, old: Config) -> tuple[Config, list[str]]:
    """The config a reload runs with: ``new``, but with ``old``'s values of what only a
    restart changes; and the names of those that differ (``"[sync]"``, ``"agent.id"``...),
    kept back until the next restart (empty when none)."""
    kept = [
        f"[{name}]" for name in RESTART_ONLY_SECTIONS if getattr(new, name) != getattr(old, name)
    ]
    kept += [
        f"agent.{name}"
        for name in RESTART_ONLY_AGENT
        if getattr(new.agent, name) != getattr(old.agent, name)
    ]
    if not kept:
        return new, kept
    agent = dataclasses.replace(
        new.agent, **{name: getattr(old.agent, name) for name in RESTART_ONLY_AGENT}
    )
    merged = dataclasses.replace(
        new, agent=agent, **{name: getattr(old, name) for name in RESTART_ONLY_SECTIONS}
    )
    return merged, kept


def _table(raw: Mapping[str, object], key: str, problems: ConfigProblems) -> Mapping[str, object]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        problems.add(key, f"must be a table, got {value!r}")
        return {}
    return value


_AGENT = Section(
    AgentConfig,
    (number("safe_after_lost_s", 0.0), number("sample_interval_s", 0.05)),
    also_known=("id", "cluster", "profile", "topic_prefix"),
)
_BROKER = Section(
    BrokerConfig,
    (
        text("client_id"),
        text("username"),
        integer("keepalive_s", 5),
        number("reconnect_min_s", 0.01),
        number("reconnect_max_s", 0.01),
        integer("will_delay_s", 0),
        integer("inbox_size", 1),
    ),
    also_known=("url", "password_file", "ca_file", "cert_file", "key_file", "protocol"),
)
_OUTBOX = Section(
    OutboxConfig,
    (
        pathname("directory", default=None),
        flag("memory"),
        integer("max_bytes", 1024),
        integer("max_count", 1),
        integer("fsync_every", 0),
        number("fsync_interval_s", 0.0),
        integer("segment_bytes", 256),
        number("retry_interval_s", 0.001),
    ),
)


def _path(
    table: Mapping[str, object],
    key: str,
    base: Path,
    where: str,
    problems: ConfigProblems,
    must_exist: bool = True,
) -> Path | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.add(f"{where}.{key}", f"must be a file path, got {value!r}")
        return None
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    if must_exist and not path.is_file():
        problems.add(f"{where}.{key}", f"file {str(path)!r} does not exist")
    return path


def _agent(raw: Mapping[str, object], problems: ConfigProblems) -> AgentConfig:
    table = _table(raw, "agent", problems)
    agent_id = table.get("id")
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        problems.add(
            "agent.id", f"is required and must match [a-zA-Z0-9_:-]{{1,128}}, got {agent_id!r}"
        )
        agent_id = "invalid"
    cluster = table.get("cluster")
    if not isinstance(cluster, str) or not _CLUSTER_ID.fullmatch(cluster):
        problems.add(
            "agent.cluster", f"is required and must match [a-zA-Z0-9_-]{{1,64}}, got {cluster!r}"
        )
        cluster = "invalid"
    prefix = table.get("topic_prefix", "backbeat")
    if not isinstance(prefix, str) or not _TOPIC_PREFIX.fullmatch(prefix):
        problems.add("agent.topic_prefix", f"must be a topic without wildcards, got {prefix!r}")
        prefix = "backbeat"
    return _AGENT.read(
        table, problems, "agent", id=agent_id, cluster=cluster, topic_prefix=prefix.rstrip("/")
    )


def parse_broker(
    table: Mapping[str, object], problems: ConfigProblems, base: Path, where: str = "broker"
) -> BrokerConfig:
    """Check ``[broker]``; file paths are relative to ``base``."""
    url = table.get("url", "mqtt://127.0.0.1:1883")
    host, port, tls = "127.0.0.1", 1883, False
    if not isinstance(url, str):
        problems.add(f"{where}.url", f"must be a string like mqtt://host:1883, got {url!r}")
        url = "mqtt://127.0.0.1:1883"
    else:
        try:
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError("scheme must be mqtt:// or mqtts:// with a host")
            if parts.password is not None:
                raise ValueError("a password in the URL would leak into logs; use password_file")
            tls = parts.scheme == "mqtts"
            host = parts.hostname
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            problems.add(f"{where}.url", f"{exc}, got {url!r}")
    protocol = str(table.get("protocol", "5"))
    if protocol not in ("5", "3.1.1"):
        problems.add(f"{where}.protocol", f'must be "5" or "3.1.1", got {protocol!r}')
        protocol = "5"
    cert = _path(table, "cert_file", base, where, problems)
    key_file = _path(table, "key_file", base, where, problems)
    if (cert is None) != (key_file is None):
        problems.add(where, "cert_file and key_file go together (mutual TLS needs both)")
    broker = _BROKER.read(
        table,
        problems,
        where,
        url=url,
        host=host,
        port=port,
        tls=tls,
        password_file=_path(table, "password_file", base, where, problems, must_exist=False),
        ca_file=_path(table, "ca_file", base, where, problems),
        cert_file=cert,
        key_file=key_file,
        protocol="5" if protocol == "5" else "3.1.1",
    )
    check_order(
        broker, "reconnect_min_s", "reconnect_max_s", problems, where, strict=False, blame="upper"
    )
    return broker


def parse_outbox(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "outbox"
) -> OutboxConfig:
    """Read the ``[outbox]`` TOML section; every problem goes to ``problems``.

    Keys: ``directory`` (string path; absent = the default place), ``memory`` (true: claims
    in memory only; default false), ``max_bytes`` (integer >= 1024,
    default 4 MiB), ``max_count`` (integer >= 1, default 10000), ``fsync_every`` (integer
    >= 0, default 10), ``fsync_interval_s`` (number >= 0, default 1.0), ``segment_bytes``
    (integer >= 256, default 256 KiB), ``retry_interval_s`` (number >= 0.001, default 30).
    A bad value is reported and its default used; unknown keys are reported. Segments
    never exceed ``max_bytes``: a larger ``segment_bytes`` given is a problem, and the
    default one is cut to fit without a word.
    """
    config = _OUTBOX.read(raw, problems, where)
    if config.segment_bytes > config.max_bytes:
        given, _ = _OUTBOX.fields["segment_bytes"].accept(raw.get("segment_bytes"))
        if given:  # a default (or a bad value, already said) is cut without a word
            check_order(
                config, "segment_bytes", "max_bytes", problems, where, strict=False, blame="lower"
            )
        config = replace(config, segment_bytes=config.max_bytes)
    return config


def _read_toml(path: Path, problems: ConfigProblems, where: str) -> dict[str, object] | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(where, f"cannot read {str(path)!r}: {exc.strerror or exc}")
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.add(where, f"{str(path)!r} is not UTF-8 text: {exc.reason} at byte {exc.start}")
    except tomllib.TOMLDecodeError as exc:
        problems.add(where, f"{str(path)!r} is not valid TOML: {exc}")
    return None


def load_config(path: str | Path) -> Config:
    """Load and check a config file (and the profile it names).

    Raises ConfigError listing every problem found; nothing is half-applied.
    """
    path = Path(path)
    problems = ConfigProblems(str(path))
    raw = _read_toml(path, problems, "config")
    if raw is None:
        raise ConfigError(problems.items, str(path))
    digest = hashlib.sha256()
    digest.update(path.read_bytes())
    for key in raw:
        if key not in _KNOWN_SECTIONS:
            problems.add(
                key, f"is not a known section (known: {', '.join(sorted(_KNOWN_SECTIONS))})"
            )
    base = path.parent
    agent = _agent(raw, problems)

    # The hardware profile may live in its own file; the config's own sections win.
    merged: dict[str, object] = {}
    agent_table = _table(raw, "agent", ConfigProblems())
    profile_ref = agent_table.get("profile")
    if profile_ref is not None:
        profile_path = Path(str(profile_ref))
        if not profile_path.is_absolute():
            profile_path = base / profile_path
        profile_raw = _read_toml(profile_path, problems, "agent.profile")
        if profile_raw is not None:
            digest.update(profile_path.read_bytes())
            for key in profile_raw:
                if key not in _PROFILE_SECTIONS:
                    problems.add(
                        f"agent.profile ({profile_path.name}): {key}",
                        "a profile holds only gpio, devices and score",
                    )
            merged.update({k: v for k, v in profile_raw.items() if k in _PROFILE_SECTIONS})
    merged.update({k: v for k, v in raw.items() if k in _PROFILE_SECTIONS})

    profile = parse_profile(merged, problems)
    score = parse_score(merged.get("score", []), profile, problems)
    config = Config(
        agent=agent,
        broker=parse_broker(_table(raw, "broker", problems), problems, base),
        profile=profile,
        score=score,
        sync=parse_sync(_table(raw, "sync", problems), problems),
        guard=parse_guard(_table(raw, "guard", problems), problems),
        status=parse_status(_table(raw, "status", problems), problems),
        outbox=parse_outbox(_table(raw, "outbox", problems), problems),
        source=str(path),
        digest=digest.hexdigest()[:16],
    )
    problems.raise_if_any()
    return config


def load_profile(path: str | Path) -> tuple[Profile, Score]:
    """Load a bare hardware profile file (``[gpio]``, ``[devices]``, ``[[score]]``)."""
    path = Path(path)
    problems = ConfigProblems(str(path))
    raw = _read_toml(path, problems, "profile")
    if raw is None:
        raise ConfigError(problems.items, str(path))
    profile = parse_profile(raw, problems)
    score = parse_score(raw.get("score", []), profile, problems)
    problems.raise_if_any()
    return profile, score
