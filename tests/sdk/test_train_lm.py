"""The stdlib language model: backward pass, QAT numerics vs our runtime, export, chat template, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.chat import render_chat
from bitnet_edge.sdk.convert.chat_template import derive_chat_template
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import read_hf, unpack_hf_packed
from bitnet_edge.sdk.train import corpus, export, lm, trainer
from bitnet_edge.sdk.train import tokenizer as tk
from bitnet_edge.sdk.train.pipeline import train_lm
from bitnet_edge.sdk.train.report import REPORT_FILE, LmRecipe, LmTrainingReport

TINY = {"model": {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "max_position": 128},
        "train": {"steps": 40, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "warmup_steps": 4},
        "float_lr": 1e-2, "max_train_bytes": 80_000, "max_heldout_bytes": 20_000, "eval_windows": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny end-to-end run, two training processes (the path the demo takes on 2 cores)."""
    out = tmp_path_factory.mktemp("lm")
    report = train_lm(out, LmRecipe.model_validate(TINY), jobs=2)
    return out, report


# ---- the model ---------------------------------------------------------------------------------------

def test_backward_matches_finite_differences():
    """Float mode in float64: every parameter's gradient against central differences."""
    cfg = lm.LmConfig(vocab_size=37, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4, num_kv_heads=2)
    rng = np.random.default_rng(0)
    p = {k: v.astype(np.float64) + rng.standard_normal(v.shape) * 0.3 for k, v in lm.init_params(cfg, 1).items()}
    ids, y = rng.integers(0, 37, (2, 7)), rng.integers(0, 37, (2, 7))
    _, grads = lm.loss_and_grads(p, cfg, ids, y, "float")
    for name, w in p.items():
        flat = w.reshape(-1)
        for j in rng.choice(flat.size, min(4, flat.size), replace=False):
            old = flat[j]
            flat[j] = old + 1e-5
            up = lm.loss_and_grads(p, cfg, ids, y, "float")[0]
            flat[j] = old - 1e-5
            down = lm.loss_and_grads(p, cfg, ids, y, "float")[0]
            flat[j] = old
            num, got = (up - down) / 2e-5, grads[name].reshape(-1)[j]
            assert abs(num - got) <= 1e-6 + 1e-4 * abs(num), (name, j, num, got)


def test_ternary_forward_uses_deployed_weights():
    cfg = lm.LmConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    p = lm.init_params(cfg, 3)
    w = lm.quantized_weights(p, "ternary")
    q = w["model.layers.0.mlp.up_proj.weight"]
    g = np.abs(p["model.layers.0.mlp.up_proj.weight"]).mean()
    assert set(np.unique(np.round(q / np.float32(g), 4))) <= {-1.0, 0.0, 1.0}
    e = w[lm.EMBED] / np.abs(w[lm.EMBED]).max(1, keepdims=True) * 127  # int8 rows: integers up to 127
    assert np.allclose(e, np.rint(e), atol=1e-3) and not np.allclose(w[lm.EMBED], p[lm.EMBED])
    ternary, flt = (lm.sequence_logits(p, cfg, [1, 2, 3], m) for m in ("ternary", "float"))
    assert not np.allclose(ternary, flt)


def test_training_lowers_heldout_perplexity():
    cfg = lm.LmConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    rng = np.random.default_rng(5)
    # a stream with structure: a repeated 16-token phrase with noise
    phrase = rng.integers(0, 64, 16)
    stream = np.concatenate([np.where(rng.random(16) < 0.1, rng.integers(0, 64, 16), phrase) for _ in range(400)])
    held = trainer.eval_windows(stream[-800:], 8, 32)
    for mode in lm.MODES:
        before = lm.init_params(cfg, 0)
        res = trainer.train(cfg, trainer.TrainConfig(steps=30, batch_size=8, seq_len=32, lr=2e-2, warmup_steps=3),
                            stream[:-800], stream[:0], mode)
        ppl = {n: np.exp(trainer.windows_nll(lambda ids, q=q: lm.sequence_logits(q, cfg, ids, mode), held))
               for n, q in (("before", before), ("after", res.params))}
        assert ppl["before"] > 40 and ppl["after"] < ppl["before"] / 4, (mode, ppl)
        assert res.losses[-1] < res.losses[0]


# ---- corpus, tokenizer, chat template -------------------------------------------------------------------

