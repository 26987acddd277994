"""Pure install decisions (no I/O): what to refuse, and the reason code for every failure."""

from __future__ import annotations

from bitnet_edge.agent.errors import InstallRejected
from bitnet_edge.sdk.wire.protocol import InstalledRelease

__all__ = ["check_release", "check_target", "reason_for", "FAULT_POINTS"]

#: Where a test may make the agent SIGKILL itself (BITNET_EDGE_FAULT=<point>), in pipeline order.
FAULT_POINTS = ("received", "verified", "prepared", "unpacked", "loaded", "healthy", "switched")


def check_release(release: int, version: str, installed: InstalledRelease | None, allow_downgrade: bool) -> None:
    """Refuse a release counter that is not higher than the installed one, unless explicitly allowed."""
    if installed is None or release > installed.release:
        return
    if allow_downgrade and release != installed.release:
        return
    what = "the same release" if release == installed.release else "a downgrade"
    raise InstallRejected("downgrade", f"release {release} ({version}) is {what}: release {installed.release} "
                          f"({installed.version}) is installed", "policy")


def check_target(library_target: str, device_target: str, requires: list[str], features: list[str]) -> None:
    """The bundle's native library must be built for this device's target, and the device must
    have every CPU feature the library needs to load (its faster variants are picked at run time)."""
    if library_target != device_target:
        raise InstallRejected("wrong_target", f"bundle's library is for {library_target}, this device needs "
                              f"{device_target}", "policy")
    missing = sorted(set(requires) - set(features))
    if missing:
        raise InstallRejected("wrong_target", f"the bundle's library needs CPU features this device lacks: "
                              f"{', '.join(missing)}", "policy")


def reason_for(exc: Exception) -> str:
    """Map a packager error to the protocol's reason code."""
    from bitnet_edge.sdk.bundle import errors as pe

    if isinstance(exc, pe.DecryptionError):  # an encrypted bundle (ADR 0011)
        return "not_recipient" if exc.reason in ("not-recipient", "no-device-key") else "corrupt"
    if isinstance(exc, pe.SignatureError):
        return "untrusted_key" if exc.reason in ("untrusted-key", "no-trusted-keys") else "bad_signature"
    if isinstance(exc, pe.TargetMismatch):
        return "wrong_target"
    if isinstance(exc, (pe.IntegrityError, pe.BundleFormatError, pe.DeltaError)):
        return "corrupt"
    if isinstance(exc, pe.InstallError):
        return "no_space" if "space" in exc.reason else "internal"
    return "internal"
