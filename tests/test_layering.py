"""The pure core imports no I/O: no MQTT, pins, psutil, sockets, threads, time, processes.

Each core module is parsed with ``ast`` (never imported) and every ``import``,
``from ... import`` and literal ``__import__``/``importlib.import_module`` call is checked.
Only ``edge/clock.py`` may import ``time``: it is the one place the core reads a clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parent.parent / "edge"

#: The core as DESIGN.md draws it; these must exist.
REQUIRED_CORE = (
    "errors",
    "clock",
    "messages",
    "hlc",
    "sync",
    "score",
    "guard",
    "metrics",
    "status",
    "config",
    "profile",
)
#: Core modules that may exist (checked when they do).
OPTIONAL_CORE: tuple[str, ...] = ()

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
ALLOWED_EXCEPTIONS = {"clock": frozenset({"time"})}


def forbidden_imports(source: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Top-level names of forbidden modules imported by ``source``, as ``line: name``."""
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names = [node.module]
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
                    names = [first.value]
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN and top not in allowed:
                found.append(f"{node.lineno}: {name}")  # type: ignore[attr-defined]
    return found


def core_modules() -> list[str]:
    return [m for m in REQUIRED_CORE + OPTIONAL_CORE if (EDGE / f"{m}.py").exists()]


def test_the_required_core_modules_exist() -> None:
    missing = [m for m in REQUIRED_CORE if not (EDGE / f"{m}.py").exists()]
    assert not missing, f"core modules missing from edge/: {missing}"


@pytest.mark.parametrize("module", core_modules())
def test_core_module_imports_no_io(module: str) -> None:
    source = (EDGE / f"{module}.py").read_text(encoding="utf-8")
    bad = forbidden_imports(source, ALLOWED_EXCEPTIONS.get(module, frozenset()))
    assert not bad, f"edge/{module}.py imports I/O it must not: {bad}"


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
    assert forbidden_imports("import time\n", ALLOWED_EXCEPTIONS["clock"]) == []
    assert forbidden_imports("import socket\n", ALLOWED_EXCEPTIONS["clock"]) == ["1: socket"]
    assert "time" in (EDGE / "clock.py").read_text(encoding="utf-8")
