"""The NumPy-facing CUDA kernels: activation quantization, ternary and int8 matrices held on the
GPU, and the decoder glue (RoPE + KV write, attention), each a thin layer over one launch.

Shapes and numerics are those of :mod:`bitnet_edge.sdk.kernels` (the CPU API): the int32
products are exact and the float epilogue and the quantizer are bit-identical to numpy (ADR 0003);
the RMSNorm/softmax glue is float32 in the GPU's summation order (close to numpy, not identical).
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk._checks import float_input, int8_input
from bitnet_edge.sdk.cuda.runtime import DeviceArray, Gpu
from bitnet_edge.sdk.errors import NonFiniteError, RangeError, ShapeError

__all__ = ["blocks", "QuantizedRows", "quantize_device", "quantize_activations", "CudaTernaryMatrix",
           "CudaInt8Matrix", "rope_kv", "attention"]

ACT = {"none": 0, "relu2": 1, "silu": 2}


def blocks(k: int) -> int:
    """Number of 128-weight blocks of a row of k (nb); rows of activations are nb*128 bytes."""
    return (k + 127) // 128


class QuantizedRows:
    """Activations quantized on the GPU: xq (m, nb*128) int8 zero-padded, s (m,), xsum (m,)."""

    __slots__ = ("m", "k", "xq", "s", "xsum", "flag")

    def __init__(self, gpu: Gpu, m: int, k: int):
        self.m, self.k = m, k
        self.xq = gpu.empty((m, blocks(k) * 128), np.int8)
        self.s = gpu.empty(m, np.float32)
        self.xsum = gpu.empty(m, np.int32)
        self.flag = gpu.zeros(1, np.int32)

    def check_finite(self) -> None:
        if int(self.flag.download()[0]):
            raise NonFiniteError("x", "contains NaN or infinity")

    @classmethod
    def from_host(cls, gpu: Gpu, xq: np.ndarray, s: np.ndarray | None) -> QuantizedRows:
        """Upload activations already quantized on the host (padded here; xsum computed exactly)."""
        m, k = xq.shape
        q = cls(gpu, m, k)
        padded = np.zeros((m, blocks(k) * 128), np.int8)
        padded[:, :k] = xq
        q.xq.upload(padded)
        q.xsum.upload(xq.sum(axis=1, dtype=np.int64).astype(np.int32))
        q.s.upload(np.ones(m, np.float32) if s is None else np.ascontiguousarray(s, dtype=np.float32))
        return q


def quantize_device(gpu: Gpu, x: DeviceArray | int, m: int, k: int, ldx: int, out: QuantizedRows, *,
                    x2: DeviceArray | int | None = None, act: str = "none", norm: DeviceArray | None = None,
                    eps: float = 0.0) -> None:
    """x (m, k) float32 on the GPU, row stride ldx -> ``out``; optionally act(x) * x2 and an RMSNorm
    with weight ``norm`` first (bne_norm_quant)."""
    gpu.launch("bne_norm_quant", (m,), gpu.geometry["norm_threads"],
               (x, x2, ldx, m, k, ACT[act], norm, eps, out.xq, out.xq.shape[1], out.s, out.xsum, out.flag))


def quantize_activations(x, gpu: Gpu | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x (m, k) or (k,) float -> (xq int8, s float32) computed on the GPU; bit-identical to
    :func:`bitnet_edge.sdk.quant.absmax_int8`."""
    from bitnet_edge.sdk.cuda import gpu as _gpu

    g = gpu or _gpu()
    x = float_input("x", x, ndims=(1, 2))
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    m, k = rows.shape
    q = QuantizedRows(g, m, k)
    quantize_device(g, g.to_device(rows), m, k, k, q)
    q.check_finite()
    xq, s = q.xq.download()[:, :k], q.s.download()
    return (xq[0], s[0]) if x.ndim == 1 else (np.ascontiguousarray(xq), s)


