"""The contract between the build host and the device: signed bundles (docs/adr/0005, 0011, 0013).

Everything a device needs to take a bundle made elsewhere, and nothing that makes one:

    manifest     the signed manifest (pydantic), canonical JSON, release digest
    container    the outer byte layout: header, manifest, signature block
    codec        section encodings (zstd, zstd-patch, trit-delta)
    payload      the weights sections <-> a converted model's tensors
    signing      trusted public keys, checking the signature block
    crypt        device keys and opening encrypted bundles (X25519 + HKDF + AEAD)
    verify       reading and verifying a bundle, streaming, in the order that rejects early
    install      installing a verified bundle into a converted-model directory
    golden       reading golden vectors and checking a model's outputs against them
    devices      device profiles (devices/*.toml)
    errors       the bundle errors (``BundleError`` and its kinds, ``KeyFileError`` ...)

The build host's half (keys, signing, sealing, computing golden vectors, building) is
:mod:`bitnet_edge.packagers`.  Modules are imported on first use: ``import bitnet_edge.sdk.bundle``
costs nothing.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BundleManifest",
    "parse_manifest",
    "read_envelope",
    "load_public_key",
    "check_signatures",
    "DeviceKey",
    "load_device_key",
    "VerifiedBundle",
    "BaseContents",
    "verify_bundle",
    "read_unverified",
    "Installed",
    "install_bundle",
    "open_base",
    "read_golden",
    "check_outputs",
    "DeviceProfile",
    "load_devices",
    "get_devices",
    "errors",
]

_WHERE = {
    "BundleManifest": "manifest", "parse_manifest": "manifest",
    "read_envelope": "container",
    "load_public_key": "signing", "check_signatures": "signing",
    "DeviceKey": "crypt", "load_device_key": "crypt",
    "VerifiedBundle": "verify", "BaseContents": "verify", "verify_bundle": "verify", "read_unverified": "verify",
    "Installed": "install", "install_bundle": "install", "open_base": "install",
    "read_golden": "golden", "check_outputs": "golden",
    "DeviceProfile": "devices", "load_devices": "devices", "get_devices": "devices",
}


def __getattr__(name: str):
    if name == "errors":
        return importlib.import_module("bitnet_edge.sdk.bundle.errors")
    if name in _WHERE:
        return getattr(importlib.import_module(f"bitnet_edge.sdk.bundle.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bitnet_edge.sdk.bundle' has no attribute {name!r}")
