"""``graph`` models: small conv / fully-connected networks imported from TFLite or ONNX.

Activations are NHWC float32 with the batch first.  ``conv_2d`` runs as im2col + the ternary or
int8 GEMM (a float layer through numpy BLAS), ``fully_connected`` through the same
:class:`~bitnet_edge.sdk.models.linear.Linear`, ``depthwise_conv_2d`` through the C depthwise kernel
(:mod:`bitnet_edge.sdk.conv`), everything else in numpy.  Values are dropped after their last use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from bitnet_edge.sdk import packing
from bitnet_edge.sdk._checks import float_input
from bitnet_edge.sdk.conv import Conv2DGeometry, ConvMatrix, DepthwiseConv2D, im2col
from bitnet_edge.sdk.errors import FormatError, InputError, ShapeError
from bitnet_edge.sdk.manifest import GraphConfig, GraphNode
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.models.linear import Linear

__all__ = ["GraphModel", "graph_weight_names"]

_F = np.float32
_CLAMP = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0)}


def graph_weight_names(cfg: GraphConfig) -> list[str]:
    """The weights whose precision a plan decides: every conv, depthwise conv and fully-connected layer."""
    return [n.weight for n in cfg.nodes if n.weight is not None]


def _activation(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "none":
        return y
    if kind == "tanh":
        return np.tanh(y)
    lo, hi = _CLAMP[kind]
    return np.clip(y, _F(lo), _F(hi)) if np.isfinite(hi) else np.maximum(y, _F(lo))


def _logistic(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (_F(1) / (_F(1) + np.exp(-x))).astype(_F)


def _window(x: np.ndarray, g: Conv2DGeometry, fill: float, combine) -> np.ndarray:
    """Fold ``combine`` over the kh*kw taps of a pooling window on x (n, h, w, c) padded with ``fill``."""
    n, h, w, c = x.shape
    oh, ow = g.out_size(h, w)
    t, b, l, r = g.pads
    xp = x
    if any(g.pads):
        xp = np.full((n, h + t + b, w + l + r, c), fill, _F)
        xp[:, t:t + h, l:l + w] = x
    sh, sw = g.stride
    out = None
    for p in range(g.kh):
        for q in range(g.kw):
            tap = xp[:, p:p + (oh - 1) * sh + 1:sh, q:q + (ow - 1) * sw + 1:sw]
            out = tap.copy() if out is None else combine(out, tap)
    return out


def _avg_pool(x: np.ndarray, g: Conv2DGeometry) -> np.ndarray:
    """Average over the window's pixels inside the image (padding is not counted: TFLite, ONNX default)."""
    total = _window(x, g, 0.0, np.add)
    ones = np.ones((1, x.shape[1], x.shape[2], 1), _F)
    count = _window(ones, g, 0.0, np.add)
    return (total / count).astype(_F)


