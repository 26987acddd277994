"""Every backend the machine runs, bit-exact against the numpy reference; the numpy reference itself
against independent arithmetic (an int64 matmul of the unpacked weights, the absmax rule written out
per row), never against itself."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bitnet_edge.sdk import kernels, quant, reference
from bitnet_edge.sdk.errors import BackendError, DTypeError, NonFiniteError, RangeError, ShapeError
from bitnet_edge.sdk.kernels import Int8Matrix, Ternary3Matrix, TernaryMatrix

SHAPES = [  # (n, k, m): tiny, k not a multiple of any block, m = 1, tiles with remainders
    (1, 1, 1), (1, 127, 1), (3, 128, 1), (5, 129, 2), (7, 255, 3), (4, 256, 4), (9, 300, 5),
    (13, 1000, 7), (64, 2560, 1), (33, 4096, 6), (130, 640, 65),
    (23, 700, 1), (1001, 384, 1),  # GEMV: rows in 4 parts with a remainder, several pool chunks
]


def _int64_matmul(w: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """The products the kernels must give, computed apart from the reference (numpy's integer
    matmul, no float64 BLAS): W (n, k) @ xq (m, k) -> (m, n) int32, checked to fit."""
    acc = np.asarray(xq, np.int64) @ np.asarray(w, np.int64).T
    assert np.abs(acc).max(initial=0) < 2**31
    return acc.astype(np.int32)


def _random_case(rng, n, k, m):
    q = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    return q, xq


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_ternary_int32_exact(native_backend, rng, n, k, m):
    q, xq = _random_case(rng, n, k, m)
    tm = TernaryMatrix.from_ternary(q, 1.0)
    np.testing.assert_array_equal(tm.matmul_int8(xq, backend=native_backend), reference.int_matmul(q, xq))


@pytest.mark.parametrize("n,k,m", SHAPES + [(5, 319, 3), (7, 320, 8), (9, 321, 12), (17, 6912, 9), (24, 2560, 20)])
def test_ternary_base3_int32_exact(native_backend, rng, n, k, m):
    q, xq = _random_case(rng, n, k, m)
    tm = Ternary3Matrix.from_ternary(q, 1.0)
    np.testing.assert_array_equal(tm.matmul_int8(xq, backend=native_backend), reference.int_matmul(q, xq))
    np.testing.assert_array_equal(tm.ternary(), q)


@pytest.mark.parametrize("n,k,m", [(16, 256, 8), (33, 130, 9), (40, 6911, 13), (17, 5, 8), (20, 641, 64),
                                   (50, 1024, 12), (7, 384, 8)])
def test_ternary_prefill_panels_exact(native_backend, rng, n, k, m):
    """m >= 8 takes the panel GEMM (16-column code panels), both layouts; 2-bit rows of whole blocks
    (k % 128 == 0) are filled by the AVX-512 variant's own transpose (several panels, a partial last)."""
    q, xq = _random_case(rng, n, k, m)
    for cls in (TernaryMatrix, Ternary3Matrix):
        tm = cls.from_ternary(q, 1.0)
        np.testing.assert_array_equal(tm.matmul_int8(xq, backend=native_backend), reference.int_matmul(q, xq))


@pytest.mark.parametrize("k", [4, 255, 256, 1027, 65536])
@pytest.mark.parametrize("wval", [-1, 1])
def test_ternary_prefill_panels_at_the_extremes(native_backend, rng, k, wval):
    """The panel GEMM keeps int16 sums over 64 steps (256 k): all -128 activations against all-(+-1)
    weights reach exactly -32768 per lane before the widen; also 127s, k past a slice (1024 k), a
    k % 4 tail and a partial panel (n = 17)."""
    q = np.full((17, k), wval, dtype=np.int8)
    for xval in (-128, 127):
        xq = np.full((9, k), xval, dtype=np.int8)
        for cls in (TernaryMatrix, Ternary3Matrix):
            y = cls.from_ternary(q, 1.0).matmul_int8(xq, backend=native_backend)
            assert (y == xval * wval * k).all(), cls.__name__
    qm = rng.choice(np.array([-1, 1], dtype=np.int8), size=(17, k))
    xm = rng.choice(np.array([-128, 127], dtype=np.int8), size=(13, k))
    for cls in (TernaryMatrix, Ternary3Matrix):
        np.testing.assert_array_equal(cls.from_ternary(qm, 1.0).matmul_int8(xm, backend=native_backend),
                                      _int64_matmul(qm, xm))


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_int8_int32_exact(native_backend, rng, n, k, m):
    w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    im = Int8Matrix(w, np.ones(n, dtype=np.float32))
    np.testing.assert_array_equal(im.matmul_int8(xq, backend=native_backend), reference.int_matmul(w, xq))


