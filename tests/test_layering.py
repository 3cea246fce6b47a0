"""The pure core imports no I/O: no MQTT, pins, psutil, sockets, threads, time, processes.

The core is the list of strictly typed modules in ``pyproject.toml`` (the one list: mypy
holds those modules to strict typing, this test holds them to no I/O). An entry names a
module (``edge/x.py``) or a package (``edge/x/``, every module under it); ``edge.x.*``
names every module of package ``edge.x``.

Each core module is parsed with ``ast`` (never imported) and every ``import``,
``from ... import`` and literal ``__import__``/``importlib.import_module`` call is checked,
and so is every ``edge`` module it imports, and every one those import, and so on: a core
module may not reach I/O through another module, core or not. Only ``edge/clock.py`` may
import ``time``: it is the one place the core reads a clock.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "edge"

#: Named by the issues that built them; the list in pyproject must keep them.
MUST_BE_CORE = (
    "edge.errors",
    "edge.clock",
    "edge.config",
    "edge.settings",
    "edge.sync",
    "edge.plan",
    "edge.trace",
)

FORBIDDEN = frozenset(
    {
        "paho",
        "gpiozero",
        "psutil",
        "socket",
        "threading",
        "time",
        "subprocess",
        "asyncio",
        "select",
        "signal",
        # the same doors under other names
        "_thread",
        "selectors",
        "socketserver",
        "multiprocessing",
        "lgpio",
        "RPi",
        "os",
    }
)
ALLOWED_EXCEPTIONS = {"edge.clock": frozenset({"time"})}


def imports(source: str) -> list[tuple[int, str, int]]:
    """Every import in ``source`` as ``(line, module, level)``; ``level`` > 0 is relative.

    ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a module); a relative
    ``from . import b`` gives ``b`` at its level.
    """
    found: list[tuple[int, str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if base:
                found.append((node.lineno, base, node.level))
            for alias in node.names:
                if alias.name != "*":
                    name = f"{base}.{alias.name}" if base else alias.name
                    found.append((node.lineno, name, node.level))
        elif isinstance(node, ast.Call):
            func = node.func
            called = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if called in ("__import__", "import_module") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append((node.lineno, first.value, 0))
    return found


def forbidden_imports(source: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Top-level names of forbidden modules imported by ``source``, as ``line: name``."""
    found: list[str] = []
    seen: set[tuple[int, str]] = set()
    for line, name, level in imports(source):
        if level:
            continue  # relative: inside our own package, followed by reached_modules
        top = name.split(".")[0]
        if top in FORBIDDEN and top not in allowed and (line, top) not in seen:
            seen.add((line, top))
            found.append(f"{line}: {name}")
    return found


# --------------------------------------------------------------------------- the tree


