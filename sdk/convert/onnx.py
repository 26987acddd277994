"""ONNX importer: ``read_onnx(path) -> ImportedModel`` of architecture ``graph`` (needs the ``onnx``
package: ``pip install 'bitnet-edge[onnx]'``).

ONNX convolutions are NCHW; a ``graph`` model runs NHWC.  Every 4-D value that a Conv / pool
produces is kept NHWC, and layout-aware ops (Add / Mul / PRelu constants, Concat and Softmax axes,
ReduceMean axes, Pad, Transpose) are rewritten for it; anything else that reads such a value
(Reshape, Flatten, MatMul, a graph output) gets an explicit transpose back to NCHW first.  So the
model keeps its ONNX interface: ``predict`` takes and returns what onnxruntime does.  float16
initializers (and Cast of them) and DequantizeLinear of constant weights are folded to float32;
QuantizeLinear / DequantizeLinear of activations are identities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bitnet_edge.sdk.conv import same_pads
from bitnet_edge.sdk.convert.graph_build import GraphBuilder, float_weight, unsupported
from bitnet_edge.sdk.convert.imported import ImportedModel
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.extras import require

__all__ = ["read_onnx"]

_NCHW_TO_NHWC = [0, 2, 3, 1]
_NHWC_TO_NCHW = [0, 3, 1, 2]
_UNARY = {"Relu": "relu", "Sigmoid": "logistic", "Tanh": "tanh", "HardSwish": "hard_swish"}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _to_nhwc_const(c: np.ndarray) -> np.ndarray:
    """A constant that broadcasts against an NCHW value, made to broadcast against its NHWC form."""
    if c.ndim > 4:
        raise ValueError(c.shape)
    c4 = c.reshape((1,) * (4 - c.ndim) + c.shape)
    return np.ascontiguousarray(c4.transpose(_NCHW_TO_NHWC))


class _Importer:
    def __init__(self, model, source: str):
        from onnx import numpy_helper

        self.source, self.g = source, model.graph
        self.b = GraphBuilder(source)
        self.nh = numpy_helper
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.vals: dict[str, tuple[str, str]] = {}  # onnx name -> (value, "nhwc" | "plain")
        self._plain_cache: dict[str, str] = {}
        self.shapes: dict[str, list[int]] = {}
        for vi in [*self.g.input, *self.g.value_info, *self.g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    # ---- operands --------------------------------------------------------------------------

    def shape(self, name: str, node) -> list[int]:
        if name in self.consts:
            return list(self.consts[name].shape)
        if name not in self.shapes:
            raise FormatError(f"{self.source}: node {node.name!r} ({node.op_type}): the shape of {name!r} is unknown "
                              "(the importer needs static shapes; run onnx shape inference or fix the input shape)")
        return [1 if d < 0 else d for d in self.shapes[name]]

    def const(self, name: str, node) -> np.ndarray:
        if name not in self.consts:
            raise unsupported(self.source, node.op_type, node.name or node.output[0], f"input {name!r} must be a constant")
        return self.consts[name]

    def value(self, name: str, node) -> tuple[str, str]:
        if name in self.consts:
            op = getattr(node, "op_type", "graph output")
            raise unsupported(self.source, op, node.name or name, f"a constant {name!r} where the importer "
                                                                  "needs an activation")
        if name not in self.vals:
            raise FormatError(f"{self.source}: node {node.name!r} reads {name!r} before anything produces it")
        return self.vals[name]

    def plain(self, name: str, node) -> str:
        v, layout = self.value(name, node)
        if layout == "plain":
            return v
        if v not in self._plain_cache:
            self._plain_cache[v] = self.b.node("transpose", f"{name}:to_nchw", [v], self.b.value_name(f"{name}:nchw"),
                                               axes=_NHWC_TO_NCHW)
        return self._plain_cache[v]

    def nhwc(self, name: str, node) -> str:
        v, layout = self.value(name, node)
        if layout == "nhwc":
            return v
        if len(self.shape(name, node)) != 4:
            raise unsupported(self.source, node.op_type, node.name or node.output[0], f"{name!r} is not 4-D (NCHW)")
        out = self.b.node("transpose", f"{name}:to_nhwc", [v], self.b.value_name(f"{name}:nhwc"), axes=_NCHW_TO_NHWC)
        self.vals[name] = (out, "nhwc")  # later readers reuse it; plain() transposes back when needed
        self._plain_cache[out] = v
        return out

    def set_out(self, node, value: str, layout: str) -> None:
        self.vals[node.output[0]] = (value, layout)

    def out_name(self, node) -> str:
        return self.b.value_name(node.output[0])

    # ---- graph -----------------------------------------------------------------------------

    def run(self, name: str, path: str, opset: int) -> ImportedModel:
        for vi in self.g.input:
            if vi.name in self.consts:
                continue
            v = self.b.add_input(vi.name, self.shapes.get(vi.name) or [-1])
            self.vals[vi.name] = (v, "plain")
        for node in self.g.node:
            self.op(node, opset)
        for vo in self.g.output:
            if vo.name not in self.vals:
                raise FormatError(f"{self.source}: graph output {vo.name!r} is not computed by any supported node")
            self.b.add_output(self.plain(vo.name, vo), self.shapes.get(vo.name) or [-1])
        kinds = sorted({n.op_type for n in self.g.node})
        return self.b.finish(name, "onnx", path, {"operators": ",".join(kinds), "opset": str(opset)})

    def op(self, node, opset: int) -> None:
        t, a = node.op_type, _attrs(node)
        label = node.name or node.output[0]
        ins = [i for i in node.input]
        if t == "Constant":
            from onnx import numpy_helper

            if "value" not in a:
                raise unsupported(self.source, t, label, "only tensor constants")
            self.consts[node.output[0]] = numpy_helper.to_array(a["value"])
            return
        if t in ("Identity", "Dropout", "QuantizeLinear", "DequantizeLinear", "Cast"):
            self._passthrough(node, t, a, label)
            return
        if all(i in self.consts for i in ins if i) and t not in ("Conv", "Gemm", "MatMul"):
            raise unsupported(self.source, t, label, "an operation on constants only (fold it before export)")
        if t == "Conv":
            self._conv(node, a, label)
        elif t in ("Gemm", "MatMul"):
            self._fc(node, t, a, label)
        elif t in ("Add", "Mul"):
            self._binary(node, "add" if t == "Add" else "mul", ins[:2])
        elif t in _UNARY:
            v, layout = self.value(ins[0], node)
            self.set_out(node, self.b.node(_UNARY[t], label, [v], self.out_name(node)), layout)
        elif t == "Clip":
            lo = a.get("min", self.consts.get(ins[1]) if len(ins) > 1 and ins[1] else None)
            hi = a.get("max", self.consts.get(ins[2]) if len(ins) > 2 and ins[2] else None)
            lo, hi = (None if v is None else float(np.asarray(v).reshape(-1)[0]) for v in (lo, hi))
            kind = {(0.0, 6.0): "relu6", (0.0, None): "relu"}.get((lo, hi))
            if kind is None:
                raise unsupported(self.source, t, label, f"Clip({lo}, {hi}); only Clip(0, 6) and Clip(0) map to ReLU6 / ReLU")
            v, layout = self.value(ins[0], node)
            self.set_out(node, self.b.node(kind, label, [v], self.out_name(node)), layout)
        elif t == "PRelu":
            self._binary(node, "prelu", ins[:2])
        elif t == "Softmax":
            rank = len(self.shape(ins[0], node))
            axis = a.get("axis", -1 if opset >= 13 else 1) % rank
            if opset < 13 and axis != rank - 1:
                raise unsupported(self.source, t, label, "opset < 13 Softmax over more than the last axis")
            v, layout = self.value(ins[0], node)
            if layout == "nhwc":
                axis = _NCHW_TO_NHWC.index(axis)
            self.set_out(node, self.b.node("softmax", label, [v], self.out_name(node), axis=axis), layout)
        elif t == "Concat":
            self._concat(node, a, label)
        elif t in ("Reshape", "Flatten"):
            self._reshape(node, t, a, label)
        elif t == "Transpose":
            perm = list(a.get("perm", []))
            v, layout = self.value(ins[0], node)
            if layout == "nhwc":
                perm = [_NHWC_TO_NCHW[p] for p in perm]
            if not perm or perm[0] != 0:
                raise unsupported(self.source, t, label, "a transpose that moves the batch dimension")
            self.set_out(node, self.b.node("transpose", label, [v], self.out_name(node), axes=perm), "plain")
        elif t == "Pad":
            self._pad(node, a, label)
        elif t in ("MaxPool", "AveragePool"):
            self._pool(node, t, a, label)
        elif t == "GlobalAveragePool":
            x = self.nhwc(ins[0], node)
            self.set_out(node, self.b.node("mean", label, [x], self.out_name(node), axes=[1, 2], keepdims=True), "nhwc")
        elif t == "ReduceMean":
            rank = len(self.shape(ins[0], node))
            axes = a.get("axes") or (self.const(ins[1], node).tolist() if len(ins) > 1 and ins[1] else list(range(rank)))
            axes = sorted({int(x) % rank for x in axes})
            keep = bool(a.get("keepdims", 1))
            if 0 in axes:
                raise unsupported(self.source, t, label, "a mean over the batch")
            v, layout = self.value(ins[0], node)
            out_layout = layout
            if layout == "nhwc":
                left = [d for d in _NCHW_TO_NHWC if d not in axes]  # what remains, in NHWC order
                if keep or left == sorted(left):
                    axes, out_layout = sorted(_NCHW_TO_NHWC.index(x) for x in axes), "nhwc" if keep else "plain"
                else:
                    v, out_layout = self.plain(ins[0], node), "plain"
            self.set_out(node, self.b.node("mean", label, [v], self.out_name(node), axes=axes, keepdims=keep),
                         out_layout)
        else:
            raise unsupported(self.source, t, label)

    # ---- op groups -------------------------------------------------------------------------

    def _passthrough(self, node, t: str, a: dict, label: str) -> None:
        x = node.input[0]
        if x in self.consts:  # fold: float16 weights, Cast, DequantizeLinear of int8 weights
            c = self.consts[x]
            if t == "DequantizeLinear":
                s = self.const(node.input[1], node)
                zp = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                axis = a.get("axis", 1)
                shape = [1] * c.ndim
                if np.ndim(s) == 1 and c.ndim:
                    shape[axis % c.ndim] = -1
                zp = 0 if zp is None else np.asarray(zp, np.int64).reshape(shape)
                c = (c.astype(np.int64) - zp).astype(np.float32) * np.asarray(s, np.float32).reshape(shape)
            elif t == "Cast" or c.dtype == np.float16:
                c = c.astype(np.float32) if c.dtype.kind == "f" or t == "Cast" else c
            self.consts[node.output[0]] = c
            return
        if t == "Cast":
            from onnx import TensorProto

            if a.get("to") not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                raise unsupported(self.source, t, label, "a cast of an activation to a non-float type")
        self.vals[node.output[0]] = self.value(x, node)

    def _window(self, node, a: dict, k: list[int], hw: list[int], stride: list[int], dil: list[int]) -> list[int]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            lower = auto == "SAME_LOWER"
            return [*same_pads(hw[0], k[0], stride[0], dil[0], lower), *same_pads(hw[1], k[1], stride[1], dil[1], lower)]
        p = list(a.get("pads", [0, 0, 0, 0]))
        return [p[0], p[2], p[1], p[3]]  # ONNX [top, left, bottom, right] -> [top, bottom, left, right]

    def _conv(self, node, a: dict, label: str) -> None:
        ins = node.input
        w = np.asarray(self.const(ins[1], node), np.float32)  # (O, I/g, kh, kw)
        if w.ndim != 4:
            raise unsupported(self.source, "Conv", label, f"a {w.ndim - 2}-D convolution (only 2-D)")
        xshape = self.shape(ins[0], node)
        cin, group = xshape[1], int(a.get("group", 1))
        x = self.nhwc(ins[0], node)
        k = list(w.shape[2:])
        stride, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        pads = self._window(node, a, k, xshape[2:], stride, dil)
        bias = self.const(ins[2], node).astype(np.float32) if len(ins) > 2 and ins[2] else None
        common = dict(bias=bias, kernel=k, stride=stride, dilation=dil, pads=pads)
        if group == 1:
            out = self.b.node("conv_2d", label, [x], self.out_name(node),
                              weight=float_weight(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)), **common)
        elif group == cin and w.shape[1] == 1:
            out = self.b.node("depthwise_conv_2d", label, [x], self.out_name(node),
                              weight=float_weight(w.reshape(w.shape[0], -1)), multiplier=w.shape[0] // cin, **common)
        else:
            raise unsupported(self.source, "Conv", label, f"grouped convolution (group {group} of {cin} channels)")
        self.set_out(node, out, "nhwc")

    def _fc(self, node, t: str, a: dict, label: str) -> None:
        ins = node.input
        if ins[0] in self.consts or ins[1] not in self.consts:
            raise unsupported(self.source, t, label, "only activation @ constant weights")
        b = np.asarray(self.consts[ins[1]], np.float32)
        if t == "Gemm":
            if a.get("transA", 0):
                raise unsupported(self.source, t, label, "transA=1")
            w = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
            bias = None
            if len(ins) > 2 and ins[2]:
                c = np.asarray(self.const(ins[2], node), np.float32) * np.float32(a.get("beta", 1.0))
                if c.size not in (1, w.shape[0]):
                    raise unsupported(self.source, t, label, f"a bias C of shape {list(c.shape)}")
                bias = np.broadcast_to(c.reshape(-1), (w.shape[0],))
        else:
            if b.ndim != 2:
                raise unsupported(self.source, t, label, f"a {b.ndim}-D weight")
            w, bias = b.T, None
        x = self.plain(ins[0], node)
        out = self.b.node("fully_connected", label, [x], self.out_name(node), weight=float_weight(w), bias=bias)
        self.set_out(node, out, "plain")

    def _binary(self, node, op: str, ins: list[str]) -> None:
        label = node.name or node.output[0]
        layouts = [self.vals[i][1] for i in ins if i not in self.consts]
        nhwc = layouts and all(lay == "nhwc" for lay in layouts)
        operands = []
        for i in ins:
            if i in self.consts:
                c = np.asarray(self.consts[i], np.float32)
                if nhwc:
                    try:
                        c = _to_nhwc_const(c)
                    except ValueError:
                        raise unsupported(self.source, node.op_type, label, f"constant of shape {c.shape}") from None
                operands.append(self.b.const(c))
            else:
                operands.append(self.vals[i][0] if nhwc else self.plain(i, node))
        self.set_out(node, self.b.node(op, label, operands, self.out_name(node)), "nhwc" if nhwc else "plain")

    def _concat(self, node, a: dict, label: str) -> None:
        ins = [i for i in node.input if i]
        rank = len(self.shape(ins[0], node))
        axis = int(a["axis"]) % rank
        if axis == 0:
            raise unsupported(self.source, "Concat", label, "concatenation along the batch")
        nhwc = all(i not in self.consts and self.vals[i][1] == "nhwc" for i in ins)
        if nhwc:
            vals, axis = [self.vals[i][0] for i in ins], _NCHW_TO_NHWC.index(axis)
        else:
            vals = [self.b.const(self.consts[i]) if i in self.consts else self.plain(i, node) for i in ins]
        self.set_out(node, self.b.node("concat", label, vals, self.out_name(node), axis=axis), "nhwc" if nhwc else "plain")

    def _reshape(self, node, t: str, a: dict, label: str) -> None:
        src = self.shape(node.input[0], node)
        if t == "Flatten":
            axis = int(a.get("axis", 1)) % max(len(src), 1)
            if axis != 1:
                raise unsupported(self.source, t, label, f"Flatten(axis={axis}) mixes the batch")
            new = [src[0], int(np.prod(src[1:]))]
        else:
            want = [int(d) for d in self.const(node.input[1], node).reshape(-1)]
            new = [src[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(want)]
            if -1 in new:
                known = int(np.prod([d for d in new if d != -1]))
                new[new.index(-1)] = int(np.prod(src)) // max(known, 1)
        if new[0] != src[0] or int(np.prod(new)) != int(np.prod(src)):
            raise unsupported(self.source, t, label, f"a reshape {src} -> {new} that moves the batch dimension")
        x = self.plain(node.input[0], node)
        self.set_out(node, self.b.node("reshape", label, [x], self.out_name(node), shape=new[1:]), "plain")

    def _pad(self, node, a: dict, label: str) -> None:
        ins = node.input
        mode = a.get("mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
            raise unsupported(self.source, "Pad", label, f"mode {mode!r}")
        pads = list(a["pads"]) if "pads" in a else self.const(ins[1], node).astype(np.int64).tolist()
        if len(ins) > 2 and ins[2] and np.any(self.const(ins[2], node)):
            raise unsupported(self.source, "Pad", label, "padding with a value other than zero")
        if len(ins) > 3 and ins[3]:
            raise unsupported(self.source, "Pad", label, "the axes input")
        rank = len(pads) // 2
        pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
        if pairs[0] != (0, 0) or min(pads) < 0:
            raise unsupported(self.source, "Pad", label, "padding the batch or negative padding")
        v, layout = self.value(ins[0], node)
        if layout == "nhwc":
            pairs = [pairs[d] for d in _NCHW_TO_NHWC]
        flat = [p for pair in pairs for p in pair]
        self.set_out(node, self.b.node("pad", label, [v], self.out_name(node), pads=flat), layout)

    def _pool(self, node, t: str, a: dict, label: str) -> None:
        if a.get("ceil_mode", 0):
            raise unsupported(self.source, t, label, "ceil_mode=1")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise unsupported(self.source, t, label, "dilated pooling")
        k = list(a["kernel_shape"])
        if len(k) != 2:
            raise unsupported(self.source, t, label, f"{len(k)}-D pooling (only 2-D)")
        xshape = self.shape(node.input[0], node)
        stride = list(a.get("strides", [1, 1]))
        pads = self._window(node, a, k, xshape[2:], stride, [1, 1])
        if t == "AveragePool" and a.get("count_include_pad", 0) and any(pads):
            raise unsupported(self.source, t, label, "count_include_pad=1 with padding")
        x = self.nhwc(node.input[0], node)
        op = "max_pool_2d" if t == "MaxPool" else "avg_pool_2d"
        self.set_out(node, self.b.node(op, label, [x], self.out_name(node), kernel=k, stride=stride, pads=pads), "nhwc")


def read_onnx(path: str | Path, name: str | None = None) -> ImportedModel:
    path = Path(path)
    onnx = require("onnx", "reading .onnx")
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise many types for a bad file
        raise FormatError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx"):
            raise FormatError(f"{path}: operator set {o.domain!r} is not supported (only the default ONNX domain)")
    return _Importer(model, str(path)).run(name or path.stem, str(path), opset)