def test_stdlib_split_is_deterministic_and_disjoint():
    a = corpus.load_stdlib(max_train_bytes=50_000, max_heldout_bytes=20_000)
    b = corpus.load_stdlib(max_train_bytes=50_000, max_heldout_bytes=20_000)
    assert a.train_files == b.train_files and a.heldout_files == b.heldout_files
    assert not set(a.train_files) & set(a.heldout_files)
    assert all(not f.startswith("_") for f in a.train_files + a.heldout_files)
    # the split of a name does not depend on the other names
    tr, held = corpus.split_names(["x.py", "os.py", "json.py"] + a.heldout_files, 0.1)
    assert set(a.heldout_files) <= set(held)


def test_docstring_chats():
    src = 'def f():\n    """Return the number one.\n\n    More."""\n\nclass C:\n    """A thing that holds."""\n' \
          '    def m(self):\n        """Method doc here."""\n    def _p(self):\n        """hidden"""\n'
    assert corpus.docstring_chats("mod", src) == [
        ("What does the function mod.f do?", "Return the number one."),
        ("What does the class mod.C do?", "A thing that holds."),
        ("What does the function mod.C.m do?", "Method doc here.")]
    assert corpus.docstring_chats("bad", "def (:") == []


def test_chat_template_three_ways_agree(run):
    """Our data-only template, the Jinja template in tokenizer_config.json and the trainer's token sequences."""
    out, _ = run
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    derived, why = derive_chat_template(tk.JINJA_CHAT_TEMPLATE, tk.BOS, tk.EOS)
    assert why == "" and derived == tk.CHAT_TEMPLATE
    text = render_chat(tk.CHAT_TEMPLATE, [{"role": "user", "content": "What does x do?"},
                                          {"role": "assistant", "content": "It adds."}], add_generation_prompt=False)
    assert tok.encode(text, add_special_tokens=False).ids == tk.encode_chat(tok, "What does x do?", "It adds.")
    man = load_model(out / "models" / "ternary").manifest
    assert man.chat_template == tk.CHAT_TEMPLATE


def test_chat_template_matches_transformers(run):
    transformers = pytest.importorskip("transformers")
    out, _ = run
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out / "hf" / "ternary"))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does os.path.join do?"}]
    want = render_chat(tk.CHAT_TEMPLATE, msgs)
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == want


def test_derive_chat_template_refuses_what_it_cannot_express():
    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tpl, why = derive_chat_template(chatml, "", "<|im_end|>")
    assert why == "" and tpl.turns["user"].prefix == "<|im_start|>user\n" and tpl.stop == ["<|im_end|>"]
    assert tpl.generation_prompt == "<|im_start|>assistant\n"
    dated = "{{ 'Today is ' ~ messages|length }}" + chatml  # text that depends on the conversation
    tpl, why = derive_chat_template(dated, "", "")
    assert tpl is None and why
    tpl, why = derive_chat_template("{% for m in messages %}", "", "")
    assert tpl is None and "parse" in why


# ---- export and conversion ------------------------------------------------------------------------------

def test_hf_packing_round_trips():
    rng = np.random.default_rng(2)
    for rows in (8, 10):
        q = rng.integers(-1, 2, (rows, 12)).astype(np.int8)
        assert np.array_equal(unpack_hf_packed(export.pack_hf(q), rows), q)
    exact = 0
    for g in rng.random(1000).astype(np.float32) * 0.1 + 1e-4:
        back = np.float32(1.0) / lm.inverse_scale(g)
        assert back == lm.deployed_scale(g) and abs(back - g) <= np.spacing(g)
        exact += back == g
    assert exact > 800


def test_runtime_matches_trainer(run):
    """The converted ternary model in our runtime: the trainer's logits and greedy tokens."""
    out, report = run
    # float sums in another order can move an activation across an int8 rounding boundary now and then:
    # logits agree to ~1e-5 with rare ~1e-2 excursions; the greedy tokens must be the same
    scale = max(1.0, report.parity.logit_scale)
    assert report.parity.mean_abs_logit_diff < 1e-4 * scale and report.parity.max_abs_logit_diff < 1e-2 * scale
    assert len(report.parity.greedy) == 5 and all(g.match and len(g.runtime_ids) > 0 for g in report.parity.greedy)
    rows = {m.name: m for m in report.models}
    assert rows["ternary"].heldout_ppl == pytest.approx(rows["ternary"].heldout_ppl_trainer, rel=1e-3)
    assert rows["float32"].heldout_ppl == pytest.approx(rows["float32"].heldout_ppl_trainer, rel=1e-4)
    vocab = TINY["model"]["vocab_size"]
    assert all(m.heldout_ppl < vocab / 2 for m in report.models)  # trained, not uniform
    assert rows["ternary"].weights_bytes < rows["float16"].weights_bytes < rows["float32"].weights_bytes
    saved = LmTrainingReport.model_validate_json((out / REPORT_FILE).read_text())
    assert saved == report


