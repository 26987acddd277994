"""The agent's error hierarchy.  ``reason`` is the protocol's ReasonCode that callers branch on."""

from __future__ import annotations

__all__ = ["AgentError", "ConfigError", "InstallRejected", "StoreError", "TransferError"]


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
