"""What run needs, checked before a pin is touched: broker files, pins on the board under
every gpiozero spelling, every device buildable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import BrokerConfig, load_config
from edge.errors import ConfigError, ConfigProblems
from edge.preflight import check_broker_files, check_build, check_pins, gpio_name, preflight
from edge.profile import DeviceSpec, Profile

BOARD = MockFactory().board_info  # gpiozero's own data for the mock's board (a Pi 3B)


def _profile(*pins: int | str, kind: str = "led") -> Profile:
    devices = {f"d{i}": DeviceSpec(name=f"d{i}", kind=kind, pin=pin) for i, pin in enumerate(pins)}
    return Profile(pin_factory="mock", devices=MappingProxyType(devices))


@pytest.mark.parametrize("spelling", [17, "17", "GPIO17", "BCM17", "BOARD11", "J8:11", "WPI0"])
def test_every_gpiozero_spelling_of_a_pin_is_one_pin(spelling: int | str) -> None:
    assert gpio_name(spelling, BOARD) == "GPIO17"


@pytest.mark.parametrize("spelling", ["BOARD11", "J8:11", "WPI0", "GPIO17", "BCM17"])
def test_two_spellings_of_one_pin_are_a_duplicate(spelling: str) -> None:
    problems = ConfigProblems()
    assert not check_pins(_profile(17, spelling), BOARD, problems)
    assert problems.items == [
        f"devices.d1.pin: {spelling!r} is GPIO17, already used by devices.d0 (given as 17)"
    ]


@pytest.mark.parametrize("pin", ["GPIO99", 99, "BOARD6", "J8:1", "BOARD41", "WPI99", "gpio17"])
def test_a_pin_the_board_does_not_have_is_refused(pin: int | str) -> None:
    problems = ConfigProblems()
    assert not check_pins(_profile(27, pin), BOARD, problems)
    assert problems.items == [
        f"devices.d1.pin: {pin!r} is not a GPIO pin of a Raspberry Pi 3B (revision a02082)"
    ]


def test_distinct_pins_in_any_spelling_pass() -> None:
    problems = ConfigProblems()
    assert check_pins(_profile(17, "BOARD13", "J8:15", "WPI4", "BCM24"), BOARD, problems)
    assert problems.items == []


def test_a_device_that_cannot_be_built_is_named() -> None:
    spec = DeviceSpec(
        name="beeper", kind="tone", pin=18, options=MappingProxyType({"mid_tone": "Z9"})
    )
    profile = Profile(pin_factory="mock", devices=MappingProxyType({"beeper": spec}))
    problems = ConfigProblems()
    check_build(profile, BOARD, problems)
    assert len(problems.items) == 1 and problems.items[0].startswith(
        "devices.beeper: cannot be built:"
    ), problems.items


def test_the_mock_build_touches_no_real_pin_and_is_closed() -> None:
    profile = _profile(17, 27)
    check_build(profile, BOARD, ConfigProblems())
    check_build(profile, BOARD, ConfigProblems())  # the pins were released
    factory = MockFactory()
    problems = ConfigProblems()
    check_build(profile, factory.board_info, problems)
    assert problems.items == []


# ---------------------------------------------------------------------- broker files


def _broker(**files: Path) -> BrokerConfig:
    return BrokerConfig(username="u", **files)  # type: ignore[arg-type]


def _problems(broker: BrokerConfig) -> list[str]:
    problems = ConfigProblems()
    check_broker_files(broker, problems)
    return problems.items


def test_a_missing_password_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "broker-password"
    assert _problems(_broker(password_file=path)) == [
        f"broker.password_file: {str(path)!r} does not exist"
    ]
    path.write_text("secret\n")
    assert _problems(_broker(password_file=path)) == []


def test_a_directory_or_fifo_as_password_file_is_refused(tmp_path: Path) -> None:
    assert _problems(_broker(password_file=tmp_path)) == [
        f"broker.password_file: {str(tmp_path)!r} is a directory, not a file"
    ]
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    assert _problems(_broker(password_file=fifo)) == [
        f"broker.password_file: {str(fifo)!r} is a FIFO (named pipe), not a regular file"
    ]


def test_the_systemd_credential_is_found_first(tmp_path: Path, credentials: Path) -> None:
    (credentials / "broker-password").write_text("pw")
    # the configured path does not exist here, the credential does: run would start
    assert _problems(_broker(password_file=tmp_path / "etc" / "broker-password")) == []


def test_a_garbage_ca_file_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("this is no certificate\n")
    broker = BrokerConfig(url="mqtts://h", tls=True, ca_file=ca)
    (problem,) = _problems(broker)
    assert problem.startswith(f"broker.ca_file: {str(ca)!r} holds no certificate ssl can load")
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    (problem,) = _problems(broker)
    assert problem.startswith(f"broker.ca_file: {str(ca)!r} holds no certificate ssl can load")
    assert _problems(BrokerConfig(url="mqtts://h", tls=True, ca_file=tmp_path)) == [
        f"broker.ca_file: {str(tmp_path)!r} is a directory, not a file"
    ]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_good_ca_and_client_certificate_pass_and_a_wrong_key_does_not(tmp_path: Path) -> None:
    def make(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-nodes", "-days", "1"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", f"/CN={name}"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return cert, key

    cert, key = make("a")
    _, other_key = make("b")
    good = BrokerConfig(url="mqtts://h", tls=True, ca_file=cert, cert_file=cert, key_file=key)
    assert _problems(good) == []
    wrong = BrokerConfig(
        url="mqtts://h", tls=True, ca_file=cert, cert_file=cert, key_file=other_key
    )
    (problem,) = _problems(wrong)
    assert problem.startswith(f"broker.cert_file: {str(cert)!r} and key_file {str(other_key)!r}")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("nope")
    (problem,) = _problems(
        BrokerConfig(url="mqtts://h", tls=True, cert_file=cert, key_file=garbage)
    )
    assert problem.startswith("broker.cert_file:")


# ---------------------------------------------------------------------- all of it


def test_preflight_lists_every_problem_of_a_config(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(
        '[agent]\nid = "a"\ncluster = "c"\n'
        f'[broker]\nusername = "u"\npassword_file = "{tmp_path / "missing"}"\n'
        '[gpio]\npin_factory = "mock"\n'
        '[devices.a]\nkind = "led"\npin = 17\n'
        '[devices.b]\nkind = "relay"\npin = "BOARD11"\n'
        '[devices.c]\nkind = "led"\npin = "GPIO99"\n'
    )
    config = load_config(tmp_path / "agent.toml")
    with pytest.raises(ConfigError) as caught:
        preflight(config)
    assert caught.value.problems == (
        f"broker.password_file: {str(tmp_path / 'missing')!r} does not exist",
        "devices.b.pin: 'BOARD11' is GPIO17, already used by devices.a (given as 17)",
        "devices.c.pin: 'GPIO99' is not a GPIO pin of a Raspberry Pi 3B (revision a02082)",
    )
