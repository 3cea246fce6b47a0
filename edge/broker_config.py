"""``[broker]``: where the broker is and how to reach it, one URL or a list of them.

:func:`parse_broker` reads the section for the agent's config and for the command lines'
``--broker`` (``monitor``, ``timekeeper``...): every entry of a ``url`` list is checked and
named by its index, the TLS and password files are made absolute from the config's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from edge.errors import ConfigProblems
from edge.settings import Section, check_order, integer, number, text


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


#: A ``broker.url`` list names at most this many brokers.
MAX_BROKER_URLS = 64


def _one_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of one broker URL; ValueError says what is wrong with it."""
    if not url.isprintable():  # a newline or a NUL would be dropped or carried into logs
        raise ValueError("a broker URL may not contain control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("scheme must be mqtt:// or mqtts:// with a host")
    if parts.password is not None:
        raise ValueError("a password in the URL would leak into logs; use password_file")
    # What MQTT has no use for is refused, never dropped: an operator who wrote it meant it.
    if parts.username is not None:
        raise ValueError("a user name in the URL is not used; set broker.username")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an MQTT broker URL has no path, query or fragment")
    if any(c.isspace() for c in parts.netloc):
        raise ValueError("the host may not contain spaces")
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
            first = seen[host, port]
            # Said only where it explains the match: a port left out on either side.
            filled = (
                ", with the default port filled in"
                if not all(urlsplit(str(value[j])).port for j in (first, i))
                else ""
            )
            problems.add(
                f"{key}[{i}]", f"names the same broker ({host}:{port}{filled}) as {key}[{first}]"
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
    if found and not tls:
        # Plain mqtt:// never uses them: an operator who set them believes TLS is on.
        for name in ("ca_file", "cert_file", "key_file"):
            if table.get(name) is not None:
                problems.add(
                    f"{where}.{name}",
                    "is set but the broker URLs are mqtt:// (no TLS); use mqtts://",
                )
    if broker.password_file is not None and broker.username is None:
        problems.add(
            f"{where}.password_file", "is set without username (the password would not be sent)"
        )
    return broker
