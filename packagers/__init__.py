"""The build host: native builds per target, key generation, sealing, golden vectors, ``package``.

What a device also needs (the bundle format, verifying, installing, signature checking,
decryption, golden checking, device profiles) is the bundle contract,
:mod:`bitnet_edge.sdk.bundle`; the target table is :mod:`bitnet_edge.sdk.native.targets`.

Public API (imported lazily, so ``bitnet_edge.packagers.targets`` stays cheap to import):

    package_model(model_dir, devices, version, keys, out_dir, ...) -> [BundleResult]
    generate_keypair / load_private_key / sign / generate_device_key      (keys)
    Sealer / load_device_public_key                                       (seal)
    compute_golden                                                        (golden_vectors)
    build_library / get_target                                            (targets)
and the build host's errors in :mod:`bitnet_edge.packagers.errors`.
"""

from __future__ import annotations

import importlib

__all__ = [
    "PackageOptions",
    "BundleResult",
    "package_model",
    "generate_keypair",
    "load_private_key",
    "sign",
    "generate_device_key",
    "Sealer",
    "load_device_public_key",
    "compute_golden",
    "build_library",
    "get_target",
    "errors",
]

_WHERE = {
    "PackageOptions": "builder", "BundleResult": "builder", "package_model": "builder",
    "generate_keypair": "keys", "load_private_key": "keys", "sign": "keys", "generate_device_key": "keys",
    "Sealer": "seal", "load_device_public_key": "seal",
    "compute_golden": "golden_vectors",
    "build_library": "targets", "get_target": "targets",
}


def __getattr__(name: str):
    if name == "errors":
        return importlib.import_module("bitnet_edge.packagers.errors")
    if name in _WHERE:
        return getattr(importlib.import_module(f"bitnet_edge.packagers.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bitnet_edge.packagers' has no attribute {name!r}")
