"""What a float16 or int8 KV cache costs in accuracy, against the float32 cache, on the transformers
parity models (tests/support/hf_fixtures: tiny BitNetForCausalLM checkpoints, float and packed).

    python -m benchmarks.kv_accuracy [--tokens 48] [--out benchmarks/results/kv-accuracy-<date>.json]

For each checkpoint layout: convert (ternary, f32 head), load with each cache type, run the prompt
and then, step by step, the tokens the float32-cache model chose greedily (teacher forcing: every
cache type sees the same sequence).  Per cache type, against float32: the largest logit difference
over the logit range, relative L2 of the hidden states (the residual stream after the last layer)
and of the logits, the lowest cosine of the logits, top-1 agreement, and whether free-running
greedy decoding gives the same tokens.  float32 itself is compared with transformers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np

PROMPT = [1, 17, 250, 33, 7, 100, 101, 102, 3, 411, 12, 9]



def _bytes_per_position(model) -> int:
    """Cache bytes per position (the C cache holds whole tiles of 8 positions: measured over 64)."""
    return model.new_cache(64).buffer.nbytes // 64


def _run(model, seq: list[int], n_prompt: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and hidden states of every position of seq: the prompt in one pass, then one token a step."""
    cache = model.new_cache(len(seq))
    lg, hid = model.forward(np.array(seq[:n_prompt]), cache, all_logits=True, hidden=True)
    logits, hidden = [lg], [hid]
    for t in seq[n_prompt:]:
        lg, hid = model.forward(np.array([t]), cache, hidden=True)
        logits.append(lg)
        hidden.append(hid)
    return np.concatenate(logits), np.concatenate(hidden)


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"max_abs_over_range": float(np.abs(a - b).max() / (b.max() - b.min())),
            "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "min_cosine": float(cos.min()),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean())}


def run(tokens: int) -> dict:
    from bitnet_edge.sdk import load_model
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.hf import read_hf
    from tests.support.hf_fixtures import load_reference, reference_logits, save_bitnet_float, save_bitnet_packed

    out = {"prompt": PROMPT, "new_tokens": tokens, "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="bne-kv-") as tmp:
        root = Path(tmp)
        f = save_bitnet_float(root / "float", max_position_embeddings=256)
        ckpts = {"float": f, "packed": save_bitnet_packed(f, root / "packed")}
        for layout, src in ckpts.items():
            d = convert(read_hf(src), root / f"conv-{layout}", precision="ternary", head="f32")
            models = {kv: load_model(d, kv_cache=kv) for kv in ("f32", "f16", "int8")}
            greedy = models["f32"].generate(PROMPT, tokens, stop=[])
            seq = PROMPT + greedy[:-1]
            base_logits, base_hidden = _run(models["f32"], seq, len(PROMPT))
            ref = reference_logits(load_reference(src), seq)
            res = {"f32_vs_transformers": _compare(base_logits, ref), "kv": {}}
            for kv in ("f16", "int8"):
                lg, hid = _run(models[kv], seq, len(PROMPT))
                row = {"logits": _compare(lg, base_logits),
                       "hidden_rel_l2": float(np.linalg.norm(hid - base_hidden) / np.linalg.norm(base_hidden)),
                       "hidden_max_abs_over_range": float(np.abs(hid - base_hidden).max()
                                                          / (base_hidden.max() - base_hidden.min())),
                       "greedy_tokens_identical": models[kv].generate(PROMPT, tokens, stop=[]) == greedy,
                       "cache_bytes_per_position": _bytes_per_position(models[kv])}
                res["kv"][kv] = row
            res["kv"]["f32"] = {"cache_bytes_per_position": _bytes_per_position(models["f32"])}
            out["layouts"][layout] = res
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run(args.tokens)
    for layout, r in res["layouts"].items():
        print(f"[{layout}] f32 vs transformers: {json.dumps(r['f32_vs_transformers'])}")
        for kv in ("f16", "int8"):
            row = r["kv"][kv]
            print(f"[{layout}] {kv} vs f32: logits {json.dumps(row['logits'])}, hidden rel L2 {row['hidden_rel_l2']:.2e}, "
                  f"greedy identical {row['greedy_tokens_identical']}")
    out = args.out or Path("benchmarks/results") / f"kv-accuracy-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
