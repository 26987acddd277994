"""The ``mlx`` backend: linear layers on MLX (the Apple GPU in unified memory; MLX's CPU backend
elsewhere), bit-identical to the CPU kernels for ternary and int8 weights (docs/adr/0006-mlx-backend.md).

Every matrix here is W (n, k); inputs are x (m, k), outputs (m, n).

- Ternary (W1.58A8).  The 2-bit compute layout (ADR 0002) already *is* an MLX 2-bit affine matrix:
  read as little-endian uint32 words, a row holds the codes ``c = w + 1``, 16 per word, 2 bits each,
  low bits first -- only in another order: MLX position ``4j + s`` of a 128-weight block holds our
  weight ``j + 32s``.  So MLX multiplies our bytes as they are (no repacking, nothing extra in a
  bundle) with the activations permuted the same way inside each block (:func:`permute_blocks`).
  Scale 1 and bias -1 in every group make the dequantized weight ``1*c - 1 = w`` exactly.
- int8 (W8A8).  ``w = 16h + l`` with ``h = w >> 4`` in [-8, 7] and ``l = w & 15`` in [0, 15]: two
  MLX 4-bit matrices (codes ``h + 8`` with bias -8, and ``l`` with bias 0, scale 1), 1 byte per
  weight in all, combined as ``16*A_h + A_l`` in int32.
- Activations are quantized on the host by the CPU path (:func:`kernels.quantize_activations`,
  bit-exact with :func:`quant.absmax_int8`) and reach MLX as float32 integers in [-128, 127].
- Accumulation is float32 inside MLX.  A float32 sum of integers is exact while every partial sum
  (in any order, dequantized or as ``scale*sum(x*c) + bias*sum(x)``) has magnitude <= 2^24.  With
  |x| <= 128 that holds for ``256*k`` (ternary codes <= 2) and ``1920*k`` (4-bit codes <= 15):
  k <= 65536 and k <= 8704 inputs per matmul (:data:`K_EXACT`).  Longer rows are cut into chunks
  whose exact results are converted to int32 and added in int32.
- The epilogue ``y = (float32(acc) * scale) / s`` runs on the host in numpy
  (:func:`reference.epilogue`), so outputs are the CPU path's float32 bits.
- Float layers (f16/f32) are float32 ``x @ W.T`` in MLX: not bit-exact with numpy's BLAS (another
  summation order); the tolerance is in the ADR.
"""

from __future__ import annotations

import functools
import importlib
import platform
from collections.abc import Sequence

import numpy as np

from bitnet_edge.sdk import reference
from bitnet_edge.sdk._checks import float_input, int8_input
from bitnet_edge.sdk.errors import BackendError, RangeError, ShapeError

__all__ = [
    "K_EXACT",
    "available",
    "import_error",
    "on_apple_silicon",
    "info",
    "permute_blocks",
    "MlxTernaryMatrix",
    "MlxInt8Matrix",
    "MlxDenseMatrix",
    "from_matrix",
    "linear_many",
]

_ROWS = 4096  # rows converted at a time when building the int8 planes
BLOCK = 128  # weights per block of the 2-bit compute layout = MLX group size used here
#: bits of an MLX code -> the most inputs one quantized_matmul may sum and stay exact (see above)
K_EXACT = {2: 65536, 4: 8704}


@functools.cache
def _import():
    """(mlx.core, None) or (None, "why it does not import"); tried once per process."""
    try:
        return importlib.import_module("mlx.core"), None
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken wheel's OSError
        return None, f"{type(exc).__name__}: {exc}"


def available() -> bool:
    """Whether ``mlx.core`` imports here (Apple Silicon with Metal, or ``mlx[cpu]`` on Linux)."""
    return _import()[0] is not None


def import_error() -> str | None:
    return _import()[1]


def _mx():
    mx, err = _import()
    if mx is None:
        raise BackendError("mlx", f"mlx does not import ({err}); pip install 'bitnet-edge[mlx]'")
    return mx


def on_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine().lower() in ("arm64", "aarch64")


def info() -> dict:
    """What ``bitnet-edge info`` and the agent's probe say about MLX."""
    mx, err = _import()
    if mx is None:
        return {"available": False, "error": err}
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    return {"available": True, "version": mx.__version__, "device": device, "metal": metal}


def _padded(xq: np.ndarray, kp: int) -> np.ndarray:
    """(m, k) -> float32 (m, kp), zeros after column k."""
    m, k = xq.shape
    x = np.zeros((m, kp), np.float32)
    x[:, :k] = xq
    return x


