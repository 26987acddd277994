"""Native builds per target, device profiles, and signed device bundles.

Public API (imported lazily, so ``bitnet_edge.packagers.targets`` stays cheap to import):

    package_model(model_dir, devices, version, keys, out_dir, ...) -> [BundleResult]
    verify_bundle(bundle, trusted_public_keys, base=None) -> VerifiedBundle
    install_bundle(bundle, dest, trusted_public_keys, base=None) -> Installed
    read_unverified(bundle) -> (Envelope, BundleManifest)            (inspect)
    generate_keypair / load_private_key / load_public_key
    load_devices / get_devices / DeviceProfile
    TARGETS / build_library / host_target
and the error hierarchy in :mod:`bitnet_edge.packagers.errors`.
"""

from __future__ import annotations

import importlib

__all__ = [
    "TARGETS",
    "Target",
    "build_library",
    "host_target",
    "DeviceProfile",
    "load_devices",
    "get_devices",
    "BundleManifest",
    "PackageOptions",
    "BundleResult",
    "package_model",
    "VerifiedBundle",
    "BaseContents",
    "verify_bundle",
    "read_unverified",
    "Installed",
    "install_bundle",
    "open_base",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "errors",
]

_WHERE = {
    "TARGETS": "targets", "Target": "targets", "build_library": "targets", "host_target": "targets",
    "DeviceProfile": "devices", "load_devices": "devices", "get_devices": "devices",
    "BundleManifest": "manifest",
    "PackageOptions": "builder", "BundleResult": "builder", "package_model": "builder",
    "VerifiedBundle": "verify", "BaseContents": "verify", "verify_bundle": "verify", "read_unverified": "verify",
    "Installed": "install", "install_bundle": "install", "open_base": "install",
    "generate_keypair": "signing", "load_private_key": "signing", "load_public_key": "signing",
}


def __getattr__(name: str):
    if name == "errors":
        return importlib.import_module("bitnet_edge.packagers.errors")
    if name in _WHERE:
        return getattr(importlib.import_module(f"bitnet_edge.packagers.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bitnet_edge.packagers' has no attribute {name!r}")
