"""The fleet service's errors, under the distribution's one root
:class:`~bitnet_edge.sdk.errors.BitnetEdgeError` (``reason``: machine code, ``detail``: one human
line).  Callers branch on the class and ``reason``.

    BitnetEdgeError (sdk.errors)
    └── FleetError
        ├── DatabaseError        where               (``newer-schema``, ``corrupt``, ``unreachable``, ``no-driver``;
        │                                             where: the file, or the URL without its password)
        ├── PublishError                             (``not-a-bundle``, ``bad-signature``, ``no-base``,
        │                                             ``conflict``, ``too-large``, ``no-full-bundle``)
        ├── RolloutError         rollout_id          (``not-found``, ``bad-state``, ``no-release``,
        │                                             ``no-previous``, ``bad-spec``, ``no-devices``)
        ├── NotFound             kind, key           (also LookupError; ``not-found``)
        ├── ControlError         status              (the CLI and the service's control API:
        │                                             ``unreachable``, ``no-service``, ``bad-url``, or the
        │                                             service's own reason with the HTTP ``status``)
        ├── TufError                                 (the TUF repository, ADR 0010: ``no-repository``,
        │                                             ``bad-metadata``, ``unsigned``, ``version``,
        │                                             ``expired``, ``online-key``, ``exists``, ``key``)
        ├── PkiError                                 (the fleet CA, fleet/pki.py: ``bad-name``, ``bad-csr``,
        │                                             ``bad-ca``, ``not-enrolled``, ``exists``)
        ├── AuditError                               (the audit log, fleet/audit.py: ``unreadable``)
        └── ConfigError                              (service settings: ``exposed-broker``, ...)
"""

from __future__ import annotations

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["FleetError", "DatabaseError", "PublishError", "RolloutError", "NotFound", "ControlError", "TufError",
           "PkiError", "AuditError", "ConfigError"]


class FleetError(BitnetEdgeError):
    """Base of every error raised by bitnet_edge.fleet: ``FleetError(reason, detail)``."""


class DatabaseError(FleetError):
    """The registry database cannot be used; ``path``: the file, or the URL without its password."""

    fields = ("path",)

    def __init__(self, where: str, reason: str, why: str):
        self.path = where
        super().__init__(reason, f"{where}: {why}")


class PublishError(FleetError):
    """A bundle or release the registry refuses."""


class RolloutError(FleetError):
    """A rollout that cannot be created or changed."""

    fields = ("rollout_id",)

    def __init__(self, rollout_id: str | None, reason: str, why: str):
        self.rollout_id = rollout_id
        super().__init__(reason, f"rollout {rollout_id}: {why}" if rollout_id else why)


class NotFound(FleetError, LookupError):
    """No such device, release or bundle."""

    fields = ("kind", "key")

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        super().__init__("not-found", f"no {kind} {key!r}")


class ControlError(FleetError):
    """The control API cannot be reached, or answered an error (its reason, with the HTTP ``status``)."""

    fields = ("status",)

    def __init__(self, reason: str, detail: str, status: int | None = None):
        self.status = status
        super().__init__(reason, detail)


class TufError(FleetError):
    """The TUF repository refuses metadata or a key."""


class PkiError(FleetError):
    """The fleet CA refuses a name, a request or its own files."""


class AuditError(FleetError):
    """The audit log cannot be read."""


class ConfigError(FleetError):
    """Service settings that cannot run."""
