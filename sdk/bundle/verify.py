"""Reading and verifying a bundle, streaming, in the order that rejects early.

1. header, manifest bytes and signature block (container.read_envelope): nothing else is read yet;
2. signatures over the manifest bytes by a trusted key (signing.check_signatures);
3. the manifest: format version first, then the pydantic model; the signer list it names must be
   exactly the signature block's;
4. each section in file order: size and sha256 of the stored bytes (read in chunks);
5. ``deep``: each section decoded (delta sections against the base's content) and the content's
   size and sha256 checked; ``keep_contents`` returns the contents for installing;
6. nothing may follow the last section.

Each failure is one typed :class:`~bitnet_edge.sdk.bundle.errors.BundleError` whose ``part`` and
``reason`` say what failed.  Only the public keys the caller trusts are used.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bitnet_edge.sdk.bundle import codec, crypt
from bitnet_edge.sdk.bundle.container import Envelope, Limits, read_envelope, read_exact
from bitnet_edge.sdk.bundle.crypt import DeviceKey
from bitnet_edge.sdk.bundle.errors import BundleFormatError, DeltaError, IntegrityError, SignatureError
from bitnet_edge.sdk.bundle.manifest import BundleManifest, parse_manifest, release_digest
from bitnet_edge.sdk.bundle.signing import check_signatures

__all__ = ["BaseContents", "VerifiedBundle", "verify_bundle", "read_unverified", "base_from_bundle"]

Source = str | os.PathLike | bytes | BinaryIO


@dataclass(frozen=True)
class BaseContents:
    """The decoded sections of the release a delta bundle is applied to."""

    release_sha256: str  # manifest.release_digest() of the base
    manifest: BundleManifest
    contents: Mapping[str, bytes]


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: BundleManifest
    envelope: Envelope
    manifest_sha256: str  # of the signed manifest bytes
    release_sha256: str  # release_digest(): the same for the full and the delta bundle of a release
    signers: list[str]  # trusted key ids whose signatures verified
    file_size: int
    deep: bool  # section contents decoded and checked too
    contents: dict[str, bytes] | None = field(default=None, repr=False)


class _Opened:
    """A binary stream from a path, bytes or an open file (closed on exit only if opened here)."""

    def __init__(self, source: Source):
        self.owned = isinstance(source, (str, os.PathLike))
        if self.owned:
            self.f = open(source, "rb")
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self.f = io.BytesIO(bytes(source))
        else:
            self.f = source

    def __enter__(self) -> BinaryIO:
        return self.f

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.f.close()


def read_unverified(source: Source, limits: Limits = Limits()) -> tuple[Envelope, BundleManifest]:
    """Envelope and manifest WITHOUT checking signatures or payload (for ``inspect``)."""
    with _Opened(source) as f:
        env = read_envelope(f, limits)
    return env, parse_manifest(env.manifest_bytes)


def _check_signers(manifest: BundleManifest, env: Envelope) -> None:
    in_block = sorted(e.key_id.hex() for e in env.signatures)
    if in_block != manifest.signers:
        raise SignatureError("signer-mismatch", "the signature block's key ids are not the signers the manifest "
                                                "names", in_block)


def _read_section(f: BinaryIO, name: str, size: int, limits: Limits, keep: bool) -> tuple[str, bytes | None]:
    h, chunks, left = hashlib.sha256(), [], size
    while left:
        b = read_exact(f, min(left, limits.chunk_bytes), f"section:{name}")
        h.update(b)
        if keep:
            chunks.append(b)
        left -= len(b)
    return h.hexdigest(), (b"".join(chunks) if keep else None)


def verify_bundle(source: Source, trusted: Sequence[Ed25519PublicKey], *, base: BaseContents | None = None,
                  deep: bool = True, keep_contents: bool = False, limits: Limits = Limits(),
                  device_keys: Sequence[DeviceKey] = ()) -> VerifiedBundle:
    """Verify ``source`` (path, bytes or binary stream) against the ``trusted`` public keys.

    A delta bundle needs ``base`` for a deep check; without it only the stored bytes are checked
    (``deep`` is then False in the result).  An encrypted bundle likewise needs one of
    ``device_keys`` among its recipients (``keep_contents`` without one: DecryptionError
    ``no-device-key``; with keys none of which is a recipient: NotRecipient, before the payload is
    read).  Raises a BundleError subclass on any failure.
    """
    if not trusted:
        raise SignatureError("no-trusted-keys", "verification needs at least one trusted public key")
    with _Opened(source) as f:
        env = read_envelope(f, limits)
        signers = check_signatures(env.message, env.signatures, trusted)
        manifest = parse_manifest(env.manifest_bytes)
        _check_signers(manifest, env)
        manifest_sha = hashlib.sha256(env.manifest_bytes).hexdigest()
        delta = manifest.delta
        if delta is not None and base is not None and base.release_sha256 != delta.base_release_sha256:
            raise DeltaError("base-mismatch",
                             f"this delta applies to release {delta.base_release} ({delta.base_version}, digest "
                             f"{delta.base_release_sha256[:16]}), the base given is release {base.manifest.release} "
                             f"({base.manifest.version}, digest {base.release_sha256[:16]})",
                             delta.base_release_sha256, base.release_sha256)
        deep = deep and (manifest.delta is None or base is not None)
        sealed, content_key = manifest.encryption, None
        if sealed is not None and deep:
            if device_keys or keep_contents:
                content_key = crypt.open_content_key(sealed, device_keys)
            else:
                deep = False
        contents: dict[str, bytes] = {}
        for s in manifest.sections:
            if max(s.stored_size, s.size) > limits.max_section_bytes:
                raise BundleFormatError(f"section:{s.name}", "section-too-large",
                                        f"{max(s.stored_size, s.size)} bytes exceed {limits.max_section_bytes}")
            digest, stored = _read_section(f, s.name, s.stored_size, limits, keep=deep)
            if digest != s.stored_sha256:
                raise IntegrityError(s.name, "stored", s.stored_sha256, digest)
            if not deep:
                continue
            base_content = None
            if s.base_sha256 is not None:
                base_content = base.contents.get(s.name) if base is not None else None
                found = hashlib.sha256(base_content).hexdigest() if base_content is not None else "missing"
                if found != s.base_sha256:
                    raise DeltaError("base-mismatch", f"section {s.name!r} of the base is {found[:16]}, the delta "
                                                      f"was made against {s.base_sha256[:16]}", s.base_sha256, found)
            if content_key is not None:
                stored = crypt.open_section(sealed, content_key, s.name, stored)
            content = codec.decode(s.name, s.encoding, stored, s.size, base_content)
            digest = hashlib.sha256(content).hexdigest()
            if digest != s.sha256:
                raise IntegrityError(s.name, "content", s.sha256, digest)
            if keep_contents:
                contents[s.name] = content
        if f.read(1):
            raise BundleFormatError("payload", "trailing-data", "bytes follow the last section")
    size = env.payload_offset + manifest.payload_size
    return VerifiedBundle(manifest, env, manifest_sha, release_digest(manifest), signers, size, deep,
                          contents if keep_contents else None)


def base_from_bundle(source: Source, trusted: Sequence[Ed25519PublicKey], limits: Limits = Limits(),
                     device_keys: Sequence[DeviceKey] = ()) -> BaseContents:
    """A full bundle, verified, as the base of a delta (an encrypted one needs a recipient's key)."""
    vb = verify_bundle(source, trusted, keep_contents=True, limits=limits, device_keys=device_keys)
    if vb.manifest.delta is not None:
        raise DeltaError("base-is-delta", "a delta bundle cannot be a base: use the full bundle of that release, "
                                          "or the directory it was installed into")
    return BaseContents(vb.release_sha256, vb.manifest, vb.contents or {})

