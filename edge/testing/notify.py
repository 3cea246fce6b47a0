"""A stand-in for systemd's NOTIFY_SOCKET: a unix datagram socket that keeps every message
an agent sends it (``READY=1``, ``WATCHDOG=1``, ...) with the monotonic time it came."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """Collects (monotonic time, datagram) pairs sent to a unix datagram socket at ``path``
    (give the agent ``NOTIFY_SOCKET=str(path)``); :meth:`drain` reads what has come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, needle: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(needle in m for _, m in self.messages):
                return True
            self.drain(0.1)
        return False

    def times(self, needle: str) -> list[float]:
        return [t for t, m in self.messages if needle in m.split("\n")]

    def close(self) -> None:
        self.sock.close()
