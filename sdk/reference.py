"""numpy reference kernels.  Every native variant is tested bit-exact against these.

Integer products go through float64 matmul, which is exact here: every partial
sum is an integer below 2^53 (|sum| <= 128 * 127 * 65536 < 2^31).
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.quant import absmax_int8

__all__ = ["int_matmul", "ternary_linear", "int8_linear", "epilogue", "dwconv_i8", "dwconv_f32"]


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


def _dw_taps(g: dict):
    """(p, q, output rows slice, input rows slice, output cols slice, input cols slice) of every tap
    that touches the image: the taps the C kernel does not skip, in its order."""
    def span(o: int, stride: int, offset: int, size: int):
        # the outputs i in [0, o) with 0 <= i*stride + offset < size, and the input positions they read
        lo = max(0, (-offset + stride - 1) // stride)
        hi = min(o, (size - 1 - offset) // stride + 1) if size - 1 - offset >= 0 else 0
        if hi <= lo:
            return None
        start = lo * stride + offset
        return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)

    for p in range(g["kh"]):
        rows = span(g["oh"], g["stride_h"], p * g["dil_h"] - g["pad_top"], g["h"])
        for q in range(g["kw"]):
            cols = span(g["ow"], g["stride_w"], q * g["dil_w"] - g["pad_left"], g["w"])
            if rows and cols:
                yield p, q, rows[0], rows[1], cols[0], cols[1]


def _dw_finish(y: np.ndarray, bias, lo: float, hi: float) -> np.ndarray:
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    return np.minimum(np.maximum(y, np.float32(lo)), np.float32(hi)).astype(np.float32)


def dwconv_i8(g: dict, xq: np.ndarray, xscale: np.ndarray, taps: np.ndarray, wscale: np.ndarray, bias,
              lo: float, hi: float) -> np.ndarray:
    """Depthwise conv, NHWC: int8 xq (n, h, w, c) with per-image scales @ int8 taps (kh, kw, c) with
    per-channel scales -> float32 (n, oh, ow, c), as ``bne_dwconv_i8`` computes it."""
    acc = np.zeros((g["n"], g["oh"], g["ow"], g["c"]), np.int64)
    for p, q, oi, ii, oj, ij in _dw_taps(g):
        acc[:, oi, oj] += xq[:, ii, ij].astype(np.int64) * taps[p, q].astype(np.int64)
    y = (acc.astype(np.int32).astype(np.float32) * np.asarray(wscale, np.float32)) \
        / np.asarray(xscale, np.float32)[:, None, None, None]
    return _dw_finish(y.astype(np.float32), bias, lo, hi)


def dwconv_f32(g: dict, x: np.ndarray, taps: np.ndarray, bias, lo: float, hi: float) -> np.ndarray:
    """Float32 depthwise conv summed in tap order, as ``bne_dwconv_f32`` computes it."""
    acc = np.zeros((g["n"], g["oh"], g["ow"], g["c"]), np.float32)
    for p, q, oi, ii, oj, ij in _dw_taps(g):
        acc[:, oi, oj] = acc[:, oi, oj] + x[:, ii, ij] * taps[p, q]
    return _dw_finish(acc, bias, lo, hi)
