"""``graph`` models: TFLite / ONNX import, the depthwise kernel, precision plans, CLI, bundles, agent.

References: the TFLite interpreter (ai-edge-litert) and onnxruntime run the original models, built
here (tests/support/graph_models.py).  Float plans match them within float rounding; int8 / auto plans
within their measured budget.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bitnet_edge.sdk import kernels, load_model
from bitnet_edge.sdk.conv import Conv2DGeometry, DepthwiseConv2D, im2col, same_pads
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.plan import split_calibration
from bitnet_edge.sdk.errors import FormatError, KernelError, ShapeError

pytest.importorskip("ai_edge_litert", reason="the TFLite reference needs ai-edge-litert (pip install -e '.[test]')")
onnx = pytest.importorskip("onnx")

from tests.support.graph_models import (  # noqa: E402
    TflBuilder, onnx_vision_model, run_onnx, run_tflite, sensor_program, tflite_int8_model, tflite_model,
    vision_program,
)
from bitnet_edge.sdk.convert.onnx import read_onnx  # noqa: E402
from bitnet_edge.sdk.convert.tflite import read_tflite  # noqa: E402


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# ---- the depthwise kernel ------------------------------------------------------------------

DW_CASES = [  # (n, h, w, c, k, stride, dilation, padding)
    (1, 1, 1, 1, 1, 1, 1, "valid"), (2, 7, 9, 5, 3, 1, 1, "same"), (1, 16, 16, 130, 3, 2, 1, "same"),
    (3, 5, 6, 8, 5, 1, 2, "same"), (1, 9, 9, 64, 3, 2, 1, "valid"), (1, 4, 4, 3, 5, 1, 1, "same"),
    (2, 11, 7, 65, 3, 3, 2, "same"),
]


def _geometry(h, w, k, s, d, padding) -> Conv2DGeometry:
    pads = (*same_pads(h, k, s, d), *same_pads(w, k, s, d)) if padding == "same" else (0, 0, 0, 0)
    return Conv2DGeometry(k, k, (s, s), (d, d), pads)


@pytest.mark.parametrize("n,h,w,c,k,s,d,padding", DW_CASES)
def test_depthwise_every_backend_bit_exact(rng, n, h, w, c, k, s, d, padding):
    """int8 and float32 depthwise conv: every backend (one portable C kernel) gives the numpy reference's bits."""
    g = _geometry(h, w, k, s, d, padding)
    x = (rng.standard_normal((n, h, w, c)) * rng.uniform(0.1, 10)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    layers = [DepthwiseConv2D(g, rng.integers(-127, 128, (k, k, c)).astype(np.int8),
                              rng.uniform(1e-3, 1, c).astype(np.float32), bias),
              DepthwiseConv2D(g, rng.integers(-1, 2, (k, k, c)).astype(np.int8), np.full(c, 0.3, np.float32)),
              DepthwiseConv2D(g, rng.standard_normal((k, k, c)).astype(np.float32), None, bias)]
    for layer in layers:
        for lo, hi in ((-np.inf, np.inf), (0.0, 6.0)):
            want = layer(x, lo, hi, backend="numpy")  # itself checked by test_depthwise_reference_is_the_convolution
            for be in [b for b in kernels.available_backends() if b != "numpy"]:
                np.testing.assert_array_equal(_bits(layer(x, lo, hi, backend=be)), _bits(want), err_msg=be)


def test_depthwise_reference_is_the_convolution(rng):
    """The reference against a float64 direct convolution (zero padding, stride, dilation, multiplier 1)."""
    n, h, w, c, k, s, d = 2, 9, 8, 7, 3, 2, 2
    g = _geometry(h, w, k, s, d, "same")
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    taps = rng.standard_normal((k, k, c)).astype(np.float32)
    t, b, l, r = g.pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = g.out_size(h, w)
    want = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            for p in range(k):
                for q in range(k):
                    want[:, i, j] += xp[:, i * s + p * d, j * s + q * d] * taps[p, q]
    got = DepthwiseConv2D(g, taps)(x, backend="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_results_do_not_depend_on_threads(rng):
    g = _geometry(24, 24, 3, 1, 1, "same")
    x = rng.standard_normal((2, 24, 24, 96)).astype(np.float32)
    layer = DepthwiseConv2D(g, rng.integers(-127, 128, (3, 3, 96)).astype(np.int8), np.ones(96, np.float32))
    before = kernels.get_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            kernels.set_threads(t)
            outs.append(layer(x))
    finally:
        kernels.set_threads(before)
    for o in outs[1:]:
        np.testing.assert_array_equal(_bits(o), _bits(outs[0]))


def test_depthwise_bad_input():
    from bitnet_edge.sdk.native import _binding as nb

    g = Conv2DGeometry(3, 3)
    layer = DepthwiseConv2D(g, np.zeros((3, 3, 4), np.float32))
    with pytest.raises(ShapeError, match="channels"):
        layer(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ShapeError, match="smaller than"):
        layer(np.zeros((1, 2, 2, 4), np.float32))
    geom = g.native(1, 5, 5, 4)
    geom["stride_h"] = 0
    with pytest.raises(KernelError) as exc:
        nb.dwconv_f32(1, geom, np.zeros((1, 5, 5, 4), np.float32), np.zeros((3, 3, 4), np.float32), None, 0.0, 1.0)
    assert exc.value.status_name == "BNE_ERR_SHAPE"


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (37, 27, 65), (130, 300, 64), (9, 64, 129), (4, 2048, 8)])
def test_conv_gemm_is_the_gemm_bit_for_bit(rng, m, k, n):
    """bne_conv_gemm_f32 (rows over threads, weights transposed) gives the bits of the int8 and
    ternary GEMMs plus bias and clamp, on every backend."""
    from bitnet_edge.sdk.conv import ConvMatrix
    from bitnet_edge.sdk.kernels import Int8Matrix, TernaryMatrix

    x = rng.standard_normal((m, k)).astype(np.float32)
    x[x < -0.5] = 0  # rows with zeros, as after a ReLU
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    i8, tm = Int8Matrix.from_float(w), TernaryMatrix.from_float(w)
    for cm, gemm in ((ConvMatrix(i8.weights, i8.scales, b), i8),
                     (ConvMatrix(tm.ternary(), np.full(n, tm.scale, np.float32), b), tm)):
        want = np.minimum(np.maximum(gemm.linear(x, backend="numpy") + b, np.float32(0)), np.float32(6))
        for be in kernels.available_backends():
            np.testing.assert_array_equal(_bits(cm(x, 0.0, 6.0, backend=be)), _bits(want), err_msg=be)
            np.testing.assert_array_equal(_bits(cm(x, backend=be)), _bits(gemm.linear(x, backend=be) + b), err_msg=be)