@pytest.mark.parametrize("k", [1, 100, 128, 4096, 65536])
@pytest.mark.parametrize("wval", [-1, 1])
@pytest.mark.parametrize("m", [1, 3])  # 1: the GEMV kernels (int16 sums over 8 blocks); 3: the tiles
def test_no_overflow_at_the_extremes(native_backend, k, wval, m):
    """All -128 activations against all -1 (or +1) weights, K up to 65536."""
    q = np.full((5, k), wval, dtype=np.int8)
    xq = np.full((m, k), -128, dtype=np.int8)
    y = TernaryMatrix.from_ternary(q, 1.0).matmul_int8(xq, backend=native_backend)
    assert (y == -128 * wval * k).all()
    y3 = Ternary3Matrix.from_ternary(q, 1.0).matmul_int8(xq, backend=native_backend)
    assert (y3 == -128 * wval * k).all()
    w8 = np.full((5, k), -127 * wval, dtype=np.int8)
    y8 = Int8Matrix(w8, np.ones(5, np.float32)).matmul_int8(xq, backend=native_backend)
    assert (y8 == 128 * 127 * wval * k).all()


def test_mixed_extremes_exact(native_backend, rng):
    k = 65536
    q = rng.choice(np.array([-1, 1], dtype=np.int8), size=(8, k))
    xq = rng.choice(np.array([-128, 127], dtype=np.int8), size=(2, k))
    tm = TernaryMatrix.from_ternary(q, 1.0)
    np.testing.assert_array_equal(tm.matmul_int8(xq, backend=native_backend), reference.int_matmul(q, xq))
    for x1 in (xq[:1], np.full((1, k), 127, np.int8), np.full((1, k), -128, np.int8)):  # the GEMV kernels
        np.testing.assert_array_equal(tm.matmul_int8(x1, backend=native_backend), reference.int_matmul(q, x1))
        t3 = Ternary3Matrix.from_ternary(q, 1.0)
        np.testing.assert_array_equal(t3.matmul_int8(x1, backend=native_backend), reference.int_matmul(q, x1))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 700), m=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_property_all_backends_agree(n, k, m, seed):
    rng = np.random.default_rng(seed)
    q, xq = _random_case(rng, n, k, m)
    w8 = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    expect_t, expect_8 = _int64_matmul(q, xq), _int64_matmul(w8, xq)  # not the reference: numpy is checked too
    tm, im = TernaryMatrix.from_ternary(q, 0.5), Int8Matrix(w8, np.ones(n, np.float32))
    t3 = Ternary3Matrix.from_ternary(q, 0.5)
    np.testing.assert_array_equal(tm.ternary(), q)  # the packed layouts give back the weights packed
    np.testing.assert_array_equal(t3.ternary(), q)
    for be in kernels.available_backends():
        np.testing.assert_array_equal(tm.matmul_int8(xq, backend=be), expect_t, err_msg=be)
        np.testing.assert_array_equal(t3.matmul_int8(xq, backend=be), expect_t, err_msg=be)
        np.testing.assert_array_equal(im.matmul_int8(xq, backend=be), expect_8, err_msg=be)


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_numpy_reference_products_against_int64_matmul(rng, n, k, m):
    """The numpy backend (unpack, then the reference product) against numpy's int64 matmul of the
    weights before packing, for both ternary layouts and int8."""
    q, xq = _random_case(rng, n, k, m)
    w8 = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    want_t, want_8 = _int64_matmul(q, xq), _int64_matmul(w8, xq)
    for cls in (TernaryMatrix, Ternary3Matrix):
        np.testing.assert_array_equal(cls.from_ternary(q, 1.0).matmul_int8(xq, backend="numpy"), want_t)
    np.testing.assert_array_equal(Int8Matrix(w8, np.ones(n, np.float32)).matmul_int8(xq, backend="numpy"), want_8)
    np.testing.assert_array_equal(reference.int_matmul(q, xq), want_t)


