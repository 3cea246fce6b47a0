"""Shared fixtures: a private Mosquitto per test that asks for one, a fake clock, gpiozero's
mock pins and hardware built on them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from edge.broker import BrokerUnavailable, Mosquitto, find_mosquitto, start_mosquitto
from edge.clock import FakeClock
from edge.hardware import Hardware, Popen
from edge.profile import Profile

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


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh MockFactory as gpiozero's default for one test; the previous default is put
    back afterwards (as gpiozero's own tests/conftest.py does), so no test sees another's
    pins."""
    saved = Device.pin_factory
    Device.pin_factory = mock = MockFactory()
    try:
        yield mock
    finally:
        mock.reset()
        Device.pin_factory = saved


@pytest.fixture
def mock_hardware(factory: MockFactory) -> Iterator[Callable[..., Hardware]]:
    """Builds ``Hardware(profile, clock=..., popen=...)`` on the test's mock pins; everything
    it built is closed after the test, even one that failed half-way."""
    built: list[Hardware] = []

    def build(
        profile: Profile,
        clock: Callable[[], float] = time.monotonic,
        popen: Popen = subprocess.Popen,
    ) -> Hardware:
        hardware = Hardware(profile, pin_factory=factory, clock=clock, popen=popen)
        built.append(hardware)
        return hardware

    try:
        yield build
    finally:
        for hardware in reversed(built):
            hardware.close()
