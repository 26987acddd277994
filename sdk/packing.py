"""Ternary packing formats (numpy reference; docs/adr/0002-ternary-packing.md).

2-bit compute format (what the kernels read, identical on every architecture):
    Each row of k weights is cut into blocks of 128.  A block is 32 bytes; byte j
    holds the codes ``w + 1`` of weights j, j+32, j+64, j+96 in bits 0-1, 2-3,
    4-5, 6-7.  The last block is padded with code 1 (weight 0).  A row takes
    ``ceil(k / 128) * 32`` bytes.

Base-3 storage format (what bundles store, 1.6 bits/weight):
    The weights, flattened in row-major order, in groups of 5 trits; a byte is
    ``c0 + 3*c1 + 9*c2 + 27*c3 + 81*c4`` with ``c = w + 1`` (0..242).  The last
    group is padded with code 1.  ``ceil(count / 5)`` bytes.
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk._checks import ternary_input
from bitnet_edge.sdk.errors import FormatError, ShapeError

__all__ = [
    "BLOCK",
    "BLOCK_BYTES",
    "row_bytes",
    "pack_ternary_2bit",
    "unpack_ternary_2bit",
    "pack_ternary_base3",
    "unpack_ternary_base3",
]

BLOCK = 128  # weights per block
BLOCK_BYTES = 32  # bytes per block
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def row_bytes(k: int) -> int:
    return -(-k // BLOCK) * BLOCK_BYTES


def pack_ternary_2bit(q) -> np.ndarray:
    """Wq (n, k) in {-1,0,1} -> packed (n, row_bytes(k)) uint8."""
    q = ternary_input("q", q)
    n, k = q.shape
    nb = -(-k // BLOCK)
    codes = np.ones((n, nb * BLOCK), dtype=np.uint8)
    codes[:, :k] = (q + 1).astype(np.uint8)
    c = codes.reshape(n, nb, 4, 32)
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return np.ascontiguousarray(packed.reshape(n, nb * BLOCK_BYTES))


def unpack_ternary_2bit(packed, k: int) -> np.ndarray:
    """packed (n, row_bytes(k)) uint8 -> Wq (n, k) int8 in {-1,0,1}."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise FormatError(f"packed must be a 2-D uint8 array, got {packed.dtype.name} {packed.shape}")
    if k <= 0 or packed.shape[1] != row_bytes(k):
        raise ShapeError("packed", f"rows of {packed.shape[1]} bytes do not hold k={k} (need {row_bytes(k)})")
    n, nb = packed.shape[0], packed.shape[1] // BLOCK_BYTES
    b = packed.reshape(n, nb, 1, 32)
    codes = (b >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    codes = codes.reshape(n, nb * BLOCK)[:, :k]
    if (codes == 3).any():
        raise FormatError("packed ternary data holds code 3, which is not a ternary value")
    return codes.astype(np.int8) - 1


def pack_ternary_base3(q) -> bytes:
    """Wq (any shape) in {-1,0,1} -> base-3 bytes, 5 trits per byte (row-major order)."""
    arr = np.asarray(q)
    flat = ternary_input("q", arr.reshape(1, -1) if arr.size else arr.reshape(1, 0))[0]
    groups = -(-flat.size // 5)
    codes = np.ones(groups * 5, dtype=np.uint8)
    codes[: flat.size] = (flat + 1).astype(np.uint8)
    return (codes.reshape(groups, 5) * _POW3).sum(axis=1, dtype=np.uint32).astype(np.uint8).tobytes()


def unpack_ternary_base3(data: bytes, count: int) -> np.ndarray:
    """base-3 bytes -> flat Wq int8 of ``count`` weights."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != -(-count // 5):
        raise FormatError(f"base-3 data has {raw.size} bytes; {count} weights need {-(-count // 5)}")
    if raw.size and raw.max() > 242:
        raise FormatError("base-3 byte above 242 (3^5 - 1): not a 5-trit group")
    codes = (raw[:, None] // _POW3[None, :]) % 3
    return codes.reshape(-1)[:count].astype(np.int8) - 1