@pytest.mark.parametrize("n,k,m", [(1, 5, 1), (17, 129, 3), (64, 2560, 1), (40, 1000, 9)])
def test_numpy_reference_quantize_and_epilogue_against_the_rule(rng, n, k, m):
    """The numpy reference's activation quantizer and float epilogue against the rule written out
    row by row (s = 127 / max|x|, round half to even, clip; y = float32(acc) * g / s) with the
    int64 products, and against float arithmetic within the quantization error."""
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    xq, s = kernels.quantize_activations(x, backend="numpy")
    for i, row in enumerate(x):
        si = np.float32(127.0) / max(np.float32(np.abs(row).max()), np.float32(1e-5))
        assert s[i] == si
        np.testing.assert_array_equal(xq[i], np.clip(np.rint(row * si), -128, 127).astype(np.int8))
        assert np.abs(xq[i]).max() == 127  # the largest magnitude maps to the edge of the range
        assert np.abs(xq[i] / si - row).max() <= 0.5 / si * (1 + 1e-6)
    w = rng.standard_normal((n, k)).astype(np.float32)
    tm = TernaryMatrix.from_float(w)
    q = tm.ternary()
    want = (_int64_matmul(q, xq).astype(np.float32) * np.float32(tm.scale)) / s[:, None]
    got = tm.linear(x, backend="numpy")
    np.testing.assert_array_equal(got, want)
    exact = x.astype(np.float64) @ (q.astype(np.float64) * tm.scale).T
    bound = tm.scale * np.abs(q).sum(1)[None, :] * (0.5 / s[:, None])  # each |x - xq / s| <= 0.5 / s
    assert (np.abs(got - exact) <= bound * 1.001 + 1e-5 * np.abs(exact).max()).all()
    im = Int8Matrix.from_float(w)
    want8 = (_int64_matmul(im.weights, xq).astype(np.float32) * im.scales) / s[:, None]
    np.testing.assert_array_equal(im.linear(x, backend="numpy"), want8)


@pytest.mark.parametrize("n,k,m", [(1, 5, 1), (17, 129, 3), (64, 2560, 1), (40, 1000, 9), (21, 1027, 13),
                                   (48, 2560, 128)])
def test_quantize_and_float_epilogue_exact(native_backend, rng, n, k, m):
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    xq, s = kernels.quantize_activations(x, backend=native_backend)
    rq, rs = quant.absmax_int8(x)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(s, rs)
    w = rng.standard_normal((n, k)).astype(np.float32)
    tm = TernaryMatrix.from_float(w)
    np.testing.assert_array_equal(tm.linear(x, backend=native_backend),
                                  reference.ternary_linear(tm.ternary(), tm.scale, x))
    t3 = Ternary3Matrix.from_ternary(tm.ternary(), tm.scale)
    np.testing.assert_array_equal(t3.linear(x, backend=native_backend), tm.linear(x, backend=native_backend))
    im = Int8Matrix.from_float(w)
    np.testing.assert_array_equal(im.linear(x, backend=native_backend),
                                  reference.int8_linear(im.weights, im.scales, x))


def test_quantize_rounds_half_to_even(any_backend):
    # amax 127 -> s = 1, so x * s is x: halves must go to the even neighbour
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5] * 5], dtype=np.float32)
    xq, s = kernels.quantize_activations(x, backend=any_backend)
    assert s[0] == 1.0
    np.testing.assert_array_equal(xq[0, :8], [127, 0, 2, 2, 0, -2, -2, 126])


def test_linear_is_close_to_float(rng):
    w = rng.standard_normal((256, 512)).astype(np.float32)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    tm = TernaryMatrix.from_float(w)
    exact = x @ (tm.ternary().astype(np.float32) * tm.scale).T
    np.testing.assert_allclose(tm.linear(x), exact, rtol=0.05, atol=0.05 * np.abs(exact).max())


def test_results_do_not_depend_on_thread_count(native_backend, rng):
    q, xq = _random_case(rng, 301, 2560, 5)
    tm = TernaryMatrix.from_ternary(q, 1.0)
    before = kernels.get_threads()
    try:
        outs = []
        for t in (1, 2, 3, 8):
            kernels.set_threads(t)
            assert kernels.get_threads() == t
            outs.append(tm.matmul_int8(xq, backend=native_backend))
            outs.append(tm.matmul_int8(xq[0], backend=native_backend)[None])
    finally:
        kernels.set_threads(before)
    for o in outs[2::2]:
        np.testing.assert_array_equal(o, outs[0])
    for o in outs[3::2]:
        np.testing.assert_array_equal(o, outs[1])


def test_one_dimensional_input_gives_one_dimensional_output(rng):
    q, xq = _random_case(rng, 6, 50, 1)
    tm = TernaryMatrix.from_ternary(q, 1.0)
    assert tm.matmul_int8(xq[0]).shape == (6,)
    assert tm.linear(np.ones(50, np.float32)).shape == (6,)


