"""Install a bundle into a converted-model directory (what the device agent calls).

Verify first (signatures, every stored and decoded byte; a delta against its base), then write,
into a staging directory renamed into place at the end::

    DEST/manifest.json, weights.safetensors [, tokenizer]   the converted model (ternary weights
                                                             unpacked from base-3 to the 2-bit layout)
    DEST/bundle.envelope      header + signed manifest + signatures, verbatim (re-verifiable)
    DEST/golden.bin           the golden section's content (read with golden.read_golden)
    DEST/native/<target>/libbitnet_edge.{so,dylib}
    DEST/native/<target>/bitnet_edge.fatbin                  the CUDA kernels (jetson bundles), found by
                                                             bitnet_edge.sdk.cuda beside $BITNET_EDGE_LIBRARY

An installed directory can serve as the base of the next delta: :func:`base_from_installed`
rebuilds every section's content from it and checks each against the signed manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bitnet_edge.sdk.bundle.container import ENVELOPE_FILE, Limits, encode_envelope, read_envelope
from bitnet_edge.sdk.bundle.crypt import DeviceKey
from bitnet_edge.sdk.bundle.errors import DeltaError, InstallError, TargetMismatch
from bitnet_edge.sdk.bundle.golden import GOLDEN_FILE, read_golden
from bitnet_edge.sdk.bundle.manifest import BundleManifest, parse_manifest, release_digest
from bitnet_edge.sdk.bundle.payload import decode_weights, encode_weights
from bitnet_edge.sdk.bundle.signing import check_signatures
from bitnet_edge.sdk.bundle.verify import BaseContents, Source, base_from_bundle, verify_bundle
from bitnet_edge.sdk.modeldir import open_model_dir, write_model_dir
from bitnet_edge.sdk.native.targets import library_host_target

__all__ = ["ENVELOPE_FILE", "GOLDEN_FILE", "Installed", "install_bundle", "base_from_installed", "open_base"]



@dataclass(frozen=True)
class Installed:
    path: Path
    manifest: BundleManifest
    library: Path  # the native library for the bundle's target
    golden: Path | None


def open_base(path: str | os.PathLike, trusted: Sequence[Ed25519PublicKey],
              device_keys: Sequence[DeviceKey] = ()) -> BaseContents:
    """A delta's base: a full bundle file (encrypted: needs a recipient's key), or a directory a
    bundle was installed into."""
    p = Path(path)
    return base_from_installed(p, trusted) if p.is_dir() else base_from_bundle(p, trusted, device_keys=device_keys)


def install_bundle(source: Source, dest: str | os.PathLike, trusted: Sequence[Ed25519PublicKey], *,
                   base: BaseContents | str | os.PathLike | None = None, check_host: bool = True,
                   overwrite: bool = False, limits: Limits = Limits(),
                   device_keys: Sequence[DeviceKey] = ()) -> Installed:
    """Verify ``source`` and install it at ``dest`` (which must not exist unless ``overwrite``).

    ``base`` (a BaseContents, bundle path or installed directory) is needed for delta bundles.
    ``check_host`` refuses a bundle whose library is for another target than this machine.
    ``device_keys``: this device's X25519 keys, for encrypted bundles (ADR 0011); the installed
    files are plaintext.
    """
    if base is not None and not isinstance(base, BaseContents):
        base = open_base(base, trusted, device_keys)
    vb = verify_bundle(source, trusted, base=base, keep_contents=True, limits=limits, device_keys=device_keys)
    m = vb.manifest
    if m.delta is not None and base is None:
        raise DeltaError("base-required", f"this is a delta against release {m.delta.base_release} "
                                          f"({m.delta.base_version}); pass that bundle or its install directory")
    lib = m.libraries[0]
    if check_host and lib.target != library_host_target():
        raise TargetMismatch(lib.target, library_host_target())
    contents = vb.contents or {}
    arrays = decode_weights(m.model, m.tensors, contents)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise InstallError(str(dest), "dest-exists", "the directory is not empty; pass overwrite=True")
    stage = dest.with_name(f".{dest.name}.installing-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        write_model_dir(stage, m.model, arrays)
        if m.model.tokenizer:
            (stage / m.model.tokenizer).write_bytes(contents["tokenizer"])
        libdir = stage / "native" / lib.target
        libdir.mkdir(parents=True)
        (libdir / lib.file).write_bytes(contents[lib.section])
        if m.cuda is not None and m.cuda.included:  # beside the library: the runtime looks there
            (libdir / m.cuda.file).write_bytes(contents[m.cuda.section])
        if m.golden is not None:
            read_golden(m.golden, contents[m.golden.section])  # layout check before writing
            (stage / GOLDEN_FILE).write_bytes(contents[m.golden.section])
        (stage / ENVELOPE_FILE).write_bytes(encode_envelope(vb.envelope.manifest_bytes, list(vb.envelope.signatures)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Installed(dest, m, dest / "native" / lib.target / lib.file,
                     dest / GOLDEN_FILE if m.golden is not None else None)


def base_from_installed(path: str | os.PathLike, trusted: Sequence[Ed25519PublicKey],
                        limits: Limits = Limits()) -> BaseContents:
    """Rebuild the section contents of the release installed at ``path``; each must match its
    sha256 in the (re-verified) signed manifest, or :class:`DeltaError` ``base-mismatch``."""
    root = Path(path)
    try:
        with open(root / ENVELOPE_FILE, "rb") as f:
            env = read_envelope(f, limits)
    except FileNotFoundError:
        raise DeltaError("base-mismatch", f"{root} has no {ENVELOPE_FILE}: not an installed bundle") from None
    check_signatures(env.message, env.signatures, trusted)
    m = parse_manifest(env.manifest_bytes)
    md = open_model_dir(root)
    if md.manifest != m.model:
        raise DeltaError("base-mismatch", f"{root}/manifest.json differs from the installed bundle's model manifest")
    contents = dict(encode_weights(m.model, md.array).contents)
    lib = m.libraries[0]
    files = {lib.section: root / "native" / lib.target / lib.file}
    if m.cuda is not None and m.cuda.included:
        files[m.cuda.section] = root / "native" / lib.target / m.cuda.file
    if m.golden is not None:
        files[m.golden.section] = root / GOLDEN_FILE
    if m.model.tokenizer:
        files["tokenizer"] = root / m.model.tokenizer
    for name, p in files.items():
        try:
            contents[name] = p.read_bytes()
        except OSError:
            raise DeltaError("base-mismatch", f"{p} is missing from the installed base") from None
    for s in m.sections:
        got = contents.get(s.name)
        digest = hashlib.sha256(got).hexdigest() if got is not None else "missing"
        if digest != s.sha256:
            raise DeltaError("base-mismatch", f"section {s.name!r} rebuilt from {root} does not match its signed "
                                              "manifest (the installed files changed)", s.sha256, digest)
    return BaseContents(release_digest(m), m, contents)
