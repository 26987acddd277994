"""1:1 typed wrappers over the C API: check dtypes, shapes and status codes.

Everything here takes contiguous numpy arrays of exactly the C types (the
NumPy-facing API in :mod:`bitnet_edge.sdk.kernels` converts and validates user
input first) and turns a non-zero status into :class:`KernelError`.
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.errors import KernelError, NonFiniteError
from bitnet_edge.sdk.native._loader import load

_STATUS = {
    0: "BNE_OK",
    1: "BNE_ERR_NULL",
    2: "BNE_ERR_SHAPE",
    3: "BNE_ERR_BACKEND",
    4: "BNE_ERR_UNSUPPORTED",
    5: "BNE_ERR_VALUE",
    6: "BNE_ERR_NONFINITE",
    7: "BNE_ERR_THREADS",
}


def _check(fn: str, rc: int) -> None:
    if rc == 6:
        raise NonFiniteError("x", "contains NaN or infinity")
    if rc != 0:
        raise KernelError(fn, rc, _STATUS.get(rc, "unknown status"))


def _ptr(ffi, ctype: str, arr: np.ndarray):
    assert arr.flags.c_contiguous, "binding takes contiguous arrays"
    return ffi.from_buffer(ctype, arr)


def features() -> int:
    return int(load().lib.bne_cpu_features())


def backend_id_info(backend: int) -> tuple[str, bool, bool]:
    L = load()
    name = L.ffi.string(L.lib.bne_backend_name(backend)).decode()
    return name, bool(L.lib.bne_backend_compiled(backend)), bool(L.lib.bne_backend_supported(backend))


def best_backend() -> int:
    return int(load().lib.bne_backend_best())


def set_threads(n: int) -> None:
    _check("bne_set_threads", load().lib.bne_set_threads(n))


def get_threads() -> int:
    return int(load().lib.bne_get_threads())


def ternary_pack(q: np.ndarray) -> np.ndarray:
    """q (n, k) int8 -> packed (n, row_bytes) uint8."""
    L = load()
    n, k = q.shape
    rb = L.lib.bne_ternary_row_bytes(k)
    out = np.empty((n, rb), dtype=np.uint8)
    _check("bne_ternary_pack", L.lib.bne_ternary_pack(
        _ptr(L.ffi, "int8_t[]", q), n, k, k, _ptr(L.ffi, "uint8_t[]", out), out.size))
    return out


def ternary_unpack(packed: np.ndarray, k: int) -> np.ndarray:
    L = load()
    n = packed.shape[0]
    q = np.empty((n, k), dtype=np.int8)
    _check("bne_ternary_unpack", L.lib.bne_ternary_unpack(
        _ptr(L.ffi, "uint8_t[]", packed), n, k, _ptr(L.ffi, "int8_t[]", q), k))
    return q


def quantize_act(backend: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (m, k) float32 -> (xq (m, k) int8, scales (m,) float32)."""
    L = load()
    m, k = x.shape
    xq = np.empty((m, k), dtype=np.int8)
    s = np.empty(m, dtype=np.float32)
    _check("bne_quantize_act", L.lib.bne_quantize_act(
        backend, _ptr(L.ffi, "float[]", x), m, k, k,
        _ptr(L.ffi, "int8_t[]", xq), k, _ptr(L.ffi, "float[]", s)))
    return xq, s


def ternary_gemm_i32(backend: int, packed: np.ndarray, n: int, k: int, xq: np.ndarray) -> np.ndarray:
    """packed W (n, k) @ xq (m, k) -> (m, n) int32."""
    L = load()
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.int32)
    _check("bne_ternary_gemm_i32", L.lib.bne_ternary_gemm_i32(
        backend, _ptr(L.ffi, "uint8_t[]", packed), n, k, _ptr(L.ffi, "int8_t[]", xq), m, k,
        _ptr(L.ffi, "int32_t[]", y), n))
    return y


def ternary_gemm_f32(backend: int, packed: np.ndarray, n: int, k: int, wscale: float,
                     xq: np.ndarray, xscale: np.ndarray) -> np.ndarray:
    L = load()
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    _check("bne_ternary_gemm_f32", L.lib.bne_ternary_gemm_f32(
        backend, _ptr(L.ffi, "uint8_t[]", packed), n, k, wscale, _ptr(L.ffi, "int8_t[]", xq), m, k,
        _ptr(L.ffi, "float[]", xscale), _ptr(L.ffi, "float[]", y), n))
    return y


def ternary3_pack(q: np.ndarray) -> np.ndarray:
    """q (n, k) int8 -> packed (n, ternary3 row bytes) uint8 (the base-3 compute format)."""
    L = load()
    n, k = q.shape
    rb = L.lib.bne_ternary3_row_bytes(k)
    out = np.empty((n, rb), dtype=np.uint8)
    _check("bne_ternary3_pack", L.lib.bne_ternary3_pack(
        _ptr(L.ffi, "int8_t[]", q), n, k, k, _ptr(L.ffi, "uint8_t[]", out), out.size))
    return out


def ternary3_unpack(packed: np.ndarray, k: int) -> np.ndarray:
    L = load()
    n = packed.shape[0]
    q = np.empty((n, k), dtype=np.int8)
    _check("bne_ternary3_unpack", L.lib.bne_ternary3_unpack(
        _ptr(L.ffi, "uint8_t[]", packed), n, k, _ptr(L.ffi, "int8_t[]", q), k))
    return q


