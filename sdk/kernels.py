"""The NumPy-facing kernel API: ternary (W1.58A8) and int8 (W8A8) matrices.

Backends: the native variants ``ref`` (portable C), ``avx2``, ``avx512``
(AVX-512 VNNI), ``neon`` (aarch64 or ARMv7), ``neon-dotprod``, ``rvv`` (RISC-V V 1.0) and ``numpy`` (the pure numpy
reference in :mod:`bitnet_edge.sdk.reference`).  Choice, first match wins:
the ``backend=`` argument, :func:`use_backend` (a context manager), the
``BITNET_EDGE_KERNEL`` environment variable, then ``auto`` (the best variant the
CPU runs).  An unknown name or one this CPU cannot run raises BackendError.

Input handling (documented behaviour, tested):
- ``matmul_int8`` takes int8 only (other dtypes raise DTypeError, no silent cast);
- ``linear`` takes float16/32/64 and computes in float32; NaN/inf raise NonFiniteError;
- 1-D input is one row and gives 1-D output; non-contiguous arrays are copied.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from bitnet_edge.sdk import packing, quant, reference
from bitnet_edge.sdk._checks import int8_input, float_input, ternary_input
from bitnet_edge.sdk.errors import BackendError, DTypeError, NativeLibraryError, RangeError, ShapeError
from bitnet_edge.sdk.native import _binding as nb

__all__ = [
    "NATIVE_BACKENDS",
    "TernaryMatrix",
    "Ternary3Matrix",
    "Int8Matrix",
    "available_backends",
    "fallback_reason",
    "resolve_backend",
    "use_backend",
    "quantize_activations",
    "set_threads",
    "get_threads",
]

#: Native backend names and their C ids (enum bne_backend).
NATIVE_BACKENDS: dict[str, int] = {"ref": 1, "avx2": 2, "avx512": 3, "neon": 4, "neon-dotprod": 5, "rvv": 6}
_ALL_NAMES = ("auto", *NATIVE_BACKENDS, "numpy")
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("bitnet_edge_kernel", default=None)


def available_backends() -> list[str]:
    """Backends this machine can run, fastest native first, then ``numpy``."""
    order = ["avx512", "avx2", "neon-dotprod", "neon", "rvv", "ref"]
    try:
        names = [b for b in order if nb.backend_id_info(NATIVE_BACKENDS[b])[2]]
    except NativeLibraryError:
        names = []
    return names + ["numpy"]


def _best() -> str:
    """The best native variant this CPU runs; ``numpy`` when no kernel library loads (the last resort:
    an install built without a compiler; :func:`fallback_reason` says why, ``bitnet-edge info`` reports it)."""
    try:
        return nb.backend_id_info(nb.best_backend())[0]
    except NativeLibraryError:
        return "numpy"


def fallback_reason() -> str | None:
    """Why ``auto`` runs the numpy reference instead of a native kernel, or None when it does not."""
    try:
        nb.best_backend()
    except NativeLibraryError as exc:
        return str(exc).splitlines()[0]
    return None


_RESOLVED: dict[tuple[str | None, str | None, str | None], str] = {}  # memo of successful resolutions


def resolve_backend(backend: str | None = None) -> str:
    """The concrete backend name a call with ``backend`` would use."""
    key = (backend, _context.get(), os.environ.get("BITNET_EDGE_KERNEL"))
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(backend)  # errors are not memoized: they raise each time
    return hit


def _resolve(backend: str | None) -> str:
    source = "argument"
    if backend is None:
        backend, source = _context.get(), "use_backend()"
    if backend is None:
        backend, source = os.environ.get("BITNET_EDGE_KERNEL") or None, "BITNET_EDGE_KERNEL"
    if backend is None:
        backend, source = "auto", "default"
    name = backend.strip().lower()
    if name not in _ALL_NAMES:
        raise BackendError(backend, f"unknown (from {source}); known: {', '.join(_ALL_NAMES)}",
                           available_backends(), reason="unknown-backend")
    if name == "numpy":
        return name
    if name == "auto":
        return _best()
    _, compiled, supported = nb.backend_id_info(NATIVE_BACKENDS[name])
    if not compiled:
        raise BackendError(name, f"not compiled into this library (from {source})", available_backends(),
                           reason="not-compiled")
    if not supported:
        raise BackendError(name, f"this CPU lacks its instructions (from {source})", available_backends(),
                           reason="cpu-lacks-isa")
    return name


@contextmanager
def use_backend(backend: str) -> Iterator[str]:
    """Run the block with ``backend`` (checked on entry); yields the resolved name."""
    resolved = resolve_backend(backend)
    token = _context.set(resolved)
    try:
        yield resolved
    finally:
        _context.reset(token)


def set_threads(n: int) -> None:
    """Threads the kernels use (the caller's included); results do not depend on it."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 256:
        raise RangeError("n", f"thread count must be an int in [1, 256], got {n!r}")
    nb.set_threads(n)


def get_threads() -> int:
    return nb.get_threads()


def _rows(name: str, arr: np.ndarray, k: int) -> tuple[np.ndarray, bool]:
    """(m, k) view of 1-D or 2-D input, and whether it was 1-D."""
    if arr.shape[-1] != k:
        raise ShapeError(name, f"last dimension {arr.shape[-1]} does not match in_features {k}")
    return (arr.reshape(1, k), True) if arr.ndim == 1 else (arr, False)


def quantize_activations(x, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8 of x (m, k) or (k,): the native twin of :func:`quant.absmax_int8`."""
    be = resolve_backend(backend)
    x = float_input("x", x)
    if be == "numpy":
        return quant.absmax_int8(x)
    rows, one = _rows("x", x, x.shape[-1])
    xq, s = nb.quantize_act(NATIVE_BACKENDS[be], rows)
    return (xq[0], s[0]) if one else (xq, s)


class TernaryMatrix:
    """A ternary weight matrix W (out_features, in_features) with one absmean scale,
    held in the 2-bit compute format (:class:`Ternary3Matrix`: the base-3 one)."""

    __slots__ = ("packed", "out_features", "in_features", "scale")
    format = "ternary2"  #: the manifest's name of the layout
    _row_bytes = staticmethod(packing.row_bytes)
    _pack = staticmethod(packing.pack_ternary_2bit)
    _unpack = staticmethod(packing.unpack_ternary_2bit)
    _gemm_i32 = staticmethod(nb.ternary_gemm_i32)
    _gemm_f32 = staticmethod(nb.ternary_gemm_f32)

    def __init__(self, packed: np.ndarray, in_features: int, scale: float):
        packed = np.ascontiguousarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 2:
            raise DTypeError("packed", f"must be 2-D uint8, got {packed.dtype.name} {packed.shape}")
        if in_features <= 0 or packed.shape[1] != self._row_bytes(in_features):
            raise ShapeError("packed", f"rows of {packed.shape[1]} bytes do not hold {in_features} weights")
        if not np.isfinite(scale) or scale <= 0:
            raise RangeError("scale", f"must be a positive finite float, got {scale!r}")
        self.packed = packed
        self.out_features, self.in_features = packed.shape[0], in_features
        self.scale = float(np.float32(scale))

    @classmethod
    def from_float(cls, w) -> TernaryMatrix:
        q, g = quant.absmean_ternary(float_input("w", w, ndims=(2,)))
        return cls.from_ternary(q, g)

    @classmethod
    def from_ternary(cls, q, scale: float) -> TernaryMatrix:
        q = ternary_input("q", q)
        return cls(cls._pack(q), q.shape[1], scale)

    def ternary(self) -> np.ndarray:
        """The weights as int8 in {-1, 0, 1}, shape (out_features, in_features)."""
        return self._unpack(self.packed, self.in_features)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def matmul_int8(self, xq, backend: str | None = None) -> np.ndarray:
        """xq (m, k) or (k,) int8 -> W xq as int32 (m, n) or (n,); exact."""
        be = resolve_backend(backend)
        rows, one = _rows("xq", int8_input("xq", xq), self.in_features)
        if be == "numpy":
            y = reference.int_matmul(self.ternary(), rows)
        else:
            y = self._gemm_i32(NATIVE_BACKENDS[be], self.packed, self.out_features, self.in_features, rows)
        return y[0] if one else y

    def linear_quantized(self, xq: np.ndarray, s: np.ndarray, backend: str | None = None) -> np.ndarray:
        """Like :meth:`linear` for activations already quantized by :func:`quantize_activations`
        (xq (m, k) int8, s (m,) float32): layers that share an input quantize it once."""
        be = resolve_backend(backend)
        rows, _ = _rows("xq", int8_input("xq", xq, ndims=(2,)), self.in_features)
        s = np.ascontiguousarray(s, dtype=np.float32)
        if s.shape != (rows.shape[0],):
            raise ShapeError("s", f"must have shape ({rows.shape[0]},), got {s.shape}")
        if be == "numpy":
            return reference.epilogue(reference.int_matmul(self.ternary(), rows), np.float32(self.scale), s)
        return self._gemm_f32(NATIVE_BACKENDS[be], self.packed, self.out_features, self.in_features,
                              self.scale, rows, s)

    def linear(self, x, backend: str | None = None) -> np.ndarray:
        """x (m, k) or (k,) float -> y = (Wq @ absmax_int8(x)) * scale / s, float32."""
        be = resolve_backend(backend)
        rows, one = _rows("x", float_input("x", x), self.in_features)
        if be == "numpy":
            y = reference.ternary_linear(self.ternary(), self.scale, rows)
        else:
            bid = NATIVE_BACKENDS[be]
            xq, s = nb.quantize_act(bid, rows)
            y = self._gemm_f32(bid, self.packed, self.out_features, self.in_features, self.scale, xq, s)
        return y[0] if one else y


class Ternary3Matrix(TernaryMatrix):
    """A ternary weight matrix held in the base-3 compute format (1.6 bits/weight, ``ternary_b3``):
    the same products as :class:`TernaryMatrix`, 20% fewer bytes to read."""

    __slots__ = ()
    format = "ternary_b3"
    _row_bytes = staticmethod(packing.row_bytes3)
    _pack = staticmethod(packing.pack_ternary_b3)
    _unpack = staticmethod(packing.unpack_ternary_b3)
    _gemm_i32 = staticmethod(nb.ternary3_gemm_i32)
    _gemm_f32 = staticmethod(nb.ternary3_gemm_f32)


class Int8Matrix:
    """An int8 weight matrix (W8A8) with a per-output-channel absmax scale."""

    __slots__ = ("weights", "scales", "rowsum", "out_features", "in_features")

    def __init__(self, q: np.ndarray, scales: np.ndarray):
        q = int8_input("q", q, ndims=(2,))
        if q.min() < -127:
            raise RangeError("q", "int8 weights must be in [-127, 127] (-128 has no symmetric scale)")
        scales = np.ascontiguousarray(scales, dtype=np.float32)
        if scales.shape != (q.shape[0],):
            raise ShapeError("scales", f"must have shape ({q.shape[0]},), got {scales.shape}")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise RangeError("scales", "must be positive and finite")
        self.weights, self.scales = q, scales
        self.out_features, self.in_features = q.shape
        self.rowsum = q.sum(axis=1, dtype=np.int32)  # == bne_int8_rowsum; numpy keeps the numpy backend native-free

    @classmethod
    def from_float(cls, w) -> Int8Matrix:
        return cls(*quant.absmax_int8_weights(w))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def matmul_int8(self, xq, backend: str | None = None) -> np.ndarray:
        be = resolve_backend(backend)
        rows, one = _rows("xq", int8_input("xq", xq), self.in_features)
        if be == "numpy":
            y = reference.int_matmul(self.weights, rows)
        else:
            y = nb.int8_gemm_i32(NATIVE_BACKENDS[be], self.weights, self.rowsum, rows)
        return y[0] if one else y

    def linear_quantized(self, xq: np.ndarray, s: np.ndarray, backend: str | None = None) -> np.ndarray:
        """Like :meth:`linear` for activations already quantized (see TernaryMatrix.linear_quantized)."""
        be = resolve_backend(backend)
        rows, _ = _rows("xq", int8_input("xq", xq, ndims=(2,)), self.in_features)
        s = np.ascontiguousarray(s, dtype=np.float32)
        if s.shape != (rows.shape[0],):
            raise ShapeError("s", f"must have shape ({rows.shape[0]},), got {s.shape}")
        if be == "numpy":
            return reference.epilogue(reference.int_matmul(self.weights, rows), self.scales, s)
        return nb.int8_gemm_f32(NATIVE_BACKENDS[be], self.weights, self.rowsum, self.scales, rows, s)

    def linear(self, x, backend: str | None = None) -> np.ndarray:
        be = resolve_backend(backend)
        rows, one = _rows("x", float_input("x", x), self.in_features)
        if be == "numpy":
            y = reference.int8_linear(self.weights, self.scales, rows)
        else:
            bid = NATIVE_BACKENDS[be]
            xq, s = nb.quantize_act(bid, rows)
            y = nb.int8_gemm_f32(bid, self.weights, self.rowsum, self.scales, xq, s)
        return y[0] if one else y
