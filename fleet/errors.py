"""The error hierarchy of :mod:`bitnet_edge.fleet`.  Callers branch on the class and ``reason``.

    FleetError
    ├── DatabaseError        path, reason        (``newer-schema``, ``corrupt``, ``unreachable``, ``no-driver``;
    │                                             path: the file, or the URL without its password)
    ├── PublishError         reason, detail      (``not-a-bundle``, ``bad-signature``, ``no-base``,
    │                                             ``conflict``, ``too-large``, ``no-full-bundle``)
    ├── RolloutError         rollout_id, reason  (``not-found``, ``bad-state``, ``no-release``,
    │                                             ``no-previous``, ``bad-spec``)
    ├── NotFound             kind, key           (also LookupError)
    ├── ControlError         reason, status      (the CLI and the service's control API:
    │                                             ``unreachable``, ``http``, ``no-service``)
    ├── TufError             reason, detail      (the TUF repository, ADR 0010: ``no-repository``,
    │                                             ``bad-metadata``, ``unsigned``, ``version``,
    │                                             ``expired``, ``online-key``, ``exists``, ``key``)
    ├── PkiError             reason, detail      (the fleet CA, fleet/pki.py: ``bad-name``, ``bad-csr``,
    │                                             ``bad-ca``, ``not-enrolled``, ``exists``)
    ├── AuditError           reason, detail      (the audit log, fleet/audit.py: ``unreadable``)
    └── ConfigError          reason, detail      (service settings: ``exposed-broker``)
"""

from __future__ import annotations

__all__ = ["FleetError", "DatabaseError", "PublishError", "RolloutError", "NotFound", "ControlError", "TufError",
           "PkiError", "AuditError", "ConfigError"]


class FleetError(Exception):
    """Base of every error raised by bitnet_edge.fleet."""


class DatabaseError(FleetError):
    def __init__(self, path: str, reason: str, detail: str):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason} ({detail})")


class PublishError(FleetError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class RolloutError(FleetError):
    def __init__(self, rollout_id: str | None, reason: str, detail: str):
        self.rollout_id, self.reason, self.detail = rollout_id, reason, detail
        super().__init__(f"rollout {rollout_id}: {reason} ({detail})" if rollout_id else f"{reason} ({detail})")


class NotFound(FleetError, LookupError):
    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        super().__init__(f"no {kind} {key!r}")


class ControlError(FleetError):
    def __init__(self, reason: str, detail: str, status: int | None = None):
        self.reason, self.detail, self.status = reason, detail, status
        super().__init__(f"{reason}: {detail}")


class TufError(FleetError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class PkiError(FleetError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class AuditError(FleetError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class ConfigError(FleetError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")
