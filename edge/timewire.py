"""The time exchange's wire format: requests, responses, their signatures (pure).

The contract (other implementations answer it, so it is fixed; issue 16):

* An agent publishes on ``{prefix}/{cluster}/time/req/{agent_id}`` (QoS 0) the CBOR map
  ``{"v": 1, "id": n}``, ``n`` an unsigned integer (below 2**64) new for each request.
* A responder subscribed to ``{prefix}/{cluster}/time/req/+`` answers on
  ``{prefix}/{cluster}/time/resp/{agent_id}`` (QoS 0) with the CBOR map
  ``{"v": 1, "id": n, "t2": ..., "t3": ...}``: when it received the request and when it
  sent the answer, integer nanoseconds of the UTC wall clock its pulse's ``deadline_at``
  is written in (0 <= t2 <= t3 < 2**63).
* A signed response also carries ``sig`` (base64url without padding of the 64-byte Ed25519
  signature) and optionally ``sig_kid`` (16 lowercase hex digits), as frames carry them in
  their metadata (:mod:`edge.trust`); the signature covers the deterministic CBOR of the
  response map without those two keys. The map has no ``metadata``, so they sit at its top.

Decoding is strict: one CBOR map, no tags, no bytes after it, no key but those above,
integers that are integers (not floats, not booleans). A payload that breaks the contract
raises :class:`edge.errors.FrameError` naming the field and what was wrong.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cbor2

from edge.errors import FrameError
from edge.trust import SIG, SIG_KID, Signer, Verifier, encode_signature, read_signature

VERSION = 1
#: Ids and times are CBOR's native unsigned integers; times are nanoseconds since 1970.
MAX_ID = 2**64 - 1
MAX_NS = 2**63 - 1
#: A request is ~10 bytes and a signed response ~150; anything far bigger is not one.
MAX_PAYLOAD = 512

_REQUEST_KEYS = frozenset({"v", "id"})
_RESPONSE_KEYS = frozenset({"v", "id", "t2", "t3"})

Verdict = Literal["signed", "unsigned", "forged"]


@dataclass(frozen=True, slots=True)
class TimeRequest:
    """``{"v": 1, "id": n}``."""

    id: int


@dataclass(frozen=True, slots=True)
class TimeResponse:
    """``{"v": 1, "id": n, "t2": ..., "t3": ...}`` and its signature fields, if any."""

    id: int
    t2: int
    t3: int
    sig: str | None = None
    sig_kid: str | None = None

    def wire_map(self, signed: bool = True) -> dict[str, Any]:
        """The map on the wire (without ``sig``/``sig_kid`` when ``signed`` is False)."""
        out: dict[str, Any] = {"v": VERSION, "id": self.id, "t2": self.t2, "t3": self.t3}
        if signed and self.sig is not None:
            out[SIG] = self.sig
            if self.sig_kid is not None:
                out[SIG_KID] = self.sig_kid
        return out


# --------------------------------------------------------------------------- encoding


def encode_request(request_id: int) -> bytes:
    """The request payload for ``request_id``; raises ValueError for an id out of range."""
    _check_uint("id", request_id, MAX_ID, ValueError)
    return cbor2.dumps({"v": VERSION, "id": request_id}, canonical=True)


def signed_bytes(response: TimeResponse) -> bytes:
    """The bytes a response's signature covers: its map without ``sig``/``sig_kid``."""
    return cbor2.dumps(response.wire_map(signed=False), canonical=True)


def make_response(request_id: int, t2: int, t3: int, signer: Signer | None = None) -> TimeResponse:
    """A response, signed by ``signer`` when one is given; raises ValueError for values the
    contract does not allow."""
    _check_uint("id", request_id, MAX_ID, ValueError)
    _check_uint("t2", t2, MAX_NS, ValueError)
    _check_uint("t3", t3, MAX_NS, ValueError)
    if t3 < t2:
        raise ValueError(f"t3 must not be before t2, got t2={t2} t3={t3}")
    response = TimeResponse(request_id, t2, t3)
    if signer is None:
        return response
    signature = encode_signature(signer.sign(signed_bytes(response)))
    return TimeResponse(request_id, t2, t3, signature, signer.kid)


def encode_response(response: TimeResponse) -> bytes:
    return cbor2.dumps(response.wire_map(), canonical=True)


# --------------------------------------------------------------------------- decoding


def decode_request(payload: bytes) -> TimeRequest:
    """A request from its payload; raises FrameError saying what is wrong."""
    data = _load_map(payload, "time request")
    _no_other_keys(data, _REQUEST_KEYS, "time request")
    _check_version(data, "time request")
    return TimeRequest(_field_uint(data, "id", MAX_ID, "time request"))