def test_im2col_matches_the_window(rng):
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    g = Conv2DGeometry(3, 2, (2, 1), (1, 2), (1, 1, 0, 2))
    cols, (n, oh, ow) = im2col(x, g)
    assert cols.shape == (n * oh * ow, 3 * 2 * 3) and (oh, ow) == g.out_size(6, 5)
    xp = np.pad(x, ((0, 0), (1, 1), (0, 2), (0, 0)))
    np.testing.assert_array_equal(cols.reshape(n, oh, ow, 3, 2, 3)[1, 2, 3, 2, 1], xp[1, 2 * 2 + 2, 3 + 2])


# ---- TFLite ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tfl(tmp_path_factory):
    """Float and int8 TFLite models on disk, with calibration / test inputs."""
    d = tmp_path_factory.mktemp("tflite")
    rng = np.random.default_rng(5)
    out = {}
    for name, prog, shape in (("vision", vision_program, (16, 16, 3)), ("sensor", sensor_program, (8, 6))):
        calib = rng.standard_normal((16, *shape)).astype(np.float32)
        x = rng.standard_normal((6, *shape)).astype(np.float32)
        for kind, content in (("float", tflite_model(prog)), ("int8", tflite_int8_model(prog, calib))):
            path = d / f"{name}-{kind}.tflite"
            path.write_bytes(content)
            out[name, kind] = (path, content, calib, x)
    return out


