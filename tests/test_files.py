"""Operator files are read safely: regular files only, 1 MiB at most, never blocking, and
TOML nested too deep is a config problem, never a RecursionError."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config_file import (
    MAX_FILE_BYTES,
    MAX_TOML_DEPTH,
    FileRefused,
    nesting_problem,
    parse_toml,
    read_checked,
)
from edge.errors import ConfigProblems
from edge.files import read_regular

READERS: list[Callable[[Path], bytes]] = [read_regular, read_checked]


def _within(seconds: float, call: Callable[[], object]) -> object:
    """``call()`` in a thread; fail (instead of hanging the suite) if it blocks."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the read blocked"
    return box[0]


@pytest.mark.parametrize("read", READERS)
def test_a_regular_file_is_read_whole(tmp_path: Path, read: Callable[[Path], bytes]) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(b"x = 1\n")
    assert read(path) == b"x = 1\n"
    path.write_bytes(b"a" * MAX_FILE_BYTES)  # the cap itself is allowed
    assert len(read(path)) == MAX_FILE_BYTES


@pytest.mark.parametrize("read", READERS)
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, read: Callable[[Path], bytes]) -> None:
    fifo = tmp_path / "profile.toml"
    os.mkfifo(fifo)
    result = _within(2.0, lambda: read(fifo))
    assert isinstance(result, FileRefused)
    assert str(result) == f"{str(fifo)!r} is a FIFO (named pipe), not a regular file"


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda tmp: Path("/dev/zero"), "is a device, not a regular file"),
        (lambda tmp: Path("/dev/null"), "is a device, not a regular file"),
        (lambda tmp: tmp, "is a directory, not a file"),
        (lambda tmp: tmp / "nope", "does not exist"),
    ],
)
def test_what_is_not_a_regular_file_is_named(
    tmp_path: Path, read: Callable[[Path], bytes], make: Callable[[Path], Path], what: str
) -> None:
    path = make(tmp_path)
    result = _within(2.0, lambda: read(path))
    assert isinstance(result, FileRefused) and isinstance(result, OSError)
    assert str(result) == f"{str(path)!r} {what}"


@pytest.mark.parametrize("read", READERS)
def test_a_socket_is_refused(tmp_path: Path, read: Callable[[Path], bytes]) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        result = _within(2.0, lambda: read(path))
    assert isinstance(result, FileRefused)
    assert "not a regular file" in str(result) or "cannot be opened" in str(result)


@pytest.mark.parametrize("read", READERS)
def test_a_file_over_the_cap_is_refused(tmp_path: Path, read: Callable[[Path], bytes]) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(FileRefused, match=r"is 1048577 bytes, more than the 1048576"):
        read(path)


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "secret"
    path.write_text("pw")
    path.chmod(0)
    with pytest.raises(FileRefused, match="cannot be opened: Permission denied"):
        read_regular(path)


def _parse(text: str) -> tuple[object, list[str]]:
    problems = ConfigProblems()
    return parse_toml(text.encode(), "f.toml", problems, "config"), problems.items


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 5000 + "]" * 5000,
        "x = " + "{a=" * 5000 + "1" + "}" * 5000,
        "x = " + "[" * 5000,  # not even closed
        "a" + ".a" * 5000 + " = 1\n",  # dotted keys nest without a bracket
        "[a" + ".a" * 5000 + "]\n",
        "x = " + "[" * (MAX_TOML_DEPTH + 1) + "]" * (MAX_TOML_DEPTH + 1),
    ],
    ids=["arrays", "inline-tables", "unclosed", "dotted-keys", "table-header", "one-too-deep"],
)
def test_toml_nested_too_deep_is_a_problem_not_a_recursion_error(text: str) -> None:
    raw, problems = _parse(text)
    assert raw is None
    assert len(problems) == 1
    assert problems[0].startswith(
        f"config: 'f.toml' nests tables or arrays more than {MAX_TOML_DEPTH} deep"
    )


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * MAX_TOML_DEPTH + "]" * MAX_TOML_DEPTH,
        'x = "' + "[" * 5000 + '"\n',
        "x = '" + "{" * 5000 + "'\n",
        'x = """\n' + "[" * 5000 + '\n"""\n',
        "x = '''" + "[" * 5000 + "'''\n",
        'x = """a\\"""' + "[" * 50 + '"""\n',  # an escaped quote does not end it
        'x = """a""""\ny = 1\n',  # a multi-line string may end in a quote of its own
        "# " + "[" * 5000 + "\nx = 1\n",
        '"[[[[" = 1\n[devices."{{{{"]\nkind = "led"\n',
    ],
)
def test_brackets_in_strings_and_comments_do_not_count(text: str) -> None:
    raw, problems = _parse(text)
    assert problems == [] and raw is not None


def test_a_bracket_after_a_string_counts() -> None:
    deep = "[" * (MAX_TOML_DEPTH + 1) + "]" * (MAX_TOML_DEPTH + 1)
    assert nesting_problem('x = "a\\"[[" \ny = ' + deep) is not None
    assert nesting_problem("x = 'a'\ny = " + deep) is not None
    assert nesting_problem('x = """a"""\ny = ' + deep) is not None
