"""BitNet b1.58 quantization: the numpy definitions every kernel is checked against.

Weights (absmean ternary, one scale per tensor, as the BitNet reference code)::

    g  = max(mean(|W|), 1e-5)
    Wq = clip(round(W / g), -1, 1)          # round half to even

Activations (per token / per row absmax int8)::

    s  = 127 / max(max|x|, 1e-5)
    xq = clip(round(x * s), -128, 127)

Linear: ``y = (Wq @ xq) * g / s`` with integer accumulation and one float
epilogue per output element.  Higher-precision layers use int8 weights with a
per-output-channel absmax scale (W8A8).  All float arithmetic is float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet_edge.sdk._checks import float_input
from bitnet_edge.sdk.errors import ShapeError

__all__ = [
    "EPS",
    "absmean_ternary",
    "absmean_ternary_fused",
    "absmax_int8",
    "absmax_int8_weights",
]

EPS = np.float32(1e-5)


def absmean_ternary(w) -> tuple[np.ndarray, float]:
    """W (any shape, float) -> (Wq int8 in {-1,0,1}, scale g as a Python float of float32 value)."""
    w = float_input("w", w, ndims=(1, 2, 3))
    # mean(|W|) accumulated in float64 (order independent), then held as float32
    g = np.float32(max(np.float32(np.abs(w, dtype=np.float64).mean()), EPS))
    q = np.clip(np.rint(w / g), -1, 1).astype(np.int8)
    return q, float(g)


def absmean_ternary_fused(w, sizes: Sequence[int]) -> tuple[np.ndarray, list[float]]:
    """Fused projections (q/k/v, gate/up) stored as one (sum(sizes), k) matrix:
    each part along the output axis gets its own absmean scale."""
    w = float_input("w", w, ndims=(2,))
    if sum(sizes) != w.shape[0] or any(s <= 0 for s in sizes):
        raise ShapeError("sizes", f"{list(sizes)} must be positive and sum to {w.shape[0]} rows")
    parts, scales, start = [], [], 0
    for size in sizes:
        q, g = absmean_ternary(w[start : start + size])
        parts.append(q)
        scales.append(g)
        start += size
    return np.concatenate(parts, axis=0), scales


def absmax_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """x (..., k) float -> (xq int8 (..., k), s float32 (...)) with s = 127 / max|x_row|."""
    x = float_input("x", x, ndims=(1, 2, 3))
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    s = (np.float32(127.0) / np.maximum(amax, EPS)).astype(np.float32)
    xq = np.clip(np.rint(x * s), -128, 127).astype(np.int8)
    return xq, s[..., 0]


def absmax_int8_weights(w) -> tuple[np.ndarray, np.ndarray]:
    """W (n, k) float -> (Wq int8 in [-127, 127], wscale float32 (n,)) with
    wscale = max|W_row| / 127, so that W ~= Wq * wscale[:, None]."""
    w = float_input("w", w, ndims=(2,))
    amax = np.maximum(np.max(np.abs(w), axis=1), EPS).astype(np.float32)
    wscale = (amax / np.float32(127.0)).astype(np.float32)
    q = np.clip(np.rint(w / wscale[:, None]), -127, 127).astype(np.int8)
    return q, wscale