def test_non_contiguous_input_is_copied_not_misread(native_backend, rng):
    q, xq = _random_case(rng, 8, 300, 6)
    tm = TernaryMatrix.from_ternary(q, 1.0)
    strided = xq[::2]
    assert not strided.flags.c_contiguous or strided.base is not None
    np.testing.assert_array_equal(tm.matmul_int8(strided, backend=native_backend),
                                  reference.int_matmul(q, strided))
    fortran = np.asfortranarray(xq)
    np.testing.assert_array_equal(tm.matmul_int8(fortran, backend=native_backend),
                                  reference.int_matmul(q, xq))


def test_bad_inputs_are_clear_errors(rng):
    q, xq = _random_case(rng, 4, 64, 2)
    tm = TernaryMatrix.from_ternary(q, 1.0)
    with pytest.raises(DTypeError, match="xq: must be int8, got int32"):
        tm.matmul_int8(xq.astype(np.int32))
    with pytest.raises(ShapeError, match="last dimension 63 does not match in_features 64"):
        tm.matmul_int8(xq[:, :63])
    with pytest.raises(ShapeError, match="must be 1-D or 2-D"):
        tm.matmul_int8(xq[None])
    bad = np.ones((2, 64), np.float32)
    bad[1, 5] = np.nan
    with pytest.raises(NonFiniteError, match="x: contains NaN"):
        tm.linear(bad)
    with pytest.raises(RangeError, match=r"\[-127, 127\]"):
        Int8Matrix(np.full((2, 4), -128, np.int8), np.ones(2, np.float32))
    with pytest.raises(RangeError, match="scale"):
        TernaryMatrix.from_ternary(q, float("nan"))
    with pytest.raises(DTypeError):
        tm.linear(np.ones((2, 64), dtype=np.int64))


def test_native_quantizer_reports_non_finite(native_backend):
    from bitnet_edge.sdk.native import _binding as nb

    x = np.ones((2, 40), np.float32)
    x[1, 39] = np.inf  # in the scalar tail of every SIMD width
    with pytest.raises(NonFiniteError):
        nb.quantize_act(kernels.NATIVE_BACKENDS[native_backend], x)
    x[1, 39], x[0, 3] = 1.0, np.nan  # in the vector part
    with pytest.raises(NonFiniteError):
        nb.quantize_act(kernels.NATIVE_BACKENDS[native_backend], x)


def test_backend_choice(monkeypatch):
    avail = kernels.available_backends()
    assert avail[-1] == "numpy" and "ref" in avail
    monkeypatch.delenv("BITNET_EDGE_KERNEL", raising=False)
    best = kernels.resolve_backend()
    assert best == avail[0]
    with kernels.use_backend("ref") as chosen:
        assert chosen == "ref" and kernels.resolve_backend() == "ref"
        assert kernels.resolve_backend("numpy") == "numpy"  # the argument wins
    monkeypatch.setenv("BITNET_EDGE_KERNEL", "ref")
    assert kernels.resolve_backend() == "ref"
    monkeypatch.setenv("BITNET_EDGE_KERNEL", "auto")
    assert kernels.resolve_backend() == best
    monkeypatch.setenv("BITNET_EDGE_KERNEL", "sse9")
    with pytest.raises(BackendError, match="'sse9': unknown .*BITNET_EDGE_KERNEL"):
        kernels.resolve_backend()
    with pytest.raises(BackendError, match="unknown"):
        with kernels.use_backend("bogus"):
            pass


def test_backend_this_cpu_cannot_run_is_refused():
    foreign = "neon" if "avx2" in kernels.available_backends() else "avx2"
    with pytest.raises(BackendError, match=foreign) as exc:
        kernels.resolve_backend(foreign)
    assert exc.value.reason in ("not-compiled", "cpu-lacks-isa")


def test_env_override_in_a_fresh_process():
    code = "from bitnet_edge.sdk import kernels; print(kernels.resolve_backend())"
    env = dict(os.environ, BITNET_EDGE_KERNEL="ref", BITNET_EDGE_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ref"
    env["BITNET_EDGE_KERNEL"] = "nope"
    bad = subprocess.run([sys.executable, "-m", "bitnet_edge", "info"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "nope" in bad.stdout


def test_thread_setting_is_validated():
    for bad in (0, -1, 257, 1.5, True):
        with pytest.raises(RangeError):
            kernels.set_threads(bad)


def test_c_rowsum_refuses_minus_128():
    from bitnet_edge.sdk.errors import KernelError
    from bitnet_edge.sdk.native import _binding as nb

    w = np.array([[1, -127, 3], [0, 0, 0]], dtype=np.int8)
    np.testing.assert_array_equal(nb.int8_rowsum(w), [-123, 0])
    w[1, 2] = -128
    with pytest.raises(KernelError) as exc:
        nb.int8_rowsum(w)
    assert exc.value.status_name == "BNE_ERR_VALUE"
