"""The one error family of backbeat-edge.

Two kinds of trouble are kept apart, as h11 keeps its Local and Remote errors apart:

* *They sent garbage* — a malformed frame from the network, a wrong config file, a broker
  that refuses us. These are :class:`EdgeError` children that also derive from the stdlib
  type that fits (``ValueError``, ``OSError``), so callers may catch either. They are
  counted, reported with what was wrong and where, and survived.
* *We have a bug* — anything else. It is not caught here.

Messages name the field and the offending value, e.g.
``tempo_bpm must be between 0.1 and 1000, got 0.05``.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgeError(Exception):
    """Base of every error backbeat-edge raises on purpose."""


class FrameError(EdgeError, ValueError):
    """A wire message (BeatFrame, StatusClaim, BarReport) broke the contract.

    ``field`` names the offending field (dotted for nested ones) or ``"payload"`` when the
    bytes could not be parsed at all.
    """

    def __init__(self, message: str, field: str = "payload") -> None:
        super().__init__(message)
        self.field = field


class ConfigError(EdgeError, ValueError):
    """A config or hardware profile is wrong; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[str], source: str = "config") -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''}:\n{lines}")


class ConfigProblems:
    """Collects config problems so one pass can report them all together.

    Section parsers (in ``edge.config``, ``edge.profile``, ``edge.score``, ``edge.guard``...)
    take one of these and ``add`` to it instead of raising at the first problem.
    """

    def __init__(self, source: str = "config") -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items, self.source)


class HardwareError(EdgeError, RuntimeError):
    """A device or pin failed; the device named in ``device`` is isolated."""

    def __init__(self, message: str, device: str = "") -> None:
        super().__init__(message)
        self.device = device


class LinkError(EdgeError, ConnectionError):
    """The broker link failed in a way that needs a person (bad credentials, bad CA...)."""


class OutboxError(EdgeError, OSError):
    """The on-disk outbox could not be used (disk full, read-only); it degrades to memory."""
