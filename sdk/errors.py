"""The one error hierarchy of the bitnet-edge distribution, and the runtime's own errors.

Every error raised on purpose by bitnet-edge derives from :class:`BitnetEdgeError` and carries
two attributes:

- ``reason``: a short machine code (kebab-case, or the wire protocol's snake_case ReasonCode for
  the agent's install outcomes) that callers branch on, never on message text;
- ``detail``: one human line naming what was wrong (``str(exc) == exc.detail``).

The roles keep their own subclasses (``sdk.bundle.errors``: the bundle contract;
``packagers.errors.PackagerError``: the build host; ``agent.errors.AgentError``: the device;
``fleet.errors.FleetError``: the fleet service); the CLI prints any of them the same way
(:mod:`bitnet_edge.sdk.cliutil`).  Input errors also derive from the matching builtin (ValueError /
TypeError / LookupError) so generic callers keep working.

Standard library only: ``setup.py`` loads the bundle errors (which derive from this root) from the
source tree before any dependency is importable.

    BitnetEdgeError                 reason, detail
    ├── NativeLibraryError          tried                           native-library
    ├── BackendError                backend, available              unknown-backend | not-compiled | ...
    ├── KernelError                 function, status, status_name   kernel-status
    ├── InputError                  argument (also ValueError)      bad-input
    │   ├── ShapeError                                              bad-shape
    │   ├── DTypeError              (also TypeError)                bad-dtype
    │   ├── RangeError                                              out-of-range
    │   └── NonFiniteError                                          non-finite
    ├── FormatError                 (also ValueError)               bad-format | ...
    ├── CudaError                   function, status, status_name, driver_message
    ├── CudaUnavailable             tried                           no-driver | no-device | ...
    ├── ListenError                 what, host, port                port-in-use | permission-denied | ...
    ├── (sdk.bundle.errors)         bundles, keys, device profiles
    ├── (packagers.errors.PackagerError)
    ├── (agent.errors.AgentError)
    └── (fleet.errors.FleetError)
"""

from __future__ import annotations

import errno
import socket

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
    "ListenError",
    "listen_error",
]


class BitnetEdgeError(Exception):
    """Base of every error bitnet-edge raises on purpose: ``reason`` (machine code) and ``detail``
    (one human line)."""

    #: attributes :meth:`to_dict` reports beside type, reason and detail (each subclass names its own)
    fields: tuple[str, ...] = ()

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict:
        """The error as ``--json`` reports it: ``type``, ``reason``, ``detail`` and the class's ``fields``."""
        out = {"type": type(self).__name__, "reason": self.reason, "detail": self.detail}
        for k in self.fields:
            v = getattr(self, k, None)
            if v is not None:
                out[k] = v
        return out


def _with_tried(message: str, tried: list[tuple[str, str]]) -> str:
    return "\n".join([message] + [f"  - {p}: {why}" for p, why in tried])


class NativeLibraryError(BitnetEdgeError):
    """The kernel library could not be loaded, or it is not the one this package expects.

    ``tried`` lists ``(path, why)`` for every candidate the loader looked at.
    """

    def __init__(self, message: str, tried: list[tuple[str, str]] | None = None):
        self.tried = list(tried or [])
        super().__init__("native-library", _with_tried(message, self.tried))


class BackendError(BitnetEdgeError, ValueError):
    """An unknown kernel backend or model device name, or one this CPU / library cannot run.

    ``reason``: ``unknown-backend`` | ``not-compiled`` | ``cpu-lacks-isa`` | ``unavailable``.
    """

    fields = ("backend", "available")

    def __init__(self, backend: str, why: str, available: list[str] | None = None, *,
                 reason: str = "unavailable"):
        self.backend, self.available = backend, list(available or [])
        tail = f" (available here: {', '.join(self.available)})" if self.available else ""
        super().__init__(reason, f"kernel backend {backend!r}: {why}{tail}")


