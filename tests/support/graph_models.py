"""Small TFLite and ONNX models built in the test suite (no downloads).

TFLite: flatbuffers written with the schema's generated classes that ai-edge-litert ships
(``ai_edge_litert.schema_py_generated``).  The same layer program builds a float model and an
int8-quantized one: the int8 build takes activation ranges measured by running the float model in
the TFLite interpreter (``experimental_preserve_all_tensors``), per-channel symmetric int8
weights, int32 biases, QUANTIZE at the input and DEQUANTIZE at the output, as the TFLite converter
lays them out.  ONNX: ``onnx.helper``.
"""

from __future__ import annotations

import warnings

import flatbuffers
import numpy as np

F32, F16, I32, I8 = 0, 1, 2, 9
_NP = {F32: np.float32, F16: np.float16, I32: np.int32, I8: np.int8}
SAME, VALID = 0, 1
NONE, RELU, RELU6 = 0, 1, 3


def _schema():
    from ai_edge_litert import schema_py_generated as S

    return S


class TflBuilder:
    """Layers on NHWC tensors; ``ranges`` (tensor name -> (lo, hi)) switches to an int8 build."""

    def __init__(self, ranges: dict[str, tuple[float, float]] | None = None, seed: int = 0):
        self.S = _schema()
        self.rng = np.random.default_rng(seed)
        self.q = ranges
        self.tensors, self.buffers, self.ops, self.codes = [], [self.S.BufferT()], [], {}
        self.meta: dict[int, tuple] = {}  # tensor index -> (name, shape, scale, zp)

    # ---- tensors ---------------------------------------------------------------------------

    def _tensor(self, name, shape, ttype, data=None, scale=None, zp=None, qdim=0) -> int:
        S = self.S
        t = S.TensorT()
        t.name, t.shape, t.type = name, list(shape), ttype
        t.buffer = 0
        if data is not None:
            b = S.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, _NP[ttype]).tobytes(), np.uint8).copy()
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            qp = S.QuantizationParametersT()
            qp.scale = [float(s) for s in np.atleast_1d(scale)]
            qp.zeroPoint = [int(z) for z in np.atleast_1d(zp)]
            qp.quantizedDimension = qdim
            t.quantization = qp
        self.tensors.append(t)
        self.meta[len(self.tensors) - 1] = (name, list(shape), scale, zp)
        return len(self.tensors) - 1

    def _qparams(self, name, fixed=None, like=None):
        if like is not None:
            return self.meta[like][2], self.meta[like][3]
        if fixed is not None:
            return fixed
        lo, hi = self.q[name]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-6) / 255.0
        return scale, int(np.clip(np.round(-128 - lo / scale), -128, 127))

    def act(self, name, shape, fixed=None, like=None) -> int:
        if self.q is None:
            return self._tensor(name, shape, F32)
        s, z = self._qparams(name, fixed, like)
        return self._tensor(name, shape, I8, scale=s, zp=z)

    def input(self, name, shape) -> int:
        self.graph_input = self._tensor(name, shape, F32)
        if self.q is None:
            return self.graph_input
        s, z = self._qparams(name)
        out = self._tensor(name + "/quant", shape, I8, scale=s, zp=z)
        self._op(114, [self.graph_input], [out])
        return out

    def output(self, x) -> int:
        if self.q is None:
            self.graph_output = x
            return x
        name, shape = self.meta[x][:2]
        self.graph_output = self._tensor(name + "/dequant", shape, F32)
        self._op(6, [x], [self.graph_output])
        return self.graph_output

    def const(self, name, value) -> int:
        """A constant activation operand (ADD / MUL / PRELU): float, or int8 with its own scale."""
        value = np.asarray(value, np.float32)
        if self.q is None:
            return self._tensor(name, value.shape, F32, value)
        lo, hi = min(float(value.min()), 0.0), max(float(value.max()), 0.0)
        scale = max(hi - lo, 1e-6) / 255.0
        zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
        q = np.clip(np.round(value / scale) + zp, -128, 127).astype(np.int8)
        return self._tensor(name, value.shape, I8, q, scale, zp)

    def _weights(self, name, w, qdim, in_scale=None, f16=False):
        """Float weights (or float16 + DEQUANTIZE), or per-channel symmetric int8."""
        if self.q is None:
            if f16:
                t16 = self._tensor(name + "/f16", w.shape, F16, w.astype(np.float16))
                out = self._tensor(name, w.shape, F32)
                self._op(6, [t16], [out])
                return out
            return self._tensor(name, w.shape, F32, w)
        axes = tuple(a for a in range(w.ndim) if a != qdim)
        s = np.maximum(np.abs(w).max(axis=axes), 1e-8) / 127.0
        shape = [1] * w.ndim
        shape[qdim] = -1
        q = np.clip(np.round(w / s.reshape(shape)), -127, 127).astype(np.int8)
        return self._tensor(name, w.shape, I8, q, s.astype(np.float32), np.zeros(len(s), np.int64), qdim)

    def _bias(self, name, b, in_tensor, w_tensor):
        if self.q is None:
            return self._tensor(name, b.shape, F32, b)
        s = float(self.meta[in_tensor][2]) * np.asarray(self.tensors[w_tensor].quantization.scale, np.float64)
        q = np.round(b / s).astype(np.int32)
        return self._tensor(name, b.shape, I32, q, s.astype(np.float32), np.zeros(len(s), np.int64))

    # ---- operators -------------------------------------------------------------------------

    def _op(self, code, inputs, outputs, opt_type=0, options=None):
        S = self.S
        if code not in self.codes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.codes[code] = (len(self.codes), oc)
        op = S.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.codes[code][0], list(inputs), list(outputs)
        op.builtinOptionsType, op.builtinOptions = opt_type, options
        self.ops.append(op)

    def conv(self, name, x, cout, k, stride=1, padding=SAME, act=NONE, f16=False):
        S = self.S
        n, h, w, cin = self.meta[x][1]
        wt = (self.rng.standard_normal((cout, k, k, cin)) * (2.0 / (k * k * cin)) ** 0.5).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        oh, ow = _out(h, k, stride, padding), _out(w, k, stride, padding)
        wi = self._weights(name + "/w", wt, 0, f16=f16)
        bi = self._bias(name + "/b", b, x, wi)
        y = self.act(name, [n, oh, ow, cout])
        o = S.Conv2DOptionsT()
        o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, stride, stride, act
        o.dilationWFactor = o.dilationHFactor = 1
        self._op(3, [x, wi, bi], [y], S.BuiltinOptions.Conv2DOptions, o)
        return y

    def dwconv(self, name, x, k, stride=1, padding=SAME, act=NONE, mult=1):
        S = self.S
        n, h, w, c = self.meta[x][1]
        wt = (self.rng.standard_normal((1, k, k, c * mult)) * (1.0 / k)).astype(np.float32)
        b = (self.rng.standard_normal(c * mult) * 0.1).astype(np.float32)
        oh, ow = _out(h, k, stride, padding), _out(w, k, stride, padding)
        wi = self._weights(name + "/w", wt, 3)
        bi = self._bias(name + "/b", b, x, wi)
        y = self.act(name, [n, oh, ow, c * mult])
        o = S.DepthwiseConv2DOptionsT()
        o.padding, o.strideW, o.strideH, o.depthMultiplier, o.fusedActivationFunction = padding, stride, stride, mult, act
        o.dilationWFactor = o.dilationHFactor = 1
        self._op(4, [x, wi, bi], [y], S.BuiltinOptions.DepthwiseConv2DOptions, o)
        return y

    def fc(self, name, x, nout, act=NONE, f16=False):
        S = self.S
        shape = self.meta[x][1]
        nin = shape[-1]
        wt = (self.rng.standard_normal((nout, nin)) * (2.0 / nin) ** 0.5).astype(np.float32)
        b = (self.rng.standard_normal(nout) * 0.1).astype(np.float32)
        wi = self._weights(name + "/w", wt, 0, f16=f16)
        bi = self._bias(name + "/b", b, x, wi)
        y = self.act(name, [*shape[:-1], nout])
        o = S.FullyConnectedOptionsT()
        o.fusedActivationFunction = act
        self._op(9, [x, wi, bi], [y], S.BuiltinOptions.FullyConnectedOptions, o)
        return y

    def binary(self, name, code, a, b, act=NONE):
        S = self.S
        shape = list(np.broadcast_shapes(tuple(self.meta[a][1]), tuple(self.meta[b][1])))
        y = self.act(name, shape)
        o = S.AddOptionsT() if code == 0 else S.MulOptionsT()
        o.fusedActivationFunction = act
        self._op(code, [a, b], [y], S.BuiltinOptions.AddOptions if code == 0 else S.BuiltinOptions.MulOptions, o)
        return y

    def unary(self, name, code, x):
        fixed = {14: (1 / 256, -128), 28: (1 / 128, 0)}.get(code)
        y = self.act(name, self.meta[x][1], fixed=fixed)
        self._op(code, [x], [y])
        return y

    def prelu(self, name, x, alpha):
        a = self.const(name + "/alpha", alpha)
        y = self.act(name, self.meta[x][1])
        self._op(54, [x, a], [y])
        return y

    def pool(self, name, x, code, k, stride, padding=SAME):
        S = self.S
        n, h, w, c = self.meta[x][1]
        y = self.act(name, [n, _out(h, k, stride, padding), _out(w, k, stride, padding), c], like=x)
        o = S.Pool2DOptionsT()
        o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = padding, stride, stride, k, k
        o.fusedActivationFunction = NONE
        self._op(code, [x], [y], S.BuiltinOptions.Pool2DOptions, o)
        return y

    def pad(self, name, x, pads):
        shape = [d + a + b for d, (a, b) in zip(self.meta[x][1], pads)]
        p = self._tensor(name + "/paddings", [len(pads), 2], I32, np.asarray(pads, np.int32))
        y = self.act(name, shape, like=x)
        self._op(34, [x, p], [y])
        return y

    def concat(self, name, xs, axis):
        S = self.S
        shape = list(self.meta[xs[0]][1])
        shape[axis] = sum(self.meta[x][1][axis] for x in xs)
        y = self.act(name, shape)
        o = S.ConcatenationOptionsT()
        o.axis, o.fusedActivationFunction = axis, NONE
        self._op(2, list(xs), [y], S.BuiltinOptions.ConcatenationOptions, o)
        return y

    def mean(self, name, x, axes, keep=False):
        S = self.S
        shape = [d for i, d in enumerate(self.meta[x][1]) if i not in axes or keep]
        if keep:
            shape = [1 if i in axes else d for i, d in enumerate(self.meta[x][1])]
        a = self._tensor(name + "/axes", [len(axes)], I32, np.asarray(axes, np.int32))
        y = self.act(name, shape)
        o = S.ReducerOptionsT()
        o.keepDims = keep
        self._op(40, [x, a], [y], S.BuiltinOptions.ReducerOptions, o)
        return y

    def reshape(self, name, x, shape):
        S = self.S
        s = self._tensor(name + "/shape", [len(shape)], I32, np.asarray(shape, np.int32))
        y = self.act(name, shape, like=x)
        o = S.ReshapeOptionsT()
        o.newShape = list(shape)
        self._op(22, [x, s], [y], S.BuiltinOptions.ReshapeOptions, o)
        return y

    def softmax(self, name, x, beta=1.0):
        S = self.S
        y = self.act(name, self.meta[x][1], fixed=(1 / 256, -128))
        o = S.SoftmaxOptionsT()
        o.beta = beta
        self._op(25, [x], [y], S.BuiltinOptions.SoftmaxOptions, o)
        return y

    def custom_op(self, name, x, code):
        y = self.act(name, self.meta[x][1])
        self._op(code, [x], [y])
        return y

    # ---- file ------------------------------------------------------------------------------

    def build(self) -> bytes:
        S = self.S
        sg = S.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators = self.tensors, [self.graph_input], [self.graph_output], self.ops
        sg.name = "main"
        m = S.ModelT()
        m.version, m.subgraphs, m.buffers, m.description = 3, [sg], self.buffers, "bitnet-edge test model"
        m.operatorCodes = [oc for _, oc in sorted(self.codes.values(), key=lambda t: t[0])]
        b = flatbuffers.Builder(4096)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _out(size, k, stride, padding):
    return -(-size // stride) if padding == SAME else (size - k) // stride + 1


# ---- the test models -------------------------------------------------------------------------

def vision_program(b: TflBuilder, size: int = 16, int8: bool = False):
    """conv/depthwise/pool/concat/mean/fc network over every op of the issue that int8 TFLite runs."""
    rng = np.random.default_rng(7)
    x = b.input("image", [1, size, size, 3])
    x = b.conv("stem", x, 16, 3, stride=2, act=RELU6)
    x = b.dwconv("dw1", x, 3, act=RELU)
    x = b.conv("pw1", x, 24, 1)
    x = b.unary("hswish", 117, x)
    x = b.pad("pad", x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    x = b.dwconv("dw2", x, 3, stride=2, padding=VALID, mult=2)
    x = b.binary("scale", 18, x, b.const("scale/c", rng.uniform(0.5, 1.5, 48)))
    y = b.conv("pw2", x, 48, 1)
    x = b.binary("residual", 0, x, y, act=RELU)
    m = b.pool("maxpool", x, 17, 2, 2)
    a = b.pool("avgpool", x, 1, 3, 2)
    x = b.concat("concat", [m, a], 3)
    x = b.mean("gap", x, [1, 2])
    x = b.fc("fc1", x, 32, act=RELU, f16=not int8)
    if not int8:
        x = b.prelu("prelu", x, rng.uniform(0.05, 0.3, 32))
        x = b.unary("tanh", 28, x)
    x = b.fc("logits", x, 10)
    x = b.softmax("probs", x)
    return b.output(x)


def sensor_program(b: TflBuilder, int8: bool = False):
    """A 1-D sensor classifier: (time, channels) -> reshape -> fully connected layers."""
    x = b.input("window", [1, 8, 6])
    x = b.reshape("flat", x, [1, 48])
    x = b.fc("fc1", x, 64, act=RELU)
    x = b.unary("sig", 14, x)
    x = b.fc("fc2", x, 32)
    x = b.unary("relu6", 21, x)
    x = b.unary("relu", 19, x)
    x = b.fc("fc3", x, 5)
    return b.output(b.softmax("probs", x, beta=0.5))


def tflite_model(program, ranges=None, **kw) -> bytes:
    b = TflBuilder(ranges)
    program(b, **kw)
    return b.build()


def tflite_int8_model(program, calib: np.ndarray, **kw) -> bytes:
    """Quantize ``program`` with activation ranges from the float model on ``calib``."""
    from bitnet_edge.sdk.convert.tflite import load_interpreter

    float_model = tflite_model(program, int8=True, **kw)  # the same layers, float
    cls = type(load_interpreter(model_content=float_model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors is "for debugging": measuring ranges is that
        it = cls(model_content=float_model, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    ranges: dict[str, list[float]] = {}
    details = it.get_tensor_details()
    inp = it.get_input_details()[0]["index"]
    for x in calib:
        it.set_tensor(inp, x[None].astype(np.float32))
        it.invoke()
        for d in details:
            try:
                v = it.get_tensor(d["index"])
            except ValueError:
                continue
            if v.dtype != np.float32 or v.size == 0:
                continue
            lo, hi = ranges.get(d["name"], [np.inf, -np.inf])
            ranges[d["name"]] = [min(lo, float(v.min())), max(hi, float(v.max()))]
    return tflite_model(program, ranges={k: tuple(v) for k, v in ranges.items()}, int8=True, **kw)


def run_tflite(content: bytes, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """The TFLite interpreter on a batch (one invoke per sample); quantized I/O is handled."""
    from bitnet_edge.sdk.convert.tflite import load_interpreter

    it = load_interpreter(model_content=content, num_threads=threads)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for sample in x:
        v = sample[None]
        if i["dtype"] != np.float32:
            s, z = i["quantization"]
            v = np.clip(np.round(v / s) + z, -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], v.astype(i["dtype"]))
        it.invoke()
        y = it.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            s, z = o["quantization"]
            y = (y.astype(np.float32) - z) * s
        outs.append(y[0])
    return np.stack(outs).astype(np.float32)


# ---- ONNX ------------------------------------------------------------------------------------

def onnx_vision_model(size: int = 16, seed: int = 0, opset: int = 17):
    """NCHW conv net over the ONNX ops the importer maps (Conv incl. depthwise, Gemm, MatMul, ...)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def w(*shape, scale=None):
        fan = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * (scale or (2.0 / fan) ** 0.5)).astype(np.float32)

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    x = node("Conv", ["input", init("c1.w", w(16, 3, 3, 3)), init("c1.b", w(16, scale=0.1))], "c1",
             strides=[2, 2], pads=[1, 1, 1, 1])
    x = node("Clip", [x, init("zero", np.float32(0)), init("six", np.float32(6))], "c1.relu6")
    x = node("Conv", [x, init("dw.w", w(16, 1, 3, 3, scale=0.3)), init("dw.b", w(16, scale=0.1))], "dw",
             group=16, pads=[1, 1, 1, 1])
    x = node("Relu", [x], "dw.relu")
    pw = node("Cast", [init("pw.w16", w(24, 16, 1, 1).astype(np.float16))], "pw.w", to=TensorProto.FLOAT)
    x = node("Conv", [x, pw], "pw")  # float16 weights through a Cast, no bias
    x = node("HardSwish", [x], "pw.hswish")
    x = node("Mul", [x, init("chscale", rng.uniform(0.5, 1.5, (24, 1, 1)).astype(np.float32))], "chscale.mul")
    x = node("Pad", [x, init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "pad")
    x = node("Conv", [x, init("dw2.w", w(48, 1, 3, 3, scale=0.3))], "dw2", group=24, strides=[2, 2])
    y = node("Conv", [x, init("pw2.w", w(48, 48, 1, 1))], "pw2", auto_pad="SAME_UPPER")
    x = node("Add", [x, y], "residual")
    x = node("PRelu", [x, init("slope", rng.uniform(0.05, 0.3, (48, 1, 1)).astype(np.float32))], "prelu")
    m = node("MaxPool", [x], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    a = node("AveragePool", [x], "avgpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = node("Concat", [m, a], "concat", axis=1)
    g = node("GlobalAveragePool", [x], "gap")
    f = node("Flatten", [g], "flat")
    r = node("ReduceMean", [x], "rmean", axes=[2, 3], keepdims=0)
    x = node("Add", [f, r], "sum")
    x = node("Gemm", [x, init("fc1.w", w(32, 96)), init("fc1.b", w(32, scale=0.1))], "fc1", transB=1)
    x = node("Sigmoid", [x], "sig")
    x = node("MatMul", [x, init("fc2.w", w(16, 32).T.copy())], "fc2")
    x = node("Tanh", [x], "tanh")
    x = node("Gemm", [x, init("fc3.w", w(10, 16).T.copy()), init("fc3.b", w(10, scale=0.1))], "fc3")
    node("Softmax", [x], "probs", axis=-1)
    graph = helper.make_graph(nodes, "vision", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_onnx(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: s[None].astype(np.float32)})[0] for s in x]).astype(np.float32)
