"""Signed beat frames and claims: the wire rules (edge.trust), the keys (edge.signing), the
trust stage in the runner, keygen, monitor --keys.

The golden vectors pin the contract other implementations follow: the key is RFC 8032's
test key 1 (its empty-message signature is the RFC's own), the frame is fixed, and the
signed bytes and the signature are written out here, so a change of the encoding fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from edge.beatmark import WRITE_EVERY_S, BeatMark, Followed
from edge.cli import main
from edge.clock import FakeClock
from edge.config import load_config
from edge.errors import ConfigError, ConfigProblems
from edge.hardware import Hardware
from edge.inbox import Inbound
from edge.messages import (
    BeatFrame,
    StatusClaim,
    decode_beat_frame_with_map,
    decode_status_claim,
    decode_status_claim_with_map,
    encode,
    to_wire,
)
from edge.monitor import FleetView
from edge.runner import Runner
from edge.signing import Keyring, SigningKey, keygen
from edge.sync import SyncState
from edge.testing.profiles import MOCK_LED, rule
from edge.topics import Topics
from edge.trust import (
    LOG_EVERY_S,
    BeatTrust,
    encode_signature,
    key_id,
    parse_security,
    public_key_from_pem,
    read_signature,
    sign_message,
    signed_bytes,
    verdict,
)

# RFC 8032 section 7.1, TEST 1.
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_EMPTY_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC_KID = "21fe31dfa154a261"

#: A frame as an upstream (Go) Pulse writes it: the tempo a JSON integer.
FRAME_JSON = (
    b'{"type":"backbeat.beatframe.v1","cluster_id":"bench","beat_index":42,"downbeat":true,'
    b'"phase":"plan","hlc":"7ffd:0001:beef","deadline_at":"2026-12-01T12:00:00.5Z",'
    b'"tempo_bpm":120,"window_id":"0123456789abcdef0123456789abcdef",'
    b'"metadata":{"pulse_version":"x/1"}}'
)
#: Its signed bytes: a 10-entry canonical CBOR map, keys by encoded length then bytes;
#: ``tempo_bpm`` is ``18 78`` (the integer 120), not a float.
FRAME_SIGNED_HEX = (
    "aa63686c636e376666643a303030313a626565666474797065756261636b626561742e626561746672616d"
    "652e763165706861736564706c616e68646f776e62656174f5686d65746164617461a16d70756c73655f76"
    "657273696f6e63782f316974656d706f5f62706d18786977696e646f775f69647820303132333435363738"
    "39616263646566303132333435363738396162636465666a626561745f696e646578182a6a636c75737465"
    "725f69646562656e63686b646561646c696e655f617476323032362d31322d30315431323a30303a30302e"
    "355a"
)
FRAME_SIG = "U8pe1xwrTE7R-eQY9IVN3FMrPdiIOfXlEOw8WkxE94uiua8jicaU9HEs2dj05mjbgTeZM96C-xUgCZW3vHObCQ"


def rfc_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(RFC_SECRET))


def other_key(seed: int = 7) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def with_sig(payload_json: bytes, sig: str, kid: str | None = None) -> bytes:
    """The JSON frame with ``metadata.sig`` (and ``sig_kid``) added, keeping every other
    value's JSON form (the tempo stays the integer ``120``)."""
    data = json.loads(payload_json)
    data.setdefault("metadata", {})["sig"] = sig
    if kid is not None:
        data["metadata"]["sig_kid"] = kid
    return json.dumps(data).encode()


def signed_json(key: SigningKey, payload_json: bytes = FRAME_JSON, kid: bool = True) -> bytes:
    _, data = decode_beat_frame_with_map(payload_json)
    sig = encode_signature(key.sign(signed_bytes(data)))
    return with_sig(payload_json, sig, key.kid if kid else None)


def trust(*keys: SigningKey, require: bool = True) -> BeatTrust:
    return BeatTrust(Keyring(k.public_raw for k in keys), require=require)


def check(stage: BeatTrust, payload: bytes) -> str | None:
    _, data = decode_beat_frame_with_map(payload)
    return stage.check(data)


# --------------------------------------------------------------------------- golden vectors


