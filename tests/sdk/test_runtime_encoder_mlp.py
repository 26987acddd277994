"""The BERT encoder against transformers' BertModel; the MLP classifier; the npz importer."""

import numpy as np
import pytest

from tests.support.hf_fixtures import torch, transformers
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import read_hf
from bitnet_edge.sdk.convert.npz import read_npz
from bitnet_edge.sdk.errors import FormatError, InputError, ShapeError

SEQS = [[2, 45, 67, 89, 3], [2, 11, 12, 3], [2, 300, 301, 302, 303, 304, 3]]


def _bert_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in "the a sensor reads hot cold engine is fine warm door open closed".split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=400, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=192, max_position_embeddings=64)
    ref = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ref.save_pretrained(root / "hf")
    _bert_tokenizer(root / "hf")
    return ref, root


def _ref_embed(ref, seqs):
    t = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in seqs])
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_bert_float_matches_transformers(bert):
    ref, root = bert
    m = load_model(convert(read_hf(root / "hf"), root / "f32", precision="f32"))
    got, want = m.embed(SEQS), _ref_embed(ref, SEQS)
    assert got.shape == (3, 96)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bert_text_input_uses_the_tokenizer(bert):
    _, root = bert
    m = load_model(convert(read_hf(root / "hf"), root / "tok", precision="f32"))
    a = m.embed(["the engine is warm", "door open"])
    ids = [e.ids for e in m.tokenizer.encode_batch(["the engine is warm", "door open"])]
    np.testing.assert_allclose(a, m.embed(ids), atol=1e-6)


def test_bert_quantized_plans_stay_close(bert):
    ref, root = bert
    want = _ref_embed(ref, SEQS)
    for precision, floor in (("int8", 0.99), ("ternary", 0.5)):
        got = load_model(convert(read_hf(root / "hf"), root / precision, precision=precision)).embed(SEQS)
        cos = float(np.mean(np.sum(got * want, axis=1)))
        print(f"\nbert {precision}: mean cosine to float = {cos:.4f}")
        assert cos > floor


def _mlp_npz(path, rng, sizes=(64, 48, 10), act="relu"):
    arrays = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        arrays[f"layers.{i}.weight"] = rng.standard_normal((b, a)).astype(np.float32) / np.sqrt(a)
        arrays[f"layers.{i}.bias"] = rng.standard_normal(b).astype(np.float32) * 0.1
    arrays["activation"] = np.array(act)
    arrays["input_mean"] = np.zeros(sizes[0], np.float32)
    arrays["input_std"] = np.full(sizes[0], 2.0, np.float32)
    np.savez(path, **arrays)
    return arrays


def _mlp_reference(arrays, x):
    h = (x - arrays["input_mean"]) / arrays["input_std"]
    n = len([k for k in arrays if k.endswith(".weight")])
    for i in range(n):
        h = h @ arrays[f"layers.{i}.weight"].T + arrays[f"layers.{i}.bias"]
        if i < n - 1:
            h = np.maximum(h, 0)
    return h


def test_mlp_batch_inference_at_each_precision(tmp_path, rng):
    arrays = _mlp_npz(tmp_path / "m.npz", rng)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    want = _mlp_reference(arrays, x)
    f32 = load_model(convert(read_npz(tmp_path / "m.npz"), tmp_path / "f32", precision="f32"))
    np.testing.assert_allclose(f32.predict(x), want, rtol=1e-5, atol=1e-5)
    for precision in ("int8", "ternary"):
        m = load_model(convert(read_npz(tmp_path / "m.npz"), tmp_path / precision, precision=precision))
        got = m.predict(x)
        assert got.shape == (32, 10) and got.dtype == np.float32
        agree = (got.argmax(1) == want.argmax(1)).mean()
        assert agree >= (0.9 if precision == "int8" else 0.5), (precision, agree)
    assert f32.predict(x[0]).shape == (1, 10)


def test_mlp_bad_inputs(tmp_path, rng):
    _mlp_npz(tmp_path / "m.npz", rng)
    m = load_model(convert(read_npz(tmp_path / "m.npz"), tmp_path / "o", precision="ternary"))
    with pytest.raises(ShapeError, match="has 63 features, the model takes 64"):
        m.predict(np.zeros((2, 63), np.float32))
    with pytest.raises(InputError):
        m.predict(np.full((1, 64), np.nan, np.float32))
    np.savez(tmp_path / "bad.npz", **{"layers.0.weight": np.zeros((4, 3), np.float32),
                                      "layers.1.weight": np.zeros((2, 5), np.float32)})
    with pytest.raises(FormatError, match="bad.npz: tensor 'layers.1.weight' takes 5 inputs"):
        read_npz(tmp_path / "bad.npz")
    with pytest.raises(FormatError, match="no such file"):
        read_npz(tmp_path / "missing.npz")


def test_auto_plan_meets_its_budget_and_is_recorded(tmp_path, rng):
    arrays = _mlp_npz(tmp_path / "m.npz", rng, sizes=(64, 96, 96, 10))
    calib = rng.standard_normal((64, 64)).astype(np.float32)
    out = convert(read_npz(tmp_path / "m.npz"), tmp_path / "auto", precision="auto", calibration=calib,
                  budget=0.995)
    m = load_model(out)
    man = m.manifest
    assert man.calibration["cosine"] >= 0.995 and man.calibration["budget"] == 0.995
    assert set(man.precision.values()) <= {"ternary", "int8", "f16"}
    held_out = rng.standard_normal((64, 64)).astype(np.float32)
    want = _mlp_reference(arrays, held_out)
    got = m.predict(held_out)
    cos = np.mean(np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1))
    assert cos > 0.98
    with pytest.raises(InputError, match="calibration"):
        convert(read_npz(tmp_path / "m.npz"), tmp_path / "x", precision="auto")
