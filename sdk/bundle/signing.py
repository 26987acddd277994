"""Ed25519 bundle signatures (cryptography): trusted public keys, checking the signature block.

Key files are PEM: the private key PKCS#8 (encrypted when a passphrase is given), written with
mode 0600 and never over an existing file; the public key SubjectPublicKeyInfo.  A key id is the
sha256 of the raw 32-byte public key.  Several signatures may sign one manifest (key rotation);
a bundle is accepted when at least one signature by a trusted key verifies and none by a trusted
key fails.  Making keys and signing are the build host's (:mod:`bitnet_edge.packagers.keys`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bitnet_edge.sdk.bundle.container import ALG_ED25519, SignatureEntry
from bitnet_edge.sdk.bundle.errors import KeyFileError, SignatureError

__all__ = [
    "key_id",
    "read_key_file",
    "load_public_key",
    "check_signatures",
]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def key_id(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(public.public_bytes(*_RAW)).digest()


def read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), "unreadable", exc.strerror or str(exc)) from None


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    data = read_key_file(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(str(path), "bad-format", str(exc).splitlines()[0] if str(exc) else "") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(str(path), "bad-format", f"not an Ed25519 key ({type(key).__name__})")
    return key


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
