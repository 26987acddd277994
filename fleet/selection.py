"""Which bundle of a release a device gets, and when a delta: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bitnet_edge.sdk.wire.protocol import DeltaRef, ReleaseRef

__all__ = ["BundleRow", "DeltaRow", "ReleaseInfo", "device_targets", "pick_bundle", "release_ref"]


@dataclass(frozen=True)
class BundleRow:
    sha256: str
    size: int
    target: str


@dataclass(frozen=True)
class DeltaRow:
    sha256: str
    size: int
    target: str
    base_sha256: str  # the full bundle (file sha256) the delta applies to


@dataclass(frozen=True)
class ReleaseInfo:
    id: int
    model: str
    version: str
    release: int
    bundles: Mapping[str, BundleRow]  # target -> full bundle
    deltas: tuple[DeltaRow, ...] = field(default=())


def device_targets(profile: str | None, target: str | None, profile_targets: Mapping[str, str],
                   library_targets: Mapping[str, str] | None = None) -> list[str]:
    """Bundle targets that serve a device (from its Capabilities), best first: its profile's target
    (e.g. ``jetson``), the target it reports (``linux-aarch64``), then any target whose CPU library
    is that one."""
    out = []
    if profile and profile in profile_targets:
        out.append(profile_targets[profile])
    if target:
        out.append(target)
        out += [t for t, lib in (library_targets or {}).items() if lib == target]
    return list(dict.fromkeys(out))


def pick_bundle(rel: ReleaseInfo, targets: list[str]) -> BundleRow | None:
    return next((rel.bundles[t] for t in targets if t in rel.bundles), None)


def release_ref(rel: ReleaseInfo, bundle: BundleRow, installed_sha: str | None, chunk_size: int) -> ReleaseRef:
    """The ReleaseRef for one device: its target's full bundle, plus the delta whose base it holds."""
    delta = next((d for d in rel.deltas if d.target == bundle.target and installed_sha is not None
                  and d.base_sha256 == installed_sha), None)
    return ReleaseRef(model=rel.model, version=rel.version, release=rel.release, target=bundle.target,
                      bundle_sha256=bundle.sha256, bundle_size=bundle.size, chunk_size=chunk_size,
                      delta=None if delta is None else DeltaRef(base_sha256=delta.base_sha256, sha256=delta.sha256,
                                                               size=delta.size))
