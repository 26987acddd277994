"""Encrypted bundles (docs/adr/0011-encrypted-bundles.md): the payload sealed to device X25519 keys.

Multi-recipient, like RAUC's crypt bundles or Uptane's per-ECU keys::

    content key  K      32 random bytes, one per bundle file (a delta bundle gets its own)
    salt         S      32 random bytes, one per bundle file
    per recipient R:    ephemeral X25519 key E;  KEK = HKDF-SHA256(X25519(E, R), salt = E.pub || R.pub,
                        info = "bitnet-edge bundle key wrap v1\\0" || aead);  wrapped = AEAD(KEK).seal(
                        nonce 0, K, aad = S || key id of R)          (E is used once: a zero nonce is safe)
    per section N:      SK = HKDF-SHA256(K, salt = S, info = "bitnet-edge bundle section v1\\0" || N)
                        the stored bytes (a zstd frame) cut into chunks of ``chunk_bytes``; chunk i is
                        AEAD(SK).seal(nonce = u88be(i) || last, chunk), last = 1 for the final chunk
                        (the STREAM construction: no reordering, truncation or section swap goes unnoticed)

The recipients (key id, ephemeral public key, wrapped key) are in the signed manifest, so the list is
authenticated; ``stored_sha256`` of each section is the hash of the ciphertext, so the fleet service
checks signatures and stored hashes without any device key.  Only the section payloads are
encrypted: the manifest (model name, architecture, shapes, hashes) stays readable.

A device's private key sits behind :class:`DeviceKey` (one operation: X25519 with a peer key), the
hook for a TPM or secure element; :class:`FileDeviceKey` keeps it in a PEM file of mode 0600.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bitnet_edge.sdk.bundle.errors import DecryptionError, KeyFileError, NotRecipient
from bitnet_edge.sdk.bundle.manifest import EncryptionInfo

__all__ = [
    "SCHEME",
    "AEADS",
    "DEFAULT_AEAD",
    "DEFAULT_CHUNK_BYTES",
    "TAG_BYTES",
    "DeviceKey",
    "FileDeviceKey",
    "device_key_id",
    "raw_public",
    "wrap_kek",
    "section_cipher",
    "chunk_nonce",
    "load_device_key",
    "check_recipient",
    "open_content_key",
    "open_section",
]

SCHEME = "x25519-hkdf-sha256"
AEADS = {"aes-256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
DEFAULT_AEAD = "aes-256-gcm"
DEFAULT_CHUNK_BYTES = 64 * 1024  # bytes of plaintext per sealed chunk
TAG_BYTES = 16  # bytes each chunk grows by (the AEAD tag)
_WRAP_INFO = b"bitnet-edge bundle key wrap v1\x00"
_SECTION_INFO = b"bitnet-edge bundle section v1\x00"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
PYTHON_HOOK = "python:"  # device_key = "python:package.module:factory" -> factory() returns a DeviceKey


def raw_public(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(*_RAW)


def device_key_id(pub: X25519PublicKey) -> str:
    """sha256 of the raw 32-byte X25519 public key, hex (what the manifest's recipients list)."""
    return hashlib.sha256(raw_public(pub)).hexdigest()


# ---- device keys ---------------------------------------------------------------------------------

class DeviceKey(ABC):
    """A device's X25519 private key, reduced to the one operation decryption needs.

    Implement this for a TPM or secure element (e.g. an SE050 doing X25519 on chip, or a key
    sealed by the TPM and unsealed only into this process); the private key never has to leave it.
    The agent loads one with ``device_key = "python:package.module:factory"``.
    """

    @abstractmethod
    def public_key(self) -> X25519PublicKey:
        """The matching public key (its key id is what a bundle's recipients list)."""

    @abstractmethod
    def exchange(self, peer: X25519PublicKey) -> bytes:
        """X25519(private key, ``peer``): the 32-byte shared secret."""

    @property
    def key_id(self) -> str:
        return device_key_id(self.public_key())


class FileDeviceKey(DeviceKey):
    """A PEM (PKCS#8) X25519 private key in a file that only its owner may read (mode 0600 or
    stricter; anything readable by group or others is refused)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            st = os.stat(self.path)
            data = self.path.read_bytes()
        except OSError as exc:
            raise KeyFileError(str(self.path), "unreadable", exc.strerror or str(exc)) from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyFileError(str(self.path), "insecure-permissions",
                               f"mode {stat.S_IMODE(st.st_mode):04o}; a device key must be 0600 (chmod 600)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(str(self.path), "bad-format", str(exc).splitlines()[0] if str(exc) else "") from None
        if not isinstance(key, X25519PrivateKey):
            raise KeyFileError(str(self.path), "bad-format", f"not an X25519 key ({type(key).__name__})")
        self._key = key

    def public_key(self) -> X25519PublicKey:
        return self._key.public_key()

    def exchange(self, peer: X25519PublicKey) -> bytes:
        return self._key.exchange(peer)


def load_device_key(spec: str | os.PathLike) -> DeviceKey:
    """A file path (:class:`FileDeviceKey`), or ``python:module:factory`` (the TPM / secure-element
    hook: ``factory()`` is called with no arguments and must return a :class:`DeviceKey`)."""
    s = str(spec)
    if not s.startswith(PYTHON_HOOK):
        return FileDeviceKey(s)
    mod, _, attr = s[len(PYTHON_HOOK):].partition(":")
    try:
        key = getattr(importlib.import_module(mod), attr)()
    except Exception as exc:  # noqa: BLE001 - any failure of the hook is a key that cannot be loaded
        raise KeyFileError(s, "unreadable", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(key, DeviceKey):
        raise KeyFileError(s, "bad-format", f"{attr}() returned {type(key).__name__}, not a DeviceKey")
    return key


# ---- the scheme's primitives (sealing: packagers/seal.py; opening: below) ---------------------------

def wrap_kek(shared: bytes, eph: bytes, recipient: bytes, aead: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, eph + recipient, _WRAP_INFO + aead.encode()).derive(shared)


def section_cipher(aead: str, content_key: bytes, salt: bytes, name: str):
    sk = HKDF(hashes.SHA256(), 32, salt, _SECTION_INFO + name.encode()).derive(content_key)
    return AEADS[aead](sk)


def chunk_nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# ---- opening (device) ----------------------------------------------------------------------------

def check_recipient(info: EncryptionInfo, keys: Sequence[DeviceKey]) -> DeviceKey:
    """The first of ``keys`` the bundle is sealed to; :class:`NotRecipient` (or ``no-device-key``)."""
    if not keys:
        raise DecryptionError("no-device-key", "the bundle is encrypted and no device key is configured "
                                               "(agent config: device_key)")
    listed = {r.key_id for r in info.recipients}
    for k in keys:
        if k.key_id in listed:
            return k
    raise NotRecipient([k.key_id for k in keys], sorted(listed))


def open_content_key(info: EncryptionInfo, keys: Sequence[DeviceKey]) -> bytes:
    """Unwrap the bundle's content key with the first of ``keys`` it is sealed to."""
    key = check_recipient(info, keys)
    entry = next(r for r in info.recipients if r.key_id == key.key_id)
    eph = bytes.fromhex(entry.ephemeral)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(eph))
        kek = wrap_kek(shared, eph, raw_public(key.public_key()), info.aead)
        return AEADS[info.aead](kek).decrypt(b"\x00" * 12, bytes.fromhex(entry.wrapped_key),
                                             bytes.fromhex(info.salt) + bytes.fromhex(entry.key_id))
    except (InvalidTag, ValueError) as exc:  # ValueError: a low-order ephemeral key (all-zero secret)
        raise DecryptionError("unwrap-failed", f"the content key wrapped for {entry.key_id[:16]} does not open "
                                               f"({type(exc).__name__})") from None


def open_section(info: EncryptionInfo, content_key: bytes, name: str, stored: bytes) -> bytes:
    """Stored (sealed) bytes of section ``name`` -> the plain stored bytes (a zstd frame)."""
    c = section_cipher(info.aead, content_key, bytes.fromhex(info.salt), name)
    step = info.chunk_bytes + TAG_BYTES
    n = max(1, -(-len(stored) // step))
    if len(stored) - (n - 1) * step < TAG_BYTES:
        raise DecryptionError("bad-ciphertext", f"{len(stored)} sealed bytes are not whole chunks",
                              f"section:{name}")
    out = []
    for i in range(n):
        try:
            out.append(c.decrypt(chunk_nonce(i, i == n - 1), stored[i * step:(i + 1) * step], None))
        except InvalidTag:
            raise DecryptionError("bad-ciphertext", f"chunk {i} of {n} fails authentication",
                                  f"section:{name}") from None
    return b"".join(out)