def permute_blocks(xq: np.ndarray, kp: int) -> np.ndarray:
    """(m, k) -> float32 (m, kp), zero padded to kp, each 128-block in MLX order: element
    ``4j + s`` of a block is input ``j + 32s`` (the order of the 2-bit compute layout's codes)."""
    m = xq.shape[0]
    return _padded(xq, kp).reshape(m, kp // BLOCK, 4, 32).transpose(0, 1, 3, 2).reshape(m, kp)


def _chunks(kp: int, bits: int) -> list[tuple[int, int]]:
    step = K_EXACT[bits]
    return [(a, min(a + step, kp)) for a in range(0, kp, step)]


class _Plane:
    """One MLX affine-quantized matrix (codes packed in uint32 rows), scale 1, one bias for all groups."""

    __slots__ = ("w", "scales", "biases", "bits", "cols")

    def __init__(self, words: np.ndarray, bits: int, bias: float):
        mx = _mx()
        n, nwords = words.shape
        self.bits, self.cols = bits, nwords * 32 // bits
        groups = self.cols // BLOCK
        self.w = mx.array(np.ascontiguousarray(words))
        # float16 holds 1, 0, -1 and -8 exactly; 4 bytes per 128 weights (0.25 bit/weight)
        self.scales = mx.ones((n, groups), dtype=mx.float16)
        self.biases = mx.full((n, groups), bias, dtype=mx.float16)

    def matmul(self, x):
        """x mx float32 (m, cols) -> mx float32 (m, n), exact integers (cols <= K_EXACT[bits])."""
        return _mx().quantized_matmul(x, self.w, self.scales, self.biases, transpose=True,
                                      group_size=BLOCK, bits=self.bits)

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes + self.scales.nbytes + self.biases.nbytes)


def _sum_int32(parts: list):
    """Exact float32 integer results -> their sum in int32 (one part: left as float32, exact)."""
    if len(parts) == 1:
        return parts[0]
    mx = _mx()
    total = parts[0].astype(mx.int32)
    for p in parts[1:]:
        total = total + p.astype(mx.int32)
    return total


class _Inputs:
    """The MLX forms of one input, made once and shared by the layers that read it (q/k/v)."""

    def __init__(self, x: np.ndarray | None, xq: tuple[np.ndarray, np.ndarray] | None):
        self.x, self.xq, self._cache = x, xq, {}

    def quantized(self) -> tuple[np.ndarray, np.ndarray]:
        if self.xq is None:
            from bitnet_edge.sdk.kernels import quantize_activations

            self.xq = quantize_activations(self.x)
        return self.xq

    def get(self, kind: str, kp: int, a: int, b: int):
        key = (kind, kp, a, b)
        if key not in self._cache:
            mx = _mx()
            if kind == "dense":
                self._cache[key] = mx.array(self.x)
            else:
                full_key = (kind, kp, 0, kp)
                if full_key not in self._cache:
                    fn = permute_blocks if kind == "ternary" else _padded
                    self._cache[full_key] = mx.array(fn(self.quantized()[0], kp))
                self._cache[key] = self._cache[full_key][:, a:b] if (a, b) != (0, kp) else self._cache[full_key]
        return self._cache[key]


