"""Key files made on the build host (and, for a device key, on the device), and signing.

Ed25519 release signing keys: the private key PKCS#8 PEM (encrypted when a passphrase is given),
written with mode 0600 and never over an existing file; the public key SubjectPublicKeyInfo.
:func:`sign` makes the bundle's signature entries.  X25519 device keys (encrypted bundles, ADR
0011): :func:`generate_device_key`.  Checking signatures and opening a device key are the bundle
contract's (:mod:`bitnet_edge.sdk.bundle.signing`, :mod:`bitnet_edge.sdk.bundle.crypt`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bitnet_edge.sdk.bundle.container import ALG_ED25519, SignatureEntry
from bitnet_edge.sdk.bundle.crypt import device_key_id
from bitnet_edge.sdk.bundle.errors import KeyFileError
from bitnet_edge.sdk.bundle.signing import key_id, read_key_file

__all__ = [
    "KeyPair",
    "generate_keypair",
    "load_private_key",
    "sign",
    "DeviceKeyPair",
    "generate_device_key",
]


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str  # hex


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(str(path), "exists", "refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened


def generate_keypair(out_dir: str | os.PathLike, name: str = "signing",
                     passphrase: bytes | None = None) -> KeyPair:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(str(p), "exists", "refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    _write_new(priv_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc),
               0o600)
    pub = key.public_key()
    _write_new(pub_path, pub.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return KeyPair(priv_path, pub_path, key_id(pub).hex())


def load_private_key(path: str | os.PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    data = read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        reason = "passphrase-required" if b"ENCRYPTED" in data else "bad-format"
        raise KeyFileError(str(path), reason, str(exc)) from None
    except ValueError as exc:
        reason = "bad-passphrase" if b"ENCRYPTED" in data else "bad-format"
        raise KeyFileError(str(path), reason, str(exc).splitlines()[0] if str(exc) else "") from None
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(str(path), "bad-format", str(exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(str(path), "bad-format", f"not an Ed25519 key ({type(key).__name__})")
    return key


def sign(message: bytes, keys: Sequence[Ed25519PrivateKey]) -> list[SignatureEntry]:
    """One entry per key, sorted by key id (Ed25519 is deterministic: reproducible bundles)."""
    entries = [SignatureEntry(ALG_ED25519, key_id(k.public_key()), k.sign(message)) for k in keys]
    return sorted(entries, key=lambda e: e.key_id)


@dataclass(frozen=True)
class DeviceKeyPair:
    private_path: Path
    public_path: Path
    key_id: str  # hex


def generate_device_key(out_dir: str | os.PathLike, name: str = "device") -> DeviceKeyPair:
    """Write ``NAME.key`` (X25519 private, PKCS#8 PEM, mode 0600) and ``NAME.pub`` in ``out_dir``;
    never over an existing file.  Run it on the device: the private key need not travel."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(str(p), "exists", "refusing to overwrite a key")
    key = X25519PrivateKey.generate()
    _write_new(priv_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    pub = key.public_key()
    _write_new(pub_path, pub.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return DeviceKeyPair(priv_path, pub_path, device_key_id(pub))
