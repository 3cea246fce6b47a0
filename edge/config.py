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
``edge.sync``, ``edge.guard``, ``edge.status``, ``edge.broker_config``, ``edge.trust`` for
``[security]``); :mod:`edge.config_file` reads the files. This module checks ``[agent]``
and ``[outbox]`` (whose :class:`OutboxConfig` lives here, so the core imports no adapter)
and gathers every problem into one :class:`~edge.errors.ConfigError`:
:func:`load_config` from a file, :func:`config_from_tables` from tables already parsed (a
beat client's options). Keys with a type and a range are read by :mod:`edge.settings`,
which words every problem alike. It also holds the reload rules (:func:`apply_reload`):
which settings a reload applies at the next beat boundary and which wait for a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# BrokerConfig, parse_broker and FileRefused are re-exported (they were defined here).
from edge.broker_config import BrokerConfig as BrokerConfig
from edge.broker_config import parse_broker as parse_broker
from edge.config_file import FileRefused as FileRefused
from edge.config_file import Reader, read_checked, read_toml
from edge.errors import ConfigError, ConfigProblems
from edge.guard import GuardConfig, parse_guard
from edge.profile import Profile, parse_profile
from edge.score import Score, parse_score
from edge.settings import Section, check_order, flag, integer, number, pathname
from edge.status import StatusConfig, parse_status
from edge.sync import SyncConfig, parse_sync
from edge.topics import cluster_problem, prefix_problem
from edge.trust import SecurityConfig, parse_security

_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_PROFILE_SECTIONS = ("gpio", "devices", "score")
_KNOWN_SECTIONS = frozenset(
    ("agent", "broker", "sync", "guard", "status", "outbox", "security", *_PROFILE_SECTIONS)
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``[agent]``: who we are and what we follow."""

    id: str
    cluster: str
    topic_prefix: str = "backbeat"
    #: Once the follower says the beat is lost (``sync.lost_after_s`` of silence, 10 s by
    #: default) the agent keeps firing on its free-running model this much longer, then
    #: drives every output to its safe state and fires nothing until the beat returns. The
    #: default 0 is the safe state at "lost" (an hour at most); a device whose profile
    #: says ``keep_running_when_lost = true`` is left running on the model.
    safe_after_lost_s: float = 0.0
    #: Process-wide sampling period of the probe (seconds; CPU, memory, temperature).
    sample_interval_s: float = 1.0
    #: A frame whose HLC is further than this ahead of the local wall clock is refused
    #: (``hlc_ahead``) and never moves the claims' HLC.
    hlc_max_ahead_s: float = 60.0


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
    #: [security]: the beat keys and the claim signing key (edge.trust).
    security: SecurityConfig = field(default_factory=SecurityConfig)


#: What a reload does not apply: the link, the outbox, the follower, the topics, the beat
#: keys and the claim signer were built from these and live as long as the process. The
#: rest (the score, the devices, [guard], [status], the other [agent] settings) applies at
#: the next beat boundary.
RESTART_ONLY_SECTIONS = ("broker", "outbox", "sync", "security")
#: The longest the outputs may free-run after the beat is lost (an hour: past that, even
#: the tempo guide's 1 % an hour drift target says nothing of where the beat is).
MAX_SAFE_AFTER_LOST_S = 3600.0
#: The load guard's slowest sampling: slower, a thermal or CPU limit would act too late.
MAX_SAMPLE_INTERVAL_S = 60.0

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
    (
        # Bounded above as every safety figure is: a huge value would be the lost-beat
        # safe state (or the load guard's sampling) switched off, not a long wait.
        number("safe_after_lost_s", 0.0, MAX_SAFE_AFTER_LOST_S),
        number("sample_interval_s", 0.05, MAX_SAMPLE_INTERVAL_S),
        number("hlc_max_ahead_s", 0.0, 1e9, low_inclusive=False),
    ),
    also_known=("id", "cluster", "profile", "topic_prefix"),
)
_OUTBOX = Section(
    OutboxConfig,
    (
        pathname("directory", default=None),
        flag("memory"),
        integer("max_bytes", 1024, 2**40),
        integer("max_count", 1, 10**9),
        integer("fsync_every", 0, 10**6),
        number("fsync_interval_s", 0.0, 3600.0),
        integer("segment_bytes", 256, 2**40),
        number("retry_interval_s", 0.001, 3600.0),
    ),
)


def _agent(raw: Mapping[str, object], problems: ConfigProblems) -> AgentConfig:
    table = _table(raw, "agent", problems)
    agent_id = table.get("id")
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        hint = ""
        if "agent" not in raw and ("devices" in raw or "score" in raw):
            # A hardware profile given where the agent's config goes: say what it is.
            hint = (
                " (this file has [devices] or [score] but no [agent]: it looks like a"
                ' profile; a config names one with agent.profile = "FILE")'
            )
        given = "is missing" if agent_id is None else f"got {agent_id!r}"
        problems.add(
            "agent.id", f"is required and must match [a-zA-Z0-9_:-]{{1,128}}; {given}{hint}"
        )
        agent_id = "invalid"
    cluster = table.get("cluster")
    wrong = cluster_problem(cluster)
    if wrong is not None or not isinstance(cluster, str):
        missing = "is missing (the cluster_id to follow)" if cluster is None else wrong
        problems.add("agent.cluster", f"is required; {missing}")
        cluster = "invalid"
    prefix = table.get("topic_prefix", "backbeat")
    wrong = prefix_problem(prefix)
    if wrong is not None or not isinstance(prefix, str):
        problems.add("agent.topic_prefix", str(wrong))
        prefix = "backbeat"
    return _AGENT.read(
        table, problems, "agent", id=agent_id, cluster=cluster, topic_prefix=prefix.rstrip("/")
    )


def parse_outbox(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "outbox"
) -> OutboxConfig:
    """Read the ``[outbox]`` TOML section; every problem goes to ``problems``.

    Keys: ``directory`` (string path; absent = the default place), ``memory`` (true: claims
    in memory only; default false), ``max_bytes`` (integer >= 1024,
    default 4 MiB), ``max_count`` (integer >= 1, default 10000), ``fsync_every`` (integer
    >= 0, default 10), ``fsync_interval_s`` (number >= 0, default 1.0), ``segment_bytes``
    (integer >= 256, default 256 KiB), ``retry_interval_s`` (number >= 0.001, default 30);
    the intervals at most an hour, the sizes at most 1 TiB.
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


def load_config(path: str | Path, read: Reader = read_checked) -> Config:
    """Load and check a config file (and the profile it names), each read by ``read``.

    Raises ConfigError listing every problem found (a file that cannot be read, is not a
    regular file, is too large or nests too deep among them); nothing is half-applied.
    """
    path = Path(path)
    problems = ConfigProblems(str(path))
    loaded = read_toml(path, problems, "config", read)
    if loaded is None:
        raise ConfigError(problems.items, str(path))
    raw, data = loaded
    return config_from_tables(raw, path.parent, source=str(path), data=data, read=read)


def config_from_tables(
    raw: Mapping[str, object],
    base_dir: Path,
    *,
    source: str,
    data: bytes,
    read: Reader = read_checked,
) -> Config:
    """The config the parsed tables ``raw`` say (and the profile file they name, read by
    ``read``); relative paths count from ``base_dir``. ``source`` names where the tables
    came from in the problems and the claims; ``data`` is what the digest hashes (the
    file's bytes), with the profile file's bytes after it.

    Raises ConfigError listing every problem found; nothing is half-applied.
    """
    problems = ConfigProblems(source)
    digest = hashlib.sha256()
    digest.update(data)
    for key in raw:
        if key not in _KNOWN_SECTIONS:
            problems.add(
                key, f"is not a known section (known: {', '.join(sorted(_KNOWN_SECTIONS))})"
            )
    agent = _agent(raw, problems)

    # The hardware profile may live in its own file; the config's own sections win.
    merged: dict[str, object] = {}
    from_profile: set[str] = set()  # the sections read from the profile's own file
    agent_table = _table(raw, "agent", ConfigProblems())
    profile_ref = agent_table.get("profile")
    if profile_ref is not None and (not isinstance(profile_ref, str) or not profile_ref):
        problems.add("agent.profile", f"must be a file path (a string), got {profile_ref!r}")
        profile_ref = None
    if profile_ref is not None:
        profile_path = Path(profile_ref)
        if not profile_path.is_absolute():
            profile_path = base_dir / profile_path
        profile_loaded = read_toml(profile_path, problems, "agent.profile", read)
        if profile_loaded is not None:
            profile_raw, profile_data = profile_loaded
            digest.update(profile_data)
            for key in profile_raw:
                if key not in _PROFILE_SECTIONS:
                    problems.add(
                        f"agent.profile ({profile_path.name}): {key}",
                        "a profile holds only gpio, devices and score",
                    )
            merged.update({k: v for k, v in profile_raw.items() if k in _PROFILE_SECTIONS})
            from_profile = {k for k in profile_raw if k in _PROFILE_SECTIONS and k not in raw}
    merged.update({k: v for k, v in raw.items() if k in _PROFILE_SECTIONS})

    # A python device's relative path counts from the file that holds the profile.
    profile_base = profile_path.parent if profile_ref is not None else base_dir
    first = len(problems.items)
    profile = parse_profile(merged, problems, base=str(profile_base))
    score = parse_score(merged.get("score", []), profile, problems)
    if from_profile:  # a problem in the profile's file names that file, as above
        for i in range(first, len(problems.items)):
            item = problems.items[i]
            if re.split(r"[.\[:]", item, maxsplit=1)[0] in from_profile:
                problems.items[i] = f"agent.profile ({profile_path.name}): {item}"
    config = Config(
        agent=agent,
        broker=parse_broker(_table(raw, "broker", problems), problems, base_dir),
        profile=profile,
        score=score,
        sync=parse_sync(_table(raw, "sync", problems), problems),
        guard=parse_guard(_table(raw, "guard", problems), problems),
        status=parse_status(_table(raw, "status", problems), problems),
        outbox=parse_outbox(_table(raw, "outbox", problems), problems),
        source=source,
        digest=digest.hexdigest()[:16],
        security=parse_security(_table(raw, "security", problems), problems, base_dir, read=read),
    )
    problems.raise_if_any()
    return config
