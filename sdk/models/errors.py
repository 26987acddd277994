"""Errors of the model runtime (part of the SDK hierarchy)."""

from bitnet_edge.sdk.errors import BitnetEdgeError, InputError

__all__ = ["ContextLengthError", "UnsupportedOperation"]


class ContextLengthError(InputError):
    """A prompt plus generation longer than the model's context limit."""

    code = "context-too-long"

    def __init__(self, needed: int, limit: int):
        self.needed, self.limit = needed, limit
        super().__init__("token_ids", f"{needed} tokens exceed the context limit of {limit}")


class UnsupportedOperation(BitnetEdgeError, TypeError):
    """An API the model's architecture does not have (e.g. generate() on an encoder)."""

    def __init__(self, architecture: str, operation: str):
        self.architecture, self.operation = architecture, operation
        super().__init__("unsupported-operation", f"a {architecture!r} model has no {operation}()")