class GraphModel:
    architecture = "graph"

    def __init__(self, md: ModelDir, tokenizer=None):
        cfg = md.manifest.config
        assert isinstance(cfg, GraphConfig)
        self.cfg, self.manifest, self.tokenizer = cfg, md.manifest, None
        tensors = {t.name for t in md.manifest.tensors}
        self._consts: dict[str, np.ndarray] = {}
        defined = {v.name for v in cfg.inputs}
        self._steps: list[tuple[GraphNode, Callable]] = []
        for node in cfg.nodes:
            for name in node.inputs:
                if name not in defined and name not in tensors:
                    raise FormatError(f"{md.path}: node {node.name!r} ({node.op}) reads {name!r}, which is neither "
                                      "a graph input, an earlier node's output nor a stored tensor")
                if name not in defined and name not in self._consts:
                    self._consts[name] = np.asarray(md.array(name), dtype=_F)
            if node.output in defined:
                raise FormatError(f"{md.path}: node {node.name!r} redefines value {node.output!r}")
            self._steps.append((node, self._compile(md, node)))
            defined.add(node.output)
        missing = [v.name for v in cfg.outputs if v.name not in defined]
        if missing:
            raise FormatError(f"{md.path}: graph outputs {missing} are not produced by any node")
        # last use of each value, so intermediate activations are freed as soon as possible
        keep = {v.name for v in cfg.outputs}
        self._last_use: dict[int, list[str]] = {}
        last: dict[str, int] = {}
        for i, (node, _) in enumerate(self._steps):
            for name in node.inputs:
                if name not in self._consts:
                    last[name] = i
        for name, i in last.items():
            if name not in keep:
                self._last_use.setdefault(i, []).append(name)

    # ---- building ---------------------------------------------------------------------------

    def _need(self, node: GraphNode, *fields: str) -> None:
        for f in fields:
            if getattr(node, f) is None:
                raise FormatError(f"node {node.name!r} ({node.op}) has no {f!r}")

    def _geometry(self, node: GraphNode) -> Conv2DGeometry:
        self._need(node, "kernel")
        return Conv2DGeometry(node.kernel[0], node.kernel[1], tuple(node.stride or (1, 1)),
                              tuple(node.dilation or (1, 1)), tuple(node.pads or (0, 0, 0, 0)))

    def _compile(self, md: ModelDir, node: GraphNode) -> Callable:
        op, act = node.op, node.activation
        if op == "conv_2d":
            self._need(node, "weight")
            return self._conv(md, node)
        if op == "depthwise_conv_2d":
            self._need(node, "weight")
            return self._depthwise(md, node)
        if op == "fully_connected":
            self._need(node, "weight")
            lin = Linear(md, node.weight, node.bias)

            def fc(x):
                lead = x.shape[:-1]
                return _activation(act, lin(x.reshape(-1, x.shape[-1])).reshape(*lead, lin.out_features))
            return fc
        if op in ("add", "mul"):
            f = np.add if op == "add" else np.multiply
            return lambda a, b: _activation(act, f(a, b).astype(_F, copy=False))
        if op == "concat":
            self._need(node, "axis")
            return lambda *xs: _activation(act, np.concatenate(xs, axis=node.axis))
        if op == "reshape":
            self._need(node, "shape")
            return lambda x: x.reshape(x.shape[0], *node.shape)
        if op == "transpose":
            self._need(node, "axes")
            return lambda x: np.ascontiguousarray(np.transpose(x, node.axes))
        if op == "pad":
            self._need(node, "pads")
            pairs = list(zip(node.pads[0::2], node.pads[1::2]))
            return lambda x: np.pad(x, pairs)
        if op == "max_pool_2d":
            g = self._geometry(node)
            return lambda x: _activation(act, _window(x, g, -np.inf, np.maximum))
        if op == "avg_pool_2d":
            g = self._geometry(node)
            return lambda x: _activation(act, _avg_pool(x, g))
        if op == "mean":
            self._need(node, "axes")
            return lambda x: np.mean(x, axis=tuple(node.axes), keepdims=node.keepdims, dtype=_F)
        if op == "prelu":
            return lambda x, alpha: np.where(x >= 0, x, x * alpha).astype(_F, copy=False)
        if op == "softmax":
            axis = -1 if node.axis is None else node.axis
            return lambda x: ops.softmax(x * _F(node.beta) if node.beta != 1.0 else x, axis=axis)
        unary = {"relu": lambda x: np.maximum(x, _F(0)), "relu6": lambda x: np.clip(x, _F(0), _F(6)),
                 "logistic": _logistic, "tanh": np.tanh,
                 "hard_swish": lambda x: x * np.clip(x + _F(3), _F(0), _F(6)) / _F(6)}
        return unary[op]

    def _int8_rows(self, md: ModelDir, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A ternary or int8 weight as int8 rows (n, k) with per-row scales; None for a float one."""
        entry = md.manifest.tensor(name)
        n, k = entry.shape
        if entry.format == "ternary2":
            return packing.unpack_ternary_2bit(np.asarray(md.array(name)), k), np.full(n, entry.scale, np.float32)
        if entry.format == "int8":
            return np.asarray(md.array(name)), np.asarray(md.array(entry.scale_tensor), np.float32)
        return None

    def _conv(self, md: ModelDir, node: GraphNode) -> Callable:
        g, act = self._geometry(node), node.activation
        q = self._int8_rows(md, node.weight)
        if q is None:  # float: im2col + BLAS
            lin = Linear(md, node.weight, node.bias)

            def conv(x):
                patches, (n, oh, ow) = im2col(x, g)
                return _activation(act, lin(patches).reshape(n, oh, ow, lin.out_features))
            return conv
        bias = None if node.bias is None else np.asarray(md.array(node.bias), _F)
        cm = ConvMatrix(q[0], q[1], bias)
        lo, hi = _CLAMP.get(act, (-np.inf, np.inf))

        def qconv(x):
            patches, (n, oh, ow) = im2col(x, g)
            y = cm(patches, lo, hi).reshape(n, oh, ow, cm.out_features)
            return np.tanh(y) if act == "tanh" else y
        return qconv

    def _depthwise(self, md: ModelDir, node: GraphNode) -> Callable:
        g = self._geometry(node)
        entry = md.manifest.tensor(node.weight)
        c, taps_n = entry.shape
        if taps_n != g.kh * g.kw:
            raise FormatError(f"node {node.name!r}: weight {entry.shape} does not hold {g.kh}x{g.kw} taps per channel")
        arr = md.array(node.weight)
        wscale = None
        if entry.format == "ternary2":
            q = packing.unpack_ternary_2bit(np.asarray(arr), taps_n)
            wscale = np.full(c, entry.scale, np.float32)
        elif entry.format == "int8":
            q = np.asarray(arr)
            wscale = np.asarray(md.array(entry.scale_tensor), np.float32)
        else:
            q = np.asarray(arr, dtype=_F)
        taps = np.ascontiguousarray(q.T.reshape(g.kh, g.kw, c))
        bias = None if node.bias is None else np.asarray(md.array(node.bias), _F)
        layer = DepthwiseConv2D(g, taps, wscale, bias)
        lo, hi = _CLAMP.get(node.activation, (-np.inf, np.inf))
        mult = node.multiplier

        def dw(x):
            if mult > 1:
                x = np.repeat(x, mult, axis=-1)
            y = layer(x, lo, hi)
            return np.tanh(y) if node.activation == "tanh" else y
        return dw

    # ---- running ----------------------------------------------------------------------------

    def _feed(self, i: int, x) -> np.ndarray:
        spec = self.cfg.inputs[i]
        x = float_input(spec.name, x, ndims=(len(spec.shape) - 1, len(spec.shape)))
        if x.ndim == len(spec.shape) - 1:
            x = x[None]
        want = [d for d in spec.shape[1:]]
        if any(w > 0 and w != got for w, got in zip(want, x.shape[1:])):
            raise ShapeError(spec.name, f"has shape {list(x.shape)}, the model takes [batch, {', '.join(map(str, want))}]")
        return x

    def run(self, inputs: Mapping[str, np.ndarray] | list | tuple,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Inputs by name (or in order) -> every graph output by name, float32; ``outputs`` asks for
        other values (any node's output) instead."""
        specs = self.cfg.inputs
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {s.name for s in specs}
            if unknown:
                raise InputError("inputs", f"unknown inputs {sorted(unknown)}; the model takes {[s.name for s in specs]}")
            if len(inputs) != len(specs):
                raise InputError("inputs", f"the model takes {[s.name for s in specs]}")
            xs = [inputs[s.name] for s in specs]
        else:
            xs = list(inputs)
            if len(xs) != len(specs):
                raise InputError("inputs", f"the model takes {len(specs)} inputs, got {len(xs)}")
        want = [v.name for v in self.cfg.outputs] if outputs is None else list(outputs)
        known = {s.name for s in specs} | {node.output for node, _ in self._steps}
        if set(want) - known:
            raise InputError("outputs", f"no values {sorted(set(want) - known)} in this graph")
        keep = set(want)
        env: dict[str, np.ndarray] = {s.name: self._feed(i, x) for i, (s, x) in enumerate(zip(specs, xs))}
        batch = {v.shape[0] for v in env.values()}
        if len(batch) > 1:
            raise ShapeError("inputs", f"batch sizes differ: {sorted(batch)}")
        for i, (node, fn) in enumerate(self._steps):
            args = [env[n] if n in env else self._consts[n] for n in node.inputs]
            try:
                env[node.output] = fn(*args)
            except (ValueError, IndexError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise ShapeError("inputs", f"node {node.name!r} ({node.op}) failed on shapes "
                                           f"{[list(a.shape) for a in args]}: {exc}") from None
            for name in self._last_use.get(i, ()):
                if name not in keep:
                    env.pop(name, None)
        return {name: np.asarray(env[name], dtype=_F) for name in want}

    def predict(self, x) -> np.ndarray:
        """One input (n, ...) or one sample without the batch -> the first output, float32 (n, ...)."""
        if len(self.cfg.inputs) != 1:
            raise InputError("x", f"the model takes {len(self.cfg.inputs)} inputs: use run()")
        return self.run([x])[self.cfg.outputs[0].name]

    def classify(self, x) -> np.ndarray:
        return np.argmax(self.predict(x), axis=-1)
