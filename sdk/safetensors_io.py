"""safetensors, read through mmap and written deterministically.

Reading maps the file and returns numpy views into the mapping: loading a model
neither copies its weights into Python memory nor needs twice its size in RAM.
Writing sorts tensors by name and pads the header to 8 bytes, so the same
tensors always give the same bytes (reproducible bundles).  The files are
ordinary safetensors: the ``safetensors`` package reads ours and we read theirs.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.durable import atomic_file
from bitnet_edge.sdk.errors import FormatError

__all__ = ["SafetensorsFile", "write_safetensors", "bf16_to_f32", "DTYPES"]

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
          np.dtype("<i4"): "I32", np.dtype("<i2"): "I16", np.dtype("i1"): "I8", np.dtype("u1"): "U8",
          np.dtype("<u2"): "U16", np.dtype("<u4"): "U32", np.dtype("?"): "BOOL"}
_MAX_HEADER = 100 * 1024 * 1024  # bytes


def _advise_huge_pages(mm: mmap.mmap) -> None:
    """Ask for transparent huge pages on the mapping (Linux; a no-op elsewhere or where the kernel
    says no).  A decode step streams every weight once: with 4 KB pages that is a TLB miss every 4 KB
    (some 200 000 a token for a 2B model) and the hardware prefetchers stop at each page's end; with
    THP in "madvise" mode (the common default) the page cache serves 2 MB folios for the file and the
    mapping takes them whole."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or len(mm) < 2 << 20:
        return
    try:
        mm.madvise(advice)
    except OSError:  # EINVAL: a kernel without THP for files; the mapping works as it is
        pass


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 stored as uint16 -> float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """A read-only, memory-mapped safetensors file.  ``get(name)`` returns a view (BF16 as uint16)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            if size < 8:
                raise FormatError(f"{self.path}: truncated safetensors file ({size} bytes)")
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            _advise_huge_pages(self._mm)
        finally:
            os.close(fd)
        (hlen,) = struct.unpack("<Q", self._mm[:8])
        if hlen > _MAX_HEADER or 8 + hlen > size:
            raise FormatError(f"{self.path}: header length {hlen} does not fit a {size}-byte file (truncated?)")
        try:
            header = json.loads(bytes(self._mm[8 : 8 + hlen]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{self.path}: header is not JSON ({exc})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._base = 8 + hlen
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int, str]] = {}
        data_len = size - self._base
        for name, e in header.items():
            try:
                dtype_name, shape, (start, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
            if dtype_name not in DTYPES:
                raise FormatError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype_name}")
            dt = DTYPES[dtype_name]
            want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if not (0 <= start <= end <= data_len) or end - start != want:
                raise FormatError(
                    f"{self.path}: tensor {name!r} ({dtype_name} {list(shape)}) needs {want} bytes at "
                    f"[{start}, {end}) of {data_len} data bytes (truncated or corrupt file)")
            self._entries[name] = (dt, shape, start, end, dtype_name)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype_name(self, name: str) -> str:
        return self._entry(name)[4]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def _entry(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor named {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        dt, shape, start, end, _ = self._entry(name)
        count = (end - start) // dt.itemsize
        arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._base + start)
        return arr.reshape(shape)

    def get_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (BF16/F16 converted; this one copies)."""
        arr, kind = self.get(name), self.dtype_name(name)
        if kind == "BF16":
            return bf16_to_f32(arr)
        if kind in ("F16", "F32", "F64"):
            return arr.astype(np.float32)
        raise FormatError(f"{self.path}: tensor {name!r} is {kind}, not a float tensor")


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (sorted by name) atomically (:func:`bitnet_edge.sdk.durable.atomic_file`)."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt not in _NAMES:
            raise FormatError(f"cannot store tensor {name!r} of dtype {a.dtype} in safetensors")
        a = a.astype(dt, copy=False)
        header[name] = {"dtype": _NAMES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for a in arrays:
            f.write(memoryview(a).cast("B"))
