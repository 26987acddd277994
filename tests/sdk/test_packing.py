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
