"""The error hierarchy of :mod:`bitnet_edge.sdk`.

Callers branch on the class and its attributes, never on message text.
Input errors also derive from the matching builtin (ValueError / TypeError).
"""

from __future__ import annotations

__all__ = [
    "BitnetEdgeError",
    "NativeLibraryError",
    "BackendError",
    "KernelError",
    "InputError",
    "ShapeError",
    "DTypeError",
    "NonFiniteError",
    "RangeError",
    "FormatError",
    "CudaError",
    "CudaUnavailable",
]


class BitnetEdgeError(Exception):
    """Base of every error raised by bitnet-edge's SDK."""


class NativeLibraryError(BitnetEdgeError):
    """The kernel library could not be loaded, or it is not the one this package expects.

    ``tried`` lists ``(path, reason)`` for every candidate the loader looked at.
    """

    def __init__(self, message: str, tried: list[tuple[str, str]] | None = None):
        self.tried = list(tried or [])
        lines = [message] + [f"  - {p}: {why}" for p, why in self.tried]
        super().__init__("\n".join(lines))


class BackendError(BitnetEdgeError, ValueError):
    """An unknown kernel backend name, or one this CPU / library cannot run."""

    def __init__(self, backend: str, reason: str, available: list[str] | None = None):
        self.backend, self.reason, self.available = backend, reason, list(available or [])
        tail = f" (available here: {', '.join(self.available)})" if self.available else ""
        super().__init__(f"kernel backend {backend!r}: {reason}{tail}")


class KernelError(BitnetEdgeError):
    """The native library returned a status code other than BNE_OK."""

    def __init__(self, function: str, status: int, status_name: str):
        self.function, self.status, self.status_name = function, status, status_name
        super().__init__(f"{function} failed with {status_name} ({status})")


class InputError(BitnetEdgeError, ValueError):
    """Bad input to an SDK call: the message names the argument."""

    def __init__(self, argument: str, problem: str):
        self.argument, self.problem = argument, problem
        super().__init__(f"{argument}: {problem}")


class ShapeError(InputError):
    """Array shapes that do not fit together."""


class DTypeError(InputError, TypeError):
    """An array of the wrong dtype."""


class RangeError(InputError):
    """Values outside their domain (a ternary weight of 2, an int8 weight of -128)."""


class NonFiniteError(InputError):
    """NaN or infinity where a finite float is required."""


class FormatError(BitnetEdgeError, ValueError):
    """Bytes that are not a valid packed or stored format."""


class CudaError(BitnetEdgeError):
    """A CUDA driver API call returned a status other than CUDA_SUCCESS.

    ``status`` is the CUresult number, ``status_name`` its enum name (``CUDA_ERROR_NO_BINARY_FOR_GPU``),
    ``function`` the driver call, ``detail`` the driver's own description (cuGetErrorString).
    """

    def __init__(self, function: str, status: int, status_name: str, detail: str = ""):
        self.function, self.status, self.status_name, self.detail = function, status, status_name, detail
        tail = f": {detail}" if detail else ""
        super().__init__(f"{function} failed with {status_name} ({status}){tail}")


class CudaUnavailable(BitnetEdgeError):
    """The CUDA backend cannot run here: no driver, no GPU, no fatbin, or a GPU the fatbin does not cover.

    ``reason`` is a short code callers branch on (``no-driver``, ``no-device``, ``no-fatbin``,
    ``no-binary-for-gpu``, ``version-mismatch``, ``driver-error``, ``unsupported-model``);
    ``tried`` lists ``(what, why)`` for every candidate looked at.
    """

    def __init__(self, reason: str, message: str, tried: list[tuple[str, str]] | None = None):
        self.reason, self.tried = reason, list(tried or [])
        lines = [message] + [f"  - {p}: {why}" for p, why in self.tried]
        super().__init__("\n".join(lines))
