"""Sealing a bundle's payload to device X25519 keys (the build host's half of ADR 0011).

The scheme and the opening side are in :mod:`bitnet_edge.sdk.bundle.crypt`; this module wraps
one random content key per bundle file for each recipient and seals each section with it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bitnet_edge.sdk.bundle.crypt import (
    AEADS,
    DEFAULT_AEAD,
    DEFAULT_CHUNK_BYTES,
    SCHEME,
    TAG_BYTES,
    chunk_nonce,
    device_key_id,
    raw_public,
    section_cipher,
    wrap_kek,
)
from bitnet_edge.sdk.bundle.errors import KeyFileError
from bitnet_edge.sdk.bundle.manifest import EncryptionInfo, Recipient

__all__ = ["load_device_public_key", "Sealer", "sealed_size"]


def load_device_public_key(path: str | os.PathLike) -> X25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), "unreadable", exc.strerror or str(exc)) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(str(path), "bad-format", str(exc).splitlines()[0] if str(exc) else "") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(str(path), "bad-format", f"not an X25519 device key ({type(key).__name__}); make one "
                                                    "with `bitnet-edge keys generate-device`")
    return key


def sealed_size(n: int, chunk_bytes: int) -> int:
    """Stored bytes of ``n`` bytes sealed in chunks of ``chunk_bytes`` (an empty input is one empty chunk)."""
    return n + TAG_BYTES * max(1, -(-n // chunk_bytes))


class Sealer:
    """One bundle file's content key, salt and recipients.  Make a new one per file: a section
    name sealed twice under one Sealer would reuse nonces."""

    def __init__(self, recipients: Sequence[X25519PublicKey], aead: str = DEFAULT_AEAD,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if not recipients:
            raise ValueError("at least one recipient is needed")
        if aead not in AEADS:
            raise ValueError(f"unknown AEAD {aead!r}; known: {', '.join(AEADS)}")
        self.aead, self.chunk_bytes = aead, chunk_bytes
        self._key, self.salt = secrets.token_bytes(32), secrets.token_bytes(32)
        self._sealed: set[str] = set()
        entries: dict[str, Recipient] = {}
        for pub in recipients:
            rid = device_key_id(pub)
            eph = X25519PrivateKey.generate()
            eph_pub = raw_public(eph.public_key())
            kek = wrap_kek(eph.exchange(pub), eph_pub, raw_public(pub), aead)
            wrapped = AEADS[aead](kek).encrypt(b"\x00" * 12, self._key, self.salt + bytes.fromhex(rid))
            entries[rid] = Recipient(key_id=rid, ephemeral=eph_pub.hex(), wrapped_key=wrapped.hex())
        self.info = EncryptionInfo(scheme=SCHEME, aead=aead, chunk_bytes=chunk_bytes, salt=self.salt.hex(),
                                   recipients=[entries[k] for k in sorted(entries)])

    def seal(self, name: str, data: bytes) -> bytes:
        """The stored bytes of section ``name``: ``data`` in sealed chunks."""
        if name in self._sealed:
            raise ValueError(f"section {name!r} sealed twice with one content key")
        self._sealed.add(name)
        c = section_cipher(self.aead, self._key, self.salt, name)
        step = self.chunk_bytes
        n = max(1, -(-len(data) // step))
        return b"".join(c.encrypt(chunk_nonce(i, i == n - 1), data[i * step:(i + 1) * step], None) for i in range(n))