def test_the_key_is_plain_ed25519_and_its_kid_is_sha256_of_the_raw_key() -> None:
    key = rfc_key()
    assert key.public_raw == RFC_PUBLIC
    assert key.sign(b"") == RFC_EMPTY_SIG
    assert key.kid == key_id(RFC_PUBLIC) == hashlib.sha256(RFC_PUBLIC).hexdigest()[:16]
    assert key.kid == RFC_KID


def test_golden_json_frame_signed_bytes_and_signature() -> None:
    _, data = decode_beat_frame_with_map(FRAME_JSON)
    assert type(data["tempo_bpm"]) is int  # the decoded map keeps the JSON integer
    message = signed_bytes(data)
    assert message.hex() == FRAME_SIGNED_HEX
    assert bytes.fromhex("6974656d706f5f62706d1878") in message  # "tempo_bpm": 120 (int)
    assert encode_signature(rfc_key().sign(message)) == FRAME_SIG
    # sig and sig_kid are not covered; metadata's other keys are
    payload = with_sig(FRAME_JSON, FRAME_SIG, RFC_KID)
    _, signed = decode_beat_frame_with_map(payload)
    assert signed_bytes(signed).hex() == FRAME_SIGNED_HEX
    assert check(trust(rfc_key()), payload) is None
    assert check(trust(rfc_key()), with_sig(FRAME_JSON, FRAME_SIG)) is None  # no kid


def test_golden_cbor_frame_has_the_same_signed_bytes() -> None:
    data = json.loads(FRAME_JSON)
    data["metadata"].update(sig=FRAME_SIG, sig_kid=RFC_KID)
    # Not canonical on purpose (insertion order): the signature covers the map, not bytes.
    payload = cbor2.dumps(data)
    assert payload != cbor2.dumps(data, canonical=True)
    frame, decoded = decode_beat_frame_with_map(payload)
    assert frame.beat_index == 42 and type(decoded["tempo_bpm"]) is int
    assert signed_bytes(decoded).hex() == FRAME_SIGNED_HEX
    assert check(trust(rfc_key()), payload) is None


def test_the_dataclass_re_encoded_is_not_what_was_signed() -> None:
    # Why the trust stage needs the decoded map: the BeatFrame stores 120 as 120.0.
    frame, _ = decode_beat_frame_with_map(with_sig(FRAME_JSON, FRAME_SIG, RFC_KID))
    assert check(trust(rfc_key()), encode(frame, "json")) == "bad_signature"
    assert check(trust(rfc_key()), encode(frame, "cbor")) == "bad_signature"


def test_metadata_goes_when_only_the_signature_was_in_it() -> None:
    base = {"a": 1, "metadata": {"sig": "x", "sig_kid": "y"}}
    assert signed_bytes(base) == cbor2.dumps({"a": 1}, canonical=True)
    assert signed_bytes({"a": 1, "metadata": {"k": None, "sig": "x"}}) == cbor2.dumps(
        {"a": 1, "metadata": {"k": None}}, canonical=True
    )
    assert signed_bytes({"a": 1}) == cbor2.dumps({"a": 1}, canonical=True)


# --------------------------------------------------------------------------- rejections


def test_wrong_key_is_a_bad_signature() -> None:
    stage = trust(other_key())
    assert check(stage, signed_json(rfc_key())) == "bad_signature"
    assert check(stage, signed_json(rfc_key(), kid=False)) == "bad_signature"
    assert stage.rejected == {"bad_signature": 2}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(beat_index=43),
        lambda d: d.update(tempo_bpm=1000),
        lambda d: d.update(tempo_bpm=120.0),  # same number, other type: other bytes
        lambda d: d.update(downbeat=False),
        lambda d: d.update(hlc="7ffd:0001:beeF"),
        lambda d: d["metadata"].update(pulse_version="x/2"),
        lambda d: d["metadata"].update(extra=1),
        lambda d: d["metadata"].pop("pulse_version"),
        lambda d: d["metadata"].update(sig_kid="0000000000000000"),
    ],
)
def test_a_frame_modified_after_signing_is_a_bad_signature(change: Any) -> None:
    data = json.loads(signed_json(rfc_key()))
    change(data)
    stage = trust(rfc_key())
    assert check(stage, json.dumps(data).encode()) == "bad_signature"
    assert stage.rejected == {"bad_signature": 1}


@pytest.mark.parametrize(
    "sig",
    [
        FRAME_SIG + "==",  # padded
        FRAME_SIG[:-1],  # 85 characters
        FRAME_SIG[:-1] + "R",  # the same 64 bytes, non-canonical last character
        FRAME_SIG.replace("-", "+"),  # base64, not base64url
        "",
        42,
        None,
        ["x"],
    ],
)
def test_a_malformed_signature_is_a_bad_signature(sig: object) -> None:
    data = json.loads(FRAME_JSON)
    data["metadata"]["sig"] = sig
    assert check(trust(rfc_key()), json.dumps(data).encode()) == "bad_signature"
    assert read_signature(data["metadata"]) is None


@pytest.mark.parametrize("kid", [RFC_KID.upper(), RFC_KID[:15], 12, ""])
def test_a_malformed_kid_is_a_bad_signature(kid: object) -> None:
    data = json.loads(with_sig(FRAME_JSON, FRAME_SIG))
    data["metadata"]["sig_kid"] = kid
    assert check(trust(rfc_key()), json.dumps(data).encode()) == "bad_signature"


def test_the_last_character_must_be_canonical() -> None:
    assert read_signature({"sig": FRAME_SIG}) is not None
    assert FRAME_SIG[-1] == "Q"  # 0b010000: its low 4 bits are the padding


def test_unsigned_is_rejected_only_when_required() -> None:
    required, optional = trust(rfc_key()), trust(rfc_key(), require=False)
    assert check(required, FRAME_JSON) == "unsigned"
    assert check(optional, FRAME_JSON) is None
    no_metadata = json.loads(FRAME_JSON)
    del no_metadata["metadata"]
    assert check(required, json.dumps(no_metadata).encode()) == "unsigned"
    kid_only = json.loads(FRAME_JSON)
    kid_only["metadata"]["sig_kid"] = RFC_KID
    assert check(required, json.dumps(kid_only).encode()) == "unsigned"
    assert required.rejected == {"unsigned": 3} and optional.rejected == {}
    # a bad signature is rejected either way
    assert check(optional, signed_json(other_key())) == "bad_signature"
    assert check(optional, signed_json(rfc_key())) is None and optional.verified == 1


def test_key_rotation_either_key_verifies_and_the_kid_picks_the_key() -> None:
    old, new = rfc_key(), other_key()
    stage = trust(old, new)
    assert check(stage, signed_json(old)) is None
    assert check(stage, signed_json(new)) is None
    assert check(stage, signed_json(new, kid=False)) is None  # no kid: each key is tried
    # signed by the new key but naming the old one: only the named key is tried
    data = json.loads(signed_json(new))
    data["metadata"]["sig_kid"] = old.kid
    assert check(stage, json.dumps(data).encode()) == "bad_signature"
    # a kid no key has
    data["metadata"]["sig_kid"] = "0123456789abcdef"
    assert check(stage, json.dumps(data).encode()) == "bad_signature"
    assert Keyring(k.public_raw for k in (old, new)).kids == (old.kid, new.kid)


def test_rejections_are_logged_at_a_bounded_rate() -> None:
    stage = trust(rfc_key())
    assert stage.should_log("unsigned", 100.0)
    assert not stage.should_log("unsigned", 100.0 + LOG_EVERY_S - 0.01)
    assert stage.should_log("bad_signature", 100.5)  # each reason on its own
    assert stage.should_log("unsigned", 100.0 + LOG_EVERY_S)


# --------------------------------------------------------------------------- signing messages


def _frame(metadata: dict[str, object] | None) -> BeatFrame:
    return BeatFrame(
        cluster_id="bench",
        beat_index=7,
        downbeat=False,
        phase="execute",
        hlc="0001:0002:0003",
        deadline_at=datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=UTC),
        tempo_bpm=72.5,
        window_id="f" * 32,
        metadata=metadata,
    )


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("metadata", [None, {}, {"a": [1, 2.5, None, {"b": True}]}])
def test_a_signed_message_verifies_in_either_format(
    fmt: str, metadata: dict[str, object] | None
) -> None:
    key = rfc_key()
    signed = sign_message(_frame(metadata), key)
    assert signed.metadata is not None and signed.metadata["sig_kid"] == key.kid
    payload = encode(signed, fmt)  # type: ignore[arg-type]
    assert check(trust(key), payload) is None
    # signing again replaces the old signature, not adds to it
    again = sign_message(signed, other_key())
    assert check(trust(other_key()), encode(again, fmt)) is None  # type: ignore[arg-type]
    assert check(trust(key), encode(again, fmt)) == "bad_signature"  # type: ignore[arg-type]


def _claim(**metadata: object) -> StatusClaim:
    return StatusClaim(
        agent_id="bench:pi-01",
        beat_index=9,
        state="executing",
        hlc="0001:0000:0001",
        progress=1.0,
        metadata=metadata or None,
    )


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_claim_verdicts(fmt: str) -> None:
    key = rfc_key()
    ring = Keyring([key.public_raw])
    signed = encode(sign_message(_claim(seq=3), key), fmt)  # type: ignore[arg-type]
    assert verdict(decode_status_claim_with_map(signed)[1], ring) == "signed"
    assert verdict(decode_status_claim_with_map(encode(_claim(), fmt))[1], ring) == "unsigned"  # type: ignore[arg-type]
    tampered = to_wire(decode_status_claim(signed))
    tampered["state"] = "completed"
    assert verdict(tampered, ring) == "forged"
    other = encode(sign_message(_claim(seq=3), other_key()), fmt)  # type: ignore[arg-type]
    assert verdict(decode_status_claim_with_map(other)[1], ring) == "forged"


def test_monitor_marks_rows_signed_unsigned_forged() -> None:
    key = rfc_key()
    view = FleetView(Topics("backbeat", "bench"), keyring=Keyring([key.public_raw]))
    good = encode(sign_message(_claim(seq=1), key))
    view.feed("backbeat/bench/status/bench:pi-01", good, 1.0)
    unsigned = dataclasses.replace(_claim(), agent_id="bench:pi-02")
    view.feed("backbeat/bench/status/bench:pi-02", encode(unsigned), 1.0)
    forged = to_wire(decode_status_claim(good))
    forged["beat_index"] = 99
    view.feed("backbeat/bench/status/bench:pi-01", cbor2.dumps(forged), 2.0)
    assert view.last_verdict == "forged"
    a, b = view.rows["bench:pi-01"], view.rows["bench:pi-02"]
    assert (a.signature, a.forged, b.signature) == ("forged", 1, "unsigned")
    assert a.claim is not None and a.claim.beat_index == 9  # the forged claim is not shown
    table = view.table()
    assert "signature" in table and "forged claims: 1" in table and "unsigned" in table
    view.feed("backbeat/bench/status/bench:pi-01", good, 3.0)  # again: signed, but stale
    a = view.rows["bench:pi-01"]
    assert (a.signature, a.forged, a.refused) == ("signed", 1, {"stale": 1})
    # without keys the column is not there
    assert "signature" not in FleetView(Topics("backbeat", "bench")).table()


# --------------------------------------------------------------------------- keys and files


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        private, public, kid = keygen(tmp_path / "pulse")
    finally:
        os.umask(old)
    assert private == tmp_path / "pulse.pem" and public == tmp_path / "pulse.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = SigningKey.load(private)
    assert key.kid == kid == key_id(public_key_from_pem(public.read_bytes()))
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(FileExistsError):
        keygen(tmp_path / "pulse")
    assert SigningKey.load(private).kid == kid  # not overwritten


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "sig_kid" in out and (tmp_path / "k.pub.pem").is_file()
    assert main(["keygen", str(tmp_path / "k")]) == 3  # a file-system problem
    assert "exists" in capsys.readouterr().err
    # A directory that does not exist yet is made, private (the README's first step).
    assert main(["keygen", str(tmp_path / "new" / "pulse")]) == 0
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    for bad in ("", str(tmp_path / "k.pem"), str(tmp_path) + "/"):
        assert main(["keygen", bad]) == 2, bad
        assert "NAME must be a path without .pem" in capsys.readouterr().err


def test_a_signing_key_that_is_not_one_is_refused(tmp_path: Path) -> None:
    _, public, _ = keygen(tmp_path / "k")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    for path in (public, garbage, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match=str(path.name)):
            SigningKey.load(path, where="security.signing_key")


def test_pulse_refuses_a_bad_signing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    code = main(["pulse", "--cluster", "c", "--bpm", "60", "--signing-key", str(bad)])
    assert code == 2 and "bad.pem" in capsys.readouterr().err


def _rfc_public_pem() -> bytes:
    public = Ed25519PrivateKey.from_private_bytes(RFC_SECRET).public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_public_keys_read_without_cryptography_match_its_own_reading(tmp_path: Path) -> None:
    _, public, _ = keygen(tmp_path / "k")
    raw = public_key_from_pem(public.read_bytes())
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert raw == loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public_key_from_pem(_rfc_public_pem()) == RFC_PUBLIC
    with pytest.raises(ValueError, match="no PEM"):
        public_key_from_pem((tmp_path / "k.pem").read_bytes())  # the private key


def test_the_security_section(tmp_path: Path) -> None:
    keygen(tmp_path / "a")
    keygen(tmp_path / "b")
    problems = ConfigProblems()
    sec = parse_security(
        {"beat_keys": ["a.pub.pem", str(tmp_path / "b.pub.pem")]}, problems, tmp_path
    )
    assert not problems and sec.require_signed_beats is True
    assert [k.path for k in sec.beat_keys] == [tmp_path / "a.pub.pem", tmp_path / "b.pub.pem"]
    off = parse_security(
        {"beat_keys": ["a.pub.pem"], "require_signed_beats": False}, problems, tmp_path
    )
    assert not problems and off.require_signed_beats is False
    none = parse_security({}, problems, tmp_path)
    assert not problems and none.require_signed_beats is False and none.beat_keys == ()
    signer = parse_security({"signing_key": "a.pem"}, problems, tmp_path)
    assert not problems and signer.signing_key == tmp_path / "a.pem"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"beat_keys": "a.pub.pem"}, "security.beat_keys: must be an array of file paths"),
        ({"beat_keys": ["missing.pub.pem"]}, "security.beat_keys[0]: ... does not exist"),
        ({"beat_keys": ["a.pem"]}, "security.beat_keys[0]: "),
        ({"beat_keys": ["a.pub.pem", "a.pub.pem"]}, "security.beat_keys[1]: is the same key as"),
        ({"require_signed_beats": True}, "security.require_signed_beats: is true but no"),
        ({"require_signed_beats": "yes"}, "security.require_signed_beats: must be true or"),
        ({"signing_key": "nope.pem"}, "security.signing_key: ... nope.pem' does not exist"),
        ({"beat_key": ["a.pub.pem"]}, "security.beat_key: is not a known key"),
    ],
)
def test_security_problems_say_what_and_where(
    tmp_path: Path, table: dict[str, object], expected: str
) -> None:
    keygen(tmp_path / "a")
    problems = ConfigProblems()
    parse_security(table, problems, tmp_path)
    start, _, then = expected.partition(" ... ")  # "where ... what", when a path is between
    assert any(p.startswith(start) and then in p for p in problems.items), problems.items


# --------------------------------------------------------------------------- the runner

AGENT = (
    """
[agent]
id = "bench:pi-01"
cluster = "bench"
"""
    + MOCK_LED
    + rule("led", "toggle", offset=0.25, essential=True)
    + '[security]\nbeat_keys = ["pulse.pub.pem"]\n'
)
BPM = 120.0
BEAT = 60.0 / BPM


class SignedBench:
    """A runner with beat keys on a fake clock, fed signed (or not) frames."""

    def __init__(self, tmp_path: Path, factory: MockFactory, text: str = AGENT) -> None:
        private, _, _ = keygen(tmp_path / "pulse")
        self.key = SigningKey.load(private)
        (tmp_path / "agent.toml").write_text(text, encoding="utf-8")
        self.config = load_config(tmp_path / "agent.toml")
        self.clock = FakeClock(monotonic=500.0, wall=1_800_000_000.0)
        from edge.agent import security_for

        stage, _ = security_for(self.config.security)
        self.runner = Runner(
            self.config,
            Hardware(self.config.profile, pin_factory=factory, clock=self.clock.monotonic),
            self.clock,
            trust=stage,
        )
        self.start = self.clock.monotonic() + 0.1
        self.wall0 = self.clock.wall() - self.clock.monotonic()

    def frame(self, k: int, tempo: float = BPM, sign: bool = True, hlc: str | None = None) -> bytes:
        at = self.start + k * BEAT
        if hlc is None:  # the pulse's HLC: its wall clock at sending
            hlc = f"{int(self.wall0 + at) & 0xFFFF:04x}:0000:0001"
        frame = BeatFrame(
            cluster_id="bench",
            beat_index=k,
            downbeat=k % 4 == 0,
            phase="plan",
            hlc=hlc,
            deadline_at=datetime.fromtimestamp(self.wall0 + at + BEAT / 3, UTC),
            tempo_bpm=tempo,
            window_id=f"{k // 4:032x}",
        )
        return encode(sign_message(frame, self.key) if sign else frame, "json")

    def feed(self, payload: bytes, at: float) -> None:
        self.run_until(at)
        item = Inbound("message", at, self.clock.wall(), "backbeat/bench/beat", payload)
        self.runner.step(item, at)

    def run_until(self, t_end: float) -> None:
        while self.clock.monotonic() < t_end:
            now = self.clock.monotonic()
            self.clock.set(max(min(self.runner.next_deadline(now), t_end), now))
            self.runner.step(None, self.clock.monotonic())


def test_the_runner_rejects_unsigned_frames_before_the_hlc_and_the_follower(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = SignedBench(tmp_path, factory)
    for k in range(12):
        bench.feed(bench.frame(k, sign=False, hlc="ffff:0000:0001"), bench.start + k * BEAT)
    runner = bench.runner
    assert runner.follower.state is SyncState.ACQUIRING  # not one frame reached it
    assert runner.counters.fired == 0 and runner.follower.rejected == {}
    assert runner.trust is not None and runner.trust.rejected == {"unsigned": 12}
    # the HLC follows the local clock, not the frames' ffff seconds
    assert int(runner.hlc.now_wire().split(":")[0], 16) == int(bench.clock.wall()) & 0xFFFF
    # then the signed pulse: it locks and fires, and the claims count the unsigned ones
    for k in range(12, 40):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    bench.run_until(bench.start + 40 * BEAT)
    assert runner.follower.state is SyncState.LOCKED and runner.counters.fired >= 20  # type: ignore[comparison-overlap]
    assert runner.last_review is not None
    assert runner.last_review.frames_rejected == {"unsigned": 12}


def test_replayed_signed_frames_are_rejected_by_the_follower_with_their_reason(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = SignedBench(tmp_path, factory)
    for k in range(20):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    # the latest frame again, just after itself: a duplicate
    bench.feed(bench.frame(19), bench.start + 19 * BEAT + 0.01)
    # a frame of beat 5, replayed at beat 20's time, and then the real beat 20
    bench.feed(bench.frame(5), bench.start + 20 * BEAT - 0.05)
    bench.feed(bench.frame(20), bench.start + 20 * BEAT)
    for k in range(21, 30):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    # to just before beat 30's nominal start (the model's own start lies microseconds on
    # either side of it, with how often the loop happened to tick)
    bench.run_until(bench.start + 30 * BEAT - 0.001)
    runner = bench.runner
    assert runner.trust is not None and runner.trust.rejected == {}  # well signed...
    review = runner.last_review
    assert review is not None
    # ...and still rejected, each under its reason, in the claim: the latest frame again is
    # a duplicate; beat 5's, stamped 7 s before a fresh frame would be, a replay
    assert review.frames_rejected.get("duplicate") == 1, review.frames_rejected
    assert review.frames_rejected.get("replayed") == 1, review.frames_rejected
    assert runner.follower.state is SyncState.LOCKED and runner.last_beat == 29


def test_a_signed_pair_replayed_while_the_pulse_is_silent_is_refused(
    tmp_path: Path, factory: MockFactory
) -> None:
    bench = SignedBench(tmp_path, factory)
    for k in range(30):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    # The pulse goes quiet until the beat is lost; then an attacker replays two consecutive
    # signed frames it recorded 10 beats in, at their own spacing: a perfect "restart".
    replay_at = bench.start + 60 * BEAT
    bench.run_until(replay_at)
    assert bench.runner.follower.state is SyncState.LOST
    bench.feed(bench.frame(10), replay_at)
    bench.feed(bench.frame(11), replay_at + BEAT)
    bench.run_until(replay_at + 4 * BEAT)
    runner = bench.runner
    review = runner.last_review
    assert review is not None
    assert review.frames_rejected.get("replayed") == 2, review.frames_rejected
    assert runner.follower.reanchors == 0 and runner.follower.state is SyncState.LOST
    # ...and the real pulse, when it returns, is followed again.
    for k in range(70, 90):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    bench.run_until(bench.start + 90 * BEAT - 0.001)  # just before beat 90 (see above)
    assert runner.follower.state is SyncState.LOCKED and runner.last_beat == 89  # type: ignore[comparison-overlap]


def test_claims_are_signed_with_the_signing_key(tmp_path: Path, factory: MockFactory) -> None:
    private, public, _ = keygen(tmp_path / "agent")
    bench = SignedBench(tmp_path, factory, AGENT + f'signing_key = "{private.name}"\n')
    from edge.agent import security_for

    _, signer = security_for(bench.config.security)
    assert signer is not None
    bench.runner.claim_signer = signer
    published: list[bytes] = []
    bench.runner._submit_claim = lambda claim: published.append(bench.runner._encode_claim(claim))  # type: ignore[method-assign]
    for k in range(10):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    bench.run_until(bench.start + 10 * BEAT)
    ring = Keyring.from_files([public])
    assert published
    assert all(verdict(decode_status_claim_with_map(p)[1], ring) == "signed" for p in published)
    final = bench.runner.final_claim()
    assert (
        final is not None and verdict(decode_status_claim_with_map(final[1])[1], ring) == "signed"
    )


def test_security_waits_for_a_restart(tmp_path: Path) -> None:
    from dataclasses import replace

    from edge.config import apply_reload

    keygen(tmp_path / "pulse")
    (tmp_path / "agent.toml").write_text(AGENT, encoding="utf-8")
    old = load_config(tmp_path / "agent.toml")
    new = replace(old, security=replace(old.security, require_signed_beats=False))
    merged, kept = apply_reload(new, old)
    assert kept == ["[security]"] and merged.security == old.security


def test_keygen_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["keygen", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "NAME.pem" in out and "0600" in out


def test_an_agent_without_keys_never_loads_cryptography() -> None:
    # ~8 MB of RSS on a Pi that does not verify anything: imported only where keys are set.
    code = (
        "import sys, edge.agent, edge.cli, edge.runner, edge.preflight, edge.monitor\n"
        "from edge.trust import SecurityConfig\n"
        "edge.agent.security_for(SecurityConfig())\n"
        "assert 'cryptography' not in sys.modules, sorted(m for m in sys.modules if 'crypt' in m)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _fresh_runner(bench: SignedBench, factory: MockFactory) -> Runner:
    """The agent started again: a new runner on the same config, keys and clock."""
    from edge.agent import security_for

    stage, _ = security_for(bench.config.security)
    runner = Runner(
        bench.config,
        Hardware(bench.config.profile, pin_factory=factory, clock=bench.clock.monotonic),
        bench.clock,
        trust=stage,
    )
    bench.runner = runner
    return runner


def _restarted(
    bench: SignedBench, factory: MockFactory, state: Path, boot: str
) -> tuple[Runner, BeatMark]:
    """The agent stopped and started again on ``boot``, its beat mark in ``state``, as
    edge.agent wires it."""
    bench.runner.hardware.close()
    runner = _fresh_runner(bench, factory)
    mark = BeatMark(state, boot)
    kept = mark.load()
    assert kept is not None
    runner.intake.resume(kept.stamped, kept.arrived, kept.deadline, mark.same_boot(kept))
    runner.intake.on_followed = mark.note
    runner.on_side_work = mark.flush
    return runner, mark


@pytest.mark.parametrize("boot", ["same", "after a reboot"])
@pytest.mark.parametrize("played", ["from 10 beats in", "its last beats"])
def test_a_recording_played_to_an_agent_started_while_the_pulse_is_silent_is_refused(
    tmp_path: Path, factory: MockFactory, boot: str, played: str
) -> None:
    bench = SignedBench(tmp_path, factory)
    state = tmp_path / "state"
    state.mkdir()
    mark = BeatMark(state, "boot-1")
    assert mark.load() is None  # the first start: nothing kept yet
    bench.runner.intake.on_followed = mark.note
    bench.runner.on_side_work = mark.flush
    recorded = [bench.frame(k) for k in range(30)]
    for k, payload in enumerate(recorded):
        bench.feed(payload, bench.start + k * BEAT)
    mark.close()  # the agent stops, the pulse falls silent
    assert (state / "beat.newest").exists()
    # Started again; an attacker plays the recording at its own spacing: the beats from 10
    # on, or the last 6, 3 s after the stop (the freshest a recording can be).
    runner, _ = _restarted(bench, factory, state, "boot-1" if boot == "same" else "boot-2")
    start, frames = (
        (bench.start + 60 * BEAT, recorded[10:20])
        if played == "from 10 beats in"
        else (bench.start + 30 * BEAT + 3.0, recorded[24:])
    )
    for i, payload in enumerate(frames):
        bench.feed(payload, start + i * BEAT)
    bench.run_until(start + (len(frames) + 2) * BEAT)
    assert runner.follower.rejected.get("replayed") == len(frames), runner.follower.rejected
    assert runner.follower.state is SyncState.ACQUIRING and runner.counters.fired == 0
    # The real pulse, when it returns, is followed.
    for k in range(75, 95):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    bench.run_until(bench.start + 95 * BEAT - 0.001)
    assert runner.follower.state is SyncState.LOCKED and runner.counters.fired > 0  # type: ignore[comparison-overlap]
    runner.hardware.close()


def test_on_the_same_boot_frames_recorded_while_the_agent_was_down_are_refused_too(
    tmp_path: Path, factory: MockFactory
) -> None:
    # Newer than the mark, but the monotonic clock says how long ago they were fresh: the
    # check goes on across the restart as if there had been none.
    bench = SignedBench(tmp_path, factory)
    state = tmp_path / "state"
    state.mkdir()
    mark = BeatMark(state, "boot-1")
    bench.runner.intake.on_followed = mark.note
    bench.runner.on_side_work = mark.flush
    for k in range(30):
        bench.feed(bench.frame(k), bench.start + k * BEAT)
    mark.close()
    while_down = [bench.frame(k) for k in range(30, 40)]  # the pulse ran on, recorded
    runner, _ = _restarted(bench, factory, state, "boot-1")
    start = bench.start + 60 * BEAT
    for i, payload in enumerate(while_down):
        bench.feed(payload, start + i * BEAT)
    bench.run_until(start + 12 * BEAT)
    assert runner.follower.rejected.get("replayed") == 10, runner.follower.rejected
    assert runner.counters.fired == 0
    runner.hardware.close()


def test_the_beat_mark_is_written_as_it_moves_on_and_survives_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = datetime(2026, 12, 2, tzinfo=UTC)
    mark = BeatMark(tmp_path, "b1")
    mark.note(base, 100, 5.0)
    path = tmp_path / "beat.newest"
    assert not path.exists()  # noted beside the beat's work, written only in side work
    mark.flush()
    assert BeatMark(tmp_path, "b1").load() == Followed(base, 100, 5.0, "b1")
    mark.note(base + timedelta(seconds=1), 101, 6.0)  # not far enough on to be written
    mark.flush()
    assert BeatMark(tmp_path, "b1").load() == Followed(base, 100, 5.0, "b1")
    later = base + timedelta(seconds=WRITE_EVERY_S)
    mark.note(later, 105, 10.0)
    mark.flush()
    assert BeatMark(tmp_path, "b1").load() == Followed(later, 105, 10.0, "b1")
    assert BeatMark(tmp_path, "b1").same_boot(Followed(later, 105, 10.0, "b1"))
    assert not BeatMark(tmp_path, "b2").same_boot(Followed(later, 105, 10.0, "b1"))
    unknown = bytes(16).hex()  # where the system gives no boot id: never "the same"
    assert not BeatMark(tmp_path, unknown).same_boot(Followed(later, 105, 10.0, unknown))
    last = later + timedelta(seconds=1)
    mark.note(last, 106, 11.0)
    mark.note(base, 1, 1.0)  # an older one never goes back
    mark.close()  # at exit, the newest
    assert BeatMark(tmp_path, "b1").load() == Followed(last, 106, 11.0, "b1")
    for bad in ("not a time\n", "[]", '{"deadline": "x", "stamped": 1, "arrived": 1, "boot": ""}'):
        path.write_text(bad)
        with caplog.at_level(logging.WARNING, logger="edge.beatmark"):
            assert BeatMark(tmp_path, "b1").load() is None
        assert "is unreadable" in caplog.text
        caplog.clear()
    path.unlink()
    os.mkfifo(path)  # never waited on
    assert BeatMark(tmp_path, "b1").load() is None
    assert BeatMark(None, "b1").load() is None  # no state directory: nothing kept
