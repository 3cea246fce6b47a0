"""The command-line tools' broker link (pulse, timekeeper): started and connected, or why not.

A tool that cannot reach its broker within ``--connect-timeout`` stops its link, says so
on stderr with the link's last error, and exits 1: what it would send to no broker would
be lost unseen (QoS 0). :func:`tool_client_id` names a tool's client.
"""

from __future__ import annotations

import secrets
import sys
from typing import Protocol


def tool_client_id(tool: str, cluster: str) -> str:
    """A fresh MQTT client id for ``tool`` on ``cluster``: ``backbeat-{tool}-{cluster}-`` and
    16 random hex digits. A fixed id let anyone on an open broker evict the tool again and
    again by connecting with it; the tools need no session to come back to (their
    subscriptions are made again at each connect, and they send and take QoS 0 only)."""
    return f"backbeat-{tool}-{cluster}-{secrets.token_hex(8)}"


class ToolLink(Protocol):
    """What :func:`reach` uses of a link (``edge.mqtt_link.MqttLink``)."""

    last_error: str | None

    def start(self) -> None: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def stop(self, *, timeout: float) -> object: ...


def reach(link: ToolLink, tool: str, url: str, timeout_s: float, lost: str = "") -> bool:
    """Start ``link`` and wait up to ``timeout_s`` for its connection. False if it did
    not come: the link is stopped and the reason is on stderr (``lost`` appended)."""
    link.start()
    if link.wait_connected(timeout_s):
        return True
    link.stop(timeout=1.0)
    print(
        f"backbeat-edge {tool}: cannot reach the broker at {url} in "
        f"{timeout_s:g} s ({link.last_error or 'no answer'}){lost}",
        file=sys.stderr,
    )
    return False
