"""GGUF import (sdk/convert/gguf.py) and export (sdk/convert/gguf_write.py).

Files are written with the gguf package's own GGUFWriter and quantizers, so the importer is checked
against the reference encoder, not against our writer only.  Tiny configs: hidden 256, 2 layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from bitnet_edge.sdk.convert.gguf import (  # noqa: E402
    canonical_to_gguf, gguf_to_canonical, permute_rope_rows, read_gguf, unpermute_rope_rows)
from bitnet_edge.sdk.convert.gguf_write import write_gguf  # noqa: E402
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names  # noqa: E402
from bitnet_edge.sdk.errors import FormatError, InputError  # noqa: E402
from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo  # noqa: E402
from bitnet_edge.sdk.safetensors_io import bf16_to_f32  # noqa: E402

H, I, V, L, NH, NKV, HD = 256, 512, 320, 2, 4, 2, 64


def _cfg(arch: str = "bitnet", **kw) -> DecoderConfig:
    base = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=NH,
                num_key_value_heads=NKV, head_dim=HD, max_position_embeddings=512, rms_norm_eps=1e-5,
                rope_theta=500000.0, hidden_act="relu2" if arch == "bitnet" else "silu",
                sub_norms=arch == "bitnet", tie_word_embeddings=True, bos_token_id=1, eos_token_ids=[2])
    base.update(kw)
    return DecoderConfig(**base)


def _linear_shape(name: str) -> tuple[int, int]:
    part = name.split(".")[-2]
    return {"q_proj": (NH * HD, H), "k_proj": (NKV * HD, H), "v_proj": (NKV * HD, H), "o_proj": (H, NH * HD),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}[part]


def _model(cfg: DecoderConfig, seed: int = 0) -> ImportedModel:
    """Random ternary linears (one with an all-zero 256-block), float norms and embeddings."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for n in decoder_tensor_names(cfg):
        if n.endswith("_proj.weight"):
            q = rng.integers(-1, 2, size=_linear_shape(n), dtype=np.int8)
            if n.endswith("layers.0.mlp.up_proj.weight"):
                q[3, :256] = 0  # an all-zero block: its d is 0 in the file
            tensors[n] = ImportedTensor("ternary", q, scale=float(np.float32(rng.uniform(0.01, 0.1))))
        elif n in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[n] = ImportedTensor("float", rng.standard_normal((cfg.vocab_size, H), dtype=np.float32))
        else:
            size = I if "ffn_sub_norm" in n else H
            tensors[n] = ImportedTensor("float", (1 + 0.1 * rng.standard_normal(size)).astype(np.float32))
    return ImportedModel("tiny", cfg, tensors, SourceInfo(kind="synthetic", path="-"))


