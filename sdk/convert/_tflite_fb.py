"""A small reader for the TFLite flatbuffer (schema version 3): the tables the ``graph`` importer needs.

Field offsets are the vtable slots of ``tensorflow/lite/schema/schema.fbs`` (4 + 2 * field id),
the same numbers the generated Python classes use.  Reading needs only the ``flatbuffers`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import struct

import numpy as np

from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.extras import missing

try:
    from flatbuffers import encode, number_types as N
    from flatbuffers.table import Table
except ModuleNotFoundError as _exc:  # the builder extra
    raise missing(_exc, "the .tflite importer") from None

__all__ = ["TflTensor", "TflOperator", "TflModel", "parse_tflite", "Options", "TYPES"]

IDENTIFIER = b"TFL3"
#: TensorType -> numpy dtype (types a graph model can hold)
TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
         9: np.int8, 10: np.float64}


class _Tab:
    __slots__ = ("t",)

    def __init__(self, buf: bytes, pos: int):
        self.t = Table(buf, pos)

    def _o(self, slot: int) -> int:
        return self.t.Offset(slot)

    def scalar(self, slot: int, flags, default):
        o = self._o(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def table(self, slot: int) -> _Tab | None:
        o = self._o(slot)
        return _Tab(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list[_Tab]:
        o = self._o(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [_Tab(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def array(self, slot: int, dtype) -> np.ndarray:
        o = self._o(slot)
        if not o:
            return np.zeros(0, dtype)
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return np.frombuffer(self.t.Bytes, np.dtype(dtype).newbyteorder("<"), n, start).astype(dtype)

    def string(self, slot: int) -> str | None:
        o = self._o(slot)
        return self.t.String(o + self.t.Pos).decode("utf-8", "replace") if o else None


class Options:
    """An operator's builtin options table, read field by field (slot, kind, default)."""

    def __init__(self, tab: _Tab | None):
        self._tab = tab

    def get(self, slot: int, flags, default):
        return default if self._tab is None else self._tab.scalar(slot, flags, default)

    def int8(self, slot: int, default: int = 0) -> int:
        return int(self.get(slot, N.Int8Flags, default))

    def int32(self, slot: int, default: int = 0) -> int:
        return int(self.get(slot, N.Int32Flags, default))

    def bool(self, slot: int, default: bool = False) -> bool:
        return bool(self.get(slot, N.BoolFlags, default))

    def float32(self, slot: int, default: float = 0.0) -> float:
        return float(self.get(slot, N.Float32Flags, default))

    def int32s(self, slot: int) -> list[int]:
        return [] if self._tab is None else self._tab.array(slot, np.int32).tolist()


@dataclass
class TflTensor:
    index: int
    name: str
    shape: list[int]
    type: int
    data: bytes | None  # constant contents, None for activations
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0

    @property
    def dtype(self):
        if self.type not in TYPES:
            raise FormatError(f"tensor {self.name!r}: TFLite tensor type {self.type} is not supported")
        return TYPES[self.type]

    def array(self) -> np.ndarray:
        assert self.data is not None
        dt = np.dtype(self.dtype).newbyteorder("<")
        count = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if len(self.data) != count * dt.itemsize:
            raise FormatError(f"tensor {self.name!r}: {len(self.data)} bytes of data for shape {self.shape}")
        return np.frombuffer(self.data, dt, count).astype(self.dtype).reshape(self.shape)


@dataclass
class TflOperator:
    index: int
    code: int  # builtin operator code
    custom: str | None
    inputs: list[int]
    outputs: list[int]
    options: Options = field(repr=False)


@dataclass
class TflModel:
    version: int
    tensors: list[TflTensor]
    inputs: list[int]
    outputs: list[int]
    operators: list[TflOperator]
    description: str | None


def parse_tflite(buf: bytes, source: str) -> TflModel:
    if len(buf) < 8 or buf[4:8] != IDENTIFIER:
        raise FormatError(f"{source}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        root = _Tab(buf, encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
        version = int(root.scalar(4, N.Uint32Flags, 0))
        if version != 3:
            raise FormatError(f"{source}: TFLite schema version {version}; this importer reads version 3")
        codes = []
        for oc in root.tables(6):
            dep = int(oc.scalar(4, N.Int8Flags, 0))
            code = int(oc.scalar(10, N.Int32Flags, 0))
            codes.append((max(dep, code), oc.string(6)))
        buffers = []
        for b in root.tables(12):
            off, size = int(b.scalar(6, N.Uint64Flags, 0)), int(b.scalar(8, N.Uint64Flags, 0))
            if off > 1:  # stored after the flatbuffer (models over 2 GB)
                buffers.append(bytes(buf[off:off + size]))
            else:
                data = b.array(4, np.uint8)
                buffers.append(data.tobytes() if data.size else None)
        subgraphs = root.tables(8)
        if len(subgraphs) != 1:
            raise FormatError(f"{source}: {len(subgraphs)} subgraphs; only single-subgraph models (no control "
                              "flow) are supported")
        sg = subgraphs[0]
        tensors = []
        for i, t in enumerate(sg.tables(4)):
            q = t.table(12)
            scale = zp = None
            qdim = 0
            if q is not None:
                s = q.array(8, np.float32)
                if s.size:
                    scale, zp = s, q.array(10, np.int64)
                    qdim = int(q.scalar(16, N.Int32Flags, 0))
            bidx = int(t.scalar(8, N.Uint32Flags, 0))
            tensors.append(TflTensor(i, t.string(10) or f"tensor_{i}", t.array(4, np.int32).tolist(),
                                     int(t.scalar(6, N.Int8Flags, 0)),
                                     buffers[bidx] if 0 < bidx < len(buffers) else None, scale, zp, qdim))
        ops = []
        for i, op in enumerate(sg.tables(10)):
            ci = int(op.scalar(4, N.Uint32Flags, 0))
            if ci >= len(codes):
                raise FormatError(f"{source}: operator #{i} has opcode index {ci} of {len(codes)}")
            code, custom = codes[ci]
            ops.append(TflOperator(i, code, custom if code == 32 else None, op.array(6, np.int32).tolist(),
                                   op.array(8, np.int32).tolist(), Options(op.table(12))))
        return TflModel(version, tensors, sg.array(6, np.int32).tolist(), sg.array(8, np.int32).tolist(), ops,
                        root.string(10))
    except FormatError:
        raise
    except (IndexError, ValueError, TypeError, UnicodeError, struct.error) as exc:  # a truncated or corrupt buffer
        raise FormatError(f"{source}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
