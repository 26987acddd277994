"""numpy ``.npy`` / ``.npz`` files read safely: never pickles, and a typed one-line error for anything
that is not one (numpy itself answers a stray file with a hint to load it with pickle)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.errors import FormatError

__all__ = ["load_npy", "load_npz"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive's end record


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file", reason="no-such-file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror or exc})", reason="unreadable") from None


def _array(path: Path, what: str, load) -> np.ndarray:
    try:
        return load()
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise FormatError(f"{path}: {what} holds Python objects (pickled data), which bitnet-edge never loads; "
                              "save plain numeric arrays", reason="pickled") from None
        raise FormatError(f"{path}: {what} is not a valid .npy array ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise FormatError(f"{path}: {what} is damaged ({exc})") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of a ``.npy`` file; FormatError when it is not one."""
    path = Path(path)
    if _head(path, len(_NPY_MAGIC)) != _NPY_MAGIC:
        raise FormatError(f"{path}: not a .npy file (it does not start with numpy's \\x93NUMPY header)",
                          reason="not-npy")
    return _array(path, "the array", lambda: np.load(path, allow_pickle=False))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive (as ``numpy.savez`` writes it), by name; FormatError when
    it is not one or a member is damaged or pickled."""
    path = Path(path)
    if _head(path, 4) not in _ZIP_MAGIC:
        raise FormatError(f"{path}: not a .npz archive (a zip of .npy arrays, as numpy.savez writes)",
                          reason="not-npz")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({exc})", reason="not-npz") from None
    with z:
        return {k: _array(path, f"array {k!r}", lambda k=k: z[k]) for k in z.files}