def _raw_gguf(path: Path, cfg: DecoderConfig, arrays: dict[str, tuple[np.ndarray, QT | None]], *,
              arch: str = "bitnet", meta_skip: tuple[str, ...] = (), extra_meta: dict | None = None) -> Path:
    """A GGUF written with gguf.GGUFWriter only: ``arrays`` maps GGUF names to (data, raw type)."""
    w = gguf.GGUFWriter(path, arch)
    meta = {
        "block_count": cfg.num_hidden_layers, "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size, "feed_forward_length": cfg.intermediate_size,
        "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": cfg.num_key_value_heads,
    }
    for k, v in meta.items():
        if k not in meta_skip:
            w.add_uint32(f"{arch}.{k}", v)
    if "attention.layer_norm_rms_epsilon" not in meta_skip:
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
    for k, v in (extra_meta or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_uint32(k, v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, (data, qt) in arrays.items():
        w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _arrays(m: ImportedModel, linear_type: QT = QT.TQ2_0, head_type: QT = QT.F32) -> dict:
    """The tensors of ``m`` in llama.cpp names, quantized with gguf.quants (no q/k permutation)."""
    out = {}
    for n, t in m.tensors.items():
        g = canonical_to_gguf(n)
        if t.kind == "ternary":
            vals = t.data.astype(np.float32) * np.float32(t.scale)
            out[g] = (quantize(vals, linear_type), linear_type) if linear_type != QT.F32 else (vals, None)
        elif n in ("model.embed_tokens.weight", "lm_head.weight") and head_type != QT.F32:
            out[g] = (quantize(t.data, head_type), head_type)
        else:
            out[g] = (t.data, None)
    return out


# ------------------------------------------------------------------------------------------- names

def test_name_mapping_round_trips():
    cfg = _cfg()
    for n in decoder_tensor_names(cfg.model_copy(update={"tie_word_embeddings": False})):
        g = canonical_to_gguf(n)
        assert g is not None and gguf_to_canonical(g) == n
    assert canonical_to_gguf("model.layers.7.self_attn.o_proj.weight") == "blk.7.attn_output.weight"
    assert gguf_to_canonical("blk.1.ffn_sub_norm.weight") == "model.layers.1.mlp.ffn_sub_norm.weight"
    assert gguf_to_canonical("rope_freqs.weight") is None


# --------------------------------------------------------------------------- ternary exactness

@pytest.mark.parametrize("qtype", [QT.TQ1_0, QT.TQ2_0])
def test_ternary_tensors_load_exactly(tmp_path, qtype):
    cfg = _cfg()
    m = _model(cfg)
    p = _raw_gguf(tmp_path / "m.gguf", cfg, _arrays(m, qtype))
    back = read_gguf(p)
    assert back.config == cfg
    for n, t in m.tensors.items():
        b = back.tensors[n]
        if t.kind == "ternary":
            assert b.kind == "ternary" and b.data.dtype == np.int8
            assert np.array_equal(b.data, t.data), n
            assert b.scale == float(np.float16(t.scale)), n  # TQ blocks hold d = fp16(g)
        else:
            assert np.array_equal(b.data, t.data), n
    assert back.source.kind == "gguf" and qtype.name in back.source.details["tensor_types"]


def test_ternary_block_scales_that_differ_are_rejected_or_dequantized(tmp_path):
    cfg = _cfg()
    m = _model(cfg)
    arrays = _arrays(m)
    q = m.tensors["model.layers.1.self_attn.v_proj.weight"].data
    vals = q.astype(np.float32) * 0.05
    vals[64:] *= 2  # the blocks of rows 64.. : another scale
    arrays["blk.1.attn_v.weight"] = (quantize(vals, QT.TQ2_0), QT.TQ2_0)
    p = _raw_gguf(tmp_path / "m.gguf", cfg, arrays)
    with pytest.raises(FormatError, match=r"m\.gguf.*blk\.1\.attn_v\.weight.*not per-tensor ternary"):
        read_gguf(p)
    t = read_gguf(p, nonuniform_ternary="float").tensors["model.layers.1.self_attn.v_proj.weight"]
    assert t.kind == "float"
    np.testing.assert_array_equal(t.data, vals.astype(np.float16).astype(np.float32))


def test_negative_and_zero_block_scales(tmp_path):
    cfg = _cfg()
    m = _model(cfg)
    arrays = _arrays(m)
    q = m.tensors["model.layers.0.self_attn.q_proj.weight"].data
    raw = quantize(q.astype(np.float32) * np.float32(0.25), QT.TQ2_0).reshape(-1, 66)
    raw[0, 64:] = np.array([-0.25], np.float16).view(np.uint8)  # a flipped block
    raw[1, 64:] = np.array([0.0], np.float16).view(np.uint8)  # a block scaled to zero
    arrays["blk.0.attn_q.weight"] = (raw.reshape(q.shape[0], -1), QT.TQ2_0)
    t = read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays)).tensors["model.layers.0.self_attn.q_proj.weight"]
    want = q.copy()
    want[0] *= -1  # rows are one 256-block each (hidden 256)
    want[1] = 0
    assert t.scale == 0.25 and np.array_equal(t.data, want)


def test_code_3_in_tq2_0_is_rejected(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    raw = arrays["blk.0.ffn_gate.weight"][0].copy()
    raw[0, 0] = 0xFF  # codes 3
    arrays["blk.0.ffn_gate.weight"] = (raw, QT.TQ2_0)
    with pytest.raises(FormatError, match=r"blk\.0\.ffn_gate\.weight.*not -1, 0 or 1"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))


