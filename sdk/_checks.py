"""Argument checks shared by the numpy reference and the native binding."""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.errors import DTypeError, NonFiniteError, RangeError, ShapeError

FLOAT_KINDS = (np.float16, np.float32, np.float64)


def as_array(name: str, value) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is an input error
            raise DTypeError(name, f"cannot be read as an array ({exc})") from None
    return value


def require_dtype(name: str, arr: np.ndarray, dtype) -> np.ndarray:
    if arr.dtype != np.dtype(dtype):
        raise DTypeError(name, f"must be {np.dtype(dtype).name}, got {arr.dtype.name}")
    return arr


def require_ndim(name: str, arr: np.ndarray, ndims: tuple[int, ...]) -> np.ndarray:
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ShapeError(name, f"must be {want}, got shape {arr.shape}")
    if 0 in arr.shape:
        raise ShapeError(name, f"must not be empty, got shape {arr.shape}")
    return arr


def float_input(name: str, value, ndims=(1, 2)) -> np.ndarray:
    """A finite float array as contiguous float32 (other float widths are converted)."""
    arr = as_array(name, value)
    if arr.dtype.type not in FLOAT_KINDS:
        raise DTypeError(name, f"must be a float array (float16/32/64), got {arr.dtype.name}")
    require_ndim(name, arr, ndims)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise NonFiniteError(name, "contains NaN or infinity")
    return arr


def int8_input(name: str, value, ndims=(1, 2)) -> np.ndarray:
    arr = require_dtype(name, as_array(name, value), np.int8)
    require_ndim(name, arr, ndims)
    return np.ascontiguousarray(arr)


def ternary_input(name: str, value) -> np.ndarray:
    arr = as_array(name, value)
    if arr.dtype.kind not in "iu":
        raise DTypeError(name, f"must be an integer array of -1/0/1, got {arr.dtype.name}")
    require_ndim(name, arr, (2,))
    if arr.size and (arr.min() < -1 or arr.max() > 1):
        raise RangeError(name, "values must be in {-1, 0, 1}")
    return np.ascontiguousarray(arr, dtype=np.int8)
