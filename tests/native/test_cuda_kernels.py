"""The CUDA kernels on a real GPU, bit-exact against the numpy reference: int32 products
(GEMV and tensor-core GEMM, ternary and int8, every tail), the float32 bits of the quantizer, the
epilogue and RoPE; the attention/RMSNorm glue and the GPU decoder against the CPU runtime; the
persistent decode kernel (one launch a token) against prefill and the one-kernel-per-operation path,
bit for bit, and its on-GPU greedy choice against np.argmax (the persistent kernel is opt-in:
BITNET_EDGE_CUDA_DECODE=persistent; the tests switch it on per model).
Marked ``gpu``: they skip cleanly where no GPU (or no driver, or no fatbin) is found."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tests.support.tools import REPO

from bitnet_edge.sdk import packing, quant, reference
from bitnet_edge.sdk.errors import NonFiniteError

pytestmark = pytest.mark.gpu


def tiny_decoder_dir(out: Path, *, layers=2, hidden=256, inter=688, heads=4, kv=2, head_dim=64, vocab=1000,
                     act="relu2", sub_norms=True, seed=0, same_rows=False) -> Path:
    """A converted random ternary decoder (int8 embeddings and tied int8 head); inter % 128 != 0.
    ``same_rows``: every embedding (and so LM-head) row equal: all logits tie."""
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
    from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo

    cfg = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act=act,
                        sub_norms=sub_norms, tie_word_embeddings=True, bos_token_id=0, eos_token_ids=[])
    rng = np.random.default_rng(seed)
    q, kvd = heads * head_dim, kv * head_dim
    shapes = {"q_proj": (q, hidden), "k_proj": (kvd, hidden), "v_proj": (kvd, hidden), "o_proj": (hidden, q),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    tensors = {}
    for n in decoder_tensor_names(cfg):
        part = n.split(".")[-2]
        if part in shapes:
            n_out, k = shapes[part]
            tensors[n] = ImportedTensor("ternary", rng.integers(-1, 2, size=(n_out, k), dtype=np.int8),
                                        scale=float(np.float32(1.0 / np.sqrt(k * 2 / 3))))
        elif n == "model.embed_tokens.weight":
            emb = rng.standard_normal((vocab, hidden), dtype=np.float32)
            tensors[n] = ImportedTensor("float", np.repeat(emb[:1], vocab, axis=0) if same_rows else emb)
        else:
            size = inter if "ffn_sub_norm" in n else hidden
            tensors[n] = ImportedTensor("float", (1 + 0.05 * rng.standard_normal(size)).astype(np.float32))
    m = ImportedModel("tiny-gpu-decoder", cfg, tensors, SourceInfo(kind="synthetic", path="random"))
    return convert(m, out, precision="ternary", head="int8", embeddings="int8")


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """The GPU with the fatbin; built here with nvcc when none is installed or built."""
    from bitnet_edge.packagers import cuda as cb
    from bitnet_edge.sdk import cuda
    from bitnet_edge.sdk.cuda import _driver, _loader

    try:
        _driver.open_driver()
    except Exception as exc:  # noqa: BLE001 - no driver or no device: nothing to test here
        pytest.skip(f"no CUDA GPU: {str(exc).splitlines()[0].removesuffix(' Tried:')}")
    try:
        _loader.find_fatbin()
    except Exception:  # noqa: BLE001
        if cb.find_nvcc() is None:
            pytest.skip("no CUDA fatbin and no nvcc to build one")
        path = cb.build_fatbin(REPO / "native", tmp_path_factory.mktemp("fatbin"))
        os.environ["BITNET_EDGE_CUDA_FATBIN"] = str(path)
    p = cuda.probe()
    if not p.available:
        pytest.skip(f"CUDA backend unavailable: {p.message}")
    print(f"\n[gpu] {p.message}")
    return cuda.gpu()


# ---- quantization ------------------------------------------------------------------------------

def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


@pytest.mark.parametrize("m,k", [(1, 1), (1, 127), (3, 128), (2, 129), (5, 1000), (1, 2560), (4, 6912), (2, 65536)])
def test_quantize_is_bit_exact(gpu, m, k):
    from bitnet_edge.sdk.cuda.ops import quantize_activations

    rng = np.random.default_rng(m * 7919 + k)
    x = (rng.standard_normal((m, k)) * rng.choice([1e-3, 1.0, 300.0], size=(m, 1))).astype(np.float32)
    xq, s = quantize_activations(x, gpu)
    rq, rs = quant.absmax_int8(x)
    assert np.array_equal(xq, rq) and np.array_equal(_bits(s), _bits(rs))


def test_quantize_ties_zeros_and_extremes(gpu):
    from bitnet_edge.sdk.cuda.ops import quantize_activations

    k = 300
    ties = np.arange(k, dtype=np.float32) % 255 - 127.0 + 0.5  # amax 127.5 -> x*s lands near .5 steps
    ties[0] = 127.0  # amax 127 -> s = 1, exact halves: round half to even
    rows = np.stack([ties, np.zeros(k, np.float32), np.full(k, 1e-7, np.float32), np.full(k, -3e38, np.float32),
                     np.where(np.arange(k) % 2 == 0, -0.0, 1e-30).astype(np.float32)])
    xq, s = quantize_activations(rows, gpu)
    rq, rs = quant.absmax_int8(rows)
    assert np.array_equal(xq, rq) and np.array_equal(_bits(s), _bits(rs))
    x1, s1 = quantize_activations(rows[0], gpu)  # 1-D in, 1-D out
    assert x1.shape == (k,) and np.array_equal(x1, rq[0])
    with pytest.raises(NonFiniteError):
        quantize_activations(np.array([[1.0, np.nan, 2.0]], np.float32), gpu)
    with pytest.raises(NonFiniteError):
        quantize_activations(np.array([1.0, np.inf], np.float32), gpu)


# ---- ternary and int8 products ------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 7, 100), (1, 8, 128), (1, 33, 129), (1, 130, 255), (1, 257, 1000), (1, 640, 2560),
          (2, 9, 129), (16, 64, 256), (31, 130, 1000), (32, 128, 128), (33, 257, 2560), (70, 300, 384)]


def _ternary(gpu, rng, n, k):
    from bitnet_edge.sdk.cuda.ops import CudaTernaryMatrix

    q = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    return q, CudaTernaryMatrix(gpu, packing.pack_ternary_2bit(q), k, 0.0123)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_ternary_products_are_exact(gpu, m, n, k):
    rng = np.random.default_rng(m * 1000003 + n * 1009 + k)
    q, W = _ternary(gpu, rng, n, k)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    want = reference.int_matmul(q, xq)
    kernels = ["gemv", "gemm"] if m == 1 else ["gemm"]
    for kern in kernels:
        assert np.array_equal(W.matmul_int8(xq, kernel=kern), want), kern
    s = (127.0 / rng.uniform(0.5, 50, size=m)).astype(np.float32)
    for kern in kernels:
        y = W.linear_quantized(xq, s, kernel=kern)
        assert np.array_equal(_bits(y), _bits(reference.epilogue(want, np.float32(0.0123), s))), kern
    x = rng.standard_normal((m, k)).astype(np.float32)
    assert np.array_equal(_bits(W.linear(x)), _bits(reference.ternary_linear(q, np.float32(0.0123), x)))


@pytest.mark.parametrize("m,n,k", [(1, 3, 65536), (2, 3, 65536), (1, 5, 65535)])
def test_ternary_extremes_do_not_overflow(gpu, m, n, k):
    from bitnet_edge.sdk.cuda.ops import CudaTernaryMatrix

    q = np.stack([np.full(k, v, np.int8) for v in (-1, 1, 0, -1, 1)[:n]])
    W = CudaTernaryMatrix(gpu, packing.pack_ternary_2bit(q), k, 1.0)
    for fill in (-128, 127):
        xq = np.full((m, k), fill, np.int8)
        want = reference.int_matmul(q, xq)
        for kern in (["gemv", "gemm"] if m == 1 else ["gemm"]):
            assert np.array_equal(W.matmul_int8(xq, kernel=kern), want)


@pytest.mark.parametrize("m,n,k", SHAPES + [(1, 5, 65536), (3, 5, 65536)])
def test_int8_products_are_exact(gpu, m, n, k):
    from bitnet_edge.sdk.cuda.ops import CudaInt8Matrix

    rng = np.random.default_rng(m * 31 + n * 7 + k)
    w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    if k >= 65536:
        w[:] = np.where(np.arange(n)[:, None] % 2 == 0, -127, 127).astype(np.int8)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    if k >= 65536:
        xq[:] = -128
    ws = rng.uniform(1e-3, 1e-1, size=n).astype(np.float32)
    W = CudaInt8Matrix(gpu, w, ws)
    want = reference.int_matmul(w, xq)
    kernels = ["gemv", "gemm"] if m == 1 else ["gemm"]
    s = (127.0 / rng.uniform(0.5, 50, size=m)).astype(np.float32)
    for kern in kernels:
        assert np.array_equal(W.matmul_int8(xq, kernel=kern), want), kern
        y = W.linear_quantized(xq, s, kernel=kern)
        assert np.array_equal(_bits(y), _bits(reference.epilogue(want, ws, s))), kern


def test_residual_add_and_fused_rows(gpu):
    """add + epilogue in one rounding, in place (y is add); fused matrices keep a scale per part."""
    from bitnet_edge.sdk import kernels
    from bitnet_edge.sdk.cuda.ops import CudaTernaryMatrix, QuantizedRows, quantize_device

    rng = np.random.default_rng(5)
    parts = [kernels.TernaryMatrix.from_ternary(rng.integers(-1, 2, size=(n, 300), dtype=np.int8), g)
             for n, g in ((64, 0.5), (16, 0.25), (16, 0.125))]
    W = CudaTernaryMatrix.from_matrices(gpu, parts)
    for m in (1, 5):
        x = rng.standard_normal((m, 300)).astype(np.float32)
        resid = rng.standard_normal((m, 96)).astype(np.float32)
        q = QuantizedRows(gpu, m, 300)
        quantize_device(gpu, gpu.to_device(x), m, 300, 300, q)
        y = gpu.to_device(resid)
        W.run(q, m, add=y, y=y)
        xq, s = quant.absmax_int8(x)
        want = np.concatenate([reference.epilogue(reference.int_matmul(p.ternary(), xq), np.float32(p.scale), s)
                               for p in parts], axis=1)
        assert np.array_equal(_bits(y.download()), _bits(resid + want))


# ---- glue ---------------------------------------------------------------------------------------

def test_rope_and_kv_write_are_bit_exact(gpu):
    from bitnet_edge.sdk.cuda.ops import rope_kv
    from bitnet_edge.sdk.models import ops

    rng = np.random.default_rng(2)
    H, KV, hd, cap, m, pos0 = 4, 2, 64, 40, 5, 11
    qkv = rng.standard_normal((m, (H + 2 * KV) * hd)).astype(np.float32)
    cos, sin = ops.rope_tables(hd, 10000.0, np.arange(cap))
    kc = rng.standard_normal((KV, cap, hd)).astype(np.float32)
    vc = rng.standard_normal((KV, cap, hd)).astype(np.float32)
    q_out, k2, v2 = rope_kv(gpu, qkv, H, KV, hd, pos0, cos, sin, kc, vc)
    c, s = cos[pos0 : pos0 + m], sin[pos0 : pos0 + m]
    q = qkv[:, : H * hd].reshape(m, H, hd).transpose(1, 0, 2)
    k = qkv[:, H * hd : (H + KV) * hd].reshape(m, KV, hd).transpose(1, 0, 2)
    v = qkv[:, (H + KV) * hd :].reshape(m, KV, hd).transpose(1, 0, 2)
    assert np.array_equal(_bits(q_out), _bits(ops.apply_rope(q, c, s).transpose(1, 0, 2).reshape(m, -1)))
    want_k, want_v = kc.copy(), vc.copy()
    want_k[:, pos0 : pos0 + m], want_v[:, pos0 : pos0 + m] = ops.apply_rope(k, c, s), v
    assert np.array_equal(_bits(k2), _bits(want_k)) and np.array_equal(_bits(v2), _bits(want_v))


@pytest.mark.parametrize("m,pos0,hd", [(1, 0, 64), (1, 37, 128), (6, 0, 64), (5, 9, 128)])
def test_attention_matches_numpy(gpu, m, pos0, hd):
    from bitnet_edge.sdk.cuda.ops import attention
    from bitnet_edge.sdk.models import ops

    rng = np.random.default_rng(m + pos0)
    H, KV, cap = 6, 2, 64
    q = rng.standard_normal((m, H * hd)).astype(np.float32)
    kc = rng.standard_normal((KV, cap, hd)).astype(np.float32)
    vc = rng.standard_normal((KV, cap, hd)).astype(np.float32)
    scale = np.float32(hd ** -0.5)
    got = attention(gpu, q, H, KV, hd, pos0, kc, vc, scale)
    end, groups = pos0 + m, H // KV
    qg = q.reshape(m, H, hd).transpose(1, 0, 2).reshape(KV, groups * m, hd)
    scores = ((qg @ kc[:, :end].transpose(0, 2, 1)) * scale).reshape(KV, groups, m, end)
    scores = np.where(np.triu(np.ones((m, end), bool), k=pos0 + 1), np.float32(-np.inf), scores)
    p = ops.softmax(scores).reshape(KV, groups * m, end)
    want = (p @ vc[:, :end]).reshape(H, m, hd).transpose(1, 0, 2).reshape(m, -1)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("act", ["none", "relu2", "silu"])
def test_norm_quant_matches_numpy(gpu, act):
    from bitnet_edge.sdk.cuda.ops import ACT, QuantizedRows
    from bitnet_edge.sdk.models import ops

    rng = np.random.default_rng(ACT[act])
    m, k = 3, 700
    x = rng.standard_normal((m, 2 * k)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    g = x[:, :k] if act == "none" else {"relu2": ops.relu2, "silu": ops.silu}[act](x[:, :k]) * x[:, k:]
    xq_ref, s_ref = quant.absmax_int8(ops.rms_norm(g, w, 1e-5))
    q = QuantizedRows(gpu, m, k)
    dx = gpu.to_device(x)
    gpu.launch("bne_norm_quant", (m,), gpu.geometry["norm_threads"],
               (dx, dx.ptr + 4 * k, 2 * k, m, k, ACT[act], gpu.to_device(w), 1e-5, q.xq, q.xq.shape[1], q.s, q.xsum,
                q.flag))
    xq, s = q.xq.download(), q.s.download()
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    assert np.abs(xq[:, :k].astype(int) - xq_ref).max() <= 1 and (xq[:, :k] != xq_ref).mean() < 0.01
    assert not xq[:, k:].any() and np.array_equal(q.xsum.download(), xq.sum(1, dtype=np.int32))


# ---- the decoder on the GPU ---------------------------------------------------------------------

DECODERS = {
    "bitnet": dict(act="relu2", sub_norms=True),
    "llama": dict(act="silu", sub_norms=False),
    # 2B-like widths: rows of >= 32 units (a row spans warps), head_dim 128, 4 query heads per KV head,
    # more LM-head rows a block than the layers have (several head chunks when HEAD_CHUNK_ROWS is small)
    "wide": dict(act="relu2", sub_norms=True, layers=1, hidden=2048, inter=1408, heads=16, kv=4, head_dim=128,
                 vocab=5000),
}


@pytest.fixture(scope="module", params=list(DECODERS))
def decoders(gpu, request, tmp_path_factory):
    from bitnet_edge.sdk import load_model

    path = tiny_decoder_dir(tmp_path_factory.mktemp("dec") / request.param, **DECODERS[request.param])
    return load_model(path, device="cpu"), load_model(path, device="cuda"), path


PROMPT = [1, 17, 250, 33, 7, 100, 101, 102, 3, 411, 12, 9, 998, 0, 500]


def test_decoder_matches_the_cpu_runtime(decoders):
    cpu, dev, _ = decoders
    assert dev.device == "cuda" and type(dev).__name__ == "CudaDecoderModel" and "CUDA" in dev.device_reason
    want, got = cpu.logits(PROMPT), dev.logits(PROMPT)
    rel = np.abs(got - want).max() / (want.max() - want.min())
    print(f"\n[decoder] max |diff| / logit range = {rel:.2e}")
    assert rel < 1e-3 and (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    want_tokens = cpu.generate(PROMPT, 12, stop=[])
    assert dev.decode_kernel == "kernels"  # the default (the persistent kernel is opt-in)
    assert want_tokens == dev.generate(PROMPT, 12, stop=[])
    try:
        dev.decode_mode = "persistent"
        assert want_tokens == dev.generate(PROMPT, 12, stop=[])
        assert dev.decode_kernel == "persistent" and dev.persistent_error is None, dev.persistent_error
    finally:
        dev.decode_mode = "kernels"


def _steps(dev, mode: str, graphs: bool) -> np.ndarray:
    """Logits of a 4-token prefill then one decode step per remaining prompt token."""
    dev.decode_mode, dev.use_graphs = mode, graphs
    cache = dev.new_cache(len(PROMPT))
    first = dev.forward(np.array(PROMPT[:4]), cache, all_logits=True)
    steps = [dev.forward(np.array([t]), cache)[-1] for t in PROMPT[4:]]
    assert (cache.persistent is not None) == (mode == "persistent"), dev.persistent_error
    return np.concatenate([first, np.stack(steps)])


def test_decode_steps_equal_the_prefill_bit_for_bit(decoders, monkeypatch):
    """Every int product is exact, every row independent, and the persistent kernel runs the float
    glue through the same device functions at the same block width, so prefill (GEMM), decode (one
    persistent kernel, or one kernel per operation; graph or not) and any chunking give the same bits."""
    from bitnet_edge.sdk.models import decoder_cuda

    _, dev, _ = decoders
    full = dev.logits(PROMPT)
    try:
        for mode in ("persistent", "kernels"):
            for graphs in (True, False):
                assert np.array_equal(_bits(_steps(dev, mode, graphs)), _bits(full)), (mode, graphs)
        # without programmatic dependent launch (every kernel waits for the one before to end), and
        # with bne_norm_gemv (each GEMV block quantizing its own row) instead of bne_norm_quant + GEMV
        for env, value in (("BITNET_EDGE_CUDA_PDL", "0"), ("BITNET_EDGE_CUDA_FUSED", "1")):
            monkeypatch.setenv(env, value)
            assert np.array_equal(_bits(_steps(dev, "kernels", True)), _bits(full)), env
            monkeypatch.delenv(env)
    finally:
        dev.decode_mode, dev.use_graphs = "kernels", True
    monkeypatch.setattr(decoder_cuda, "MAX_BATCH", 4)  # prefill in chunks of 4 (buffers are larger)
    assert np.array_equal(_bits(dev.logits(PROMPT)), _bits(full))


@pytest.mark.parametrize("prefetch,chunk", [(0, None), (1, None), (None, 1)], ids=["streamed", "prefetch1", "head-chunks"])
def test_persistent_kernel_without_prefetch_and_in_head_chunks(decoders, monkeypatch, prefetch, chunk):
    """The weight units a thread does not prefetch are read from global memory, and an LM head with
    more rows a block than the accumulators hold runs in chunks (as on a GPU with few SMs): same bits."""
    from bitnet_edge.sdk.cuda import decode

    _, dev, _ = decoders
    full = dev.logits(PROMPT)
    monkeypatch.setattr(decode, "MAX_PREFETCH", prefetch)
    if chunk is not None:
        monkeypatch.setattr(decode, "HEAD_CHUNK_ROWS", chunk)
    try:
        got = _steps(dev, "persistent", True)
    finally:
        dev.decode_mode, dev.use_graphs = "kernels", True
    assert np.array_equal(_bits(got), _bits(full))


@pytest.mark.parametrize("mode", ["persistent", "kernels", "kernels-fused"])
def test_greedy_tokens_picked_on_the_gpu_are_np_argmax(decoders, monkeypatch, mode):
    """Greedy generation copies back only the GPU's argmax (the persistent kernel's, or the kernels
    path's LM head with bne_head_argmax): the same tokens as np.argmax of the logits that forward()
    returns, step for step."""
    from bitnet_edge.sdk.models.decoder import DecoderModel

    cpu, dev, _ = decoders
    if mode == "kernels-fused":  # the LM head's bne_norm_gemv picks it (else bne_head_argmax)
        monkeypatch.setenv("BITNET_EDGE_CUDA_FUSED", "1")
        mode = "kernels"
    monkeypatch.setattr(dev, "decode_mode", mode)
    on_gpu = dev.generate(PROMPT, 20, stop=[])
    with monkeypatch.context() as mp:
        mp.setattr(type(dev), "_decode_next", DecoderModel._decode_next)  # logits to the host, np.argmax there
        via_logits = dev.generate(PROMPT, 20, stop=[])
    assert on_gpu == via_logits and dev.decode_kernel == mode
    assert on_gpu[:12] == cpu.generate(PROMPT, 12, stop=[])


@pytest.mark.parametrize("mode", ["persistent", "kernels", "kernels-fused"])
def test_greedy_ties_go_to_the_lowest_token_id(gpu, tmp_path, monkeypatch, mode):
    """Every LM-head row equal: every logit ties, np.argmax says 0, and so must the GPU (the blocks'
    candidates are merged in (value, lower id) order)."""
    from bitnet_edge.sdk import load_model

    if mode == "kernels-fused":
        monkeypatch.setenv("BITNET_EDGE_CUDA_FUSED", "1")
        mode = "kernels"
    path = tiny_decoder_dir(tmp_path / "ties", vocab=3000, same_rows=True)
    dev = load_model(path, device="cuda")
    dev.decode_mode = mode
    logits = dev.logits(PROMPT)[-1]
    assert (logits == logits[0]).all()
    assert dev.generate(PROMPT, 6, stop=[]) == [0] * 6 and dev.decode_kernel == mode


@pytest.mark.parametrize("ternary", [False, True])
def test_head_argmax_is_np_argmax(gpu, ternary):
    """bne_head_argmax writes the logits as the GEMV does and picks np.argmax of them: ties to the
    lowest row, -0.0 equal to 0.0, +inf above every number, the first NaN above everything (s = 0
    gives inf and NaN: acc / 0)."""
    from bitnet_edge.sdk.cuda.ops import CudaInt8Matrix, CudaTernaryMatrix, QuantizedRows, blocks

    rng = np.random.default_rng(5)
    n, k = 1001, 300

    def run(W, xq, s):
        q = QuantizedRows.from_host(gpu, xq[None, :], np.array([s], np.float32))
        y, key = gpu.empty(n, np.float32), gpu.zeros(1, np.uint64)
        _, grid, block, _ = W.args(q, 1, None, None, y, kernel="gemv")
        gpu.launch("bne_head_argmax", grid, block, (W.weights, n, blocks(k), int(ternary), q.xq, q.xsum, q.s,
                                                     W.wscale, y, key))
        gpu.synchronize()
        return y.download(), 0xFFFFFFFF - (int(key.download()[0]) & 0xFFFFFFFF)

    if ternary:
        w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        w[500:] = w[400]  # rows 400 and 500.. tie
        W = CudaTernaryMatrix(gpu, packing.pack_ternary_2bit(w), k, 0.02)
        want_w, ws = w, np.full(n, 0.02, np.float32)
    else:
        w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
        w[500:] = w[400]
        ws = np.full(n, 0.01, np.float32)
        W = CudaInt8Matrix(gpu, w, ws)
        want_w = w
    xq = rng.integers(-128, 128, size=k, dtype=np.int8)
    for s in (3.0, 0.0):
        y, got = run(W, xq, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            want = reference.epilogue(reference.int_matmul(want_w, xq[None, :]), ws, np.array([s], np.float32))[0]
        assert np.array_equal(_bits(y), _bits(want)), s
        assert got == int(np.argmax(want)), (s, got, int(np.argmax(want)))
    zero = np.zeros(k, np.int8)  # every logit 0.0: all tie, row 0
    y, got = run(W, zero, 1.0)
    assert got == 0 and (y == 0).all()


def test_zero_copy_logits_as_on_jetson(decoders, monkeypatch):
    """The integrated-GPU path (the kernel writes mapped host memory) also runs on a discrete GPU."""
    from bitnet_edge.sdk.modeldir import open_model_dir
    from bitnet_edge.sdk.models.decoder_cuda import CudaDecoderModel

    _, dev, path = decoders
    monkeypatch.setenv("BITNET_EDGE_CUDA_ZERO_COPY", "1")
    zc = CudaDecoderModel(open_model_dir(path))
    assert zc.zero_copy
    want = dev.generate(PROMPT, 8, stop=[])
    assert zc.generate(PROMPT, 8, stop=[]) == want
    zc.decode_mode = "persistent"  # the persistent kernel writes the mapped logits too
    cache = zc.new_cache(len(PROMPT) + 1)
    zc.forward(np.array(PROMPT), cache)
    got = zc.forward(np.array([want[0]]), cache)[-1]
    ref = dev.new_cache(len(PROMPT) + 1)
    dev.forward(np.array(PROMPT), ref)
    assert np.array_equal(_bits(got), _bits(dev.forward(np.array([want[0]]), ref)[-1]))
    assert zc.generate(PROMPT, 8, stop=[]) == want and cache.persistent is not None