def test_scale_tensor_multiplies_into_g(tmp_path):
    cfg = _cfg()
    m = _model(cfg)
    arrays = _arrays(m)
    q = m.tensors["model.layers.1.mlp.down_proj.weight"].data
    arrays["blk.1.ffn_down.weight"] = (quantize(q.astype(np.float32), QT.TQ1_0), QT.TQ1_0)  # unit blocks
    arrays["blk.1.ffn_down.scale"] = (np.array([0.0123456], np.float32), None)
    t = read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays)).tensors["model.layers.1.mlp.down_proj.weight"]
    assert t.scale == float(np.float32(0.0123456)) and np.array_equal(t.data, q)


# ------------------------------------------------------------------------- float tensor types

@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0])
def test_float_types_round_trip_within_their_precision(tmp_path, qtype):
    cfg = _cfg(tie_word_embeddings=False)
    m = _model(cfg)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((NKV * HD, H), dtype=np.float32)
    arrays = _arrays(m, head_type=qtype)
    arrays["blk.0.attn_k.weight"] = (w, None) if qtype == QT.F32 else \
        ((w.astype(np.float16), None) if qtype == QT.F16 else (quantize(w, qtype), qtype))
    back = read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))
    got = back.tensors["model.layers.0.self_attn.k_proj.weight"]
    emb = back.tensors["model.embed_tokens.weight"].data
    e32 = m.tensors["model.embed_tokens.weight"].data
    assert got.kind == "float"
    if qtype == QT.F32:
        assert np.array_equal(got.data, w) and np.array_equal(emb, e32)
    elif qtype == QT.F16:
        assert got.data.dtype == np.float16 and np.array_equal(got.data, w.astype(np.float16))
        assert np.array_equal(emb, e32.astype(np.float16))
    elif qtype == QT.BF16:
        want = bf16_to_f32(quantize(w, QT.BF16).view(np.uint16))
        assert np.array_equal(got.data, want) and np.allclose(got.data, w, rtol=2 ** -8)
    else:  # Q8_0: within half a step of each 32-block's scale
        step = np.abs(w).reshape(-1, 32).max(axis=1) / 127
        err = np.abs(got.data - w).reshape(-1, 32).max(axis=1)
        assert (err <= step * (0.5 + 127 * 2 ** -11)).all()  # rounding, plus d held as float16
        assert np.allclose(emb, e32, atol=np.abs(e32).max() / 127)
    assert back.config.tie_word_embeddings is False and "lm_head.weight" in back.tensors


def test_q8_0_with_equal_row_scales_becomes_int8(tmp_path):
    cfg = _cfg()
    m = _model(cfg)
    q = np.random.default_rng(2).integers(-127, 128, size=(I, H), dtype=np.int8)
    q[:, ::32] = 127  # every 32-block reaches 127: d = row scale in every block
    s = np.linspace(0.001, 0.002, I, dtype=np.float32).astype(np.float16).astype(np.float32)
    arrays = _arrays(m)
    arrays["blk.0.ffn_up.weight"] = (quantize(q * s[:, None], QT.Q8_0), QT.Q8_0)
    t = read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays)).tensors["model.layers.0.mlp.up_proj.weight"]
    assert t.kind == "int8" and np.array_equal(t.data, q) and np.array_equal(t.scales, s)


# -------------------------------------------------------------------------------- metadata

def test_metadata_to_decoder_config(tmp_path):
    cfg = _cfg("llama", rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=4096)
    m = _model(cfg)
    back = read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, _arrays(m), arch="llama"))
    c = back.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (V, H, I, L)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (NH, NKV, HD)
    assert (c.max_position_embeddings, c.rms_norm_eps, c.rope_theta) == (4096, 1e-6, 10000.0)
    assert (c.hidden_act, c.sub_norms, c.tie_word_embeddings) == ("silu", False, True)
    assert (c.bos_token_id, c.eos_token_ids) == (1, [2])


