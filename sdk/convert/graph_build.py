"""What the TFLite and ONNX importers share: a builder of ``graph`` nodes and their tensors.

Tensor names: ``nodes.{i}.weight`` / ``nodes.{i}.bias`` for the conv / fully-connected layer of
node i (the names the precision plan lists), ``nodes.{i}.const{j}`` for other constant operands.
"""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import GraphConfig, GraphNode, GraphValue, SourceInfo

__all__ = ["GraphBuilder", "float_weight", "int8_weight", "unsupported"]

#: what the importers accept, for error messages
SUPPORTED = ("FULLY_CONNECTED/Gemm/MatMul, CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, CONCATENATION, RESHAPE, PAD, "
             "MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, RELU, RELU6, PRELU, LOGISTIC, TANH, HARD_SWISH, SOFTMAX, "
             "DEQUANTIZE (float16 / int8 constants), QUANTIZE")


def unsupported(source: str, op: str, node: str, why: str = "") -> FormatError:
    tail = f": {why}" if why else f" (supported: {SUPPORTED})"
    return FormatError(f"{source}: operator {op} (node {node!r}) is not supported{tail}")


def float_weight(w: np.ndarray) -> ImportedTensor:
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise FormatError("a weight holds NaN or infinity")
    return ImportedTensor("float", w)


def int8_weight(q: np.ndarray, scales: np.ndarray) -> ImportedTensor:
    """int8 rows with one scale each; -128 becomes -127 (our kernels' symmetric range) and a zero
    scale (an all-zero row) becomes a tiny positive one."""
    q = np.maximum(np.ascontiguousarray(q, dtype=np.int8), np.int8(-127))
    s = np.asarray(scales, np.float32).reshape(-1)
    s = np.broadcast_to(s, (q.shape[0],)) if s.size == 1 else s
    s = np.where(s > 0, s, np.float32(1e-5 / 127)).astype(np.float32)
    return ImportedTensor("int8", q, scales=np.ascontiguousarray(s))


class GraphBuilder:
    def __init__(self, source: str):
        self.source = source
        self.nodes: list[GraphNode] = []
        self.tensors: dict[str, ImportedTensor] = {}
        self.inputs: list[GraphValue] = []
        self.outputs: list[GraphValue] = []
        self._values: set[str] = set()

    def value_name(self, want: str) -> str:
        """A fresh value name close to ``want``."""
        name, i = want or "value", 1
        while name in self._values or name in self.tensors:
            name, i = f"{want}_{i}", i + 1
        self._values.add(name)
        return name

    def add_input(self, name: str, shape: list[int], scale: float | None = None, zero_point: int | None = None) -> str:
        v = self.value_name(name)
        self.inputs.append(GraphValue(name=v, shape=[int(d) for d in shape], quant_scale=scale,
                                      quant_zero_point=zero_point))
        return v

    def add_output(self, value: str, shape: list[int], scale: float | None = None,
                   zero_point: int | None = None) -> None:
        self.outputs.append(GraphValue(name=value, shape=[int(d) for d in shape], quant_scale=scale,
                                       quant_zero_point=zero_point))

    @property
    def next_index(self) -> int:
        return len(self.nodes)

    def const(self, arr: np.ndarray) -> str:
        """Store a constant operand (float32) of the next node."""
        i = self.next_index
        j = sum(1 for k in self.tensors if k.startswith(f"nodes.{i}.const"))
        name = f"nodes.{i}.const{j}"
        self.tensors[name] = float_weight(np.asarray(arr, np.float32).reshape(np.shape(arr) or (1,)))
        return name

    def node(self, op: str, name: str, inputs: list[str], output: str | None = None,
             weight: ImportedTensor | None = None, bias: np.ndarray | None = None, **attrs) -> str:
        i = self.next_index
        if weight is not None:
            attrs["weight"] = f"nodes.{i}.weight"
            self.tensors[attrs["weight"]] = weight
        if bias is not None:
            attrs["bias"] = f"nodes.{i}.bias"
            self.tensors[attrs["bias"]] = float_weight(np.asarray(bias, np.float32).reshape(-1))
        out = output or self.value_name(f"{name}:{op}")
        self.nodes.append(GraphNode(name=name, op=op, inputs=inputs, output=out, **attrs))
        return out

    def finish(self, name: str, kind: str, path: str, details: dict[str, str] | None = None,
               class_names: list[str] | None = None) -> ImportedModel:
        if not self.nodes:
            raise FormatError(f"{self.source}: the graph has no operations")
        cfg = GraphConfig(inputs=self.inputs, outputs=self.outputs, nodes=self.nodes, class_names=class_names)
        return ImportedModel(name=name, config=cfg, tensors=self.tensors,
                             source=SourceInfo(kind=kind, path=path, details=details or {}))
