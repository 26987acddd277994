"""A quick bit-exactness check of every backend the machine runs (``bitnet-edge selfcheck``)."""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk import kernels, quant, reference

__all__ = ["run_selfcheck"]

_SHAPES = ((1, 7, 1), (33, 300, 1), (64, 2560, 1), (17, 129, 5), (40, 640, 9))  # (n, k, m)


def _check_backend(backend: str, rng: np.random.Generator) -> tuple[int, str | None]:
    cases = 0
    for n, k, m in _SHAPES:
        q = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        x = rng.standard_normal((m, k)).astype(np.float32)
        tm = kernels.TernaryMatrix.from_ternary(q, 0.37)
        if not np.array_equal(tm.matmul_int8(xq, backend=backend), reference.int_matmul(q, xq)):
            return cases, f"ternary int32 mismatch at n={n} k={k} m={m}"
        if not np.array_equal(tm.linear(x, backend=backend), reference.ternary_linear(q, tm.scale, x)):
            return cases, f"ternary float mismatch at n={n} k={k} m={m}"
        w8, ws = quant.absmax_int8_weights(rng.standard_normal((n, k)).astype(np.float32))
        im = kernels.Int8Matrix(w8, ws)
        if not np.array_equal(im.matmul_int8(xq, backend=backend), reference.int_matmul(w8, xq)):
            return cases, f"int8 mismatch at n={n} k={k} m={m}"
        cases += 3
    conv_cases, err = _check_conv(backend, rng)
    return cases + conv_cases, err


def _check_conv(backend: str, rng: np.random.Generator) -> tuple[int, str | None]:
    """The conv kernels of ``graph`` models (depthwise int8 / float32, conv GEMM) against numpy."""
    from bitnet_edge.sdk.conv import Conv2DGeometry, ConvMatrix, DepthwiseConv2D

    g = Conv2DGeometry(3, 3, (2, 2), (1, 1), (1, 1, 1, 1))
    x = rng.standard_normal((2, 9, 7, 70)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    layers = [DepthwiseConv2D(g, rng.integers(-127, 128, (3, 3, 70)).astype(np.int8),
                              rng.uniform(0.01, 1, 70).astype(np.float32), b),
              DepthwiseConv2D(g, rng.standard_normal((3, 3, 70)).astype(np.float32), None, b)]
    for i, layer in enumerate(layers):
        if not np.array_equal(layer(x, 0.0, 6.0, backend=backend).view(np.uint32),
                              layer(x, 0.0, 6.0, backend="numpy").view(np.uint32)):
            return i, f"depthwise {'int8' if i == 0 else 'float32'} mismatch"
    w8, ws = quant.absmax_int8_weights(rng.standard_normal((33, 150)).astype(np.float32))
    cm, rows = ConvMatrix(w8, ws, b[:33]), rng.standard_normal((37, 150)).astype(np.float32)
    if not np.array_equal(cm(rows, backend=backend).view(np.uint32), cm(rows, backend="numpy").view(np.uint32)):
        return 2, "conv GEMM mismatch"
    return 3, None


def run_selfcheck(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for backend in kernels.available_backends():
        cases, err = _check_backend(backend, rng)
        rows.append({"backend": backend, "cases": cases, "ok": err is None, "error": err})
    return {"ok": all(r["ok"] for r in rows), "backends": rows}