class _Matrix:
    out_features: int
    in_features: int

    def _acc(self, inp: _Inputs):  # the lazy MLX result
        raise NotImplementedError

    def _finish(self, acc: np.ndarray, inp: _Inputs) -> np.ndarray:  # host epilogue
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def linear(self, x, xq: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """x (m, k) or (k,) float -> (m, n) or (n,) float32, as the CPU matrices' ``linear``."""
        x = float_input("x", x)
        one = x.ndim == 1
        y = linear_many([self], x[None] if one else x, xq)[0]
        return y[0] if one else y


class _QuantizedMatrix(_Matrix):
    def matmul_int8(self, xq) -> np.ndarray:
        """xq (m, k) or (k,) int8 -> W xq as int32 (m, n) or (n,): the integer part alone."""
        xq = int8_input("xq", xq)
        one = xq.ndim == 1
        rows = xq[None] if one else xq
        if rows.shape[1] != self.in_features:
            raise ShapeError("xq", f"last dimension {rows.shape[1]} does not match in_features {self.in_features}")
        acc = self._acc(_Inputs(None, (rows, np.ones(rows.shape[0], np.float32))))
        y = np.asarray(acc.astype(_mx().int32))
        return y[0] if one else y


class MlxTernaryMatrix(_QuantizedMatrix):
    """A ternary W (n, k) with scale g, on MLX, from the 2-bit compute layout (ADR 0002) as it is."""

    kind = "ternary"

    def __init__(self, packed: np.ndarray, in_features: int, scale: float):
        packed = np.ascontiguousarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] % 32:
            raise ShapeError("packed", f"must be 2-D uint8 rows of 32-byte blocks, got {packed.dtype} {packed.shape}")
        if not np.isfinite(scale) or scale <= 0:
            raise RangeError("scale", f"must be a positive finite float, got {scale!r}")
        self.out_features, self.in_features = packed.shape[0], in_features
        self.scale = np.float32(scale)
        self.kp = packed.shape[1] * 4
        words = packed.view("<u4")  # (n, kp / 16): 16 codes per word, the layout's byte order
        self._chunks = [(a, b, _Plane(words[:, a // 16 : b // 16], 2, -1.0)) for a, b in _chunks(self.kp, 2)]

    def _acc(self, inp: _Inputs):
        return _sum_int32([p.matmul(inp.get("ternary", self.kp, a, b)) for a, b, p in self._chunks])

    def _finish(self, acc: np.ndarray, inp: _Inputs) -> np.ndarray:
        return reference.epilogue(acc, self.scale, inp.quantized()[1])

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, _, p in self._chunks)


class MlxInt8Matrix(_QuantizedMatrix):
    """An int8 W (n, k) in [-127, 127] with per-row scales, on MLX as two exact 4-bit planes."""

    kind = "int8"

    def __init__(self, q: np.ndarray, scales: np.ndarray):
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 2:
            raise ShapeError("q", f"must be 2-D int8, got {q.dtype} {q.shape}")
        self.out_features, self.in_features = q.shape
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.kp = -(-self.in_features // BLOCK) * BLOCK
        n = self.out_features
        self._chunks = []
        for a, b in _chunks(self.kp, 4):
            hi = np.empty((n, (b - a) // 8), np.uint32)
            lo = np.empty_like(hi)
            for r in range(0, n, _ROWS):  # row blocks bound the temporary memory
                w = np.zeros((min(_ROWS, n - r), b - a), np.int8)
                w[:, : max(0, min(b, self.in_features) - a)] = q[r : r + _ROWS, a : min(b, self.in_features)]
                hi[r : r + _ROWS] = _nibbles(((w >> 4) + 8).astype(np.uint8))  # h + 8 in [0, 15]
                lo[r : r + _ROWS] = _nibbles((w & 15).astype(np.uint8))
            self._chunks.append((a, b, _Plane(hi, 4, -8.0), _Plane(lo, 4, 0.0)))

    def _acc(self, inp: _Inputs):
        mx = _mx()
        parts = []
        for a, b, hi, lo in self._chunks:
            x = inp.get("int8", self.kp, a, b)
            # 16*A_h + A_l can pass 2^24: combine in int32
            parts.append(hi.matmul(x).astype(mx.int32) * 16 + lo.matmul(x).astype(mx.int32))
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def _finish(self, acc: np.ndarray, inp: _Inputs) -> np.ndarray:
        return reference.epilogue(acc, self.scales, inp.quantized()[1])

    @property
    def nbytes(self) -> int:
        return sum(hi.nbytes + lo.nbytes for _, _, hi, lo in self._chunks)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes (n, k) in [0, 15], k a multiple of 8 -> MLX 4-bit words (n, k / 8): element i at bits 4i."""
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4)).view("<u4")


class MlxDenseMatrix(_Matrix):
    """A float W (n, k), held as float32 on MLX; y = x @ W.T in float32 (close to numpy, not bit-exact)."""

    kind = "dense"

    def __init__(self, w: np.ndarray):
        self.out_features, self.in_features = w.shape
        self.w = _mx().array(np.ascontiguousarray(w, dtype=np.float32))

    def _acc(self, inp: _Inputs):
        return _mx().matmul(inp.get("dense", 0, 0, 0), self.w.T)

    def _finish(self, y: np.ndarray, inp: _Inputs) -> np.ndarray:
        return y

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes)


def from_matrix(m) -> _Matrix:
    """The MLX twin of a :class:`kernels.TernaryMatrix`, :class:`kernels.Int8Matrix` or float array."""
    from bitnet_edge.sdk.kernels import Int8Matrix, TernaryMatrix

    if isinstance(m, TernaryMatrix):
        return MlxTernaryMatrix(m.packed, m.in_features, m.scale)
    if isinstance(m, Int8Matrix):
        return MlxInt8Matrix(m.weights, m.scales)
    return MlxDenseMatrix(np.asarray(m))


def linear_many(mats: Sequence[_Matrix], x: np.ndarray,
                xq: tuple[np.ndarray, np.ndarray] | None = None) -> list[np.ndarray]:
    """x (m, k) float32 through several matrices of one input -> [(m, n_i) float32]: one MLX
    evaluation for all of them; ``xq`` = quantize_activations(x) when the caller has it."""
    mx = _mx()
    x = np.asarray(x, dtype=np.float32)
    for mat in mats:
        if x.ndim != 2 or x.shape[1] != mat.in_features:
            raise ShapeError("x", f"shape {x.shape} does not match in_features {mat.in_features}")
    inp = _Inputs(x, xq)
    lazy = [mat._acc(inp) for mat in mats]
    mx.eval(*lazy)
    return [mat._finish(np.asarray(out), inp) for mat, out in zip(mats, lazy)]