@pytest.mark.parametrize("name", ["vision", "sensor"])
def test_tflite_float_plan_matches_the_interpreter(tfl, tmp_path, name):
    path, content, _, x = tfl[name, "float"]
    m = load_model(convert(read_tflite(path), tmp_path / "m", precision="f32"))
    want = run_tflite(content, x)
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.predict(x[0]), want[:1], rtol=1e-5, atol=1e-5)  # one sample, no batch dim
    for precision, cos in (("int8", 0.999), ("ternary", 0.8)):
        q = load_model(convert(read_tflite(path), tmp_path / precision, precision=precision))
        assert _cos(q.predict(x), want) > cos, precision


@pytest.mark.parametrize("name", ["vision", "sensor"])
def test_tflite_int8_model(tfl, tmp_path, name):
    """A fully int8 TFLite model: its int8 weights are kept as they are, and the graph runs in float."""
    path, content, calib, x = tfl[name, "int8"]
    imported = read_tflite(path)
    assert imported.source.details["quantized"] == "True"
    weights = [n.weight for n in imported.config.nodes if n.weight]
    assert weights and all(imported.tensors[w].kind == "int8" for w in weights)
    want = run_tflite(content, x)  # TFLite's own int8 arithmetic
    for precision in ("f32", "int8"):
        md = convert(imported, tmp_path / precision, precision=precision)
        got = load_model(md).predict(x)
        assert _cos(got, want) > 0.995, precision
        np.testing.assert_allclose(got, want, atol=0.08)  # TFLite's int8 activations vs our float / per-row int8
    from bitnet_edge.sdk.modeldir import open_model_dir

    stored = open_model_dir(tmp_path / "int8").array(weights[0])
    np.testing.assert_array_equal(stored, imported.tensors[weights[0]].data)


def test_tflite_auto_plan_within_budget(tfl, tmp_path):
    path, content, calib, _ = tfl["vision", "float"]
    md = convert(read_tflite(path), tmp_path / "auto", precision="auto", calibration=calib, budget=0.99)
    m = load_model(md)
    man = m.manifest
    assert set(man.precision) == {n.weight for n in man.config.nodes if n.weight}
    assert set(man.precision.values()) <= {"ternary", "int8", "f16"} and "ternary" in man.precision.values()
    assert man.calibration["cosine"] >= 0.99 and man.calibration["budget"] == 0.99
    assert _cos(m.predict(calib), run_tflite(content, calib)) >= 0.99
    # the budget is measured on the logits (the final softmax's input), not on the probabilities
    logits = next(n.inputs[0] for n in man.config.nodes if n.op == "softmax")
    ref = load_model(convert(read_tflite(path), tmp_path / "f32", precision="f32"))
    fit, held = split_calibration(calib)
    q = man.quality
    assert (q.calibration_samples, q.held_out_samples) == (len(fit), len(held)) == (13, 3)
    assert [o.name for o in q.outputs] == [logits] and q.budget == 0.99
    for part, want in ((fit, q.outputs[0].calibration_cosine), (held, q.outputs[0].held_out_cosine)):
        got = _cos(m.run([part], outputs=[logits])[logits], ref.run([part], outputs=[logits])[logits])
        assert got == pytest.approx(want, abs=1e-5)
    assert man.calibration["cosine"] == q.calibration_min_cosine and not q.below_budget


def test_tflite_unsupported_op_names_the_op_and_node(tmp_path):
    b = TflBuilder()
    x = b.input("x", [1, 4])
    y = b.custom_op("my_subtract", x, 41)  # SUB
    b.output(y)
    p = tmp_path / "sub.tflite"
    p.write_bytes(b.build())
    with pytest.raises(FormatError, match=r"operator SUB \(node 'my_subtract'\) is not supported"):
        read_tflite(p)


