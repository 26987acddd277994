"""The outer byte layout of a bundle file (docs/adr/0005-bundle-format.md).  No crypto, no I/O
beyond the binary stream it is handed.

All integers little-endian::

    0       8   magic  b"BNEBNDL1"
    8       4   u32 container version (1)
    12      4   u32 manifest length M          (<= Limits.max_manifest_bytes)
    16      M   manifest: canonical JSON, ASCII
    16+M    4   u32 signature block length S   (= 4 + 100 * count)
    20+M    S   signature block: u32 count, then per signature:
                    u16 algorithm (1 = Ed25519)  u16 reserved (0)  32 key id  64 signature
    20+M+S  ... payload: the sections back to back, in manifest order

The signed message is ``SIGNING_CONTEXT + u32 container version + manifest``, so a reader has
everything it needs to reject a bundle before it reads one byte of the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from bitnet_edge.sdk.bundle.errors import BundleFormatError, TruncatedBundle, UnsupportedVersion

__all__ = [
    "ENVELOPE_FILE",
    "MAGIC",
    "CONTAINER_VERSION",
    "ALG_ED25519",
    "SIGNING_CONTEXT",
    "Limits",
    "SignatureEntry",
    "Envelope",
    "encode_envelope",
    "read_envelope",
    "signed_message",
    "read_exact",
]

MAGIC = b"BNEBNDL1"
CONTAINER_VERSION = 1
ALG_ED25519 = 1
SIGNING_CONTEXT = b"bitnet-edge bundle manifest\x00"

_HEADER = struct.Struct("<8sII")  # magic, version, manifest length
_U32 = struct.Struct("<I")
_SIG = struct.Struct("<HH32s64s")  # algorithm, reserved, key id, signature


#: an installed slot keeps its bundle's envelope (header, signed manifest, signatures) under this name
ENVELOPE_FILE = "bundle.envelope"


@dataclass(frozen=True)
class Limits:
    """Bounds a reader enforces before it allocates or reads."""

    max_manifest_bytes: int = 64 * 2**20  # bytes
    max_signatures: int = 16  # entries in the signature block
    max_section_bytes: int = 2**36  # bytes, stored or decoded, per section
    max_content_bytes: int | None = None  # bytes decoded over all sections (a device's budget); None: no cap
    chunk_bytes: int = 2**20  # bytes read at a time while hashing a section


@dataclass(frozen=True)
class SignatureEntry:
    algorithm: int
    key_id: bytes  # sha256 of the raw 32-byte public key
    signature: bytes  # 64 bytes


@dataclass(frozen=True)
class Envelope:
    """Everything before the payload."""

    container_version: int
    manifest_bytes: bytes
    signatures: tuple[SignatureEntry, ...]
    payload_offset: int  # file offset of the first section

    @property
    def message(self) -> bytes:
        return signed_message(self.container_version, self.manifest_bytes)


def signed_message(container_version: int, manifest_bytes: bytes) -> bytes:
    return SIGNING_CONTEXT + _U32.pack(container_version) + manifest_bytes


def encode_envelope(manifest_bytes: bytes, signatures: list[SignatureEntry]) -> bytes:
    parts = [_HEADER.pack(MAGIC, CONTAINER_VERSION, len(manifest_bytes)), manifest_bytes]
    block = _U32.pack(len(signatures)) + b"".join(
        _SIG.pack(s.algorithm, 0, s.key_id, s.signature) for s in signatures)
    parts += [_U32.pack(len(block)), block]
    return b"".join(parts)


def read_exact(stream: BinaryIO, n: int, part: str) -> bytes:
    """Exactly ``n`` bytes of ``stream`` or :class:`TruncatedBundle` naming ``part``."""
    chunks, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            raise TruncatedBundle(part, n, got)
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_envelope(stream: BinaryIO, limits: Limits = Limits()) -> Envelope:
    """Read and check the header, manifest bytes and signature block; the stream is left at the payload."""
    magic, version, mlen = _HEADER.unpack(read_exact(stream, _HEADER.size, "header"))
    if magic != MAGIC:
        raise BundleFormatError("header", "bad-magic", f"not a bitnet-edge bundle (magic {magic!r}, "
                                                       f"expected {MAGIC!r})")
    if version != CONTAINER_VERSION:
        raise UnsupportedVersion("container", version, CONTAINER_VERSION)
    if mlen > limits.max_manifest_bytes:
        raise BundleFormatError("header", "manifest-too-large",
                                f"manifest length {mlen} exceeds the limit of {limits.max_manifest_bytes} bytes")
    manifest = read_exact(stream, mlen, "manifest")
    (slen,) = _U32.unpack(read_exact(stream, 4, "signatures"))
    if slen > 4 + limits.max_signatures * _SIG.size:
        raise BundleFormatError("signatures", "bad-signature-block",
                                f"signature block of {slen} bytes exceeds {limits.max_signatures} signatures")
    block = read_exact(stream, slen, "signatures")
    if slen < 4:
        raise BundleFormatError("signatures", "bad-signature-block", f"signature block of {slen} bytes")
    (count,) = _U32.unpack_from(block, 0)
    if slen != 4 + count * _SIG.size:
        raise BundleFormatError("signatures", "bad-signature-block",
                                f"{count} signatures need {4 + count * _SIG.size} bytes, the block has {slen}")
    entries = []
    for i in range(count):
        alg, reserved, key_id, sig = _SIG.unpack_from(block, 4 + i * _SIG.size)
        if alg != ALG_ED25519 or reserved != 0:
            raise BundleFormatError("signatures", "bad-signature-block",
                                    f"signature {i}: algorithm {alg} / reserved {reserved} (container version 1 "
                                    f"has Ed25519 = {ALG_ED25519} only)")
        entries.append(SignatureEntry(alg, key_id, sig))
    return Envelope(version, manifest, tuple(entries), _HEADER.size + mlen + 4 + slen)
