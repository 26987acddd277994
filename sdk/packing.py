"""Ternary packing formats (numpy reference; docs/adr/0002-ternary-packing.md).

2-bit compute format (what the kernels read, identical on every architecture):
    Each row of k weights is cut into blocks of 128.  A block is 32 bytes; byte j
    holds the codes ``w + 1`` of weights j, j+32, j+64, j+96 in bits 0-1, 2-3,
    4-5, 6-7.  The last block is padded with code 1 (weight 0).  A row takes
    ``ceil(k / 128) * 32`` bytes.

Base-3 compute format (what the base-3 kernels read, 1.6 bits/weight, ``ternary_b3``):
    Each row of k weights is cut into blocks of 320.  A block is 64 bytes; byte j
    holds the codes ``c = w + 1`` of weights j, j+64, j+128, j+192, j+256 as
    ``v = 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4``, stored as ``ceil(v * 256 / 243)``: the
    kernels peel digit i as ``(t >= 86) + (t >= 171)`` with ``t = 3^i * byte mod 256``.
    The last block is padded with code 1.  A row takes ``ceil(k / 320) * 64`` bytes.

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
    "BLOCK3",
    "BLOCK3_BYTES",
    "row_bytes3",
    "pack_ternary_b3",
    "unpack_ternary_b3",
]

BLOCK = 128  # weights per block
BLOCK_BYTES = 32  # bytes per block
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
BLOCK3 = 320  # weights per base-3 compute block
BLOCK3_BYTES = 64


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


def row_bytes3(k: int) -> int:
    return -(-k // BLOCK3) * BLOCK3_BYTES


def pack_ternary_b3(q) -> np.ndarray:
    """Wq (n, k) in {-1,0,1} -> base-3 compute format (n, row_bytes3(k)) uint8."""
    q = ternary_input("q", q)
    n, k = q.shape
    nb = -(-k // BLOCK3)
    codes = np.ones((n, nb * BLOCK3), dtype=np.uint16)
    codes[:, :k] = (q + 1).astype(np.uint16)
    c = codes.reshape(n, nb, 5, BLOCK3_BYTES)  # [row, block, digit d, byte j]: weight 64 d + j
    v = c[:, :, 0] * 81 + c[:, :, 1] * 27 + c[:, :, 2] * 9 + c[:, :, 3] * 3 + c[:, :, 4]
    return np.ascontiguousarray(((v * 256 + 242) // 243).astype(np.uint8).reshape(n, nb * BLOCK3_BYTES))


def unpack_ternary_b3(packed, k: int) -> np.ndarray:
    """base-3 compute format (n, row_bytes3(k)) uint8 -> Wq (n, k) int8 in {-1,0,1}."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise FormatError(f"packed must be a 2-D uint8 array, got {packed.dtype.name} {packed.shape}")
    if k <= 0 or packed.shape[1] != row_bytes3(k):
        raise ShapeError("packed", f"rows of {packed.shape[1]} bytes do not hold k={k} (need {row_bytes3(k)})")
    n, nb = packed.shape[0], packed.shape[1] // BLOCK3_BYTES
    t = packed.reshape(n, nb, 1, BLOCK3_BYTES).astype(np.uint16)
    digits, v = [], np.zeros_like(t)
    for _ in range(5):
        c = (t >= 86).astype(np.uint16) + (t >= 171)
        digits.append(c)
        v = v * 3 + c
        t = (t * 3) & 255
    if ((v * 256 + 242) // 243 != packed.reshape(n, nb, 1, BLOCK3_BYTES)).any():
        raise FormatError("packed base-3 data holds a byte the packer never writes")
    codes = np.concatenate(digits, axis=2).reshape(n, nb * BLOCK3)[:, :k]
    return codes.astype(np.int8) - 1