class _DeviceMatrix:
    """Weights (n, k) uploaded once, with a per-row float32 scale."""

    ternary: bool
    __slots__ = ("gpu", "out_features", "in_features", "weights", "wscale")

    def _geometry(self, m: int, kernel: str) -> tuple[str, tuple[int, ...], int]:
        geo = self.gpu.geometry
        kind = "ternary" if self.ternary else "int8"
        if kernel == "auto":
            kernel = "gemv" if m == 1 else "gemm"
        if kernel == "gemv":
            if m != 1:
                raise ShapeError("xq", f"the GEMV kernel takes one row, got {m}")
            per = geo["gemv_warps"] * geo["gemv_rows"]
            return f"bne_{kind}_gemv", ((self.out_features + per - 1) // per,), 32 * geo["gemv_warps"]
        bm, bn = geo["gemm_bm"], geo["gemm_bn"]
        return f"bne_{kind}_gemm", ((self.out_features + bn - 1) // bn, (m + bm - 1) // bm), bn

    def args(self, x: QuantizedRows, m: int, add, yi, y, kernel: str = "auto"):
        """(kernel name, grid, block, arguments) of y = [add +] W @ x rows (the launch, unpacked)."""
        if x.k != self.in_features:
            raise ShapeError("xq", f"rows of {x.k} do not match in_features {self.in_features}")
        name, grid, block = self._geometry(m, kernel)
        nb = blocks(self.in_features)
        w = self.weights
        if name.endswith("gemv"):
            rest = (x.xsum, x.s) if self.ternary else (x.s,)
            return name, grid, block, (w, self.out_features, nb, x.xq, *rest, self.wscale, add, yi, y)
        rest = (x.xsum, x.s) if self.ternary else (x.s,)
        return name, grid, block, (w, self.out_features, nb, x.xq, m, *rest, self.wscale, add, yi, y)

    def run(self, x: QuantizedRows, m: int, add=None, yi=None, y=None, kernel: str = "auto") -> None:
        name, grid, block, args = self.args(x, m, add, yi, y, kernel)
        self.gpu.launch(name, grid, block, args)

    def matmul_int8(self, xq, kernel: str = "auto") -> np.ndarray:
        """xq (m, k) or (k,) int8 -> W xq as int32 (m, n) or (n,); exact."""
        xq = int8_input("xq", xq, ndims=(1, 2))
        rows = xq.reshape(-1, xq.shape[-1])
        if rows.shape[1] != self.in_features:
            raise ShapeError("xq", f"last dimension {rows.shape[1]} does not match in_features {self.in_features}")
        m = rows.shape[0]
        q = QuantizedRows.from_host(self.gpu, rows, None)
        yi = self.gpu.empty((m, self.out_features), np.int32)
        self.run(q, m, yi=yi, kernel=kernel)
        out = yi.download()
        return out[0] if xq.ndim == 1 else out

    def linear_quantized(self, xq: np.ndarray, s: np.ndarray, kernel: str = "auto") -> np.ndarray:
        """xq (m, k) int8 and s (m,) float32 -> (m, n) float32 with the ADR 0003 epilogue."""
        rows = int8_input("xq", xq, ndims=(2,))
        s = np.ascontiguousarray(s, dtype=np.float32)
        if s.shape != (rows.shape[0],):
            raise ShapeError("s", f"must have shape ({rows.shape[0]},), got {s.shape}")
        m = rows.shape[0]
        q = QuantizedRows.from_host(self.gpu, rows, s)
        y = self.gpu.empty((m, self.out_features), np.float32)
        self.run(q, m, y=y, kernel=kernel)
        return y.download()

    def linear(self, x, kernel: str = "auto") -> np.ndarray:
        """x (m, k) or (k,) float -> (Wq @ absmax_int8(x)) * wscale / s, float32, all on the GPU."""
        x = float_input("x", x, ndims=(1, 2))
        rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        if rows.shape[1] != self.in_features:
            raise ShapeError("x", f"last dimension {rows.shape[1]} does not match in_features {self.in_features}")
        m = rows.shape[0]
        q = QuantizedRows(self.gpu, m, self.in_features)
        quantize_device(self.gpu, self.gpu.to_device(rows), m, self.in_features, self.in_features, q)
        q.check_finite()
        y = self.gpu.empty((m, self.out_features), np.float32)
        self.run(q, m, y=y, kernel=kernel)
        out = y.download()
        return out[0] if x.ndim == 1 else out

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes


class CudaTernaryMatrix(_DeviceMatrix):
    """Ternary weights in the 2-bit compute layout (ADR 0002) on the GPU; rows may come from several
    matrices of one input (fused q/k/v, gate/up), each with its own absmean scale."""

    ternary = True

    def __init__(self, gpu: Gpu, packed: np.ndarray, in_features: int, scales):
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if packed.ndim != 2 or packed.shape[1] != blocks(in_features) * 32:
            raise ShapeError("packed", f"rows of {packed.shape[-1]} bytes do not hold {in_features} weights")
        n = packed.shape[0]
        ws = np.broadcast_to(np.asarray(scales, dtype=np.float32), (n,))
        if not (np.isfinite(ws).all() and (ws > 0).all()):
            raise RangeError("scales", "must be positive and finite")
        self.gpu, self.out_features, self.in_features = gpu, n, in_features
        self.weights = gpu.to_device(packed)
        self.wscale = gpu.to_device(np.ascontiguousarray(ws))

    @classmethod
    def from_matrices(cls, gpu: Gpu, mats) -> CudaTernaryMatrix:
        """One device matrix of the rows of ``mats`` (kernels.TernaryMatrix, same in_features)."""
        k = mats[0].in_features
        if any(t.in_features != k for t in mats):
            raise ShapeError("mats", "fused matrices must share in_features")
        scales = np.concatenate([np.full(t.out_features, t.scale, np.float32) for t in mats])
        return cls(gpu, np.concatenate([t.packed for t in mats], axis=0), k, scales)


class CudaInt8Matrix(_DeviceMatrix):
    """int8 weights (W8A8) with per-row scales on the GPU; rows zero-padded to nb*128 bytes."""

    ternary = False

    def __init__(self, gpu: Gpu, q: np.ndarray, scales: np.ndarray):
        q = int8_input("q", q, ndims=(2,))
        n, k = q.shape
        scales = np.ascontiguousarray(scales, dtype=np.float32)
        if scales.shape != (n,):
            raise ShapeError("scales", f"must have shape ({n},), got {scales.shape}")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise RangeError("scales", "must be positive and finite")
        kp = blocks(k) * 128
        self.gpu, self.out_features, self.in_features = gpu, n, k
        self.weights = gpu.empty((n, kp), np.int8)
        step = max(1, (64 << 20) // kp)  # pad and upload 64 MiB at a time (the LM head is large)
        for r in range(0, n, step):
            chunk = np.zeros((min(step, n - r), kp), np.int8)
            chunk[:, :k] = q[r : r + step]
            gpu.htod(self.weights.ptr + r * kp, chunk)
        self.wscale = gpu.to_device(scales)

    @classmethod
    def from_matrix(cls, gpu: Gpu, mat) -> CudaInt8Matrix:
        return cls(gpu, mat.weights, mat.scales)


def rope_kv(gpu: Gpu, qkv: np.ndarray, heads: int, kv_heads: int, head_dim: int, pos0: int, cos: np.ndarray,
            sin: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bne_rope_kv on host arrays (tests): -> (q after RoPE (m, heads*hd), k_cache, v_cache)."""
    m = qkv.shape[0]
    cap = k_cache.shape[1]
    dq, dk, dv = gpu.empty((m, heads * head_dim), np.float32), gpu.to_device(k_cache, np.float32), gpu.to_device(
        v_cache, np.float32)
    gpu.launch("bne_rope_kv", (m, heads + kv_heads), min(head_dim, 1024),
               (gpu.to_device(qkv, np.float32), m, heads, kv_heads, head_dim, gpu.to_device(np.array([pos0], np.int32)),
                gpu.to_device(cos, np.float32), gpu.to_device(sin, np.float32), dq, dk, dv, cap))
    return dq.download(), dk.download(), dv.download()


def attention_smem(gpu: Gpu, head_dim: int, capacity: int) -> int:
    """Bytes of dynamic shared memory bne_attention needs."""
    threads = gpu.geometry["attn_threads"]
    parts = threads // head_dim if threads >= head_dim else 1
    return 4 * (head_dim + capacity + parts * head_dim)


def attention(gpu: Gpu, q: np.ndarray, heads: int, kv_heads: int, head_dim: int, pos0: int, k_cache: np.ndarray,
              v_cache: np.ndarray, scale: float) -> np.ndarray:
    """bne_attention on host arrays (tests): q (m, heads*hd) -> (m, heads*hd)."""
    m = q.shape[0]
    cap = k_cache.shape[1]
    smem = attention_smem(gpu, head_dim, cap)
    gpu.set_max_shared("bne_attention", smem)
    out = gpu.empty((m, heads * head_dim), np.float32)
    gpu.launch("bne_attention", (heads, m), gpu.geometry["attn_threads"],
               (gpu.to_device(q, np.float32), m, heads, kv_heads, head_dim, gpu.to_device(np.array([pos0], np.int32)),
                gpu.to_device(k_cache, np.float32), gpu.to_device(v_cache, np.float32), cap, scale, out), smem)
    return out.download()
