"""The agent's errors, under the distribution's one root
:class:`~bitnet_edge.sdk.errors.BitnetEdgeError` (``reason``, ``detail``).  ``reason`` is the wire
protocol's ReasonCode (snake_case) where the error becomes an install outcome.

    BitnetEdgeError (sdk.errors)
    └── AgentError
        ├── ConfigError         path                (also ValueError)     bad-config
        ├── InstallRejected     stage               the outcome's ReasonCode
        ├── StoreError                              bad-state | no-previous
        ├── TransferError                           corrupt | too_large | no_space | transfer_failed
        ├── TufRejected         kind                tuf_rejected | tuf_expired | transfer_failed
        └── WorkerFailed        slot, report        load_failed
"""

from __future__ import annotations

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["AgentError", "ConfigError", "InstallRejected", "StoreError", "TransferError", "TufRejected",
           "WorkerFailed", "UnknownModel"]


class AgentError(BitnetEdgeError):
    """Base of every error raised by bitnet_edge.agent."""


class ConfigError(AgentError, ValueError):
    """An agent config (or a file it names) that cannot be used; ``path`` is the file."""

    fields = ("path",)

    def __init__(self, path: str, problem: str, reason: str = "bad-config"):
        self.path = path
        super().__init__(reason, f"{path}: {problem}")


class InstallRejected(AgentError):
    """An install that did not happen; the previous model keeps serving.  ``stage``: where
    (``verify``, ``policy``, ``limits``, ``unpack``, ``load``, ``health``)."""

    fields = ("stage",)

    def __init__(self, reason: str, detail: str, stage: str):
        self.stage = stage
        super().__init__(reason, detail)


class StoreError(AgentError):
    """The slot store on disk is unusable (``bad-state``: a corrupt state file with no valid slot),
    or has no previous release (``no-previous``)."""


class TransferError(AgentError):
    """A download from the fleet that cannot go on (``reason``: ``corrupt``, ``too_large``,
    ``no_space`` or ``transfer_failed``); the partial file is discarded."""


class TufRejected(AgentError):
    """A desired release the TUF metadata does not vouch for (ADR 0010); nothing is installed.
    ``reason``: ``tuf_rejected``, ``tuf_expired`` or ``transfer_failed`` (metadata unreachable);
    ``kind``: ``not-in-targets``, ``mismatch``, ``metadata``, ``expired``, ``too-long``,
    ``length-or-hash``, ``unavailable``, ``not-approved``."""

    fields = ("kind",)

    def __init__(self, reason: str, kind: str, detail: str):
        self.kind = kind
        super().__init__(reason, detail)


class WorkerFailed(AgentError):
    """A model worker that did not start or did not report; ``report`` is what it said, if anything."""

    fields = ("slot",)

    def __init__(self, slot: str, detail: str, report: dict | None = None):
        self.slot, self.report = slot, report or {}
        super().__init__("load_failed", f"worker for slot {slot}: {detail}")


class UnknownModel(AgentError):
    """A request names a model this device does not hold (or names none when several are installed)."""

    fields = ("installed",)

    def __init__(self, detail: str, installed: list[str], reason: str = "model_not_found"):
        super().__init__(reason, detail)
        self.installed = installed