def test_bitnet_activation_key_and_default(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    assert read_gguf(_raw_gguf(tmp_path / "a.gguf", cfg, arrays)).config.hidden_act == "relu2"
    p = _raw_gguf(tmp_path / "b.gguf", cfg, arrays, extra_meta={"bitnet.hidden_activation": "silu"})
    assert read_gguf(p).config.hidden_act == "silu"
    assert read_gguf(tmp_path / "a.gguf", hidden_act="silu").config.hidden_act == "silu"


# -------------------------------------------------------------------------- q/k permutation

def test_permutation_matches_llama_cpp_pairs():
    # one head of 4: HF rotates (0, 2) and (1, 3); llama.cpp's NORM rope rotates adjacent rows
    rows = np.arange(4).reshape(4, 1)
    assert permute_rope_rows(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]
    w = np.random.default_rng(3).standard_normal((NH * HD, H)).astype(np.float32)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, NH), NH), w)
    assert not np.array_equal(permute_rope_rows(w, NH), w)


def test_llama_q_k_are_unpermuted_and_bitnet_are_not(tmp_path):
    for arch in ("llama", "bitnet"):
        cfg = _cfg(arch)
        m = _model(cfg)
        arrays = _arrays(m)
        for key, n in (("attn_q", NH), ("attn_k", NKV)):
            for i in range(L):
                part = "q_proj" if key == "attn_q" else "k_proj"
                t = m.tensors[f"model.layers.{i}.self_attn.{part}.weight"]
                q = permute_rope_rows(t.data, n) if arch == "llama" else t.data
                arrays[f"blk.{i}.{key}.weight"] = (quantize(q.astype(np.float32) * np.float32(t.scale), QT.TQ2_0),
                                                   QT.TQ2_0)
        back = read_gguf(_raw_gguf(tmp_path / f"{arch}.gguf", cfg, arrays, arch=arch))
        for n, t in m.tensors.items():
            if t.kind == "ternary":
                assert np.array_equal(back.tensors[n].data, t.data), (arch, n)


# ------------------------------------------------------------------------------ the writer

@pytest.mark.parametrize("arch", ["bitnet", "llama"])
@pytest.mark.parametrize("ttype", ["TQ2_0", "TQ1_0"])
def test_writer_round_trip(tmp_path, arch, ttype):
    cfg = _cfg(arch, tie_word_embeddings=arch == "bitnet")
    m = _model(cfg)
    back = read_gguf(write_gguf(m, tmp_path / "w.gguf", ternary_type=ttype, head_type="F16"))
    assert back.config == cfg
    for n, t in m.tensors.items():
        b = back.tensors[n]
        if t.kind == "ternary":
            assert np.array_equal(b.data, t.data) and b.scale == float(np.float16(t.scale)), n
        elif "embed" in n or "lm_head" in n:
            assert np.array_equal(b.data, t.data.astype(np.float16)), n
        else:
            assert np.array_equal(b.data, t.data), n


def test_writer_scale_tensors_keep_g_exact(tmp_path):
    m = _model(_cfg())
    back = read_gguf(write_gguf(m, tmp_path / "s.gguf", scale_tensors=True))
    for n, t in m.tensors.items():
        if t.kind == "ternary":
            assert back.tensors[n].scale == t.scale and np.array_equal(back.tensors[n].data, t.data)


def test_writer_from_converted_model_dir(tmp_path):
    from bitnet_edge.sdk.convert.convert import convert

    m = _model(_cfg())
    out = convert(m, tmp_path / "conv", precision="ternary", head="int8")
    back = read_gguf(write_gguf(out, tmp_path / "d.gguf", ternary_type="TQ1_0"))
    for n, t in m.tensors.items():
        if t.kind == "ternary":
            assert np.array_equal(back.tensors[n].data, t.data)


def test_writer_rejects_what_llama_cpp_cannot_run(tmp_path):
    with pytest.raises(InputError, match="tie"):
        write_gguf(_model(_cfg(tie_word_embeddings=False)), tmp_path / "x.gguf")
    with pytest.raises(InputError, match="ternary_type"):
        write_gguf(_model(_cfg()), tmp_path / "x.gguf", ternary_type="Q4_0")
    with pytest.raises(InputError, match="SiLU"):
        write_gguf(_model(_cfg("llama", hidden_act="relu2")), tmp_path / "x.gguf")


# ------------------------------------------------------------------------------- bad input

