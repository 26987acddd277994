"""Model tensors <-> the content of the weights sections.  Pure (numpy), no file I/O.

``weights.ternary``: every ternary tensor in the base-3 wire format (ADR 0002, 1.6 bits/weight),
back to back in tensor-table order.  ``weights.dense``: every other tensor as its raw
little-endian array.  Each tensor's byte range and sha256 go into the bundle's tensor table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bitnet_edge.sdk import packing
from bitnet_edge.sdk.bundle.errors import BundleFormatError, IntegrityError
from bitnet_edge.sdk.bundle.manifest import WireTensor
from bitnet_edge.sdk.manifest import ModelManifest

__all__ = ["TERNARY_SECTION", "DENSE_SECTION", "WeightsPayload", "encode_weights", "decode_weights"]

TERNARY_SECTION = "weights.ternary"
DENSE_SECTION = "weights.dense"

_WIRE = {"int8": ("int8", "<i1"), "f32": ("f32", "<f4"), "f16": ("f16", "<f2")}


@dataclass(frozen=True)
class WeightsPayload:
    tensors: list[WireTensor]
    contents: dict[str, bytes]  # section name -> content (only non-empty sections)
    ternary_weights: int
    parameters: int


def encode_weights(model: ModelManifest, array: Callable[[str], np.ndarray]) -> WeightsPayload:
    """``array(name)`` gives a stored tensor in the compute layout (e.g. ``ModelDir.array``)."""
    parts: dict[str, list[bytes]] = {TERNARY_SECTION: [], DENSE_SECTION: []}
    pos = {TERNARY_SECTION: 0, DENSE_SECTION: 0}
    tensors, ternary, params = [], 0, 0
    for entry in model.tensors:
        arr = array(entry.name)
        count = int(np.prod(entry.shape, dtype=np.int64))
        params += count
        if entry.format == "ternary2":
            k = entry.shape[-1]
            data = packing.pack_ternary_base3(packing.unpack_ternary_2bit(arr, k))
            section, wire = TERNARY_SECTION, "ternary-base3"
            ternary += count
        else:
            wire, dtype = _WIRE[entry.format]
            data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
            section = DENSE_SECTION
        tensors.append(WireTensor(name=entry.name, format=wire, shape=list(entry.shape), section=section,
                                  offset=pos[section], length=len(data), sha256=hashlib.sha256(data).hexdigest()))
        parts[section].append(data)
        pos[section] += len(data)
    contents = {name: b"".join(p) for name, p in parts.items() if p}
    return WeightsPayload(tensors, contents, ternary, params)


def decode_weights(model: ModelManifest, tensors: list[WireTensor],
                   contents: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """Section contents -> every tensor in the compute layout (ternary: 2-bit, ADR 0002).
    Each tensor's bytes are checked against its sha256 in the tensor table."""
    wanted = {t.name: t for t in model.tensors}
    if set(wanted) != {t.name for t in tensors}:
        raise BundleFormatError("manifest", "manifest-invalid", "the wire tensor table and the model's differ")
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        content = contents.get(t.section)
        if content is None or t.offset + t.length > len(content):
            raise BundleFormatError(f"tensor:{t.name}", "bad-layout", f"outside section {t.section!r}")
        data = content[t.offset:t.offset + t.length]
        digest = hashlib.sha256(data).hexdigest()
        if digest != t.sha256:
            raise IntegrityError(t.name, "tensor", t.sha256, digest)
        entry = wanted[t.name]
        count = int(np.prod(t.shape, dtype=np.int64))
        try:
            if t.format == "ternary-base3":
                if entry.format != "ternary2" or len(t.shape) != 2:
                    raise ValueError(f"{entry.format} tensor of shape {t.shape} sent as ternary-base3")
                q = packing.unpack_ternary_base3(data, count).reshape(t.shape)
                out[t.name] = packing.pack_ternary_2bit(q)
            else:
                if _WIRE[entry.format][0] != t.format:
                    raise ValueError(f"{entry.format} tensor sent as {t.format}")
                arr = np.frombuffer(data, dtype=_WIRE[entry.format][1])
                if arr.size != count:
                    raise ValueError(f"{arr.size} elements for shape {t.shape}")
                out[t.name] = arr.reshape(t.shape).astype(arr.dtype.newbyteorder("="), copy=False)
        except ValueError as exc:  # also the SDK's FormatError (a ValueError)
            raise BundleFormatError(f"tensor:{t.name}", "bad-layout", str(exc)) from None
    return out
