import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_edge.sdk import quant
from bitnet_edge.sdk.errors import DTypeError, NonFiniteError, ShapeError


def test_absmean_matches_the_bitnet_formula(rng):
    w = rng.standard_normal((64, 96)).astype(np.float32) * 0.02
    q, g = quant.absmean_ternary(w)
    expect_g = np.float32(np.abs(w.astype(np.float64)).mean())
    assert g == float(expect_g)
    assert q.dtype == np.int8 and set(np.unique(q)) <= {-1, 0, 1}
    np.testing.assert_array_equal(q, np.clip(np.rint(w / np.float32(g)), -1, 1))


def test_absmean_rounds_half_to_even():
    # mean |w| = 1, so w / g is w: 0.5 and -0.5 round to 0 (half to even), 1.5 to 2 -> clip 1
    q, g = quant.absmean_ternary(np.array([[1.0, 0.5, -0.5, 2.0]], dtype=np.float32))
    assert g == 1.0
    np.testing.assert_array_equal(q, [[1, 0, 0, 1]])


def test_absmean_scale_floor_for_zero_weights():
    q, g = quant.absmean_ternary(np.zeros((4, 4), dtype=np.float32))
    assert g == pytest.approx(1e-5) and not q.any()


def test_fused_parts_get_their_own_scale(rng):
    a = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal((4, 16)).astype(np.float32) * 10
    q, scales = quant.absmean_ternary_fused(np.concatenate([a, b]), [8, 4])
    qa, ga = quant.absmean_ternary(a)
    qb, gb = quant.absmean_ternary(b)
    assert scales == [ga, gb]
    np.testing.assert_array_equal(q, np.concatenate([qa, qb]))
    with pytest.raises(ShapeError, match="sum to 12"):
        quant.absmean_ternary_fused(np.concatenate([a, b]), [8, 5])


def test_absmax_int8_per_row(rng):
    x = rng.standard_normal((3, 50)).astype(np.float32)
    xq, s = quant.absmax_int8(x)
    assert xq.dtype == np.int8 and s.dtype == np.float32 and s.shape == (3,)
    np.testing.assert_array_equal(s, np.float32(127) / np.abs(x).max(axis=1))
    assert (np.abs(xq).max(axis=1) == 127).all()
    xq1, s1 = quant.absmax_int8(x[0])
    np.testing.assert_array_equal(xq1, xq[0])
    assert s1 == s[0]


def test_absmax_zero_row_uses_floor():
    xq, s = quant.absmax_int8(np.zeros((1, 8), dtype=np.float32))
    assert not xq.any() and s[0] == np.float32(127) / np.float32(1e-5)


def test_int8_weights_symmetric(rng):
    w = rng.standard_normal((6, 40)).astype(np.float32)
    q, ws = quant.absmax_int8_weights(w)
    assert q.min() >= -127 and q.max() <= 127 and ws.shape == (6,)
    np.testing.assert_allclose(q * ws[:, None], w, atol=ws.max())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_a_clear_error(bad):
    x = np.ones((2, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(NonFiniteError, match="x: contains NaN or infinity"):
        quant.absmax_int8(x)
    with pytest.raises(NonFiniteError):
        quant.absmean_ternary(x)


def test_wrong_dtypes_are_clear_errors():
    with pytest.raises(DTypeError, match="must be a float array"):
        quant.absmax_int8(np.ones((2, 2), dtype=np.int32))
    with pytest.raises(ShapeError, match="must not be empty"):
        quant.absmax_int8(np.ones((2, 0), dtype=np.float32))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 64)),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_absmax_dequantizes_within_half_a_step(x):
    xq, s = quant.absmax_int8(x)
    err = np.abs(xq.astype(np.float32) / s[:, None] - x)
    assert (err <= 0.5 / s[:, None] * 1.0001 + 1e-12).all()