def decode_response(payload: bytes) -> TimeResponse:
    """A response from its payload; raises FrameError saying what is wrong. A ``sig`` is
    checked for form here (see :func:`response_verdict` for whether it verifies)."""
    what = "time response"
    data = _load_map(payload, what)
    _no_other_keys(data, _RESPONSE_KEYS | {SIG, SIG_KID}, what)
    _check_version(data, what)
    request_id = _field_uint(data, "id", MAX_ID, what)
    t2 = _field_uint(data, "t2", MAX_NS, what)
    t3 = _field_uint(data, "t3", MAX_NS, what)
    if t3 < t2:
        raise FrameError(f"{what}: t3 ({t3}) is before t2 ({t2})", "t3")
    sig, kid = data.get(SIG), data.get(SIG_KID)
    if kid is not None and sig is None:
        raise FrameError(f"{what}: sig_kid without sig", SIG_KID)
    if sig is not None and read_signature(data) is None:
        raise FrameError(
            f"{what}: sig/sig_kid malformed (sig: 86 base64url characters, "
            "sig_kid: 16 lowercase hex digits)",
            SIG,
        )
    return TimeResponse(request_id, t2, t3, sig, kid)


def response_verdict(response: TimeResponse, verifier: Verifier) -> Verdict:
    """``signed`` (one of the keys signed it), ``unsigned`` or ``forged``."""
    if response.sig is None:
        return "unsigned"
    parsed = read_signature(response.wire_map())
    if parsed is None:
        return "forged"
    signature, kid = parsed
    return "signed" if verifier.verify(signature, signed_bytes(response), kid) else "forged"


# --------------------------------------------------------------------------- helpers


def _reject_tag(*_: object) -> object:
    raise ValueError("CBOR tags are not part of the contract")


#: The tags cbor2 decodes itself (dates, bignums, references, sets, self-described CBOR...):
#: naming them routes them to _reject_tag too, as ``tag_hook`` does every other tag.
_NO_TAGS = {
    tag: _reject_tag
    for tag in (
        *(0, 1, 100, 1004, 2, 3, 4, 5, 30, 43000, 25, 28, 29, 256),
        *(35, 36, 37, 52, 54, 258, 260, 261, 55799),
    )
}


def _load_map(payload: bytes, what: str) -> dict[Any, Any]:
    if not isinstance(payload, bytes | bytearray):
        raise FrameError(f"{what}: payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"{what}: payload of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    if not payload:
        raise FrameError(f"{what}: empty payload")
    stream = io.BytesIO(payload)
    try:
        data = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            tag_hook=_reject_tag,
            allow_duplicate_keys=False,
            max_depth=4,
        ).decode()
    except Exception as exc:  # cbor2 raises several types for bad input
        raise FrameError(f"{what}: payload is not valid CBOR: {exc}") from None
    if stream.tell() != len(payload):
        raise FrameError(f"{what}: payload has bytes after the CBOR item")
    if not isinstance(data, dict):
        raise FrameError(f"{what}: payload must be a CBOR map, got {type(data).__name__}")
    return data


def _no_other_keys(data: Mapping[Any, Any], allowed: frozenset[str], what: str) -> None:
    extra = sorted(repr(k) for k in data if k not in allowed)
    if extra:
        raise FrameError(f"{what}: unknown key(s) {', '.join(extra)[:120]}", "payload")


def _check_version(data: Mapping[Any, Any], what: str) -> None:
    if "v" not in data:
        raise FrameError(f"{what}: v is missing", "v")
    v = data["v"]
    if type(v) is not int or v != VERSION:
        raise FrameError(f"{what}: v must be {VERSION}, got {v!r}"[:160], "v")


def _field_uint(data: Mapping[Any, Any], name: str, top: int, what: str) -> int:
    if name not in data:
        raise FrameError(f"{what}: {name} is missing", name)
    value = data[name]
    _check_uint(name, value, top, FrameError, what)
    return int(value)


def _check_uint(
    name: str, value: object, top: int, error: type[ValueError], what: str = ""
) -> None:
    prefix = f"{what}: " if what else ""
    if type(value) is not int:
        message = f"{prefix}{name} must be an unsigned integer, got {type(value).__name__}"
    elif not 0 <= value <= top:
        message = f"{prefix}{name} must be between 0 and {top}, got {value}"
    else:
        return
    if error is FrameError:
        raise FrameError(message, name)
    raise error(message)
