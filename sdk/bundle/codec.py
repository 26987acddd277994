"""Section encodings: how a section's content becomes the bytes stored in a bundle, and back.

- ``zstd``: one zstd frame of the content (content size in the frame header).
- ``zstd-patch``: one zstd frame made with the base section's content as a raw-content
  dictionary and long-distance matching (zstd's "patch-from"); decoding needs the same base.
- ``trit-delta``: for base-3 packed ternary weights of the same length as the base: each byte
  becomes the trit-wise difference ``(new - base) mod 3`` (5 trits per byte again, unchanged
  groups are byte 0), then one zstd frame.  Fine-tuning changes a few percent of the weights
  scattered over every row, which leaves too few long matches for patch-from; the difference
  stream is mostly zeros and compresses to about the entropy of the change mask.

Pure functions over bytes; the level and the zstd version decide the output (recorded in the
manifest's build info), and compression is single-threaded, so outputs are reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import zstandard

from bitnet_edge.sdk.bundle.errors import BundleFormatError

__all__ = ["DEFAULT_LEVEL", "MAX_WINDOW_LOG", "zstd_version", "encode_full", "encode_patch", "encode_trit_delta",
           "best_delta", "decode"]

DEFAULT_LEVEL = 19
MAX_WINDOW_LOG = 31  # zstd's limit on 64-bit hosts

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int32)
_TRITS = (np.arange(243, dtype=np.int32)[:, None] // _POW3[None, :]) % 3  # byte -> its 5 trits
# _DIFF[new, old] = byte of (new - old) mod 3 per trit; _APPLY[old, d] = byte of (old + d) mod 3
_DIFF = (((_TRITS[:, None, :] - _TRITS[None, :, :]) % 3) * _POW3).sum(axis=2).astype(np.uint8)
_APPLY = (((_TRITS[:, None, :] + _TRITS[None, :, :]) % 3) * _POW3).sum(axis=2).astype(np.uint8)
_CHUNK = 1 << 22  # bytes per vectorised step (bounds temporary memory)


def zstd_version() -> str:
    return f"zstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]}" \
           f" (python-zstandard {zstandard.__version__})"


def _window_log(n: int) -> int:
    return max(20, min(MAX_WINDOW_LOG, math.ceil(math.log2(n + 1)) + 1))


def encode_full(content: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, threads=0).compress(content)


def _raw_dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def encode_patch(content: bytes, base: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(content), window_log=_window_log(len(base) + len(content)),
        enable_ldm=True, write_content_size=True, threads=0)
    return zstandard.ZstdCompressor(dict_data=_raw_dict(base), compression_params=params).compress(content)


def _is_base3(data: np.ndarray) -> bool:
    return data.size == 0 or int(data.max()) <= 242


def _trit_map(table: np.ndarray, a: bytes, b: bytes) -> bytes:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    flat = table.reshape(-1)
    out = np.empty(x.size, np.uint8)
    for i in range(0, x.size, _CHUNK):
        out[i:i + _CHUNK] = flat[x[i:i + _CHUNK].astype(np.intp) * 243 + y[i:i + _CHUNK]]
    return out.tobytes()


def encode_trit_delta(content: bytes, base: bytes, level: int = DEFAULT_LEVEL) -> bytes | None:
    """None when the encoding does not apply (lengths differ, or bytes that are not base-3)."""
    if len(content) != len(base):
        return None
    if not (_is_base3(np.frombuffer(content, np.uint8)) and _is_base3(np.frombuffer(base, np.uint8))):
        return None
    return encode_full(_trit_map(_DIFF, content, base), level)


def best_delta(content: bytes, base: bytes, level: int = DEFAULT_LEVEL, *, ternary: bool) -> tuple[str, bytes]:
    """(encoding, stored bytes) against ``base``: trit-delta for a ternary section of the base's
    length (smaller than patch-from on scattered changes, and ~3x faster), else patch-from.  The
    caller keeps plain zstd when that is smaller still."""
    if ternary:
        td = encode_trit_delta(content, base, level)
        if td is not None:
            return "trit-delta", td
    return "zstd-patch", encode_patch(content, base, level)


def decode(name: str, encoding: str, stored: bytes, size: int, base: bytes | None = None) -> bytes:
    """Stored bytes -> content of ``size`` bytes; :class:`BundleFormatError` when they do not decode."""
    part = f"section:{name}"
    if encoding != "zstd" and base is None:
        raise BundleFormatError(part, "bad-encoding", f"{encoding} needs the base section's content")
    try:
        declared = zstandard.frame_content_size(stored)
        expect = size if encoding != "trit-delta" else len(base)
        if declared != expect:  # refuse before allocating what the frame header asks for
            raise BundleFormatError(part, "bad-encoding", f"zstd frame declares {declared} bytes, expected {expect}")
        if encoding == "zstd":
            out = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
        elif encoding == "zstd-patch":
            d = zstandard.ZstdDecompressor(dict_data=_raw_dict(base), max_window_size=1 << MAX_WINDOW_LOG)
            out = d.decompress(stored, max_output_size=size)
        elif encoding == "trit-delta":
            diff = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
            if len(diff) != len(base) or not _is_base3(np.frombuffer(diff, np.uint8)):
                raise BundleFormatError(part, "bad-encoding", "trit-delta does not match the base section's size")
            out = _trit_map(_APPLY, base, diff)
        else:
            raise BundleFormatError(part, "bad-encoding", f"unknown encoding {encoding!r}")
    except zstandard.ZstdError as exc:
        raise BundleFormatError(part, "bad-encoding", f"{encoding} data does not decode ({exc})") from None
    if len(out) != size:
        raise BundleFormatError(part, "bad-encoding", f"decoded {len(out)} bytes, the manifest says {size}")
    return out
