"""TFLite importer: ``read_tflite(path) -> ImportedModel`` of architecture ``graph``.

Reads the flatbuffer directly (:mod:`._tflite_fb`, only the ``flatbuffers`` package).  Float models
and int8-quantized ones: int8 weights keep their values and per-channel scales (an ``int8`` plan
uses them as they are), other quantized constants are dequantized, QUANTIZE / DEQUANTIZE of
activations become identities (the graph computes in float; activations are re-quantized by our
kernels per row), DEQUANTIZE of a float16 or int8 constant is folded.  The int8 interface of a
fully quantized model is recorded on the graph's inputs / outputs (``quant_scale``,
``quant_zero_point``); ``predict`` takes and returns real values.

:func:`load_interpreter` opens the original model with ai-edge-litert's ``Interpreter`` (or
``tflite_runtime`` where only that exists): the reference the tests and the benchmark compare with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bitnet_edge.sdk.conv import same_pads
from bitnet_edge.sdk.convert._tflite_fb import TflModel, TflOperator, TflTensor, parse_tflite
from bitnet_edge.sdk.convert.graph_build import GraphBuilder, float_weight, int8_weight, unsupported
from bitnet_edge.sdk.convert.imported import ImportedModel
from bitnet_edge.sdk.errors import FormatError

__all__ = ["read_tflite", "load_interpreter", "OP_NAMES"]

#: builtin operator codes -> names (the supported ones and common others, for messages)
OP_NAMES = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
            5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D",
            18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX",
            28: "TANH", 32: "CUSTOM", 34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV",
            43: "SQUEEZE", 45: "STRIDED_SLICE", 47: "EXP", 49: "SPLIT", 53: "CAST", 54: "PRELU",
            55: "MAXIMUM", 57: "MINIMUM", 60: "PADV2", 67: "TRANSPOSE_CONV", 97: "RESIZE_NEAREST_NEIGHBOR",
            98: "LEAKY_RELU", 114: "QUANTIZE", 117: "HARD_SWISH", 126: "BATCH_MATMUL", 150: "GELU"}
_ACT = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
_UNARY = {19: "relu", 21: "relu6", 14: "logistic", 28: "tanh", 117: "hard_swish"}


def load_interpreter(model_path: str | Path | None = None, model_content: bytes | None = None,
                     num_threads: int | None = None):
    """The TFLite interpreter of ai-edge-litert (NumPy 2 builds), else of tflite_runtime (older
    boards; its 2.14 wheels are built against NumPy 1.x).  ImportError names both when neither loads."""
    errors = []
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        errors.append(f"ai_edge_litert: {exc}")
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc2:
            errors.append(f"tflite_runtime: {exc2}")
            raise ImportError("no TFLite interpreter: pip install ai-edge-litert (" + "; ".join(errors) + ")") from None
    path = None if model_path is None else str(model_path)
    return Interpreter(model_path=path, model_content=model_content, num_threads=num_threads)


def _dequantize(t: TflTensor) -> np.ndarray:
    """A constant tensor's real values (float32)."""
    a = t.array()
    if t.scale is None or a.dtype.kind == "f":
        return a.astype(np.float32)
    shape = [1] * a.ndim
    if t.scale.size > 1:
        shape[t.quantized_dimension] = -1
    s, zp = t.scale.reshape(shape).astype(np.float32), t.zero_point.reshape(shape) if t.zero_point.size else 0
    return ((a.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


class _Importer:
    def __init__(self, m: TflModel, source: str):
        self.m, self.source = m, source
        self.b = GraphBuilder(source)
        self.values: dict[int, str] = {}  # tensor index -> value name
        self.consts: dict[int, np.ndarray] = {}  # tensor index -> folded constant (float32)

    # ---- operands --------------------------------------------------------------------------

    def tensor(self, i: int) -> TflTensor:
        return self.m.tensors[i]

    def is_const(self, i: int) -> bool:
        return i in self.consts or (i >= 0 and self.tensor(i).data is not None and i not in self.values)

    def const(self, i: int) -> np.ndarray:
        if i not in self.consts:
            self.consts[i] = _dequantize(self.tensor(i))
        return self.consts[i]

    def operand(self, i: int, op: TflOperator) -> str:
        """A value name, or a stored constant for a constant tensor."""
        if self.is_const(i):
            return self.b.const(self.const(i))
        if i not in self.values:
            raise FormatError(f"{self.source}: operator #{op.index} reads tensor {self.tensor(i).name!r} "
                              "before anything produces it")
        return self.values[i]

    def shape(self, i: int) -> list[int]:
        return list(self.tensor(i).shape)

    def out(self, op: TflOperator) -> str:
        t = self.tensor(op.outputs[0])
        name = self.b.value_name(t.name)
        self.values[op.outputs[0]] = name
        return name

    def weight(self, i: int, rows_dim: int, to_rows) -> object:
        """The weight tensor i as an ImportedTensor of rows: int8 with per-row scales when the model
        stores it int8 with zero point 0, else float.  ``to_rows`` maps the array to (rows, k)."""
        t = self.tensor(i)
        if i in self.consts or t.data is None:
            if not self.is_const(i):
                raise FormatError(f"{self.source}: weight tensor {t.name!r} is not a constant")
            return float_weight(to_rows(self.const(i)))
        a = t.array()
        if a.dtype == np.int8 and t.scale is not None and not np.any(t.zero_point):
            if t.scale.size > 1 and t.quantized_dimension != rows_dim:
                return float_weight(to_rows(_dequantize(t)))
            return int8_weight(to_rows(a), t.scale)
        return float_weight(to_rows(_dequantize(t)))

    def bias(self, op: TflOperator) -> np.ndarray | None:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return None
        return self.const(op.inputs[2]).reshape(-1)

    def pads(self, padding: int, hw: list[int], k: list[int], stride: list[int], dil: list[int]) -> list[int]:
        if padding == 1:  # VALID
            return [0, 0, 0, 0]
        return [*same_pads(hw[0], k[0], stride[0], dil[0]), *same_pads(hw[1], k[1], stride[1], dil[1])]

    # ---- operators -------------------------------------------------------------------------

    def run(self, name: str, path: str) -> ImportedModel:
        m = self.m
        for i in m.inputs:
            t = self.tensor(i)
            scale, zp = self._io_quant(t)
            self.values[i] = self.b.add_input(t.name, t.shape, scale, zp)
        for op in m.operators:
            self.op(op)
        for i in m.outputs:
            if i not in self.values:
                raise FormatError(f"{self.source}: graph output {self.tensor(i).name!r} is not computed by any operator")
            scale, zp = self._io_quant(self.tensor(i))
            self.b.add_output(self.values[i], self.shape(i), scale, zp)
        kinds = sorted({OP_NAMES.get(op.code, str(op.code)) for op in m.operators})
        details = {"operators": ",".join(kinds), "quantized": str(any(self.tensor(i).type == 9 for i in range(len(m.tensors))))}
        return self.b.finish(name, "tflite", path, details)

    def _io_quant(self, t: TflTensor):
        if t.type in (3, 9) and t.scale is not None:
            return float(t.scale[0]), int(t.zero_point[0]) if t.zero_point.size else 0
        return None, None

    def op(self, op: TflOperator) -> None:
        code = op.code
        opname = OP_NAMES.get(code, f"builtin code {code}") if code != 32 else f"CUSTOM {op.custom!r}"
        node = self.tensor(op.outputs[0]).name if op.outputs else f"#{op.index}"
        o = op.options
        act = lambda slot: self._act(o.int8(slot), opname, node)  # noqa: E731
        x = op.inputs[0] if op.inputs else -1
        if code in (6, 114):  # DEQUANTIZE / QUANTIZE
            if self.is_const(x):
                self.consts[op.outputs[0]] = self.const(x)  # float16 / int8 constant: folded
            else:
                self.values[op.outputs[0]] = self.values[x]  # activations stay float here
            return
        if code == 3:  # CONV_2D: weight (O, kh, kw, I)
            w = self.shape(op.inputs[1])
            if w[3] != self.shape(x)[3]:
                raise unsupported(self.source, opname, node, f"grouped convolution ({self.shape(x)[3]} input "
                                                             f"channels, {w[3]} per filter)")
            stride, dil = [o.int32(8, 1), o.int32(6, 1)], [o.int32(14, 1), o.int32(12, 1)]
            self.b.node("conv_2d", node, [self.operand(x, op)], self.out(op),
                        weight=self.weight(op.inputs[1], 0, lambda a: a.reshape(a.shape[0], -1)),
                        bias=self.bias(op), kernel=w[1:3], stride=stride, dilation=dil,
                        pads=self.pads(o.int8(4), self.shape(x)[1:3], w[1:3], stride, dil), activation=act(10))
        elif code == 4:  # DEPTHWISE_CONV_2D: weight (1, kh, kw, C*mult)
            w, cin = self.shape(op.inputs[1]), self.shape(x)[3]
            if w[3] % cin:
                raise unsupported(self.source, opname, node, f"{w[3]} output channels for {cin} inputs")
            stride, dil = [o.int32(8, 1), o.int32(6, 1)], [o.int32(16, 1), o.int32(14, 1)]
            self.b.node("depthwise_conv_2d", node, [self.operand(x, op)], self.out(op),
                        weight=self.weight(op.inputs[1], 3, lambda a: a.reshape(-1, a.shape[3]).T),
                        bias=self.bias(op), kernel=w[1:3], stride=stride, dilation=dil,
                        pads=self.pads(o.int8(4), self.shape(x)[1:3], w[1:3], stride, dil),
                        activation=act(12), multiplier=w[3] // cin)
        elif code == 9:  # FULLY_CONNECTED: weight (O, I)
            self._fully_connected(op, opname, node, act(4))
        elif code in (0, 18):  # ADD, MUL
            a, b = (self.operand(i, op) for i in op.inputs[:2])
            self.b.node("add" if code == 0 else "mul", node, [a, b], self.out(op), activation=act(4))
        elif code == 2:  # CONCATENATION
            rank = len(self.shape(op.outputs[0]))
            axis = o.int32(4) % rank
            if axis == 0:
                raise unsupported(self.source, opname, node, "concatenation along the batch")
            self.b.node("concat", node, [self.operand(i, op) for i in op.inputs], self.out(op), axis=axis,
                        activation=act(6))
        elif code == 22:  # RESHAPE: the output's static shape
            self._reshape(x, op.outputs[0], op, opname, node)
        elif code in (34, 60):  # PAD, PADV2 (zero only)
            if code == 60 and len(op.inputs) > 2 and np.any(self.const(op.inputs[2])):
                raise unsupported(self.source, opname, node, "padding with a value other than zero")
            pads = self.const(op.inputs[1]).astype(np.int64).reshape(-1, 2)
            if pads[0].any():
                raise unsupported(self.source, opname, node, "padding the batch dimension")
            self.b.node("pad", node, [self.operand(x, op)], self.out(op), pads=pads.reshape(-1).tolist())
        elif code in (1, 17):  # AVERAGE_POOL_2D, MAX_POOL_2D
            k, stride = [o.int32(12), o.int32(10)], [o.int32(8, 1), o.int32(6, 1)]
            self.b.node("avg_pool_2d" if code == 1 else "max_pool_2d", node, [self.operand(x, op)], self.out(op),
                        kernel=k, stride=stride, pads=self.pads(o.int8(4), self.shape(x)[1:3], k, stride, [1, 1]),
                        activation=act(14))
        elif code == 40:  # MEAN
            rank = len(self.shape(x))
            axes = sorted({int(a) % rank for a in self.const(op.inputs[1]).reshape(-1)})
            if 0 in axes:
                raise unsupported(self.source, opname, node, "a mean over the batch")
            self.b.node("mean", node, [self.operand(x, op)], self.out(op), axes=axes, keepdims=o.bool(4))
        elif code in _UNARY:
            self.b.node(_UNARY[code], node, [self.operand(x, op)], self.out(op))
        elif code == 54:  # PRELU
            self.b.node("prelu", node, [self.operand(x, op), self.operand(op.inputs[1], op)], self.out(op))
        elif code == 25:  # SOFTMAX
            self.b.node("softmax", node, [self.operand(x, op)], self.out(op), axis=-1, beta=o.float32(4, 1.0))
        else:
            raise unsupported(self.source, opname, node)

    def _act(self, code: int, opname: str, node: str) -> str:
        if code not in _ACT:
            raise unsupported(self.source, opname, node, f"fused activation {code}")
        return _ACT[code]

    def _reshape(self, x: int, y: int, op: TflOperator, opname: str, node: str) -> None:
        src, dst = self.shape(x), self.shape(y)
        if not src or not dst or src[0] != dst[0]:
            raise unsupported(self.source, opname, node, f"a reshape {src} -> {dst} that moves the batch dimension")
        self.b.node("reshape", node, [self.operand(x, op)], self.out(op), shape=dst[1:])

    def _fully_connected(self, op: TflOperator, opname: str, node: str, act: str) -> None:
        x = op.inputs[0]
        w = self.shape(op.inputs[1])
        src = self.shape(x)
        value = self.operand(x, op)
        keep = op.options.bool(8)
        if src[-1] != w[1] or (len(src) > 2 and not keep):
            if int(np.prod(src[1:])) != w[1]:
                raise unsupported(self.source, opname, node, f"input {src} against weights {w} would mix the batch")
            value = self.b.node("reshape", node + ":flatten", [value], self.b.value_name(node + ":flatten"),
                                shape=[w[1]])
        self.b.node("fully_connected", node, [value], self.out(op),
                    weight=self.weight(op.inputs[1], 0, lambda a: a), bias=self.bias(op), activation=act)


def read_tflite(path: str | Path, name: str | None = None) -> ImportedModel:
    path = Path(path)
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: unreadable ({exc})") from None
    m = parse_tflite(buf, str(path))
    return _Importer(m, str(path)).run(name or path.stem, str(path))
