"""The agent's error hierarchy.  ``reason`` is the protocol's ReasonCode that callers branch on."""

from __future__ import annotations

__all__ = ["AgentError", "ConfigError", "InstallRejected", "StoreError", "TransferError", "TufRejected"]


class AgentError(Exception):
    """Base of every error raised by bitnet_edge.agent."""


class ConfigError(AgentError, ValueError):
    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class InstallRejected(AgentError):
    """An install that did not happen; the previous model keeps serving."""

    def __init__(self, reason: str, message: str, stage: str):
        self.reason, self.message, self.stage = reason, message, stage
        super().__init__(f"{reason} at {stage}: {message}")


class StoreError(AgentError):
    """The slot store on disk is unusable (e.g. a corrupt state file with no valid slot)."""


class TransferError(AgentError):
    """A download from the fleet that cannot go on (``reason``: ``corrupt``, ``too_large``,
    ``no_space`` or ``transfer_failed``); the partial file is discarded."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


class TufRejected(AgentError):
    """A desired release the TUF metadata does not vouch for (ADR 0010); nothing is installed.
    ``reason``: ``tuf_rejected``, ``tuf_expired`` or ``transfer_failed`` (metadata unreachable);
    ``kind``: ``not-in-targets``, ``mismatch``, ``metadata``, ``expired``, ``too-long``,
    ``length-or-hash``, ``unavailable``, ``not-approved``."""

    def __init__(self, reason: str, kind: str, message: str):
        self.reason, self.kind, self.message = reason, kind, message
        super().__init__(f"{reason} ({kind}): {message}")
