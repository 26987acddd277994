"""The BitNet decoder against transformers' BitNetForCausalLM (CPU torch), both checkpoint layouts."""

import numpy as np
import pytest

from tests.support.hf_fixtures import (load_reference, reference_logits, save_bitnet_float, save_bitnet_packed,
                               torch)
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import read_hf
from bitnet_edge.sdk.errors import FormatError, InputError, RangeError
from bitnet_edge.sdk.models.errors import ContextLengthError

PROMPT = [1, 17, 250, 33, 7, 100, 101, 102, 3, 411, 12, 9]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    f = save_bitnet_float(root / "float")
    p = save_bitnet_packed(f, root / "packed")
    return {"float": f, "packed": p}


@pytest.fixture(scope="module", params=["float", "packed"])
def pair(request, checkpoints, tmp_path_factory):
    src = checkpoints[request.param]
    out = convert(read_hf(src), tmp_path_factory.mktemp("conv") / request.param, precision="ternary", head="f32")
    return request.param, load_reference(src), load_model(out)


def test_logits_match_transformers(pair):
    layout, ref_model, ours = pair
    ref = reference_logits(ref_model, PROMPT)
    got = ours.logits(PROMPT)
    rel = np.abs(got - ref).max() / (ref.max() - ref.min())
    top1 = (got.argmax(1) == ref.argmax(1)).mean()
    print(f"\n[{layout}] max |diff| / logit range = {rel:.2e}, top-1 agreement = {top1:.0%}")
    assert rel < 1e-4 and top1 == 1.0


def test_greedy_32_tokens_identical(pair):
    layout, ref_model, ours = pair
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor([PROMPT]), max_new_tokens=32, do_sample=False,
                                 min_new_tokens=32, eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    got = ours.generate(PROMPT, max_new_tokens=32, stop=[])
    assert len(got) == 32 and got == ref


def test_kv_cache_decode_equals_full_forward(pair):
    _, _, ours = pair
    full = ours.logits(PROMPT)
    cache = ours.new_cache(len(PROMPT))
    ours.forward(np.array(PROMPT[:5]), cache)
    step = [ours.forward(np.array([t]), cache)[-1] for t in PROMPT[5:]]
    np.testing.assert_allclose(np.stack(step), full[5:], rtol=1e-4, atol=1e-4 * np.abs(full).max())


def test_ternary_weights_survive_both_layouts(checkpoints):
    a, b = read_hf(checkpoints["float"]), read_hf(checkpoints["packed"])
    name = "model.layers.1.mlp.down_proj.weight"
    assert b.tensors[name].kind == "ternary" and a.tensors[name].kind == "float"
    assert b.source.details["packed_ternary_layers"] == str(7 * 2)


def test_sampling_is_seeded_and_bounded(pair):
    _, _, m = pair
    a = m.generate(PROMPT, 16, temperature=0.8, top_k=20, top_p=0.9, seed=7, stop=[])
    b = m.generate(PROMPT, 16, temperature=0.8, top_k=20, top_p=0.9, seed=7, stop=[])
    c = m.generate(PROMPT, 16, temperature=0.8, top_k=20, top_p=0.9, seed=8, stop=[])
    assert a == b and len(a) == 16 and a != c
    topk1 = m.generate(PROMPT, 8, temperature=1.5, top_k=1, seed=3, stop=[])
    assert topk1 == m.generate(PROMPT, 8, stop=[])  # top_k=1 is greedy
    with pytest.raises(RangeError):
        m.generate(PROMPT, 4, temperature=-1)
    with pytest.raises(RangeError):
        m.generate(PROMPT, 4, temperature=1, top_p=0)


def test_stop_tokens_and_streaming(pair):
    _, _, m = pair
    greedy = m.generate(PROMPT, 10, stop=[])
    seen = []
    out = m.generate(PROMPT, 10, stop=[greedy[3]], on_token=seen.append)
    assert out == greedy[: greedy.index(greedy[3]) + 1] and seen == out


def test_context_limit_and_bad_ids(pair):
    _, _, m = pair
    with pytest.raises(ContextLengthError) as exc:
        m.generate(PROMPT, 300)
    assert exc.value.limit == 256
    with pytest.raises(InputError, match=r"\[0, 512\)"):
        m.logits([1, 2, 512])
    with pytest.raises(InputError):
        m.logits([])


def test_weights_are_memory_mapped_not_copied(pair):
    _, _, m = pair
    packed = m.layers[0].q._t.packed
    base = packed
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    import mmap

    assert isinstance(base, mmap.mmap)


def test_bad_checkpoints_are_clear_errors(checkpoints, tmp_path):
    import json
    import shutil

    with pytest.raises(FormatError, match="config.json: missing"):
        read_hf(tmp_path)
    bad = tmp_path / "unknown"
    shutil.copytree(checkpoints["float"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt_neox")))
    with pytest.raises(FormatError, match="unknown architecture model_type='gpt_neox'"):
        read_hf(bad)
    (bad / "config.json").write_text(json.dumps(dict(cfg, hidden_size=64)))
    with pytest.raises(FormatError, match="model.safetensors: tensor 'model.embed_tokens.weight' has shape"):
        read_hf(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="model.safetensors: .*truncated"):
        read_hf(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(FormatError, match="no \\*.safetensors"):
        read_hf(bad)


def test_int8_embeddings_shared_with_a_tied_int8_head(tmp_path):
    src = save_bitnet_float(tmp_path / "tied", tie_word_embeddings=True)
    ref = load_model(convert(read_hf(src), tmp_path / "f32", precision="ternary", head="f32", embeddings="f32"))
    m = load_model(convert(read_hf(src), tmp_path / "i8", precision="ternary", head="int8", embeddings="int8"))
    names = [t.name for t in m.manifest.tensors]
    assert "lm_head.weight" not in names and m.manifest.tensor("model.embed_tokens.weight").format == "int8"
    a, b = ref.logits(PROMPT), m.logits(PROMPT)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    with pytest.raises(InputError, match="embeddings"):
        convert(read_hf(src), tmp_path / "bad", embeddings="ternary")
