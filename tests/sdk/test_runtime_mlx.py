"""The ``mlx`` device (docs/adr/0006-mlx-backend.md) against the numpy reference, on MLX's CPU backend.

Exact (``array_equal``): every ternary and int8 product, and so every output of a model whose linear
layers are ternary/int8 (the epilogue and the glue are the CPU path's float32 code).  Float (f16/f32)
linear layers are float32 matmuls in MLX: within the ADR's tolerance.  Without mlx these tests skip,
except under CI=true, where the test extra installs mlx[cpu] and a missing mlx is a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.tools import IN_CI

from bitnet_edge.sdk import kernels, load_model, mlx_backend, packing, reference
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import _bert_expected, _decoder_expected
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
from bitnet_edge.sdk.errors import BackendError
from bitnet_edge.sdk.manifest import DecoderConfig, EncoderConfig, MlpConfig, SourceInfo
from bitnet_edge.sdk.models import device as devmod

PROMPT = [1, 17, 250, 33, 7, 100, 101, 102, 3, 11, 12, 9]
#: float (f16/f32) layers: |mlx - numpy| <= ATOL_REL * max|numpy| + RTOL * |numpy| on model outputs (ADR 0006)
RTOL, ATOL_REL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def mx():
    if not mlx_backend.available():
        msg = f"mlx does not import ({mlx_backend.import_error()}); install it with: pip install 'bitnet-edge[mlx]'"
        if IN_CI:
            pytest.fail(msg + " (CI=true: the test extra installs mlx[cpu])")
        pytest.skip(msg)
    return mlx_backend._mx()


# ---- the integer part ------------------------------------------------------------------------------

def test_compute_layout_is_an_mlx_2bit_matrix_in_block_order(mx, rng):
    """MLX dequantizes our 2-bit bytes (scale 1, bias -1) to exactly the weights, in permuted order."""
    q = rng.integers(-1, 2, (5, 300)).astype(np.int8)
    packed = packing.pack_ternary_2bit(q)  # (5, 96): 3 blocks
    ones = mx.ones((5, 3), dtype=mx.float16)
    deq = np.array(mx.dequantize(mx.array(packed.view("<u4")), ones, -ones, group_size=128, bits=2))
    padded = np.zeros((5, 384), np.float32)
    padded[:, :300] = q
    assert np.array_equal(deq, mlx_backend.permute_blocks(padded, 384))
    # element 4j + s of a block is weight j + 32s
    assert deq[0, 4 * 3 + 2] == q[0, 3 + 64] and deq[1, 128 + 4 * 31 + 3] == q[1, 128 + 31 + 96]


@pytest.mark.parametrize("n,k,m", [(7, 5, 1), (33, 130, 3), (64, 384, 9), (3, 2560, 2)])
def test_ternary_products_are_exact(mx, rng, n, k, m):
    q = rng.integers(-1, 2, (n, k)).astype(np.int8)
    t = kernels.TernaryMatrix.from_ternary(q, 0.37)
    w = mlx_backend.from_matrix(t)
    xq = rng.integers(-128, 128, (m, k)).astype(np.int8)
    xq[0, :] = -128  # the extremes
    assert np.array_equal(w.matmul_int8(xq), reference.int_matmul(q, xq))
    assert np.array_equal(w.matmul_int8(xq[0]), reference.int_matmul(q, xq[:1])[0])
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    assert np.array_equal(w.linear(x), reference.ternary_linear(q, t.scale, x))
    assert np.array_equal(w.linear(x[0]), t.linear(x[0], backend="numpy"))
    got = mlx_backend.linear_many([w, w], x, kernels.quantize_activations(x, backend="numpy"))
    assert all(np.array_equal(g, reference.ternary_linear(q, t.scale, x)) for g in got)


@pytest.mark.parametrize("n,k,m", [(9, 5, 2), (40, 200, 4), (6, 2560, 3)])
def test_int8_products_are_exact(mx, rng, n, k, m):
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wq[0] = -127
    wq[1] = 127
    scales = (rng.random(n) + 0.05).astype(np.float32)
    w = mlx_backend.from_matrix(kernels.Int8Matrix(wq, scales))
    xq = rng.integers(-128, 128, (m, k)).astype(np.int8)
    xq[0] = -128
    assert np.array_equal(w.matmul_int8(xq), reference.int_matmul(wq, xq))
    x = rng.standard_normal((m, k)).astype(np.float32)
    assert np.array_equal(w.linear(x), reference.int8_linear(wq, scales, x))


def test_long_rows_are_cut_into_exact_chunks(mx):
    """Past K_EXACT inputs a float32 sum could round: the chunks' exact results add up in int32.
    Worst case magnitudes: 128 * 127 * 8833 = 1.4e8 and 128 * 65667 = 8.4e6 (> 2^24 as codes * x)."""
    k8 = mlx_backend.K_EXACT[4] + 129
    wq = np.full((2, k8), -127, np.int8)
    wq[1, ::2] = 127
    xq = np.full((2, k8), -128, np.int8)
    w = mlx_backend.MlxInt8Matrix(wq, np.ones(2, np.float32))
    assert len(w._chunks) == 2
    assert np.array_equal(w.matmul_int8(xq), reference.int_matmul(wq, xq))
    assert w.matmul_int8(xq)[0, 0] == 128 * 127 * k8
    k2 = mlx_backend.K_EXACT[2] + 131
    q = np.ones((2, k2), np.int8)
    q[1, 1::3] = -1
    t = mlx_backend.MlxTernaryMatrix(packing.pack_ternary_2bit(q), k2, 1.0)
    assert len(t._chunks) == 2
    xq2 = np.full((1, k2), -128, np.int8)
    assert np.array_equal(t.matmul_int8(xq2), reference.int_matmul(q, xq2))


def test_float_layers_are_close(mx, rng):
    wf = rng.standard_normal((48, 200)).astype(np.float32)
    x = rng.standard_normal((5, 200)).astype(np.float32)
    got, want = mlx_backend.from_matrix(wf).linear(x), x @ wf.T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_bad_inputs_are_the_cpu_paths_errors(mx, rng):
    from bitnet_edge.sdk.errors import DTypeError, NonFiniteError, ShapeError

    w = mlx_backend.from_matrix(kernels.TernaryMatrix.from_float(rng.standard_normal((4, 64))))
    with pytest.raises(ShapeError):
        w.linear(np.zeros((2, 63), np.float32))
    with pytest.raises(NonFiniteError):
        w.linear(np.full((1, 64), np.nan, np.float32))
    with pytest.raises(DTypeError):
        w.matmul_int8(np.zeros((1, 64), np.int16))


# ---- models: every architecture ----------------------------------------------------------------------

def _floats(shapes: dict, rng, norm_like=("norm", "LayerNorm")) -> dict[str, ImportedTensor]:
    out = {}
    for name, shape in shapes.items():
        if any(s in name for s in norm_like) and name.endswith("weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 2:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:
            a = 0.1 * rng.standard_normal(shape)
        out[name] = ImportedTensor("float", a.astype(np.float32))
    return out


def _decoder(rng, bitnet: bool) -> ImportedModel:
    cfg = DecoderConfig(vocab_size=300, hidden_size=160, intermediate_size=224, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=40, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="relu2" if bitnet else "silu",
                        sub_norms=bitnet, tie_word_embeddings=not bitnet, eos_token_ids=[])
    t = _floats(_decoder_expected(cfg), rng)
    t["model.embed_tokens.weight"].data *= 10.0
    return ImportedModel("dec", cfg, t, SourceInfo(kind="synthetic", path="tests/sdk/test_runtime_mlx.py"))


def _bert(rng) -> ImportedModel:
    cfg = EncoderConfig(vocab_size=400, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2,
                        layer_norm_eps=1e-12, hidden_act="gelu")
    return ImportedModel("bert", cfg, _floats(_bert_expected(cfg), rng),
                         SourceInfo(kind="synthetic", path="tests/sdk/test_runtime_mlx.py"))


def _mlp(rng) -> ImportedModel:
    sizes = [64, 96, 96, 10]
    t = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        t[f"layers.{i}.weight"] = ImportedTensor("float", (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32))
        t[f"layers.{i}.bias"] = ImportedTensor("float", (0.1 * rng.standard_normal(b)).astype(np.float32))
    cfg = MlpConfig(layer_sizes=sizes, activation="gelu", input_mean=[0.1] * 64, input_std=[2.0] * 64)
    return ImportedModel("mlp", cfg, t, SourceInfo(kind="synthetic", path="tests/sdk/test_runtime_mlx.py"))


def _pair(src: ImportedModel, path, **kw):
    out = convert(src, path, **kw)
    with kernels.use_backend("numpy"):  # the numpy reference: quantization, products, epilogue
        ref = load_model(out, device="cpu")
    return ref, load_model(out, device="mlx")


def _run(model, what):
    with kernels.use_backend("numpy"):
        return what(model)


def _check(want: np.ndarray, got: np.ndarray, exact: bool) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    if exact:
        assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    else:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL_REL * np.abs(want).max())


DECODER_PLANS = {  # name -> (convert kwargs, exact)
    "ternary": (dict(precision="ternary"), True),  # ternary layers, int8 head
    "int8": (dict(precision="int8", embeddings="int8"), True),
    "f16": (dict(precision="f16"), False),
}


@pytest.mark.parametrize("bitnet", [True, False], ids=["bitnet", "llama"])
@pytest.mark.parametrize("plan", list(DECODER_PLANS))
def test_decoder_parity(mx, tmp_path, bitnet, plan):
    kw, exact = DECODER_PLANS[plan]
    ref, m = _pair(_decoder(np.random.default_rng(5), bitnet), tmp_path / plan, **kw)
    assert m.device == "mlx" and ref.device == "cpu"
    _check(_run(ref, lambda r: r.logits(PROMPT)), m.logits(PROMPT), exact)
    # prefill GEMMs, then decode GEMVs with the KV cache: the same tokens
    want = _run(ref, lambda r: r.generate(PROMPT, max_new_tokens=12, stop=[]))
    assert m.generate(PROMPT, max_new_tokens=12, stop=[]) == want
    if exact:
        a = _run(ref, lambda r: r.generate(PROMPT, 8, temperature=0.9, top_k=40, seed=3, stop=[]))
        assert m.generate(PROMPT, 8, temperature=0.9, top_k=40, seed=3, stop=[]) == a


@pytest.mark.parametrize("plan,exact", [("ternary", True), ("int8", True), ("f32", False)])
def test_bert_parity(mx, tmp_path, plan, exact):
    ref, m = _pair(_bert(np.random.default_rng(6)), tmp_path / plan, precision=plan)
    seqs = [[2, 45, 67, 89, 3], [2, 11, 12, 3], [2, 300, 301, 302, 303, 304, 3]]
    _check(_run(ref, lambda r: r.embed(seqs)), m.embed(seqs), exact)


@pytest.mark.parametrize("plan,exact", [("ternary", True), ("int8", True), ("f32", False), ("mixed", False)])
def test_mlp_parity(mx, tmp_path, rng, plan, exact):
    precision = ({"layers.0.weight": "ternary", "layers.1.weight": "int8", "layers.2.weight": "f16"}
                 if plan == "mixed" else plan)
    ref, m = _pair(_mlp(np.random.default_rng(7)), tmp_path / plan, precision=precision)
    x = rng.standard_normal((17, 64)).astype(np.float32)
    _check(_run(ref, lambda r: r.predict(x)), m.predict(x), exact)
    _check(_run(ref, lambda r: r.predict(x[3])), m.predict(x[3]), exact)
    assert all(layer._mx is not None and layer._w is None for layer in m.layers)


# ---- choosing the device -----------------------------------------------------------------------------

def test_device_choice(monkeypatch):
    monkeypatch.delenv("BITNET_EDGE_DEVICE", raising=False)
    with pytest.raises(BackendError) as e:
        devmod.resolve_device("gpu")
    assert e.value.backend == "gpu" and "cpu" in e.value.available
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "nope")
    with pytest.raises(BackendError, match="BITNET_EDGE_DEVICE"):
        devmod.resolve_device()
    assert devmod.resolve_device("cpu") == "cpu"  # the argument wins
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "cpu")
    assert devmod.resolve_device() == "cpu"
    # auto: mlx on Apple Silicon when mlx imports; elsewhere never mlx (cuda, when there is one, is not ours)
    monkeypatch.setattr(mlx_backend, "_import", lambda: (object(), None))
    monkeypatch.setattr(mlx_backend, "on_apple_silicon", lambda: True)
    assert devmod.resolve_device("auto") == "mlx" and devmod.available_devices()[:2] == ["mlx", "cpu"]
    monkeypatch.setattr(mlx_backend, "on_apple_silicon", lambda: False)
    assert devmod.resolve_device("auto") != "mlx"
    assert [d for d in devmod.available_devices() if d != "cuda"] == ["cpu", "mlx"]
    monkeypatch.setattr(mlx_backend, "_import", lambda: (None, "ImportError: No module named 'mlx'"))
    monkeypatch.setattr(mlx_backend, "on_apple_silicon", lambda: True)
    assert devmod.resolve_device("auto") != "mlx" and "mlx" not in devmod.available_devices()
    with pytest.raises(BackendError, match="bitnet-edge\\[mlx\\]") as e:
        devmod.resolve_device("mlx")
    assert e.value.backend == "mlx" and "mlx" not in e.value.available


def test_environment_forces_mlx_and_the_probe_reports_it(mx, tmp_path, monkeypatch):
    from bitnet_edge.agent.probe import probe

    src = convert(_mlp(np.random.default_rng(8)), tmp_path / "m", precision="ternary")
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "mlx")
    assert load_model(src).device == "mlx"
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "auto")
    assert load_model(src).device == ("mlx" if mlx_backend.on_apple_silicon() else "cpu")
    caps = probe(tmp_path / "data")
    assert caps.runtimes == devmod.available_devices() and "mlx" in caps.runtimes


# ---- bundles -----------------------------------------------------------------------------------------

def test_macos_bundle_runs_on_mlx_bit_exact(mx, tmp_path):
    """A macos-arm64 bundle carries nothing MLX-specific: the installed 2-bit layout is what MLX runs."""
    from tests.support.bundle_models import make_mlp_dir, prebuilt, tools_missing
    from tests.support.tools import require_tool

    from bitnet_edge.packagers.builder import PackageOptions, package_model
    from bitnet_edge.sdk.bundle.golden import check_outputs, read_golden, run_model
    from bitnet_edge.sdk.bundle.install import install_bundle
    from bitnet_edge.packagers.keys import generate_keypair, load_private_key
    from bitnet_edge.sdk.bundle.signing import load_public_key

    for tool, pkg in tools_missing("macos-arm64"):
        require_tool(tool, pkg)
    kp = generate_keypair(tmp_path / "keys")
    model = make_mlp_dir(tmp_path / "mlp")
    (r,) = package_model(model, ["apple-m"], "1.0.0", [load_private_key(kp.private_path)], tmp_path / "dist",
                         options=PackageOptions(libraries=prebuilt(["macos-arm64"])))
    assert r.target == "macos-arm64" and {s.kind for s in r.manifest.sections} == {
        "library", "golden", "weights-dense", "weights-ternary"}
    inst = install_bundle(r.path, tmp_path / "inst", [load_public_key(kp.public_path)], check_host=False)
    g = inst.manifest.golden
    arrays = read_golden(g, inst.golden.read_bytes())
    m = load_model(inst.path, device="mlx")
    out = run_model(m, g.method, [arrays["input"]])
    check = check_outputs(out, arrays["output"], g.tolerance)
    assert check.ok and check.max_abs_error == 0.0, check
