"""Shared fixtures: a private Mosquitto per test that asks for one, a fake clock."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.broker import BrokerUnavailable, Mosquitto, find_mosquitto, start_mosquitto
from edge.clock import FakeClock

ROOT = Path(__file__).resolve().parent.parent
# The agent's executables live beside the interpreter running the tests.
BIN = Path(sys.executable).parent


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, stopped by its pid afterwards."""
    try:
        find_mosquitto()
    except BrokerUnavailable as exc:
        if os.environ.get("BACKBEAT_REQUIRE_BROKER"):
            raise
        pytest.skip(str(exc))
    broker = start_mosquitto()
    try:
        yield broker
    finally:
        broker.close()
