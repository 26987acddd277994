"""numpy reference kernels.  Every native variant is tested bit-exact against these.

Integer products go through float64 matmul, which is exact here: every partial
sum is an integer below 2^53 (|sum| <= 128 * 127 * 65536 < 2^31).
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.quant import absmax_int8

__all__ = ["int_matmul", "ternary_linear", "int8_linear", "epilogue"]


def int_matmul(w: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """W (n, k) int @ xq (m, k) int8 -> (m, n) int32 (xq (k,) -> (n,))."""
    acc = np.asarray(xq, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    return acc.astype(np.int32)


def epilogue(acc: np.ndarray, wscale, xscale: np.ndarray) -> np.ndarray:
    """y = (float32(acc) * wscale) / xscale, row-wise, all in float32 (as the C epilogue)."""
    acc = np.asarray(acc).astype(np.float32)
    ws = np.asarray(wscale, dtype=np.float32)
    xs = np.asarray(xscale, dtype=np.float32)
    return ((acc * ws) / xs[..., None]).astype(np.float32)


def ternary_linear(q: np.ndarray, g: float, x: np.ndarray) -> np.ndarray:
    """Ternary Wq (n, k) with scale g applied to float x (m, k) or (k,) -> float32."""
    xq, s = absmax_int8(x)
    return epilogue(int_matmul(q, xq), np.float32(g), s)


def int8_linear(wq: np.ndarray, wscale: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int8 Wq (n, k) with per-row scales applied to float x (m, k) or (k,) -> float32."""
    xq, s = absmax_int8(x)
    return epilogue(int_matmul(wq, xq), wscale, s)
