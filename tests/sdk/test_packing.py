import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bitnet_edge.sdk import packing
from bitnet_edge.sdk.errors import DTypeError, FormatError, RangeError, ShapeError
from bitnet_edge.sdk.native import _binding as nb


def test_2bit_layout_is_the_documented_one():
    # weight t of a block sits in byte t % 32, bits 2 * (t // 32)
    q = np.zeros((1, 128), dtype=np.int8)
    q[0, 0], q[0, 33], q[0, 66], q[0, 127] = 1, -1, 1, -1
    p = packing.pack_ternary_2bit(q)
    assert p.shape == (1, 32)
    assert p[0, 0] == (2 << 0) | (1 << 2) | (1 << 4) | (1 << 6)
    assert p[0, 1] == (1 << 0) | (0 << 2) | (1 << 4) | (1 << 6)
    assert p[0, 2] == (1 << 0) | (1 << 2) | (2 << 4) | (1 << 6)
    assert p[0, 31] == (1 << 0) | (1 << 2) | (1 << 4) | (0 << 6)


def test_2bit_tail_is_padded_with_zero_weights():
    p = packing.pack_ternary_2bit(np.ones((2, 130), dtype=np.int8))
    assert p.shape == (2, 64)
    # weights 128, 129 are codes 2 at bits 0-1 of bytes 32, 33; everything else code 1
    assert p[0, 32] == 0x56 and p[0, 33] == 0x56 and (p[0, 34:] == 0x55).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_2bit_round_trip_and_native_agrees(n, k, seed):
    q = np.random.default_rng(seed).integers(-1, 2, size=(n, k), dtype=np.int8)
    p = packing.pack_ternary_2bit(q)
    np.testing.assert_array_equal(packing.unpack_ternary_2bit(p, k), q)
    np.testing.assert_array_equal(nb.ternary_pack(q), p)
    np.testing.assert_array_equal(nb.ternary_unpack(p, k), q)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 1000), st.integers(0, 2**32 - 1))
def test_base3_round_trip(count, seed):
    q = np.random.default_rng(seed).integers(-1, 2, size=count, dtype=np.int8)
    data = packing.pack_ternary_base3(q)
    assert len(data) == -(-count // 5)
    np.testing.assert_array_equal(packing.unpack_ternary_base3(data, count), q)


def test_base3_is_1_6_bits_per_weight():
    q = np.ones((256, 2560), dtype=np.int8)
    assert len(packing.pack_ternary_base3(q)) * 8 / q.size == pytest.approx(1.6)
    assert packing.pack_ternary_base3(np.array([[-1, 0, 1, 1, -1]], dtype=np.int8)) == bytes(
        [0 + 1 * 3 + 2 * 9 + 2 * 27 + 0 * 81])


def test_bad_packed_data_is_rejected():
    with pytest.raises(FormatError, match="code 3"):
        packing.unpack_ternary_2bit(np.full((1, 32), 0xFF, dtype=np.uint8), 128)
    with pytest.raises(ShapeError, match="do not hold k=300"):
        packing.unpack_ternary_2bit(np.zeros((1, 32), dtype=np.uint8), 300)
    with pytest.raises(FormatError, match="above 242"):
        packing.unpack_ternary_base3(bytes([243]), 5)
    with pytest.raises(FormatError, match="need 2"):
        packing.unpack_ternary_base3(bytes([0]), 6)


def test_non_ternary_values_are_rejected():
    with pytest.raises(RangeError, match=r"\{-1, 0, 1\}"):
        packing.pack_ternary_2bit(np.array([[0, 2]], dtype=np.int8))
    with pytest.raises(DTypeError, match="integer array"):
        packing.pack_ternary_2bit(np.array([[0.0, 1.0]]))


def test_b3_compute_layout_is_the_documented_one():
    # byte j of a block: codes of weights j, j+64, j+128, j+192, j+256 as 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4,
    # stored as ceil(v * 256 / 243)
    q = np.zeros((1, 320), dtype=np.int8)
    q[0, 1], q[0, 65], q[0, 321 - 64] = 1, -1, 1
    p = packing.pack_ternary_b3(q)
    assert p.shape == (1, 64)
    v1 = 81 * 2 + 27 * 0 + 9 * 1 + 3 * 1 + 2  # byte 1: weights 1, 65, 129, 193, 257
    assert p[0, 1] == -(-v1 * 256 // 243)
    assert p[0, 0] == -(-121 * 256 // 243)  # all zero weights: codes 1 -> v = 121
    assert packing.row_bytes3(321) == 128 and packing.row_bytes3(2560) == 512


def test_b3_every_byte_decodes_by_compare_and_triple():
    # the kernels' digit rule (t >= 86) + (t >= 171), t -> 3 t mod 256, is exact for all 243 values
    for v in range(243):
        b = -(-v * 256 // 243)
        t, digits = b, []
        for _ in range(5):
            digits.append(int(t >= 86) + int(t >= 171))
            t = (t * 3) & 255
        assert sum(d * 3 ** (4 - i) for i, d in enumerate(digits)) == v


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 1000), st.integers(0, 2**32 - 1))
def test_b3_round_trip_and_native_agrees(n, k, seed):
    q = np.random.default_rng(seed).integers(-1, 2, size=(n, k), dtype=np.int8)
    p = packing.pack_ternary_b3(q)
    assert p.shape == (n, packing.row_bytes3(k))
    np.testing.assert_array_equal(packing.unpack_ternary_b3(p, k), q)
    np.testing.assert_array_equal(nb.ternary3_pack(q), p)
    np.testing.assert_array_equal(nb.ternary3_unpack(p, k), q)


def test_bad_b3_data_is_rejected():
    from bitnet_edge.sdk.errors import KernelError

    bad = packing.pack_ternary_b3(np.zeros((1, 320), np.int8))
    bad[0, 5] = 20  # no v in 0..242 packs to 20 (v = 18 packs to 19, v = 19 to 21)
    with pytest.raises(FormatError, match="never writes"):
        packing.unpack_ternary_b3(bad, 320)
    with pytest.raises(KernelError, match="BNE_ERR_VALUE"):
        nb.ternary3_unpack(bad, 320)
    with pytest.raises(ShapeError, match="do not hold k=400"):
        packing.unpack_ternary_b3(np.zeros((1, 64), np.uint8), 400)
    with pytest.raises(RangeError):
        packing.pack_ternary_b3(np.array([[0, 2]], dtype=np.int8))
