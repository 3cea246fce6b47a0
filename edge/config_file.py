"""An operator's file read safely: what is refused, and TOML parsed without recursing.

The config, its profile, a password or a certificate is a file an operator (often root)
names. :func:`file_refusal` says what may not be read (not a regular file, larger than
:data:`MAX_FILE_BYTES`) in the words every reader uses (:func:`read_checked` here,
:func:`edge.files.read_regular` in the adapters); :class:`FileRefused` carries it.
:func:`parse_toml` refuses text that is not UTF-8 or nests deeper than
:data:`MAX_TOML_DEPTH` before :mod:`tomllib` (which recurses) sees it, and
:func:`read_toml` is the two together, every problem going to a
:class:`~edge.errors.ConfigProblems`.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from edge.errors import ConfigProblems, EdgeError

#: No config, profile, password or certificate file is larger than this.
MAX_FILE_BYTES = 1024 * 1024
#: Tables and arrays nest no deeper than this (a real config nests 3 deep); deeper is
#: refused before tomllib (which recurses) or anything else walks it.
MAX_TOML_DEPTH = 32


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


def read_toml(
    path: Path, problems: ConfigProblems, where: str, read: Reader
) -> tuple[dict[str, object], bytes] | None:
    """The parsed tables of ``path`` (read by ``read``) and its bytes; every problem (a
    refusal, a read error, bad TOML) goes to ``problems`` at ``where`` and gives None."""
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