def ternary3_gemm_i32(backend: int, packed: np.ndarray, n: int, k: int, xq: np.ndarray) -> np.ndarray:
    """base-3 packed W (n, k) @ xq (m, k) -> (m, n) int32."""
    L = load()
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.int32)
    _check("bne_ternary3_gemm_i32", L.lib.bne_ternary3_gemm_i32(
        backend, _ptr(L.ffi, "uint8_t[]", packed), n, k, _ptr(L.ffi, "int8_t[]", xq), m, k,
        _ptr(L.ffi, "int32_t[]", y), n))
    return y


def ternary3_gemm_f32(backend: int, packed: np.ndarray, n: int, k: int, wscale: float,
                      xq: np.ndarray, xscale: np.ndarray) -> np.ndarray:
    L = load()
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    _check("bne_ternary3_gemm_f32", L.lib.bne_ternary3_gemm_f32(
        backend, _ptr(L.ffi, "uint8_t[]", packed), n, k, wscale, _ptr(L.ffi, "int8_t[]", xq), m, k,
        _ptr(L.ffi, "float[]", xscale), _ptr(L.ffi, "float[]", y), n))
    return y


def int8_rowsum(w: np.ndarray) -> np.ndarray:
    L = load()
    n, k = w.shape
    out = np.empty(n, dtype=np.int32)
    _check("bne_int8_rowsum", L.lib.bne_int8_rowsum(
        _ptr(L.ffi, "int8_t[]", w), n, k, k, _ptr(L.ffi, "int32_t[]", out)))
    return out


def int8_gemm_i32(backend: int, w: np.ndarray, wsum: np.ndarray, xq: np.ndarray) -> np.ndarray:
    L = load()
    n, k = w.shape
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.int32)
    _check("bne_int8_gemm_i32", L.lib.bne_int8_gemm_i32(
        backend, _ptr(L.ffi, "int8_t[]", w), n, k, k, _ptr(L.ffi, "int32_t[]", wsum),
        _ptr(L.ffi, "int8_t[]", xq), m, k, _ptr(L.ffi, "int32_t[]", y), n))
    return y


def int8_gemm_f32(backend: int, w: np.ndarray, wsum: np.ndarray, wscale: np.ndarray,
                  xq: np.ndarray, xscale: np.ndarray) -> np.ndarray:
    L = load()
    n, k = w.shape
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    _check("bne_int8_gemm_f32", L.lib.bne_int8_gemm_f32(
        backend, _ptr(L.ffi, "int8_t[]", w), n, k, k, _ptr(L.ffi, "int32_t[]", wsum),
        _ptr(L.ffi, "float[]", wscale), _ptr(L.ffi, "int8_t[]", xq), m, k,
        _ptr(L.ffi, "float[]", xscale), _ptr(L.ffi, "float[]", y), n))
    return y


_DW_FIELDS = ("n", "h", "w", "c", "kh", "kw", "stride_h", "stride_w", "dil_h", "dil_w", "pad_top", "pad_left",
              "oh", "ow")


def _dw_shape(L, geom: dict):
    s = L.ffi.new("bne_dwconv_shape *")
    for f in _DW_FIELDS:
        setattr(s, f, geom[f])
    return s


def dwconv_i8(backend: int, geom: dict, xq: np.ndarray, xscale: np.ndarray, taps: np.ndarray,
              wscale: np.ndarray, bias: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    """xq (n, h, w, c) int8, taps (kh, kw, c) int8 -> y (n, oh, ow, c) float32."""
    L = load()
    y = np.empty((geom["n"], geom["oh"], geom["ow"], geom["c"]), dtype=np.float32)
    b = L.ffi.NULL if bias is None else _ptr(L.ffi, "float[]", bias)
    _check("bne_dwconv_i8", L.lib.bne_dwconv_i8(
        backend, _dw_shape(L, geom), _ptr(L.ffi, "int8_t[]", xq), _ptr(L.ffi, "float[]", xscale),
        _ptr(L.ffi, "int8_t[]", taps), _ptr(L.ffi, "float[]", wscale), b, lo, hi, _ptr(L.ffi, "float[]", y)))
    return y


def dwconv_f32(backend: int, geom: dict, x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None,
               lo: float, hi: float) -> np.ndarray:
    """x (n, h, w, c) float32, taps (kh, kw, c) float32 -> y (n, oh, ow, c) float32."""
    L = load()
    y = np.empty((geom["n"], geom["oh"], geom["ow"], geom["c"]), dtype=np.float32)
    b = L.ffi.NULL if bias is None else _ptr(L.ffi, "float[]", bias)
    _check("bne_dwconv_f32", L.lib.bne_dwconv_f32(
        backend, _dw_shape(L, geom), _ptr(L.ffi, "float[]", x), _ptr(L.ffi, "float[]", taps), b, lo, hi,
        _ptr(L.ffi, "float[]", y)))
    return y


def conv_gemm_f32(backend: int, w4: np.ndarray, wsum: np.ndarray, k: int, wscale: np.ndarray, xq: np.ndarray,
                  xscale: np.ndarray, bias: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    """xq (m, k) int8 @ W (n, k) held as w4 (ceil(k/4), n, 4) -> y (m, n) float32."""
    L = load()
    n = w4.shape[1]
    m = xq.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    b = L.ffi.NULL if bias is None else _ptr(L.ffi, "float[]", bias)
    _check("bne_conv_gemm_f32", L.lib.bne_conv_gemm_f32(
        backend, _ptr(L.ffi, "int8_t[]", w4), _ptr(L.ffi, "int32_t[]", wsum), k, n, _ptr(L.ffi, "float[]", wscale),
        _ptr(L.ffi, "int8_t[]", xq), m, k, _ptr(L.ffi, "float[]", xscale), b, lo, hi, _ptr(L.ffi, "float[]", y), n))
    return y
