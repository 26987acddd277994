"""``fleet publish``: bundles already in the store -> a release (one full bundle per target) and its deltas.

Each bundle's manifest names its model, version, release counter and target; a delta bundle names
the release digest of its base, which is mapped to the base's full bundle file (the file sha256
devices report as installed).  With trusted keys configured, every bundle's signature and stored
section hashes are checked first (devices check everything again before installing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bitnet_edge.fleet.errors import PublishError
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.store import BundleStore
from bitnet_edge.sdk.bundle.errors import BundleError
from bitnet_edge.sdk.bundle.manifest import BundleManifest, release_digest
from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle

__all__ = ["Published", "publish_bundles"]


@dataclass(frozen=True)
class Published:
    sha256: str
    size: int
    model: str
    version: str
    release: int
    target: str
    release_id: int
    delta_base_sha256: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _manifest(store: BundleStore, sha: str, trusted: Sequence[Ed25519PublicKey]) -> BundleManifest:
    path = store.path(sha)
    try:
        if trusted:
            return verify_bundle(path, trusted, deep=False).manifest
        return read_unverified(path)[1]
    except BundleError as exc:
        reason = "bad-signature" if exc.part == "signatures" else "not-a-bundle"
        raise PublishError(reason, f"{sha[:12]}: {exc}") from None


def publish_bundles(registry: Registry, store: BundleStore, shas: Sequence[str],
                    trusted: Sequence[Ed25519PublicKey] = ()) -> list[Published]:
    """Register stored bundles; full bundles first so deltas in the same call find their release."""
    now = time.time()
    items = [(sha, _manifest(store, sha, trusted)) for sha in dict.fromkeys(shas)]
    out = []
    for sha, m in sorted(items, key=lambda it: it[1].delta is not None):
        size = store.size(sha)
        digest = release_digest(m)
        if m.delta is None:
            rid = registry.ensure_release(m.name, m.version, m.release, now)
            registry.add_bundle(sha, size, m.name, m.version, m.release, m.target, digest, None, now)
            registry.set_release_bundle(rid, m.target, sha)
            out.append(Published(sha, size, m.name, m.version, m.release, m.target, rid, None))
            continue
        base = registry.full_bundle_with_digest(m.name, m.target, m.delta.base_release_sha256)
        if base is None:
            raise PublishError("no-base", f"{sha[:12]} is a delta from {m.name} release {m.delta.base_release} "
                                          f"({m.delta.base_version}) for {m.target}, whose full bundle was never "
                                          "published")
        full = registry.full_bundle_with_digest(m.name, m.target, digest)
        if full is None:
            raise PublishError("no-full-bundle", f"{sha[:12]} is a delta of {m.name} {m.version} for {m.target}: "
                                                 "publish that release's full bundle with it")
        rid = registry.ensure_release(m.name, m.version, m.release, now)
        registry.add_bundle(sha, size, m.name, m.version, m.release, m.target, digest, m.delta.base_release_sha256,
                            now)
        registry.add_release_delta(rid, m.target, sha, base)
        out.append(Published(sha, size, m.name, m.version, m.release, m.target, rid, base))
    return out
