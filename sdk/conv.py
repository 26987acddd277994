"""Convolution helpers over NHWC activations: geometry, im2col, and the native depthwise kernel.

A ``conv_2d`` runs as im2col + an int8 GEMM over the patch rows (:class:`ConvMatrix`,
``bne_conv_gemm_f32``): the patch of each output pixel is one row, quantized with its own absmax
scale; the weights (int8, or ternary held as int8 {-1, 0, 1}) are interleaved by 4 along k so that
the kernel splits rows over threads and vectorizes over output channels (AVX-512 VNNI: vpdpbusd).  It computes the numbers of
:meth:`TernaryMatrix.linear` / :meth:`Int8Matrix.linear` (checked bit for bit in the tests): the
128-weight blocks of the ternary GEMM waste most of their work on the short rows of small convs.  A depthwise conv
runs in C (``bne_dwconv_i8`` / ``bne_dwconv_f32``, one portable kernel that every backend runs)
or, with the ``numpy`` backend, in :func:`bitnet_edge.sdk.reference.dwconv_i8` / ``dwconv_f32``,
which give the same bits.  int8 depthwise quantizes each image with one absmax scale (zero
padding stays exactly 0), multiplies by int8 (or ternary) taps with per-channel scales and
accumulates in int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitnet_edge.sdk import reference
from bitnet_edge.sdk._checks import as_array, float_input, int8_input, require_ndim
from bitnet_edge.sdk.errors import DTypeError, RangeError, ShapeError

__all__ = ["Conv2DGeometry", "same_pads", "im2col", "DepthwiseConv2D", "ConvMatrix"]


def _floats(name: str, x, ndim: int) -> np.ndarray:
    """Contiguous float32 of a float array with ``ndim`` dimensions.  No NaN scan here: the native
    quantizer reports NaN / inf (NonFiniteError) and float layers propagate them, as numpy's do."""
    arr = as_array(name, x)
    if arr.dtype.kind != "f":
        raise DTypeError(name, f"must be a float array (float16/32/64), got {arr.dtype.name}")
    require_ndim(name, arr, (ndim,))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _quantize_rows(be: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8 (ADR 0003): the native quantizer, or numpy's (which checks NaN itself)."""
    from bitnet_edge.sdk import kernels
    from bitnet_edge.sdk.native import _binding as nb

    if be == "numpy":
        return kernels.quantize_activations(rows, backend="numpy")
    return nb.quantize_act(kernels.NATIVE_BACKENDS[be], rows)


def same_pads(size: int, k: int, stride: int, dilation: int = 1, lower: bool = False) -> tuple[int, int]:
    """(before, after) zero padding of TFLite / ONNX SAME: out = ceil(size / stride); the odd pixel
    goes after (``SAME_UPPER``, TFLite) or before (``lower``, ONNX ``SAME_LOWER``)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


@dataclass(frozen=True)
class Conv2DGeometry:
    """Kernel, stride, dilation and explicit padding (top, bottom, left, right) of a 2-D window."""

    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self):
        if min(self.kh, self.kw, *self.stride, *self.dilation) < 1 or min(self.pads) < 0:
            raise RangeError("geometry", f"kernel, stride and dilation must be >= 1 and pads >= 0: {self}")

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        t, b, l, r = self.pads
        oh = (h + t + b - (self.kh - 1) * self.dilation[0] - 1) // self.stride[0] + 1
        ow = (w + l + r - (self.kw - 1) * self.dilation[1] - 1) // self.stride[1] + 1
        if oh < 1 or ow < 1:
            raise ShapeError("x", f"a {h}x{w} input is smaller than the {self.kh}x{self.kw} window")
        return oh, ow

    def native(self, n: int, h: int, w: int, c: int) -> dict:
        """The fields of the C ``bne_dwconv_shape``."""
        oh, ow = self.out_size(h, w)
        return {"n": n, "h": h, "w": w, "c": c, "kh": self.kh, "kw": self.kw, "stride_h": self.stride[0],
                "stride_w": self.stride[1], "dil_h": self.dilation[0], "dil_w": self.dilation[1],
                "pad_top": self.pads[0], "pad_left": self.pads[2], "oh": oh, "ow": ow}


def im2col(x: np.ndarray, g: Conv2DGeometry, pad_value: float = 0.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """x (n, h, w, c) -> patches (n*oh*ow, kh*kw*c) in (kh, kw, c) order, and (n, oh, ow).
    A 1x1 window with stride 1 and no padding is a reshape (no copy)."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    if (g.kh, g.kw, g.stride, g.pads) == (1, 1, (1, 1), (0, 0, 0, 0)):
        return x.reshape(n * h * w, c), (n, oh, ow)
    t, b, l, r = g.pads
    if any(g.pads):
        xp = np.full((n, h + t + b, w + l + r, c), pad_value, dtype=x.dtype)
        xp[:, t:t + h, l:l + w] = x
    else:
        xp = x
    out = np.empty((n, oh, ow, g.kh, g.kw, c), dtype=x.dtype)
    sh, sw = g.stride
    dh, dw = g.dilation
    for p in range(g.kh):
        for q in range(g.kw):
            out[:, :, :, p, q] = xp[:, p * dh:p * dh + (oh - 1) * sh + 1:sh, q * dw:q * dw + (ow - 1) * sw + 1:sw]
    return out.reshape(n * oh * ow, g.kh * g.kw * c), (n, oh, ow)


class DepthwiseConv2D:
    """A depthwise conv with taps (kh, kw, c): int8 taps with per-channel scales (``int8`` and
    ``ternary`` layers: ternary taps are int8 in {-1, 0, 1} with the tensor's one scale on every
    channel) or float32 taps; optional bias (c,) and a clamp [lo, hi] for a fused ReLU / ReLU6."""

    __slots__ = ("geometry", "taps", "wscale", "bias", "channels")

    def __init__(self, geometry: Conv2DGeometry, taps: np.ndarray, wscale: np.ndarray | None = None,
                 bias: np.ndarray | None = None):
        if wscale is None:
            taps = float_input("taps", taps, ndims=(3,))
        else:
            taps = int8_input("taps", taps, ndims=(3,))
            wscale = np.ascontiguousarray(wscale, dtype=np.float32)
            if wscale.shape != (taps.shape[2],) or not (np.isfinite(wscale).all() and (wscale > 0).all()):
                raise RangeError("wscale", f"must be ({taps.shape[2]},) positive finite scales")
        if taps.shape[:2] != (geometry.kh, geometry.kw):
            raise ShapeError("taps", f"shape {taps.shape} does not match the {geometry.kh}x{geometry.kw} window")
        self.geometry, self.taps, self.wscale, self.channels = geometry, taps, wscale, taps.shape[2]
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if self.bias is not None and self.bias.shape != (self.channels,):
            raise ShapeError("bias", f"must be ({self.channels},), got {self.bias.shape}")

    @property
    def quantized(self) -> bool:
        return self.wscale is not None

    def __call__(self, x, lo: float = -np.inf, hi: float = np.inf, backend: str | None = None) -> np.ndarray:
        """x (n, h, w, c) float -> (n, oh, ow, c) float32."""
        from bitnet_edge.sdk import kernels
        from bitnet_edge.sdk.native import _binding as nb

        be = kernels.resolve_backend(backend)
        x = _floats("x", x, 4)
        n, h, w, c = x.shape
        if c != self.channels:
            raise ShapeError("x", f"has {c} channels, the layer takes {self.channels}")
        geom = self.geometry.native(n, h, w, c)
        lo, hi = float(np.float32(lo)), float(np.float32(hi))
        if self.quantized:
            xq, s = _quantize_rows(be, x.reshape(n, -1))
            xq = xq.reshape(x.shape)
            if be == "numpy":
                return reference.dwconv_i8(geom, xq, s, self.taps, self.wscale, self.bias, lo, hi)
            return nb.dwconv_i8(kernels.NATIVE_BACKENDS[be], geom, xq, s, self.taps, self.wscale, self.bias, lo, hi)
        if be == "numpy":
            return reference.dwconv_f32(geom, x, self.taps, self.bias, lo, hi)
        return nb.dwconv_f32(kernels.NATIVE_BACKENDS[be], geom, x, self.taps, self.bias, lo, hi)


class ConvMatrix:
    """Weights W (n, k) int8 in [-127, 127] (or ternary {-1, 0, 1}) with per-output scales, held for
    ``bne_conv_gemm_f32`` interleaved by 4 along k (``w4`` (ceil(k/4), n, 4), zero past k) with
    their row sums; optional bias (n,)."""

    __slots__ = ("weights", "w4", "wsum", "wscale", "bias", "in_features", "out_features")

    def __init__(self, q: np.ndarray, wscale: np.ndarray, bias: np.ndarray | None = None):
        q = int8_input("q", q, ndims=(2,))
        if q.size and q.min() < -127:
            raise RangeError("q", "int8 weights must be in [-127, 127]")
        self.out_features, self.in_features = n, k = q.shape
        self.weights = q
        k4 = -(-k // 4)
        padded = np.zeros((n, 4 * k4), np.int8)
        padded[:, :k] = q
        self.w4 = np.ascontiguousarray(padded.reshape(n, k4, 4).transpose(1, 0, 2))
        self.wsum = q.sum(axis=1, dtype=np.int32)
        self.wscale = np.ascontiguousarray(wscale, dtype=np.float32)
        if self.wscale.shape != (n,) or not (np.isfinite(self.wscale).all() and (self.wscale > 0).all()):
            raise RangeError("wscale", f"must be ({n},) positive finite scales")
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if self.bias is not None and self.bias.shape != (n,):
            raise ShapeError("bias", f"must be ({n},), got {self.bias.shape}")

    def __call__(self, x, lo: float = -np.inf, hi: float = np.inf, backend: str | None = None) -> np.ndarray:
        """x (m, k) float -> (m, n) float32: absmax int8 rows, exact int32 products, the GEMM epilogue,
        + bias, clamped to [lo, hi]."""
        from bitnet_edge.sdk import kernels
        from bitnet_edge.sdk.native import _binding as nb

        be = kernels.resolve_backend(backend)
        x = _floats("x", x, 2)
        if x.shape[1] != self.in_features:
            raise ShapeError("x", f"last dimension {x.shape[1]} does not match in_features {self.in_features}")
        lo, hi = float(np.float32(lo)), float(np.float32(hi))
        xq, s = _quantize_rows(be, x)
        if be == "numpy":
            y = reference.epilogue(reference.int_matmul(self.weights, xq), self.wscale, s)
            if self.bias is not None:
                y = y + self.bias
            return np.minimum(np.maximum(y, np.float32(lo)), np.float32(hi)).astype(np.float32)
        return nb.conv_gemm_f32(kernels.NATIVE_BACKENDS[be], self.w4, self.wsum, self.in_features, self.wscale,
                                xq, s, self.bias, lo, hi)
