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
``edge.sync``, ``edge.guard``, ``edge.status``, ``edge.trust`` for ``[security]``); this
module reads the files, checks ``[agent]``, ``[broker]`` and ``[outbox]`` (whose
:class:`OutboxConfig` lives here, so the core imports no adapter), and gathers every
problem into one
:class:`~edge.errors.ConfigError`. Keys with a type and a range are read by
:mod:`edge.settings`, which words every problem alike. It also holds the reload rules
(:func:`apply_reload`): which settings a reload applies at the next beat boundary and which
wait for a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from edge.errors import ConfigError, ConfigProblems, EdgeError
from edge.guard import GuardConfig, parse_guard
from edge.profile import Profile, parse_profile
from edge.score import Score, parse_score
from edge.settings import Section, check_order, flag, integer, number, pathname, text
from edge.status import StatusConfig, parse_status
from edge.sync import SyncConfig, parse_sync
from edge.trust import SecurityConfig, parse_security

_AGENT_ID = re.compile(r"[a-zA-Z0-9_:-]{1,128}")
_CLUSTER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOPIC_PREFIX = re.compile(r"[^#+\s]+")
_PROFILE_SECTIONS = ("gpio", "devices", "score")
#: No config, profile, password or certificate file is larger than this.
MAX_FILE_BYTES = 1024 * 1024
#: Tables and arrays nest no deeper than this (a real config nests 3 deep); deeper is
#: refused before tomllib (which recurses) or anything else walks it.
MAX_TOML_DEPTH = 32
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
    #: default 0 is the safe state at "lost"; a device whose profile says
    #: ``keep_running_when_lost = true`` is left running on the model.
    safe_after_lost_s: float = 0.0
    #: Process-wide sampling period of the probe (seconds; CPU, memory, temperature).
    sample_interval_s: float = 1.0
    #: A frame whose HLC is further than this ahead of the local wall clock is refused
    #: (``hlc_ahead``) and never moves the claims' HLC.
    hlc_max_ahead_s: float = 60.0


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
    #: Every broker of a ``url`` list as (host, port), in the order tried; empty: just
    #: ``host``/``port``. With a list, ``url`` is its URLs joined by ", " (for display)
    #: and ``host``/``port``/``tls`` are the first one's.
    endpoints: tuple[tuple[str, int], ...] = ()

    def brokers(self) -> tuple[tuple[str, int], ...]:
        """The brokers to try, in order: ``endpoints``, or the one ``host``/``port``."""
        return self.endpoints or ((self.host, self.port),)


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
        number("safe_after_lost_s", 0.0),
        number("sample_interval_s", 0.05),
        number("hlc_max_ahead_s", 0.0, 1e9, low_inclusive=False),
    ),
    also_known=("id", "cluster", "profile", "topic_prefix"),
)
_BROKER = Section(
    BrokerConfig,
    (
        text("client_id"),
        text("username"),
        # MQTT carries the keepalive in 16 bits and the will delay in 32.
        integer("keepalive_s", 5, 65_535),
        number("reconnect_min_s", 0.01, 3600.0),
        number("reconnect_max_s", 0.01, 3600.0),
        integer("will_delay_s", 0, 2**32 - 1),
        integer("inbox_size", 1, 1_000_000),
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


#: A ``broker.url`` list names at most this many brokers.
MAX_BROKER_URLS = 64


def _one_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of one broker URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("scheme must be mqtt:// or mqtts:// with a host")
    if parts.password is not None:
        raise ValueError("a password in the URL would leak into logs; use password_file")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port
    except ValueError:  # urllib's own words ("Port out of range 0-65535") name no URL part
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return parts.hostname, port or (8883 if tls else 1883), tls


def _broker_urls(
    value: object, problems: ConfigProblems, where: str
) -> tuple[str, list[tuple[str, int, bool]]]:
    """The display ``url`` and every good (host, port, tls) of ``broker.url``: a string,
    a comma-separated string (as the command lines take it) or a list of strings. Each
    problem names the entry by its index."""
    key = where if where.startswith("-") else f"{where}.url"  # a flag is named as typed
    if isinstance(value, str) and "," in value:
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, str):
        try:
            return value, [_one_url(value)]
        except ValueError as exc:
            problems.add(key, f"{exc}, got {value!r}")
            return value, []
    if not isinstance(value, list):
        problems.add(
            key, f"must be a string like mqtt://host:1883 or a list of them, got {value!r}"
        )
        return "mqtt://127.0.0.1:1883", []
    if not value:
        problems.add(key, "is an empty list; name at least one broker")
        return "mqtt://127.0.0.1:1883", []
    if len(value) > MAX_BROKER_URLS:
        problems.add(key, f"names {len(value)} brokers, more than the {MAX_BROKER_URLS} allowed")
        value = value[:MAX_BROKER_URLS]
    found: list[tuple[str, int, bool]] = []
    seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.add(f"{key}[{i}]", f"must be a string like mqtt://host:1883, got {item!r}")
            continue
        try:
            host, port, tls = _one_url(item)
        except ValueError as exc:
            problems.add(f"{key}[{i}]", f"{exc}, got {item!r}")
            continue
        if (host, port) in seen:
            problems.add(
                f"{key}[{i}]",
                f"names the same broker ({host}:{port}, with the default port filled in) "
                f"as {key}[{seen[host, port]}]",
            )
            continue
        if found and tls != found[0][2]:
            # One client, one TLS set-up: [broker]'s TLS files apply to every broker.
            problems.add(
                f"{key}[{i}]",
                f"mixes mqtt:// and mqtts:// in one list ({item!r}); every broker in the list"
                " must use the same scheme",
            )
            continue
        seen[host, port] = i
        found.append((host, port, tls))
    return ", ".join(str(item) for item in value), found


def parse_broker(
    table: Mapping[str, object], problems: ConfigProblems, base: Path, where: str = "broker"
) -> BrokerConfig:
    """Check ``[broker]``; file paths are relative to ``base``. ``url`` is one URL or a
    list (tried in order, see :mod:`edge.mqtt_link`); every entry is checked."""
    url, found = _broker_urls(table.get("url", "mqtt://127.0.0.1:1883"), problems, where)
    host, port, tls = found[0] if found else ("127.0.0.1", 1883, False)
    endpoints = tuple((h, p) for h, p, _ in found) if len(found) > 1 else ()
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
        endpoints=endpoints,
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


class FileRefused(EdgeError, OSError):
    """A file the operator named cannot be used: missing, unreadable, not a regular file,
    or too large. The message names the path and what it is."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{str(path)!r} {problem}")
        self.path = path
        self.problem = problem


#: Reads one operator file: the bytes, or :class:`FileRefused`. The adapters pass
#: :func:`edge.files.read_regular` (non-blocking open, then fstat).
Reader = Callable[[Path], bytes]


def file_refusal(mode: int, size: int, limit: int = MAX_FILE_BYTES) -> str | None:
    """Why a file with this ``st_mode`` and size may not be read (None: it may)."""
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if size > limit:
        return f"is {size} bytes, more than the {limit} a config file may have"
    return None


def read_checked(path: Path) -> bytes:
    """The default :data:`Reader`, for tests and tools: refuses what is not a regular file
    (by ``stat`` before opening, so it never opens a FIFO) and reads at most the cap.
    The agent and ``check`` use :func:`edge.files.read_regular`, which cannot race."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise FileRefused(path, "does not exist") from exc
    except OSError as exc:
        raise FileRefused(path, f"cannot be read: {exc.strerror or exc}") from exc
    problem = file_refusal(info.st_mode, info.st_size)
    if problem is not None:
        raise FileRefused(path, problem)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FileRefused(path, f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise FileRefused(path, file_refusal(stat.S_IFREG, len(data)) or "is too large")
    return data


_STRING_END = {  # the rest of a string, from just after its opening delimiter
    '"': re.compile(r'[^"\\\n]*(?:\\.[^"\\\n]*)*"?'),
    "'": re.compile(r"[^'\n]*'?"),
    '"""': re.compile(r'[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*(?:"""(?:""?(?!"))?)?', re.DOTALL),
    "'''": re.compile(r"[^']*(?:'(?!'')[^']*)*(?:'''(?:''?(?!'))?)?"),
}
# What the nesting scan stops at: brackets, the start of a string or of a comment.
_NESTING_MARK = re.compile(r"[\[\]{}\"'#]")


def nesting_problem(text: str, limit: int = MAX_TOML_DEPTH) -> str | None:
    """Why ``text`` nests too deep for tomllib to be given it (None: it does not).

    Counts open ``[`` and ``{`` outside strings and comments: a scan that never recurses,
    so a file of 5,000 ``[`` is refused before tomllib recurses into it.
    """
    depth = 0
    i = 0
    n = len(text)
    while True:
        mark = _NESTING_MARK.search(text, i)
        if mark is None:
            return None
        c = mark.group()
        i = mark.end()
        if c in "[{":
            depth += 1
            if depth > limit:
                line = text.count("\n", 0, i) + 1
                return f"nests tables or arrays more than {limit} deep (line {line})"
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        else:
            delimiter = c * 3 if text.startswith(c * 3, i - 1) else c
            i += len(delimiter) - 1
            # An unterminated string ends the scan there; tomllib will say what is wrong.
            rest = _STRING_END[delimiter].match(text, i)
            i = n if rest is None else rest.end()


def _depth_problem(data: object, limit: int = MAX_TOML_DEPTH) -> str | None:
    """Why parsed TOML nests too deep (dotted keys nest without brackets), walked without
    recursion; None when it does not."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return f"nests tables or arrays more than {limit} deep (through dotted keys)"
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def parse_toml(
    data: bytes, name: str, problems: ConfigProblems, where: str
) -> dict[str, object] | None:
    """Parse the bytes of the TOML file ``name``; every problem (not UTF-8, nested too
    deep, not TOML) goes to ``problems`` at ``where`` and gives None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(where, f"{name!r} is not UTF-8 text: {exc.reason} at byte {exc.start}")
        return None
    problem = nesting_problem(text)
    if problem is None:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            problems.add(where, f"{name!r} is not valid TOML: {exc}")
            return None
        except RecursionError:  # the scan missed a way to nest: still a config problem
            problem = f"nests tables or arrays more than {MAX_TOML_DEPTH} deep"
        else:
            problem = _depth_problem(raw)
            if problem is None:
                return raw
    problems.add(where, f"{name!r} {problem}")
    return None


def _read_toml(
    path: Path, problems: ConfigProblems, where: str, read: Reader
) -> tuple[dict[str, object], bytes] | None:
    try:
        data = read(path)
    except FileRefused as exc:
        problems.add(where, str(exc))
        return None
    except OSError as exc:  # a reader that does not word its own refusals
        problems.add(where, f"cannot read {str(path)!r}: {exc.strerror or exc}")
        return None
    raw = parse_toml(data, str(path), problems, where)
    return None if raw is None else (raw, data)


def load_config(path: str | Path, read: Reader = read_checked) -> Config:
    """Load and check a config file (and the profile it names), each read by ``read``.

    Raises ConfigError listing every problem found (a file that cannot be read, is not a
    regular file, is too large or nests too deep among them); nothing is half-applied.
    """
    path = Path(path)
    problems = ConfigProblems(str(path))
    loaded = _read_toml(path, problems, "config", read)
    if loaded is None:
        raise ConfigError(problems.items, str(path))
    raw, data = loaded
    digest = hashlib.sha256()
    digest.update(data)
    for key in raw:
        if key not in _KNOWN_SECTIONS:
            problems.add(
                key, f"is not a known section (known: {', '.join(sorted(_KNOWN_SECTIONS))})"
            )
    base = path.parent
    agent = _agent(raw, problems)

    # The hardware profile may live in its own file; the config's own sections win.
    merged: dict[str, object] = {}
    from_profile: set[str] = set()  # the sections read from the profile's own file
    agent_table = _table(raw, "agent", ConfigProblems())
    profile_ref = agent_table.get("profile")
    if profile_ref is not None:
        profile_path = Path(str(profile_ref))
        if not profile_path.is_absolute():
            profile_path = base / profile_path
        profile_loaded = _read_toml(profile_path, problems, "agent.profile", read)
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
    profile_base = profile_path.parent if profile_ref is not None else base
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
        broker=parse_broker(_table(raw, "broker", problems), problems, base),
        profile=profile,
        score=score,
        sync=parse_sync(_table(raw, "sync", problems), problems),
        guard=parse_guard(_table(raw, "guard", problems), problems),
        status=parse_status(_table(raw, "status", problems), problems),
        outbox=parse_outbox(_table(raw, "outbox", problems), problems),
        source=str(path),
        digest=digest.hexdigest()[:16],
        security=parse_security(_table(raw, "security", problems), problems, base),
    )
    problems.raise_if_any()
    return config
