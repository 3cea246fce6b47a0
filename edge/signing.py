"""Ed25519 keys through the ``cryptography`` library: load, sign, verify, make key pairs.

The adapter behind :mod:`edge.trust` (which holds the wire rules and never imports this):
:class:`Keyring` is its Verifier, :class:`SigningKey` its Signer, :func:`keygen` writes
the pair ``backbeat-edge keygen NAME`` makes. Public keys are PEM SubjectPublicKeyInfo
(``NAME.pub.pem``), private keys PEM PKCS#8 without a passphrase (``NAME.pem``, mode
0600), what ``openssl genpkey -algorithm ed25519`` writes too.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import ConfigError
from edge.files import FileRefused, read_regular
from edge.trust import key_id, public_key_from_pem

log = logging.getLogger(__name__)

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class Keyring:
    """The public keys signatures are checked against, by ``sig_kid``."""

    def __init__(self, raw_keys: Iterable[bytes], names: Mapping[str, bytes] | None = None) -> None:
        self._keys: list[tuple[str, Ed25519PublicKey]] = [
            (key_id(raw), Ed25519PublicKey.from_public_bytes(raw)) for raw in raw_keys
        ]
        #: The kid of each key by the name of its file (``NAME.pub.pem``), when read from one.
        self.named: dict[str, str] = {name: key_id(raw) for name, raw in (names or {}).items()}

    def kid_for(self, agent_id: str) -> str | None:
        """The kid of the key named like ``agent_id`` (``bench:pi-01.pub.pem``) or like its
        instance (``pi-01.pub.pem``, the part after the last ``:``), if the ring has one:
        that agent's key, whatever signs first."""
        return self.named.get(agent_id) or self.named.get(agent_id.rpartition(":")[2])

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Keyring:
        """Read PEM public keys; raises ConfigError naming each file that is not one."""
        raws, problems = [], []
        names: dict[str, bytes] = {}
        for path in paths:
            try:
                raws.append(public_key_from_pem(read_regular(Path(path))))
                name = Path(path).name
                if name.endswith(".pub.pem"):
                    names[name[: -len(".pub.pem")]] = raws[-1]
            except FileRefused as exc:  # a FIFO, a device, a directory: never waited on
                problems.append(str(exc))
            except OSError as exc:
                problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
        if problems:
            raise ConfigError(problems, "keys")
        return cls(raws, names)

    @classmethod
    def from_directory(cls, directory: Path) -> Keyring:
        """Every ``*.pub.pem`` in ``directory`` (what ``monitor --keys DIR`` reads)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError([f"{directory}: is not a directory"], "--keys")
        paths = sorted(directory.glob("*.pub.pem"))
        if not paths:
            raise ConfigError([f"{directory}: holds no *.pub.pem public key"], "--keys")
        return cls.from_files(paths)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(kid for kid, _ in self._keys)

    def verify(self, signature: bytes, message: bytes, kid: str | None) -> bool:
        for own, key in self._keys:
            if kid is not None and own != kid:
                continue
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return True
        return False


class SigningKey:
    """One Ed25519 private key, and the kid of its public half."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes(*_RAW)
        self._kid = key_id(self.public_raw)

    @property
    def kid(self) -> str:
        return self._kid

    @classmethod
    def load(cls, path: Path, where: str = "signing key") -> SigningKey:
        """Read a PEM PKCS#8 Ed25519 private key; raises ConfigError saying what is wrong.
        A key others may read is used, with a warning."""
        path = Path(path)
        try:
            # Like every operator file: a FIFO or /dev/zero named here must not hang us.
            data = read_regular(path)
            mode = path.stat().st_mode
        except FileRefused as exc:
            raise ConfigError([f"{where}: {exc}"]) from None
        except OSError as exc:
            raise ConfigError(
                [f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}"]
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                [f"{where}: {str(path)!r} is not an unencrypted PEM private key ({exc})"]
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                [f"{where}: {str(path)!r} is a {type(key).__name__}, not an Ed25519 key"]
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s %s is readable by others (mode %o); chmod 600 it", where, path, mode)
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def keygen(name: str | Path) -> tuple[Path, Path, str]:
    """Write a new key pair: ``NAME.pem`` (private, mode 0600) and ``NAME.pub.pem``.

    Returns both paths and the kid. A missing directory is made (mode 0700: it holds a
    private key). Never overwrites: an existing file raises FileExistsError and nothing is
    written. A NAME that is empty, ends in ``/`` or ``.pem`` raises ValueError (it would
    write hidden or doubled names)."""
    base = str(name)
    if not Path(base).name or base.endswith(("/", ".pem")):
        raise ValueError(f"NAME must be a path without .pem (e.g. keys/pulse), got {base!r}")
    private_path, public_path = Path(base + ".pem"), Path(base + ".pub.pem")
    private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL and the mode at creation: the private key is never readable by others.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    os.chmod(private_path, 0o600)  # whatever the umask did
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(public_pem)
    return private_path, public_path, key_id(key.public_key().public_bytes(*_RAW))