def test_tflite_bad_files(tmp_path):
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="not a TFLite flatbuffer"):
        read_tflite(p)
    good = tflite_model(sensor_program)
    p.write_bytes(good[: len(good) // 3])
    with pytest.raises(FormatError):
        read_tflite(p)
    with pytest.raises(FormatError, match="no such file"):
        read_tflite(tmp_path / "missing.tflite")


# ---- ONNX -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("onnx")
    model = onnx_vision_model()
    onnx.checker.check_model(model)
    path = d / "vision.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(9)
    return path, model, rng.standard_normal((16, 3, 16, 16)).astype(np.float32), \
        rng.standard_normal((5, 3, 16, 16)).astype(np.float32)


def test_onnx_float_plan_matches_onnxruntime(onnx_model, tmp_path):
    path, model, _, x = onnx_model
    m = load_model(convert(read_onnx(path), tmp_path / "m", precision="f32"))
    assert m.cfg.inputs[0].shape == [1, 3, 16, 16]  # the ONNX interface (NCHW) is kept
    np.testing.assert_allclose(m.predict(x), run_onnx(model, x), rtol=1e-5, atol=1e-5)


def test_onnx_auto_plan_within_budget(onnx_model, tmp_path):
    path, model, calib, _ = onnx_model
    m = load_model(convert(read_onnx(path), tmp_path / "auto", precision="auto", calibration=calib, budget=0.995))
    assert m.manifest.calibration["cosine"] >= 0.995
    assert _cos(m.predict(calib), run_onnx(model, calib)) >= 0.995


def test_onnx_unsupported_op_names_the_op_and_node(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="act"),
                           helper.make_node("Erf", ["r"], ["y"], name="the_erf")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    p = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    with pytest.raises(FormatError, match=r"operator Erf \(node 'the_erf'\) is not supported"):
        read_onnx(p)
    p.write_bytes(b"not a protobuf at all")
    with pytest.raises(FormatError, match="not a readable ONNX model"):
        read_onnx(p)


# ---- CLI, bundles, agent ------------------------------------------------------------------------

def test_cli_convert_and_predict(tfl, tmp_path):
    path, content, calib, x = tfl["sensor", "float"]
    np.save(tmp_path / "calib.npy", calib)
    np.save(tmp_path / "x.npy", x)
    run = lambda *a: subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    res = run("convert", path, "-o", tmp_path / "m", "--precision", "auto", "--calibration", tmp_path / "calib.npy",
              "--budget", "0.99", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["architecture"] == "graph" and summary["calibration"]["cosine"] >= 0.99
    res = run("predict", tmp_path / "m", "--input", tmp_path / "x.npy", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["classes"] == run_tflite(content, x).argmax(1).tolist() or _cos(np.array(out["logits"]),
                                                                               run_tflite(content, x)) > 0.99


def test_bundle_and_agent_serve_a_graph_model(tfl, tmp_path):
    """A graph model goes through a signed bundle (golden vectors use predict), installs with a
    passing health gate, and /v1/infer serves NHWC images."""
    from bitnet_edge.agent.config import load_config
    from bitnet_edge.agent.daemon import Agent
    from bitnet_edge.agent.httpbase import UnixHTTPConnection
    from bitnet_edge.packagers.builder import PackageOptions, package_model
    from bitnet_edge.packagers.keys import generate_keypair, load_private_key
    from bitnet_edge.sdk.native.targets import host_target
    from tests.support.bundle_models import built_library
    from tests.support.agent_fixtures import HOST_DEVICE, write_config

    path, _, calib, x = tfl["vision", "float"]
    md = convert(read_tflite(path), tmp_path / "model", precision="auto", calibration=calib)
    generate_keypair(tmp_path / "keys", "release")
    key = load_private_key(tmp_path / "keys" / "release.key")
    opts = PackageOptions(libraries={host_target(): built_library(host_target())})
    bundle = package_model(md, [HOST_DEVICE], "1.0.0", [key], tmp_path / "dist", release=1, options=opts)[0].path
    agent = Agent(load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [tmp_path / "keys" / "release.pub"])))
    try:
        out = agent.install_file(bundle)
        assert out.result == "installed", out
        assert agent.reported_state().health == "ok"
        worker = agent.acquire_worker()
        try:
            conn = UnixHTTPConnection(worker.socket, timeout=60)
            conn.request("POST", "/v1/infer", body=json.dumps({"inputs": x[:2].tolist()}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            conn.close()
        finally:
            agent.release_worker(worker)
        assert resp.status == 200, body
        np.testing.assert_allclose(np.array(body["outputs"], np.float32), load_model(md).predict(x[:2]), atol=1e-6)
        assert body["classes"] == np.array(body["outputs"]).argmax(1).tolist()
    finally:
        agent.shutdown()
