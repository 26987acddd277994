"""``train_lm``: the standard library -> tokenizer -> ternary (QAT) and float models -> Hugging Face
checkpoints -> converted models -> checked in our runtime -> ``lm-training.json``.

Layout of ``out``::

    tokenizer.json                 byte-level BPE (special tokens and chat format: .tokenizer)
    hf/ternary/, hf/float/         Hugging Face BitNet checkpoints (.export)
    models/ternary/                converted: W1.58A8 projections, one int8 embedding/head matrix
    models/float32/, float16/      the float model converted at f32 / f16
    models/ternary-ptq/            the float model ternarized after training (what QAT is for)
    lm-training.json               LmTrainingReport

The two training runs are independent; with ``jobs`` = 2 they run side by side in two processes,
each on one BLAS thread (a 2-core machine trains both in the time of one).  Either way the trainer
runs its BLAS on one thread, so ``jobs`` and the core count never change the weights.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.errors import BitnetEdgeError
from bitnet_edge.sdk.train import corpus as corpus_mod
from bitnet_edge.sdk.train import export, lm, trainer
from bitnet_edge.sdk.train import tokenizer as tok_mod
from bitnet_edge.sdk.train.report import (CorpusReport, GreedyCheck, LmRecipe, LmTrainingReport, ModelReport,
                                          ParityReport, REPORT_FILE, Sample)

__all__ = ["train_lm", "TrainingFailed", "COMPLETION_PROMPTS", "MODEL_NAMES"]

COMPLETION_PROMPTS = ["def ", "import os\n", "class "]
MODEL_NAMES = {"ternary": "stdlib-lm", "float": "stdlib-lm-float"}
SAMPLING = {"temperature": 0.3, "top_k": 20}  # the samples shown; the parity check is greedy
GREEDY_TOKENS = 24
SAMPLE_TOKENS = 48
ZSTD_LEVEL = 19  # the bundle codec's default level

Stage = Callable[[str], object]
Step = Callable[[str, int, float], object]


class TrainingFailed(BitnetEdgeError):
    """A training run diverged or its worker process died."""

    def __init__(self, detail: str):
        super().__init__("training-failed", detail)


# ---- data ------------------------------------------------------------------------------------------

def _streams(tok, c: corpus_mod.Corpus) -> dict[str, np.ndarray]:
    def docs(texts: list[str]) -> np.ndarray:
        bos, eos = tok.token_to_id(tok_mod.BOS), tok.token_to_id(tok_mod.EOS)
        enc = tok.encode_batch(texts, add_special_tokens=False)
        return np.array([i for e in enc for i in (bos, *e.ids, eos)], np.int64)

    def chats(pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.array([i for q, a in pairs for i in tok_mod.encode_chat(tok, q, a)], np.int64)

    return {"code": docs(c.train_texts), "chats": chats(c.train_chats),
            "heldout_code": docs(c.heldout_texts), "heldout_chats": chats(c.heldout_chats)}


# ---- training, one process per model -----------------------------------------------------------------

def _train_cfg(recipe: LmRecipe, mode: str) -> trainer.TrainConfig:
    return recipe.train if mode == "ternary" else recipe.train.model_copy(update={"lr": recipe.float_lr})


def _worker(mode: str, recipe_json: str, code: np.ndarray, chats: np.ndarray, queue) -> None:
    recipe = LmRecipe.model_validate_json(recipe_json)
    every = max(1, recipe.train.steps // 100)
    try:  # the trainer runs the BLAS on one thread (reproducible weights, whatever `jobs`)
        res = trainer.train(recipe.model, _train_cfg(recipe, mode), code, chats, mode,
                            on_step=lambda s, loss: queue.put(("step", mode, s, loss)) if s % every == 0 else None)
        queue.put(("done", mode, res))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        queue.put(("error", mode, f"{type(exc).__name__}: {exc}"))


def _train_both(recipe: LmRecipe, s: dict[str, np.ndarray], jobs: int, on_step: Step | None) -> dict:
    modes = ("ternary", "float")
    if jobs <= 1:
        out = {}
        for mode in modes:
            cb = (lambda st, loss, m=mode: on_step(m, st, loss)) if on_step else None
            try:
                out[mode] = trainer.train(recipe.model, _train_cfg(recipe, mode), s["code"], s["chats"], mode,
                                          on_step=cb)
            except FloatingPointError as exc:
                raise TrainingFailed(f"{mode} training: {exc}") from None
        return out
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (BLAS, rich)
    q = ctx.Queue()
    procs = {m: ctx.Process(target=_worker, args=(m, recipe.model_dump_json(), s["code"], s["chats"], q),
                            name=f"train-lm-{m}", daemon=True) for m in modes}
    for p in procs.values():
        p.start()
    results: dict = {}
    try:
        while len(results) < len(modes):
            try:
                msg = q.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [m for m, p in procs.items() if m not in results and not p.is_alive()]
                if dead:
                    code = procs[dead[0]].exitcode
                    raise TrainingFailed(f"{dead[0]} training process exited with code {code}") from None
                continue
            kind, mode = msg[0], msg[1]
            if kind == "step" and on_step is not None:
                on_step(mode, msg[2], msg[3])
            elif kind == "done":
                results[mode] = msg[2]
                if on_step is not None:
                    on_step(mode, recipe.train.steps - 1, msg[2].losses[-1])
            elif kind == "error":
                raise TrainingFailed(f"{mode} training: {msg[2]}")
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
    return results


# ---- measuring ---------------------------------------------------------------------------------------

def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _zstd_bytes(path: Path) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(path.read_bytes()))


def _ppl(logits_of, windows: np.ndarray) -> float:
    return float(np.exp(trainer.windows_nll(logits_of, windows)))


def _prompt_ids(tok, text: str) -> list[int]:
    return [tok.token_to_id(tok_mod.BOS), *tok.encode(text, add_special_tokens=False).ids]


def _chat_ids(tok, template, question: str) -> list[int]:
    from bitnet_edge.sdk.chat import render_chat

    return tok.encode(render_chat(template, [{"role": "user", "content": question}]), add_special_tokens=False).ids


def train_lm(out: str | os.PathLike, recipe: LmRecipe | None = None, jobs: int | None = None,
             on_stage: Stage | None = None, on_step: Step | None = None) -> LmTrainingReport:
    """Run the whole recipe into ``out`` (its previous contents of the same names are replaced)."""
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.hf import read_hf
    from bitnet_edge.sdk.models import load_model

    t_start = time.perf_counter()
    recipe = recipe or LmRecipe()
    jobs = max(1, min(2, os.cpu_count() or 1)) if jobs is None else jobs
    stage = on_stage or (lambda _t: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mc, seq = recipe.model, recipe.train.seq_len

    stage("reading the standard library")
    c = corpus_mod.load_stdlib(recipe.heldout_fraction, max_train_bytes=recipe.max_train_bytes,
                               max_heldout_bytes=recipe.max_heldout_bytes)
    stage(f"training a {mc.vocab_size}-token byte-level BPE tokenizer")
    tok = tok_mod.train_tokenizer(c.train_texts, mc.vocab_size)
    tok.save(str(out / "tokenizer.json"))
    s = _streams(tok, c)
    stage(f"training ternary (QAT) and float models, {recipe.train.steps} steps each, {jobs} process(es)")
    runs = _train_both(recipe, s, jobs, on_step)

    stage("exporting Hugging Face checkpoints and converting them")
    hf = {m: export.export_hf(out / "hf" / m, runs[m].params, mc, tok, ternary=m == "ternary", name=MODEL_NAMES[m])
          for m in ("ternary", "float")}
    conversions = [("ternary", "ternary", "ternary", {"precision": "ternary", "embeddings": "int8"},
                    "W1.58A8, int8 embeddings/head"),
                   ("float32", "float", "float", {"precision": "f32"}, "f32"),
                   ("float16", "float", "float", {"precision": "f16", "embeddings": "f16"}, "f16"),
                   ("ternary-ptq", "float", "float", {"precision": "ternary", "embeddings": "int8"},
                    "W1.58A8, int8 embeddings/head, ternarized after float training (no QAT)")]
    dirs = {}
    for name, src, _, kw, _ in conversions:
        dirs[name] = convert(read_hf(hf[src]), out / "models" / name, **kw)

    stage("measuring held-out perplexity in the trainer and in our runtime")
    code_w = trainer.eval_windows(s["heldout_code"], recipe.eval_windows, seq)
    chat_w = trainer.eval_windows(s["heldout_chats"], max(1, recipe.eval_windows // 4), seq)
    qw = {m: lm.quantized_weights(runs[m].params, m) for m in runs}
    trainer_ppl = {m: _ppl(lambda ids, m=m: lm.sequence_logits(runs[m].params, mc, ids, m, weights=qw[m]), code_w)
                   for m in runs}
    rows = []
    loaded = {}
    for name, src, mode, _, deployed in conversions:
        rt = loaded[name] = load_model(dirs[name])
        own = name in ("ternary", "float32")
        r = runs[mode]
        wfile = dirs[name] / "weights.safetensors"
        rows.append(ModelReport(
            name=name, trained="ternary-qat" if mode == "ternary" else "float", deployed=deployed,
            train_seconds=round(r.seconds, 2) if own else None,
            train_cpu_seconds=round(r.cpu_seconds, 2) if own else None, train_tokens=r.tokens if own else None,
            final_train_loss=float(np.mean(r.losses[-10:])) if own else None,
            heldout_ppl_trainer=trainer_ppl[mode] if own else None,
            heldout_ppl=_ppl(rt.logits, code_w), heldout_chat_ppl=_ppl(rt.logits, chat_w),
            model_dir=str(dirs[name]), weights_bytes=wfile.stat().st_size, model_dir_bytes=_dir_bytes(dirs[name]),
            weights_zstd_bytes=_zstd_bytes(wfile)))

    stage("checking the runtime against the trainer (logits, greedy tokens)")
    rt = loaded["ternary"]
    template = rt.manifest.chat_template
    if template is None:
        raise TrainingFailed("the converted model lost its chat template")
    p = runs["ternary"].params
    window = code_w[0][:-1]
    diff = np.abs(rt.logits(window) - lm.sequence_logits(p, mc, window, "ternary", weights=qw["ternary"]))
    stop = set(rt.cfg.eos_token_ids)
    questions = [c.train_chats[0][0], c.heldout_chats[0][0]]
    prompts = ([(t, _prompt_ids(tok, t)) for t in COMPLETION_PROMPTS]
               + [(q, _chat_ids(tok, template, q)) for q in questions])
    checks = []
    for text, ids in prompts:
        mine = lm.greedy(p, mc, ids, GREEDY_TOKENS, "ternary", stop=stop)
        theirs = rt.generate(ids, GREEDY_TOKENS)
        checks.append(GreedyCheck(prompt=text, trainer_ids=mine, runtime_ids=theirs, match=mine == theirs))
    parity = ParityReport(max_abs_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                          logit_scale=float(np.abs(rt.logits(window)).max()), greedy=checks)
    samples = []
    for seed, (text, ids) in enumerate(prompts):
        new = rt.generate(ids, SAMPLE_TOKENS, seed=seed, **SAMPLING)
        kind = "chat" if text in questions else "completion"
        samples.append(Sample(kind=kind, prompt=text, text=tok.decode(new, skip_special_tokens=True), seed=seed,
                              **SAMPLING))

    report = LmTrainingReport(
        recipe=recipe,
        corpus=CorpusReport(root=c.root, python=platform.python_version(), train_modules=len(c.train_files),
                            heldout_modules=[f[:-3] for f in c.heldout_files], train_bytes=c.train_bytes,
                            heldout_bytes=c.heldout_bytes, train_tokens=int(len(s["code"])),
                            train_chats=len(c.train_chats), heldout_tokens=int(len(s["heldout_code"])),
                            bytes_per_token=c.train_bytes / max(1, len(s["code"]))),
        hf_dirs={m: str(d) for m, d in hf.items()}, models=rows, parity=parity, samples=samples, jobs=jobs,
        seconds=round(time.perf_counter() - t_start, 2), numpy=np.__version__)
    (out / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    return report