def module_name(path: Path, root: Path) -> str:
    """``edge/sync/tempo.py`` -> ``edge.sync.tempo``; ``edge/sync/__init__.py`` -> ``edge.sync``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` under ``root`` (a package's ``__init__.py``), if any."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_package(name: str, root: Path) -> bool:
    return (root.joinpath(*name.split(".")) / "__init__.py").is_file()


def package_modules(name: str, root: Path) -> list[str]:
    """Every module of package ``name`` (itself included), however deep."""
    folder = root.joinpath(*name.split("."))
    return sorted(module_name(p, root) for p in folder.rglob("*.py"))


def core_entries(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The module patterns of pyproject's strict mypy overrides: the one list of the core."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    entries: list[str] = []
    for override in data["tool"]["mypy"].get("overrides", []):
        if override.get("strict"):
            modules = override["module"]
            entries += [modules] if isinstance(modules, str) else modules
    return entries


def core_modules(entries: list[str], root: Path) -> list[str]:
    """The modules the entries name: a module, a package (all of it), or ``package.*``."""
    found: set[str] = set()
    for entry in entries:
        name = entry.removesuffix(".*")
        if is_package(name, root):
            found.update(package_modules(name, root))
        elif module_file(name, root) is not None and not entry.endswith(".*"):
            found.add(name)
    return sorted(found)


def edge_imports(name: str, root: Path) -> list[str]:
    """The modules of our own tree that module ``name`` imports (parents included)."""
    path = module_file(name, root)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = name.split(".")[0]
    found: list[str] = []
    for _, target, level in imports(path.read_text(encoding="utf-8")):
        if level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (level - 1)]
            target = ".".join([*anchor, target]) if target else ".".join(anchor)
        if target.split(".")[0] != top:
            continue
        parts = target.split(".")
        # importing a.b.c runs a and a.b first
        for depth in range(1, len(parts) + 1):
            candidate = ".".join(parts[:depth])
            if module_file(candidate, root) is not None and candidate not in found:
                found.append(candidate)
    return found


def reached_io(start: str, root: Path) -> list[str]:
    """Forbidden imports reachable from module ``start``, each with the path that reaches it."""
    bad: list[str] = []
    queue: deque[tuple[str, tuple[str, ...]]] = deque([(start, (start,))])
    seen = {start}
    while queue:
        name, via = queue.popleft()
        path = module_file(name, root)
        assert path is not None, name
        allowed = ALLOWED_EXCEPTIONS.get(name, frozenset())
        for hit in forbidden_imports(path.read_text(encoding="utf-8"), allowed):
            bad.append(f"{' -> '.join(via)} line {hit}")
        for target in edge_imports(name, root):
            if target not in seen:
                seen.add(target)
                queue.append((target, (*via, target)))
    return bad


# --------------------------------------------------------------------------- the core


CORE = core_modules(core_entries(), ROOT)


def test_every_core_entry_names_something_that_exists() -> None:
    # "edge.x.*" may be written before edge/x.py becomes a package (mypy only notes it).
    missing = [e for e in core_entries() if not e.endswith(".*") and not core_modules([e], ROOT)]
    assert not missing, f"pyproject's strict list names modules edge/ does not have: {missing}"


def test_the_core_keeps_what_the_issues_put_in_it() -> None:
    entries = core_entries()
    assert [m for m in MUST_BE_CORE if m not in entries] == []


def test_a_core_package_is_strict_throughout() -> None:
    # mypy reads "edge.sync" as the package's __init__ only; its modules need "edge.sync.*".
    entries = core_entries()
    loose = [e for e in entries if is_package(e, ROOT) and f"{e}.*" not in entries]
    assert not loose, f"add {[f'{e}.*' for e in loose]} to pyproject's strict list"


@pytest.mark.parametrize("module", CORE)
def test_core_module_reaches_no_io(module: str) -> None:
    bad = reached_io(module, ROOT)
    assert not bad, f"{module} reaches I/O it must not: {bad}"


# --------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import time\n", ["1: time"]),
        ("import json, socket\n", ["1: socket"]),
        ("import os\n", ["1: os"]),
        ("import paho.mqtt.client as mqtt\n", ["1: paho.mqtt.client"]),
        ("from gpiozero import LED\n", ["1: gpiozero"]),
        ("from threading import Thread\n", ["1: threading"]),
        ("from time import monotonic\n", ["1: time"]),
        ("def f():\n    import psutil\n", ["2: psutil"]),
        ("try:\n    import asyncio\nexcept ImportError:\n    pass\n", ["2: asyncio"]),
        ("import importlib\nimportlib.import_module('subprocess')\n", ["2: subprocess"]),
        ("__import__('select')\n", ["1: select"]),
        ("if True:\n    from signal import SIGTERM\n", ["2: signal"]),
    ],
)
def test_the_checker_catches_a_bad_import(snippet: str, expected: list[str]) -> None:
    assert forbidden_imports(snippet) == expected


@pytest.mark.parametrize(
    "snippet",
    [
        "import math, re, json, zlib\n",
        "from datetime import datetime\n",
        "from edge.clock import Clock\n",
        "from . import errors\n",
        "import timeit_is_not_time\n",
        "from edge import time_budget\n",
        "x = 'import socket'\n",
    ],
)
def test_the_checker_passes_harmless_imports(snippet: str) -> None:
    assert forbidden_imports(snippet) == []


def test_only_clock_may_import_time() -> None:
    assert forbidden_imports("import time\n", ALLOWED_EXCEPTIONS["edge.clock"]) == []
    assert forbidden_imports("import socket\n", ALLOWED_EXCEPTIONS["edge.clock"]) == ["1: socket"]
    assert "time" in (EDGE / "clock.py").read_text(encoding="utf-8")


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_io_reached_through_a_non_core_module_is_caught(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "edge/__init__.py": "",
            "edge/core.py": "from edge.adapter import Thing\n",
            "edge/adapter.py": "import paho.mqtt.client as mqtt\n",
        },
    )
    assert reached_io("edge.core", root) == ["edge.core -> edge.adapter line 1: paho.mqtt.client"]


def test_io_is_followed_through_chains_relative_imports_and_function_bodies(
    tmp_path: Path,
) -> None:
    root = tree(
        tmp_path,
        {
            "edge/__init__.py": "",
            "edge/core.py": "def f():\n    from edge import middle\n",
            "edge/middle.py": "import edge.sync.tempo\n",
            "edge/sync/__init__.py": "from .follower import Follower\n",
            "edge/sync/follower.py": "from . import tempo\n",
            "edge/sync/tempo.py": "from ..clock import now\nimport socket\n",
            "edge/clock.py": "import time\n",  # allowed for clock, also when reached
        },
    )
    assert reached_io("edge.core", root) == [
        "edge.core -> edge.middle -> edge.sync.tempo line 2: socket"
    ]
    assert reached_io("edge.sync.follower", root) == [
        "edge.sync.follower -> edge.sync.tempo line 2: socket"
    ]
    assert reached_io("edge.clock", root) == []


def test_a_clean_core_passes(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "edge/__init__.py": "",
            "edge/core.py": "import math\nfrom edge.other import x\n",
            "edge/other.py": "from edge.core import y\n",  # a cycle is followed once
        },
    )
    assert reached_io("edge.core", root) == []


def test_the_core_list_takes_a_module_or_a_package(tmp_path: Path) -> None:
    files = {"edge/__init__.py": "", "edge/score.py": "", "edge/view.py": ""}
    as_module = tree(tmp_path / "a", {**files, "edge/sync.py": ""})
    as_package = tree(
        tmp_path / "b",
        {**files, "edge/sync/__init__.py": "", "edge/sync/tempo.py": "", "edge/sync/x/y.py": ""},
    )
    entries = ["edge.score", "edge.sync", "edge.sync.*", "edge.missing"]
    assert core_modules(entries, as_module) == ["edge.score", "edge.sync"]
    assert core_modules(entries, as_package) == [
        "edge.score",
        "edge.sync",
        "edge.sync.tempo",
        "edge.sync.x.y",
    ]
    # the package's own name is enough for this test (pyproject wants ".*" too, for mypy)
    assert core_modules(["edge.sync"], as_package) == [
        "edge.sync",
        "edge.sync.tempo",
        "edge.sync.x.y",
    ]


def test_the_core_list_is_read_from_pyproject(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[[tool.mypy.overrides]]\nmodule = 'edge.view'\n"
        "[[tool.mypy.overrides]]\nmodule = ['edge.a', 'edge.b.*']\nstrict = true\n",
        encoding="utf-8",
    )
    assert core_entries(pyproject) == ["edge.a", "edge.b.*"]
    assert "edge.settings" in CORE and "edge.config" in CORE and "edge.view" not in CORE
