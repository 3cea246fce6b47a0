"""Opening the operator's files (config, profile, password, CA, cert, key) safely.

:func:`read_regular` is the one way these files are read: it opens without blocking
(``O_NONBLOCK``, so a FIFO never hangs the caller), refuses anything that is not a
regular file (a FIFO, a device such as ``/dev/zero``, a directory, a socket), and reads
at most :data:`MAX_FILE_BYTES`. Every refusal is a :class:`FileRefused` whose message
names the path and what it is, worded by :func:`edge.config_file.file_refusal` so the core and
the adapter say it alike. The core never opens files itself (it may not import ``os``);
the adapters hand this function to :func:`edge.config.load_config`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from edge.config_file import MAX_FILE_BYTES, FileRefused, file_refusal

__all__ = ["MAX_FILE_BYTES", "FileRefused", "read_regular"]


def read_regular(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit`` of them).

    Raises :class:`FileRefused` (an ``OSError``) when it does not exist, cannot be opened,
    is not a regular file, or is larger than ``limit``; never blocks on a FIFO or device.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileRefused(path, "does not exist") from exc
        raise FileRefused(path, f"cannot be opened: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        problem = file_refusal(info.st_mode, info.st_size, limit)
        if problem is not None:
            raise FileRefused(path, problem)
        # A regular file: reads never block. Drop O_NONBLOCK anyway, for NFS and friends.
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew while we read it
            raise FileRefused(path, file_refusal(stat.S_IFREG, total, limit) or "is too large")
        return b"".join(chunks)
    except OSError as exc:
        if isinstance(exc, FileRefused):
            raise
        raise FileRefused(path, f"cannot be read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