class KernelError(BitnetEdgeError):
    """The native library returned a status code other than BNE_OK."""

    fields = ("function", "status", "status_name")

    def __init__(self, function: str, status: int, status_name: str):
        self.function, self.status, self.status_name = function, status, status_name
        super().__init__("kernel-status", f"{function} failed with {status_name} ({status})")


class InputError(BitnetEdgeError, ValueError):
    """Bad input to an SDK call: the detail names the argument."""

    fields = ("argument",)

    code = "bad-input"

    def __init__(self, argument: str, problem: str):
        self.argument = argument
        super().__init__(self.code, f"{argument}: {problem}")


class ShapeError(InputError):
    """Array shapes that do not fit together."""

    code = "bad-shape"


class DTypeError(InputError, TypeError):
    """An array of the wrong dtype."""

    code = "bad-dtype"


class RangeError(InputError):
    """Values outside their domain (a ternary weight of 2, an int8 weight of -128)."""

    code = "out-of-range"


class NonFiniteError(InputError):
    """NaN or infinity where a finite float is required."""

    code = "non-finite"


class FormatError(BitnetEdgeError, ValueError):
    """Bytes or files that are not a valid packed or stored format (a model file, a tokenizer, a
    calibration set).  ``reason`` defaults to ``bad-format``."""

    def __init__(self, detail: str, reason: str = "bad-format"):
        super().__init__(reason, detail)


class CudaError(BitnetEdgeError):
    """A CUDA driver API call returned a status other than CUDA_SUCCESS.

    ``status`` is the CUresult number, ``status_name`` its enum name (``CUDA_ERROR_NO_BINARY_FOR_GPU``),
    ``function`` the driver call, ``driver_message`` the driver's own description (cuGetErrorString).
    """

    fields = ("function", "status", "status_name")

    def __init__(self, function: str, status: int, status_name: str, driver_message: str = ""):
        self.function, self.status, self.status_name = function, status, status_name
        self.driver_message = driver_message
        tail = f": {driver_message}" if driver_message else ""
        super().__init__("cuda-status", f"{function} failed with {status_name} ({status}){tail}")


class CudaUnavailable(BitnetEdgeError):
    """The CUDA backend cannot run here: no driver, no GPU, no fatbin, or a GPU the fatbin does not cover.

    ``reason``: ``no-driver``, ``no-device``, ``no-fatbin``, ``no-binary-for-gpu``,
    ``version-mismatch``, ``driver-error``, ``unsupported-model``; ``tried`` lists ``(what, why)``
    for every candidate looked at.
    """

    def __init__(self, reason: str, message: str, tried: list[tuple[str, str]] | None = None):
        self.tried = list(tried or [])
        super().__init__(reason, _with_tried(message, self.tried))


class ListenError(BitnetEdgeError):
    """A server socket that cannot be opened: ``what`` (``agent API``, ``fleet control API``,
    ``embedded MQTT broker`` ...) on ``host``:``port``.  ``reason``: ``port-in-use`` |
    ``permission-denied`` | ``address-unavailable`` | ``listen-failed``."""

    fields = ("what", "host", "port")

    def __init__(self, reason: str, what: str, host: str, port: int, why: str):
        self.what, self.host, self.port = what, host, port
        super().__init__(reason, f"{what}: cannot listen on {host}:{port}: {why}")


def listen_error(exc: OSError, what: str, host: str, port: int, option: str = "") -> ListenError:
    """The :class:`ListenError` for an ``OSError`` from ``bind``/``listen``; ``option`` names the
    setting that picks another port (said in the message)."""
    hint = f" (choose another with {option})" if option else ""
    if exc.errno == errno.EADDRINUSE:
        return ListenError("port-in-use", what, host, port, f"port {port} is already in use{hint}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ListenError("permission-denied", what, host, port,
                           f"not allowed to listen on port {port} (ports below 1024 need privileges){hint}")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return ListenError("address-unavailable", what, host, port, f"{host} is not an address of this machine")
    return ListenError("listen-failed", what, host, port, exc.strerror or str(exc))
