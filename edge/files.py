"""Opening the operator's files (config, profile, password, CA, cert, key) safely.

:func:`read_regular` is the one way these files are read: it opens without blocking
(``O_NONBLOCK``, so a FIFO never hangs the caller), refuses anything that is not a
regular file (a FIFO, a device such as ``/dev/zero``, a directory, a socket), and reads
at most :data:`MAX_FILE_BYTES`. Every refusal is a :class:`FileRefused` whose message
names the path and what it is, worded by :func:`edge.config_file.file_refusal` so the core and
the adapter say it alike. The core never opens files itself (it may not import ``os``);
the adapters hand this function to :func:`edge.config.load_config`. :func:`open_append`
opens a file the operator names for us to write (a trace) with the same refusals.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from edge.config_file import MAX_FILE_BYTES, FileRefused, file_refusal

__all__ = ["MAX_FILE_BYTES", "FileRefused", "open_append", "read_regular"]


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


def open_append(path: Path) -> IO[str]:
    """``path`` opened to append text lines (line-buffered), created if it does not exist.

    Raises :class:`FileRefused` when it is not a regular file (a directory, a FIFO, a
    device) or cannot be opened; never blocks on a FIFO (``O_NONBLOCK``: one with no
    reader is refused by the kernel, one with a reader by the ``fstat`` after).
    """
    flags = (
        os.O_WRONLY
        | os.O_APPEND
        | os.O_CREAT
        | os.O_NONBLOCK
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        try:  # say what it is, if it is there (a directory: EISDIR; a FIFO: ENXIO)
            problem = file_refusal(os.stat(path).st_mode, 0, limit=0)
        except OSError:
            problem = None
        raise FileRefused(path, problem or f"cannot be opened: {exc.strerror or exc}") from exc
    try:
        problem = file_refusal(os.fstat(fd).st_mode, 0, limit=0)
        if problem is not None:
            raise FileRefused(path, problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise
