"""Which messages carry a good signature: the pure part of signed beat frames and claims.

The wire contract (a contract other implementations follow, so it is fixed):

* ``metadata.sig``: base64url without padding (86 characters) of the 64-byte Ed25519
  signature; ``metadata.sig_kid`` (optional): 16 lowercase hex digits, the first 8 bytes
  of SHA-256 of the signer's 32-byte raw public key.
* The signed bytes are ``cbor2.dumps(obj, canonical=True)`` (RFC 8949 deterministic CBOR)
  of the *decoded* message as a map, with ``sig`` and ``sig_kid`` removed from
  ``metadata`` and ``metadata`` removed when that leaves it empty. Values keep the types
  they were decoded with: a JSON ``120`` is the integer 120, not the float the BeatFrame
  stores, so the map comes from :func:`edge.messages.decode_beat_frame_with_map`.

The crypto itself is not here (it is not stdlib): :mod:`edge.signing` implements the
:class:`Verifier` and :class:`Signer` this module is handed. What is here: the signed
bytes, the ``sig`` fields, the beat trust stage (:class:`BeatTrust`: decode, then
authenticate, then the follower), the verdict on a claim, and the ``[security]`` config
section, whose public keys are read here (PEM SubjectPublicKeyInfo of RFC 8410, a fixed
44-byte DER), so ``backbeat-edge check`` reports a bad key file like any other problem.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import cbor2

from edge.config_file import FileRefused, Reader, read_checked
from edge.errors import ConfigProblems
from edge.messages import BeatFrame, StatusClaim, to_wire
from edge.settings import Section, flag, pathname

SIG = "sig"
SIG_KID = "sig_kid"
#: The reasons the trust stage rejects a beat frame with (counted in frames_rejected).
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
#: After the first rejection of a reason is logged, the next is logged no sooner than this.
LOG_EVERY_S = 10.0

_SIG_TEXT = re.compile(r"[A-Za-z0-9_-]{86}")
_KID_TEXT = re.compile(r"[0-9a-f]{16}")
#: RFC 8410: SubjectPublicKeyInfo of an Ed25519 key is this prefix and the 32 raw bytes.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----")

Verdict = Literal["signed", "unsigned", "forged"]
M = TypeVar("M", BeatFrame, StatusClaim)


class Verifier(Protocol):
    """Checks Ed25519 signatures against the keys it holds (``edge.signing.Keyring``)."""

    def verify(self, signature: bytes, message: bytes, kid: str | None) -> bool:
        """True if one of the keys signed ``message``: the key named by ``kid`` when one is
        given (none of that kid: False), else each key in turn."""
        ...


class Keys(Verifier, Protocol):
    """A Verifier that names the keys it holds (``edge.signing.Keyring``)."""

    @property
    def kids(self) -> tuple[str, ...]: ...

    def kid_for(self, agent_id: str) -> str | None:
        """The kid of the key that is ``agent_id``'s by name, if the ring knows one."""
        ...


class Signer(Protocol):
    """Signs with one Ed25519 private key (``edge.signing.SigningKey``)."""

    @property
    def kid(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


# --------------------------------------------------------------------------- the contract


def key_id(raw_public_key: bytes) -> str:
    """``sig_kid`` of a 32-byte raw Ed25519 public key: SHA-256's first 8 bytes, in hex."""
    return hashlib.sha256(raw_public_key).digest()[:8].hex()


def signed_bytes(data: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the message map, without ``metadata.sig`` and
    ``metadata.sig_kid`` (and without ``metadata`` when nothing else is in it), as
    deterministic CBOR."""
    out = dict(data)
    metadata = out.get("metadata")
    if isinstance(metadata, Mapping):
        rest = {k: v for k, v in metadata.items() if k != SIG and k != SIG_KID}
        if rest:
            out["metadata"] = rest
        else:
            del out["metadata"]
    return cbor2.dumps(out, canonical=True)


def encode_signature(signature: bytes) -> str:
    """``metadata.sig`` of a signature: base64url without padding."""
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def read_signature(metadata: Mapping[str, Any]) -> tuple[bytes, str | None] | None:
    """``(signature, kid)`` from a metadata map that holds ``sig``; None if either field
    breaks the contract (not a string, not 64 bytes, padded, not canonical base64url, a
    kid not of 16 lowercase hex digits)."""
    text, kid = metadata.get(SIG), metadata.get(SIG_KID)
    if type(text) is not str or _SIG_TEXT.fullmatch(text) is None:
        return None
    if kid is not None and (type(kid) is not str or _KID_TEXT.fullmatch(kid) is None):
        return None
    try:
        signature = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        return None
    # 86 characters carry 516 bits: the last 4 must be zero, so one signature has one text.
    if len(signature) != 64 or encode_signature(signature) != text:
        return None
    return signature, kid


def sign_message(message: M, signer: Signer) -> M:
    """``message`` with ``metadata.sig`` and ``metadata.sig_kid`` set by ``signer``.

    The signature covers the message's wire map, which is what a receiver decodes (every
    value the agent sends decodes to the type it was sent as)."""
    signature = signer.sign(signed_bytes(to_wire(message)))
    metadata = {
        **{k: v for k, v in (message.metadata or {}).items() if k != SIG and k != SIG_KID},
        SIG: encode_signature(signature),
        SIG_KID: signer.kid,
    }
    return dataclasses.replace(message, metadata=metadata)


def verdict(data: Mapping[str, Any], verifier: Verifier) -> Verdict:
    """What a decoded message's signature says: ``signed`` (one of the keys signed it),
    ``unsigned`` (no ``metadata.sig``), ``forged`` (a signature that does not verify)."""
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping) or SIG not in metadata:
        return "unsigned"
    parsed = read_signature(metadata)
    if parsed is None:
        return "forged"
    signature, kid = parsed
    return "signed" if verifier.verify(signature, signed_bytes(data), kid) else "forged"


def signer(data: Mapping[str, Any], verifier: Verifier, kids: tuple[str, ...]) -> str | None:
    """Which of ``kids`` signed the decoded message ``data`` (the first whose key verifies
    it), or None: unsigned, malformed, or signed by none of them. As in :func:`verdict`,
    ``metadata.sig_kid`` picks the key when there is one; else each of ``kids`` is tried."""
    metadata = data.get("metadata")
    parsed = read_signature(metadata) if isinstance(metadata, Mapping) else None
    if parsed is None:
        return None
    signature, claimed = parsed
    message = signed_bytes(data)
    for kid in kids if claimed is None else [kid for kid in kids if kid == claimed]:
        if verifier.verify(signature, message, kid):
            return kid
    return None


# --------------------------------------------------------------------------- beat trust


class BeatTrust:
    """The trust stage between decoding a beat frame and the follower.

    ``check`` returns None for a frame that may go on, else the reason it is rejected:
    ``unsigned`` (no signature while ``require`` is on) or ``bad_signature`` (a signature
    that is malformed or does not verify, whatever ``require`` says). A rejected frame is
    counted in :attr:`rejected`; it must reach neither the follower nor the HLC.
    """

    def __init__(self, verifier: Verifier, require: bool) -> None:
        self.verifier = verifier
        self.require = require
        self.rejected: dict[str, int] = {}
        self.verified = 0
        self._next_log: dict[str, float] = {}

    def check(self, data: Mapping[str, Any]) -> str | None:
        result = verdict(data, self.verifier)
        if result == "signed":
            self.verified += 1
            return None
        if result == "unsigned" and not self.require:
            return None
        reason = UNSIGNED if result == "unsigned" else BAD_SIGNATURE
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def should_log(self, reason: str, now: float) -> bool:
        """Whether to log this rejection: the first of each reason, then at most one per
        :data:`LOG_EVERY_S` (a flood of spoofed frames must not flood the journal)."""
        if now < self._next_log.get(reason, float("-inf")):
            return False
        self._next_log[reason] = now + LOG_EVERY_S
        return True


# --------------------------------------------------------------------------- [security]


@dataclass(frozen=True, slots=True)
class BeatKey:
    """One public key a beat frame may be signed with: where it was read, its raw bytes."""

    path: Path
    raw: bytes

    @property
    def kid(self) -> str:
        return key_id(self.raw)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``.

    ``beat_keys``: the public keys beat frames may be signed with (several for a key
    rotation). ``require_signed_beats``: reject unsigned frames (default: on when
    ``beat_keys`` is set). ``signing_key``: the private key the agent signs its claims
    with (PEM PKCS#8, loaded by :mod:`edge.signing`), or None to send them unsigned.
    """

    beat_keys: tuple[BeatKey, ...] = ()
    require_signed_beats: bool = False
    signing_key: Path | None = None


_SECURITY = Section(
    SecurityConfig,
    (flag("require_signed_beats"), pathname("signing_key", default=None)),
    also_known=("beat_keys",),
)


def public_key_from_pem(data: bytes) -> bytes:
    """The 32 raw bytes of an Ed25519 public key in PEM SubjectPublicKeyInfo
    (``-----BEGIN PUBLIC KEY-----``); raises ValueError saying what is wrong."""
    m = _PEM.search(data)
    if m is None:
        raise ValueError("holds no PEM '-----BEGIN PUBLIC KEY-----' block")
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("has a PUBLIC KEY block that is not valid base64") from None
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        raise ValueError("is not an Ed25519 public key (RFC 8410 SubjectPublicKeyInfo)")
    return der[len(_SPKI_PREFIX) :]


def _beat_keys(
    raw: object, base: Path, problems: ConfigProblems, where: str, read: Reader
) -> list[BeatKey]:
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        problems.add(where, f"must be an array of file paths, got {raw!r}"[:200])
        return []
    keys: list[BeatKey] = []
    for i, name in enumerate(raw):
        path = Path(name)
        if not path.is_absolute():
            path = base / path
        try:
            key = BeatKey(path, public_key_from_pem(read(path)))
        except FileRefused as exc:  # a FIFO, a device, a directory: never waited on
            problems.add(f"{where}[{i}]", str(exc))
            continue
        except OSError as exc:
            problems.add(f"{where}[{i}]", f"cannot read {str(path)!r}: {exc.strerror or exc}")
            continue
        except ValueError as exc:
            problems.add(f"{where}[{i}]", f"{str(path)!r} {exc}")
            continue
        same = [j for j, other in enumerate(keys) if other.raw == key.raw]
        if same:
            problems.add(f"{where}[{i}]", f"is the same key as {where}[{same[0]}]")
            continue
        keys.append(key)
    return keys


def parse_security(
    table: Mapping[str, object],
    problems: ConfigProblems,
    base: Path,
    where: str = "security",
    read: Reader = read_checked,
) -> SecurityConfig:
    """Read ``[security]``; key paths are relative to ``base`` (the config file's folder),
    each file read by ``read`` (see :mod:`edge.config_file`).

    Every problem goes to ``problems``: a key file that is missing or not an Ed25519
    public key, the same key twice, a signing key that is not a file, and
    ``require_signed_beats = true`` without ``beat_keys`` (every frame would be refused).
    """
    keys = _beat_keys(table.get("beat_keys", []), base, problems, f"{where}.beat_keys", read)
    config = _SECURITY.read(table, problems, where, beat_keys=tuple(keys))
    if "require_signed_beats" not in table:
        config = dataclasses.replace(config, require_signed_beats=bool(keys))
    elif config.require_signed_beats and not keys and not table.get("beat_keys"):
        problems.add(
            f"{where}.require_signed_beats",
            "is true but no beat_keys are set: every beat frame would be rejected",
        )
    signing = config.signing_key
    if signing is not None:
        if not signing.is_absolute():
            signing = base / signing
        try:
            read(signing)  # a regular file that can be read, or the reason it is not
        except FileRefused as exc:
            problems.add(f"{where}.signing_key", str(exc))
        except OSError as exc:
            problems.add(
                f"{where}.signing_key", f"cannot read {str(signing)!r}: {exc.strerror or exc}"
            )
        config = dataclasses.replace(config, signing_key=signing)
    return config
