"""The decoder's C forward pass (decoder_native) against the numpy reference path, its KV cache
types, both ternary layouts and the C API's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_edge.sdk import kernels, load_model, packing
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
from bitnet_edge.sdk.errors import InputError, NonFiniteError
from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo
from bitnet_edge.sdk.models.errors import ContextLengthError

PROMPT = [3, 17, 250, 33, 7, 100, 101, 5, 9, 411]


def tiny(act: str = "relu2", sub_norms: bool = True, seed: int = 0, heads: int = 4, kv_heads: int = 2,
         head_dim: int = 32, max_positions: int = 64) -> ImportedModel:
    cfg = DecoderConfig(vocab_size=500, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                        max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act=act,
                        sub_norms=sub_norms, tie_word_embeddings=True, bos_token_id=1, eos_token_ids=[2])
    rng = np.random.default_rng(seed)
    qd, kvd = heads * head_dim, kv_heads * head_dim
    tensors = {}
    for n in decoder_tensor_names(cfg):
        if n.endswith("_proj.weight"):
            out = {"q": qd, "k": kvd, "v": kvd, "o": 128, "gate": 352, "up": 352, "down": 128}[n.split(".")[-2][:-5]]
            k = {"down": 352, "o": qd}.get(n.split(".")[-2][:-5], 128)
            tensors[n] = ImportedTensor("float", rng.standard_normal((out, k)).astype(np.float32) / np.sqrt(k))
        elif n == "model.embed_tokens.weight":
            tensors[n] = ImportedTensor("float", rng.standard_normal((500, 128)).astype(np.float32))
        else:
            size = 352 if "ffn_sub_norm" in n else (qd if "attn_sub_norm" in n else 128)
            tensors[n] = ImportedTensor("float", (1 + 0.1 * rng.standard_normal(size)).astype(np.float32))
    return ImportedModel("tiny", cfg, tensors, SourceInfo(kind="synthetic", path="random"))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    m = tiny()
    return {"2bit": convert(m, root / "2bit", precision="ternary", head="int8"),
            "base3": convert(m, root / "base3", precision="ternary", head="int8", ternary_format="base3"),
            "f32head": convert(m, root / "f32head", precision="ternary", head="f32"),
            "llama": convert(tiny("silu", False, 1), root / "llama", precision="ternary", head="int8")}


@pytest.mark.parametrize("which", ["2bit", "f32head", "llama"])
def test_native_matches_the_numpy_reference(dirs, which):
    m = load_model(dirs[which])
    assert m.native is not None, m.native_reason
    a = m.forward(np.array(PROMPT), m.new_cache(32), all_logits=True)
    b = m.forward(np.array(PROMPT), m.new_cache(32, runtime="numpy"), all_logits=True)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert (a.argmax(1) == b.argmax(1)).all()
    got = m.generate(PROMPT, 12, stop=[])
    with kernels.use_backend("numpy"):  # numpy backend -> the numpy runtime
        assert type(m.new_cache(8)).__name__ == "KVCache"
        ref = m.generate(PROMPT, 12, stop=[])
    assert got == ref


def test_decode_steps_equal_the_full_forward(dirs):
    m = load_model(dirs["2bit"])
    full = m.logits(PROMPT)
    cache = m.new_cache(len(PROMPT))
    m.forward(np.array(PROMPT[:4]), cache)
    steps = np.stack([m.forward(np.array([t]), cache)[-1] for t in PROMPT[4:]])
    np.testing.assert_allclose(steps, full[4:], rtol=1e-4, atol=1e-4 * np.abs(full).max())


# 2, 4 and 3 query heads per kv head; the last is wide enough (heads * head_dim * context >= 2^16) that a
# step's attention is a pool job, whose kv heads are folded by whichever thread finishes their last chunk
@pytest.mark.parametrize("shape", [(4, 2, 32), (8, 2, 16), (6, 2, 24), (16, 4, 64)])
def test_long_contexts_fold_attention_chunks(tmp_path, shape):
    """Contexts past the 64-position attention chunks: a prompt folds its chunks as it goes, a decode
    step splits (kv head, chunk) units over the threads and folds each kv head's chunks - the same
    operations, so steps give the prompt's bits, on every thread count and cache type; and both
    agree with the numpy reference."""
    heads, kvh, hd = shape
    path = convert(tiny(heads=heads, kv_heads=kvh, head_dim=hd, max_positions=256), tmp_path / "m",
                   precision="ternary", head="int8")
    m = load_model(path)
    ids = np.random.default_rng(5).integers(3, 500, size=150)
    a = m.forward(ids, m.new_cache(160), all_logits=True)
    b = m.forward(ids, m.new_cache(160, runtime="numpy"), all_logits=True)
    # Per row: float32 agreement, except where the two runtimes' last-bit differences put a value on
    # the other side of an int8 rounding boundary: a flipped activation code moves a row ~1e-3, and every
    # later row through attention.  Where the first flip falls is chaos (numpy's float32 matmuls follow
    # the BLAS kernel of the CPU: on an AVX-512 machine one flip at row ~126 of 150 left 87% of the rows
    # float-close, 97% on a Zen 3), so the bound is on the size of the differences, not on their count:
    # a wrong attention fold or RoPE moves rows by 1e-1 and more.
    rel = np.abs(a - b).max(1) / np.abs(b).max()
    assert rel.max() <= 1e-2, rel.max()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97
    before = kernels.get_threads()
    try:
        for kv in ("f32", "f16", "int8"):
            mk = load_model(path, kv_cache=kv) if kv != "f32" else m
            full = mk.forward(ids, mk.new_cache(150), all_logits=True)
            for t in (1, 2, 3):
                kernels.set_threads(t)
                cache = mk.new_cache(150)
                mk.forward(ids[:120], cache)
                steps = np.stack([mk.forward(ids[i:i + 1], cache)[-1] for i in range(120, 150)])  # crosses 128
                assert np.array_equal(steps.view(np.uint32), full[120:].view(np.uint32)), (kv, t)
    finally:
        kernels.set_threads(before)


def test_backends_and_thread_counts_give_the_same_bits(dirs):
    m = load_model(dirs["2bit"])
    outs = []
    before = kernels.get_threads()
    try:
        for be in [b for b in kernels.available_backends() if b != "numpy"]:
            for t in (1, 2, 3):
                kernels.set_threads(t)
                with kernels.use_backend(be):
                    outs.append(m.forward(np.array(PROMPT), m.new_cache(16), all_logits=True))
    finally:
        kernels.set_threads(before)
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))


def test_base3_layout_gives_the_same_bits_with_fewer_bytes(dirs):
    a, b = load_model(dirs["2bit"]), load_model(dirs["base3"])
    assert b.layers[0].q._t.format == "ternary_b3"
    assert packing.row_bytes3(2560) == 0.8 * packing.row_bytes(2560)  # (a tiny k pads to whole 320-blocks)
    la = a.forward(np.array(PROMPT), a.new_cache(16), all_logits=True)
    lb = b.forward(np.array(PROMPT), b.new_cache(16), all_logits=True)
    assert np.array_equal(la, lb)
    assert a.generate(PROMPT, 8, stop=[]) == b.generate(PROMPT, 8, stop=[])


@pytest.mark.parametrize("kv,tol", [("f16", 0.02), ("int8", 0.1)])
def test_kv_cache_types(dirs, kv, tol):
    ref = load_model(dirs["2bit"])
    m = load_model(dirs["2bit"], kv_cache=kv)
    assert m.native.kv_cache == kv
    c, c32 = m.new_cache(32), ref.new_cache(32)
    assert c.buffer.nbytes < c32.buffer.nbytes
    a, h = m.forward(np.array(PROMPT), c, hidden=True)
    b, h32 = ref.forward(np.array(PROMPT), c32, hidden=True)
    assert 0 < np.abs(h - h32).max() <= tol * np.abs(h32).max()
    assert np.abs(a - b).max() <= tol * np.abs(b).max()


def test_kv_cache_from_the_environment_and_bad_names(dirs, monkeypatch):
    monkeypatch.setenv("BITNET_EDGE_KV_CACHE", "f16")
    assert load_model(dirs["2bit"]).native.kv_cache == "f16"
    monkeypatch.setenv("BITNET_EDGE_KV_CACHE", "fp8")
    with pytest.raises(InputError, match="kv_cache"):
        load_model(dirs["2bit"])
    monkeypatch.delenv("BITNET_EDGE_KV_CACHE")
    with pytest.raises(InputError, match="'bf16' is not one of f32, f16, int8"):
        load_model(dirs["2bit"], kv_cache="bf16")


def test_numpy_runtime_and_cache_ownership(dirs, monkeypatch):
    monkeypatch.setenv("BITNET_EDGE_DECODER", "numpy")
    m = load_model(dirs["2bit"])
    assert m.native is None and "numpy" in m.native_reason
    with pytest.raises(InputError, match="no native runtime"):
        m.new_cache(8, runtime="native")
    with pytest.raises(InputError, match="needs the native runtime"):
        load_model(dirs["2bit"], kv_cache="int8")
    monkeypatch.delenv("BITNET_EDGE_DECODER")
    a, b = load_model(dirs["2bit"]), load_model(dirs["2bit"])
    with pytest.raises(InputError, match="another model"):
        a.forward(np.array([1]), b.new_cache(8))
    with pytest.raises(ContextLengthError):
        a.forward(np.array(PROMPT), a.new_cache(4))
    with pytest.raises(InputError, match="runtime"):
        a.new_cache(8, runtime="gpu")


def test_non_finite_activations_are_an_error(dirs):
    m = load_model(dirs["2bit"])
    cache = m.new_cache(8)
    x = m.token_embeddings(np.array([1, 2]))
    x[1, 3] = np.nan
    with pytest.raises(NonFiniteError):
        m.native.forward(x, cache)


def test_profile_counts_every_phase(dirs):
    m = load_model(dirs["2bit"])
    cache = m.new_cache(16)
    prof = m.native.profile()
    m.forward(np.array(PROMPT), cache)
    assert (prof > 0).all()
    m.native.profile(False)
    m.forward(np.array([4]), cache)
    assert m.native.desc.profile_ns == m.native.ffi.NULL


def test_c_api_refuses_bad_descriptions(dirs):
    m = load_model(dirs["2bit"])
    nd = m.native
    lib, ffi, d = nd.lib, nd.ffi, nd.desc
    cache = m.new_cache(16)
    x = np.zeros((1, 128), np.float32)
    logits = np.empty(500, np.float32)
    work = np.zeros(lib.bne_decoder_workspace_bytes(d, 1, 16) + 64, np.uint8)
    w = work[(-work.ctypes.data) % 64:]

    def call(cap=16, pos0=0, n=1, wbytes=None, buf=None, backend=0):
        return lib.bne_decoder_forward(backend, d, ffi.from_buffer("uint8_t[]", cache.buffer if buf is None else buf),
                                       cap, pos0, ffi.from_buffer("float[]", x), n, ffi.from_buffer("uint8_t[]", w),
                                       w.nbytes if wbytes is None else wbytes, 0, ffi.from_buffer("float[]", logits),
                                       ffi.NULL)

    assert call() == 0
    assert call(pos0=16) == 2            # past the capacity
    assert call(wbytes=64) == 2          # workspace too small
    assert call(buf=cache.buffer[1:]) == 2  # unaligned cache
    assert call(backend=99) == 3
    saved = d.layer[1].k.n
    d.layer[1].k.n = 65
    assert call() == 2                   # a linear's shape does not match the config
    d.layer[1].k.n = saved
    saved = d.layer[0].gate.format
    d.layer[0].gate.format = 9
    assert call() == 5
    d.layer[0].gate.format = saved
    d.kv_type = 7
    assert call() == 5 and lib.bne_decoder_cache_bytes(d, 16) == 0
    d.kv_type = 0
    assert lib.bne_decoder_cache_bytes(d, 0) == 0 and lib.bne_decoder_workspace_bytes(d, 17, 16) == 0
    assert lib.bne_decoder_forward(0, ffi.NULL, ffi.NULL, 16, 0, ffi.NULL, 1, ffi.NULL, 0, 0, ffi.NULL,
                                   ffi.NULL) == 1
    assert call() == 0