def test_float_export_matches_transformers(run):
    """The float checkpoint is a genuine BitNetForCausalLM: transformers computes the trainer's logits."""
    from tests.support.hf_fixtures import load_reference, reference_logits

    out, report = run
    ids = [0, 5, 17, 33, 100, 200, 7, 9, 250, 12]
    hf = load_reference(out / "hf" / "float")
    rt = load_model(out / "models" / "float32")
    ref, got = reference_logits(hf, ids), rt.logits(ids)
    assert np.abs(got - ref).max() / (ref.max() - ref.min()) < 1e-4


def test_ternary_export_matches_transformers(run, tmp_path):
    """The packed ternary checkpoint loads in transformers (offline BitNet) and agrees with our runtime
    converted with a float head (transformers' head is not quantized)."""
    from tests.support.hf_fixtures import load_reference, reference_logits

    out, _ = run
    ids = [0, 5, 17, 33, 100, 200, 7, 9, 250, 12]
    ref = reference_logits(load_reference(out / "hf" / "ternary"), ids)
    got = load_model(convert(read_hf(out / "hf" / "ternary"), tmp_path / "m", head="f32", embeddings="f32")).logits(ids)
    # as in test_runtime_matches_trainer: float sums in another order (the C decoder, transformers'
    # matmuls) move an activation across an int8 rounding boundary now and then
    err = np.abs(got - ref) / (ref.max() - ref.min())
    print(f"relative logit error: mean {err.mean():.2e}, max {err.max():.2e}")
    assert err.mean() < 1e-4 and err.max() < 1e-3, (err.mean(), err.max())  # numpy runtime: ~1e-7
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_cli_convert_and_run_the_export(run, tmp_path):
    out, report = run
    r = CliRunner().invoke(main, ["convert", str(out / "hf" / "ternary"), "-o", str(tmp_path / "m"),
                                  "--embeddings", "int8", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["chat_template"] is True and summary["layers_by_precision"]["ternary"] == 2 * 7
    r = CliRunner().invoke(main, ["run", str(tmp_path / "m"), "--prompt", "def ", "--max-new-tokens", "12", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    first = next(g for g in report.parity.greedy if g.prompt == "def ")
    assert res["ids"] == first.runtime_ids[:12] and len(res["ids"]) > 0


def test_cli_train_lm_reports(tmp_path):
    recipe = tmp_path / "recipe.json"
    tiny = json.loads(json.dumps(TINY))
    tiny["train"]["steps"] = 4
    tiny.update(eval_windows=2, max_train_bytes=30_000, max_heldout_bytes=10_000)
    recipe.write_text(json.dumps(tiny))
    r = CliRunner().invoke(main, ["train-lm", "--out", str(tmp_path / "o"), "--recipe", str(recipe), "--jobs", "1",
                                  "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [m["name"] for m in rep["models"]] == ["ternary", "float32", "float16", "ternary-ptq"]
    assert (tmp_path / "o" / REPORT_FILE).is_file()
    bad = CliRunner().invoke(main, ["train-lm", "--out", str(tmp_path / "p"), "--steps", "0"])
    assert bad.exit_code == 2 and "train.steps" in bad.output


def test_training_is_bit_reproducible_whatever_the_blas_thread_count():
    """Same seed, same weights: ``jobs`` (one training process, or two) and the machine's cores
    change how many threads the BLAS may use, and OpenBLAS rounds a matmul split over two threads
    differently; the trainer runs it on one.  The demo model's shapes (large enough for OpenBLAS to
    thread its matmuls), a few steps."""
    from threadpoolctl import threadpool_limits

    cfg = LmRecipe().model
    tc = trainer.TrainConfig(steps=4, batch_size=8, seq_len=64, seed=3)
    rng = np.random.default_rng(0)
    code, chats = rng.integers(0, cfg.vocab_size, 20_000), rng.integers(0, cfg.vocab_size, 5_000)
    runs = []
    for threads in (1, 2, 2):
        with threadpool_limits(threads):
            runs.append(trainer.train(cfg, tc, code, chats, "ternary"))
    for r in runs[1:]:
        assert r.losses == runs[0].losses
        for k, p in runs[0].params.items():
            assert np.array_equal(r.params[k], p), k
