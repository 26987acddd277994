"""Pure install decisions (no I/O): whether to install a release, and the reason code for every failure.

:func:`decide` is the one place the release rule is written; the fleet sync (a desired state from
MQTT) and the install pipeline (every install, OTA or USB) both ask it:

- the installed bundle itself, or the same model, release counter and target: ``current``;
- a release counter not above the installed one (lower, or equal with other bytes): ``reject``
  (``downgrade``) unless the install explicitly allows a downgrade (rollback protection);
- the release held in the other slot: ``activate_previous`` (a rollback switches slots, no download);
- anything else: ``install``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bitnet_edge.agent.errors import InstallRejected
from bitnet_edge.sdk.wire.protocol import InstalledRelease

__all__ = ["Decision", "decide", "check_target", "reason_for", "FAULT_POINTS"]

#: Where a test may make the agent SIGKILL itself (BITNET_EDGE_FAULT=<point>), in pipeline order.
FAULT_POINTS = ("received", "verified", "prepared", "unpacked", "loaded", "healthy", "switched")


@dataclass(frozen=True)
class Decision:
    """What to do with a release: ``action`` and, for ``reject``, the ReasonCode and a message."""

    action: Literal["install", "current", "activate_previous", "reject"]
    reason: str = "ok"
    message: str = ""


def _same(a: InstalledRelease, b: InstalledRelease) -> bool:
    return a.bundle_sha256 == b.bundle_sha256 or (a.model, a.release, a.target) == (b.model, b.release, b.target)


def decide(candidate: InstalledRelease, installed: InstalledRelease | None, *, allow_downgrade: bool,
           previous: InstalledRelease | None = None) -> Decision:
    """The install decision for ``candidate`` on a device serving ``installed`` (None: nothing)
    with ``previous`` in its other slot (None: empty, or not usable by the caller)."""
    if installed is not None and _same(candidate, installed):
        return Decision("current", "ok", f"release {candidate.release} ({candidate.version}) is already installed")
    if installed is not None and candidate.release <= installed.release and not allow_downgrade:
        what = "the same release counter as" if candidate.release == installed.release else "below"
        return Decision("reject", "downgrade", f"release {candidate.release} ({candidate.version}) is {what} the "
                                               f"installed release {installed.release} ({installed.version}) and "
                                               "no downgrade is allowed")
    if previous is not None and _same(candidate, previous):
        return Decision("activate_previous", "ok", f"release {candidate.release} ({candidate.version}) is in the "
                                                   "other slot")
    return Decision("install")


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
    if isinstance(exc, pe.OverBudget):
        return "too_large"
    if isinstance(exc, (pe.IntegrityError, pe.BundleFormatError, pe.DeltaError)):
        return "corrupt"
    if isinstance(exc, pe.InstallError):
        return "no_space" if "space" in exc.reason else "internal"
    return "internal"