@pytest.fixture
def good(tmp_path) -> Path:
    return write_gguf(_model(_cfg()), tmp_path / "good.gguf")


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=r"nope\.gguf: missing"):
        read_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(FormatError, match=r"junk\.gguf"):
        read_gguf(p)


def test_truncated_in_tensor_data_names_the_tensor(good, tmp_path):
    data = good.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(FormatError, match=r"cut\.gguf: truncated: tensor '[\w.]+'"):
        read_gguf(p)


@pytest.mark.parametrize("keep", [10, 200, 3000])
def test_truncated_in_header(good, tmp_path, keep):
    p = tmp_path / "head.gguf"
    p.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(FormatError, match=r"head\.gguf"):
        read_gguf(p)


def test_missing_tensor(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    del arrays["blk.1.ffn_sub_norm.weight"]
    with pytest.raises(FormatError, match=r"m\.gguf: tensor 'blk\.1\.ffn_sub_norm\.weight'.*missing"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))


def test_unknown_architecture(tmp_path):
    cfg = _cfg()
    with pytest.raises(FormatError, match=r"m\.gguf: architecture 'gpt2' is not supported"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, _arrays(_model(cfg)), arch="gpt2"))


def test_missing_metadata_key(tmp_path):
    cfg = _cfg()
    p = _raw_gguf(tmp_path / "m.gguf", cfg, _arrays(_model(cfg)), meta_skip=("feed_forward_length",))
    with pytest.raises(FormatError, match=r"m\.gguf: metadata key 'bitnet\.feed_forward_length' is missing"):
        read_gguf(p)


def test_wrong_shape(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    arrays["blk.0.attn_norm.weight"] = (np.ones(H + 32, np.float32), None)
    with pytest.raises(FormatError, match=r"m\.gguf: tensor 'blk\.0\.attn_norm\.weight'.*shape \[288\]"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))


def test_unsupported_type(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    w = np.zeros((NKV * HD, H), np.float32)
    arrays["blk.0.attn_v.weight"] = (quantize(w, QT.Q4_0) if hasattr(gguf.quants, "Q4_0") else w, QT.Q4_0)
    with pytest.raises(FormatError, match=r"tensor 'blk\.0\.attn_v\.weight' has type Q4_0"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))


def test_unknown_tensor(tmp_path):
    cfg = _cfg()
    arrays = _arrays(_model(cfg))
    arrays["rope_freqs.weight"] = (np.ones(HD // 2, np.float32), None)
    with pytest.raises(FormatError, match=r"tensor 'rope_freqs\.weight' is not part of a bitnet decoder"):
        read_gguf(_raw_gguf(tmp_path / "m.gguf", cfg, arrays))


# ------------------------------------------------------------------- llama.cpp runs our files

@pytest.mark.parametrize("arch", ["bitnet", "llama"])
def test_llama_cpp_runs_our_gguf_like_our_runtime(tmp_path, arch):
    """Logits of llama.cpp (bench extra) on our GGUF against our runtime on the same weights:
    only activation quantization differs (llama.cpp: Q8_K per 256-block; ours: per-token int8)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from bitnet_edge.sdk import load_model
    from bitnet_edge.sdk.convert.convert import convert

    cfg = _cfg(arch, hidden_act="silu", rope_theta=10000.0)  # this llama.cpp's bitnet FFN is SiLU-gated
    m = _model(cfg)
    for n, t in m.tensors.items():
        if t.kind == "ternary":
            t.scale = float(np.float16(1 / np.sqrt(t.data.shape[1] * 2 / 3)))
    ours = load_model(convert(m, tmp_path / "conv", precision="ternary", head="f32"))
    p = write_gguf(m, tmp_path / "l.gguf", head_type="F16")
    llm = llama_cpp.Llama(model_path=str(p), n_ctx=64, n_batch=32, n_threads=1, verbose=False, logits_all=True)
    ids = np.random.default_rng(4).integers(3, V, size=20).tolist()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    mine = ours.logits(ids)
    assert np.abs(mine - theirs).max() / (mine.max() - mine.min()) < 0.03
    assert (mine.argmax(1) == theirs.argmax(1)).mean() >= 0.9
