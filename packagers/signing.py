"""Ed25519 signing keys and bundle signatures (cryptography).

Key files are PEM: the private key PKCS#8 (encrypted when a passphrase is given), written with
mode 0600 and never over an existing file; the public key SubjectPublicKeyInfo.  A key id is the
sha256 of the raw 32-byte public key.  Several signatures may sign one manifest (key rotation);
a bundle is accepted when at least one signature by a trusted key verifies and none by a trusted
key fails.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bitnet_edge.packagers.container import ALG_ED25519, SignatureEntry
from bitnet_edge.packagers.errors import KeyFileError, SignatureError

__all__ = [
    "KeyPair",
    "key_id",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "sign",
    "check_signatures",
]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str  # hex


def key_id(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(public.public_bytes(*_RAW)).digest()


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


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), "unreadable", exc.strerror or str(exc)) from None


def _check_private(path: Path) -> None:
    """A private key file readable or writable by group or others is refused (a signing key that
    other local users can read is a leaked key, passphrase or not)."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise KeyFileError(str(path), "unreadable", exc.strerror or str(exc)) from None
    if mode & 0o077:
        raise KeyFileError(str(path), "insecure-permissions",
                           f"mode {mode:04o}; a private signing key must be 0600 or stricter (chmod 600 {path})")


def load_private_key(path: str | os.PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key (PEM, PKCS#8); KeyFileError when the file is readable by group or
    others (``insecure-permissions``), unreadable, encrypted without the passphrase, or not one."""
    _check_private(Path(path))
    data = _read(Path(path))
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


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    data = _read(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(str(path), "bad-format", str(exc).splitlines()[0] if str(exc) else "") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(str(path), "bad-format", f"not an Ed25519 key ({type(key).__name__})")
    return key


def sign(message: bytes, keys: Sequence[Ed25519PrivateKey]) -> list[SignatureEntry]:
    """One entry per key, sorted by key id (Ed25519 is deterministic: reproducible bundles)."""
    entries = [SignatureEntry(ALG_ED25519, key_id(k.public_key()), k.sign(message)) for k in keys]
    return sorted(entries, key=lambda e: e.key_id)


def check_signatures(message: bytes, entries: Iterable[SignatureEntry],
                     trusted: Sequence[Ed25519PublicKey]) -> list[str]:
    """Hex key ids of the trusted keys whose signatures verify; :class:`SignatureError` unless at
    least one does and none by a trusted key fails."""
    entries = list(entries)
    if not entries:
        raise SignatureError("no-signatures", "the bundle carries no signature")
    by_id = {key_id(k): k for k in trusted}
    good, bad = [], []
    for e in entries:
        key = by_id.get(e.key_id)
        if key is None or e.algorithm != ALG_ED25519:
            continue
        try:
            key.verify(e.signature, message)
            good.append(e.key_id.hex())
        except InvalidSignature:
            bad.append(e.key_id.hex())
    if bad:
        raise SignatureError("bad-signature",
                             f"the signature by trusted key {bad[0][:16]} does not match the manifest "
                             "(the manifest or the signature was altered)", bad)
    if not good:
        present = [e.key_id.hex() for e in entries]
        raise SignatureError("untrusted-key",
                             "no signature by a trusted key; signed by " + ", ".join(k[:16] for k in present),
                             present)
    return good
