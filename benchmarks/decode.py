"""Decode benchmark: our runtime against bitnet.cpp and llama.cpp on a BitNet-2B-4T-shaped model.

    python -m benchmarks.decode [--quick] [--threads 1,2] [--engines ...] [--bitnet-cpp DIR]
                                [--out benchmarks/results/decode-<date>.json]

The model has the shape of microsoft/bitnet-b1.58-2B-4T (hidden 2560, FFN 6912, 30 layers, 20 heads,
5 KV heads, head_dim 128, vocab 128256, tied embeddings, relu2, sub norms) with random ternary
weights.  Engines (each in its own subprocess, so thread pools never compete):

- ``ours``: ``convert(..., precision="ternary", head="int8")`` + ``load_model(..., kv_cache="f16")``
  (2-bit ternary linears, int8 LM head, the C decoder, float16 KV cache like the peers');
- ``ours-base3``: the same weights in the base-3 layout (1.6 bits/weight, ``--ternary-format base3``);
- ``bitnet.cpp``: microsoft/BitNet's llama.cpp fork, i2_s kernel, its own random model of the same
  shape (F16 head), built by ``benchmarks/peers/build_bitnet_cpp.sh`` and found through
  :mod:`benchmarks.peers.bitnet_cpp`; timed by its ``llama-bench`` (prefill pp128; decode tg from an
  empty context, where ours decodes after the 128-token prompt - a longer context, more attention);
- ``llama.cpp TQ2_0+Q8_0`` (and ``TQ1_0`` with ``--engines``): llama-cpp-python on GGUFs of our weights.
An engine that is not available (peer not built, llama-cpp-python missing) is reported as such and
the others still run.

Rounds: in each round the machine is probed (read bandwidth of a 1 GiB buffer, the int8 dot-product
peak: :mod:`benchmarks.machine`) and every engine runs once, in turn, so a change in machine load
hits them alike; figures are medians over rounds.  Derived: decode GB/s = bytes read per token
(weights + the KV cache at the mean context of the timed steps) / median step time, its share of the
read bandwidth; prefill GMAC/s = multiply-adds of the
linears per token x prefill tok/s, its share of the int8 dot peak and of the accumulating AVX2 rate
(``vpmaddubsw`` + ``vpaddw``, the ceiling of any AVX2 int8 kernel); ratios of ours to every peer
measured in this run; for ours, the C decoder's own profile of a decode step (time outside the
linears) and of one whole prompt (``prefill_profile_ms``: norms/quantization/RoPE glue, attention,
linears, head; the linears' own GMAC/s and share of the peak).  The JSON (benchmarks/results/) is
written by this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
             num_attention_heads=20, num_key_value_heads=5, head_dim=128)
ALL_ENGINES = ("ours", "ours-base3", "bitnet.cpp", "llama.cpp TQ2_0+Q8_0", "llama.cpp TQ1_0+Q8_0")
DEFAULT_ENGINES = ALL_ENGINES[:4]
GOALS = {"decode_x_bitnet_cpp": 1.2, "decode_x_tq2": 1.4, "fraction_of_read_bandwidth": 0.9,
         "prefill_x_bitnet_cpp": 2.0}


def kv_bytes_per_token(layers: int, mean_context: float, elem_bytes: int) -> float:
    """Bytes of keys and values a decode step reads at a context of mean_context positions."""
    return layers * 2 * SHAPE["num_key_value_heads"] * SHAPE["head_dim"] * elem_bytes * mean_context


def linear_macs_per_token(layers: int) -> int:
    """Multiply-adds of a token through the ternary linears (the head is once per prompt in prefill)."""
    h, i = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    q, kv = SHAPE["num_attention_heads"] * SHAPE["head_dim"], SHAPE["num_key_value_heads"] * SHAPE["head_dim"]
    return layers * (q * h + 2 * kv * h + h * q + 2 * i * h + h * i)


# ------------------------------------------------------------------------------ the model

def build_model(layers: int, seed: int = 0):
    """An ImportedModel of the 2B-4T shape with random ternary linears.  Each g is a float16 value,
    so the TQ files (which hold fp16 block scales) carry exactly the weights ours does."""
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
    from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo

    cfg = DecoderConfig(**{**SHAPE, "num_hidden_layers": layers}, max_position_embeddings=4096,
                        rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="relu2", sub_norms=True,
                        tie_word_embeddings=True, bos_token_id=128000, eos_token_ids=[])
    rng = np.random.default_rng(seed)
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
              "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    tensors = {}
    for n in decoder_tensor_names(cfg):
        part = n.split(".")[-2]
        if part in shapes:
            n_out, k = shapes[part]
            g = float(np.float16(1.0 / np.sqrt(k * 2 / 3)))  # unit-variance outputs for unit inputs
            tensors[n] = ImportedTensor("ternary", rng.integers(-1, 2, size=(n_out, k), dtype=np.int8), scale=g)
        elif n == "model.embed_tokens.weight":
            tensors[n] = ImportedTensor("float", rng.standard_normal((cfg.vocab_size, h), dtype=np.float32)
                                        .astype(np.float16))
        else:
            size = i if "ffn_sub_norm" in n else h
            tensors[n] = ImportedTensor("float", (1 + 0.05 * rng.standard_normal(size)).astype(np.float32))
    return ImportedModel("bitnet-2b-4t-shape-random", cfg, tensors, SourceInfo(kind="synthetic", path="random"))


def _ours_bytes_per_token(model_dir: Path) -> int:
    """Weight bytes one decode step reads: every ternary/int8 linear plus the LM head (+ its scales)."""
    from bitnet_edge.sdk.modeldir import open_model_dir

    md = open_model_dir(model_dir)
    total = 0
    for t in md.manifest.tensors:
        if t.format in ("ternary2", "ternary_b3", "int8") or t.name == "lm_head.weight":
            total += md.weights.get(t.name).nbytes
            if t.scale_tensor:
                total += md.weights.get(t.scale_tensor).nbytes
    return total


def _gguf_bytes_per_token(path: Path) -> int:
    """The linears plus token_embd (llama.cpp's bitnet head) of a GGUF."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    return sum(int(t.n_bytes) for t in r.tensors
               if t.name == "token_embd.weight" or (t.name.endswith(".weight") and t.tensor_type.name.startswith("TQ")))


# ------------------------------------------------------------------------------ the workers

#: KV cache element type of our engines: float16, as the peers' default (llama.cpp and bitnet.cpp keep
#: K and V in F16), so all engines read the same KV bytes.  Our library default is float32.
OURS_KV = "f16"


def _worker_ours(model_dir: str, threads: int, n_prefill: int, n_decode: int, reps: int) -> dict:
    from threadpoolctl import threadpool_limits

    from bitnet_edge.sdk import kernels, load_model

    kernels.set_threads(threads)
    with threadpool_limits(limits=threads):
        model = load_model(model_dir, kv_cache=OURS_KV)
        rng = np.random.default_rng(1)
        prompt = rng.integers(0, model.cfg.vocab_size, size=n_prefill).tolist()
        model.generate(prompt[:16], 4)  # warm-up: pages the weights in
        prefill = []
        stamps: list[float] = []
        for r in range(reps):
            stamps.clear()
            t0 = time.perf_counter()
            model.generate(prompt, n_decode + 1 if r == 0 else 1, on_token=lambda _t: stamps.append(time.perf_counter()))
            prefill.append(stamps[0] - t0)
            if r == 0:
                steps = np.diff(stamps).tolist()
        profile = None
        if model.native is not None:  # the C decoder's phases over 16 decode steps after the prompt
            cache = model.new_cache(n_prefill + 17)
            logits = model.forward(np.array(prompt), cache)
            tok = int(logits[-1].argmax())
            counters = model.native.profile()
            for _ in range(16):
                tok = int(model.forward(np.array([tok]), cache)[-1].argmax())
            model.native.profile(False)
            profile = {k: float(v) / 16 / 1e6 for k, v in zip(model.native.PROFILE_PHASES, counters)}
            counters = model.native.profile()  # the phases of one whole prompt (prefill)
            model.forward(np.array(prompt), model.new_cache(n_prefill + 1))
            model.native.profile(False)
            prefill_profile = {k: float(v) / 1e6 for k, v in zip(model.native.PROFILE_PHASES, counters)}
    out = {"prefill_s": prefill, "decode_step_s": steps, "backend": kernels.resolve_backend(),
           "runtime": "native" if model.native is not None else "numpy", "profile_ms_per_token": profile}
    if profile is not None:
        out["prefill_profile_ms"] = prefill_profile
    return out


def _worker_llama(gguf_path: str, threads: int, n_prefill: int, n_decode: int, reps: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=n_prefill + n_decode + 32, n_batch=n_prefill,
                          n_ubatch=n_prefill, n_threads=threads, n_threads_batch=threads,
                          logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    rng = np.random.default_rng(1)
    prompt = rng.integers(0, n_vocab, size=n_prefill).tolist()
    llm.eval(prompt[:16])  # warm-up
    llm.eval([int(last_logits().argmax())])
    prefill, steps = [], []
    for r in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = int(last_logits().argmax())
        prefill.append(time.perf_counter() - t0)
        if r == 0:
            for _ in range(n_decode):
                t0 = time.perf_counter()
                llm.eval([tok])
                tok = int(last_logits().argmax())
                steps.append(time.perf_counter() - t0)
    return {"prefill_s": prefill, "decode_step_s": steps, "llama_cpp_python": llama_cpp.__version__}


def _run_worker(kind: str, target: Path, threads: int, n_prefill: int, n_decode: int, reps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.decode", "--worker", kind, "--target", str(target),
           "--threads", str(threads), "--prefill", str(n_prefill), "--decode", str(n_decode), "--reps", str(reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the run

def _prepare(engines: list[str], layers: int, workdir: Path, bitnet_cpp: str | None, quick: bool,
             say) -> tuple[dict, dict]:
    """{label: (kind, target, bytes per token, note)} of the engines that can run, {label: why not}."""
    from bitnet_edge.sdk.convert.convert import convert

    ready, missing = {}, {}
    model = None

    def imported():
        nonlocal model
        if model is None:
            model = build_model(layers)
        return model

    for label in engines:
        if label in ("ours", "ours-base3"):
            fmt = "2bit" if label == "ours" else "base3"
            d = workdir / f"{label}-{layers}l"
            if not (d / "manifest.json").is_file():  # (a --workdir from an earlier run already has it)
                say(f"converting the model for {label} ({fmt})")
                convert(imported(), d, precision="ternary", head="int8", ternary_format=fmt)
            ready[label] = ("ours", d, _ours_bytes_per_token(d), f"ternary {fmt}, int8 head, {OURS_KV} KV cache")
        elif label == "bitnet.cpp":
            from benchmarks.peers.bitnet_cpp import bytes_per_token, find_peer

            info, where = find_peer(bitnet_cpp)
            if info is None:
                missing[label] = where
            elif quick or layers != SHAPE["num_hidden_layers"]:
                missing[label] = f"not run with {layers} layers (its model has all {SHAPE['num_hidden_layers']})"
            else:
                ready[label] = ("bitnet.cpp", info, bytes_per_token(info["model"]),
                                f"i2_s, F16 head, F16 KV cache; {info.get('bitnet_commit', '?')[:7]}, "
                                f"{info.get('compiler', '?')}")
        else:
            try:
                import llama_cpp  # noqa: F401
            except ImportError as exc:
                missing[label] = f"llama-cpp-python does not import ({exc}; pip install llama-cpp-python)"
                continue
            from bitnet_edge.sdk.convert.gguf_write import write_gguf

            qt = "TQ2_0" if "TQ2_0" in label else "TQ1_0"
            p = workdir / f"{qt.lower()}-{layers}l.gguf"
            if not p.is_file():
                say(f"writing the {qt} GGUF")
                write_gguf(imported(), p.with_suffix(".tmp"), qt, "Q8_0").replace(p)
            ready[label] = ("llama", p, _gguf_bytes_per_token(p), f"{qt} linears, Q8_0 head, F16 KV cache")
    return ready, missing


def run(quick: bool, thread_counts: list[int], workdir: Path, rounds: int | None = None,
        engines: list[str] | None = None, bitnet_cpp: str | None = None, say=print,
        layers: int | None = None) -> dict:
    """``layers``: fewer layers than the model's 30 (a shorter run of ours and llama.cpp; bitnet.cpp's
    model has all 30, so it is not run then)."""
    from benchmarks.machine import int8_dot_acc_ceiling, int8_dot_peak, read_bandwidth

    n_layers, n_prefill, n_decode, reps = (4, 32, 32, 2) if quick else (30, 128, 128, 3)
    layers = layers or n_layers
    rounds = rounds or (2 if quick else 3)
    t0 = time.perf_counter()
    ready, missing = _prepare(list(engines or DEFAULT_ENGINES), layers, workdir, bitnet_cpp, quick, say)
    macs = linear_macs_per_token(layers)
    # KV bytes a decode step reads: its element size and the mean context of the timed steps (ours and
    # llama.cpp decode after the prompt; llama-bench's tg decodes 64 tokens from an empty context)
    kv = {label: kv_bytes_per_token(layers, 32 if kind == "bitnet.cpp" else n_prefill + n_decode / 2,
                                    {"f32": 4, "f16": 2, "int8": 1}[OURS_KV] if kind == "ours" else 2)
          for label, (kind, *_rest) in ready.items()}
    res = {"config": {"layers": layers, "prefill_tokens": n_prefill, "decode_tokens": n_decode,
                      "prefill_reps": reps, "rounds": rounds, "linear_macs_per_token": macs,
                      **{k: v for k, v in SHAPE.items() if k != "num_hidden_layers"}},
           "prepare_s": time.perf_counter() - t0,
           "engines": {k: {"weight_bytes_per_token": v[2], "kv_bytes_per_token": kv[k], "what": v[3]}
                       for k, v in ready.items()},
           "not_run": missing, "rows": [], "machine_probe": {}}
    for label, why in missing.items():
        say(f"[yellow]{label}: not run: {why}[/yellow]")
    for threads in thread_counts:
        samples = {label: {"prefill_s": [], "decode_step_s": [], "round_step_median_s": [], "round_prefill_s": []}
                   for label in ready}
        probe = {"read_gbs": [], "int8_dot_gmacs": [], "int8_dot_acc_gmacs": []}
        for rnd in range(rounds):  # engines interleaved, so a change in machine load hits them alike
            say(f"threads {threads}, round {rnd + 1}/{rounds}: probing the machine")
            probe["read_gbs"].append(read_bandwidth(threads))
            peak = int8_dot_peak(threads)
            if peak:
                probe["int8_dot_gmacs"].append(peak[0])
                probe["int8_dot"] = peak[1]
            acc_ceiling = int8_dot_acc_ceiling(threads)
            if acc_ceiling:
                probe["int8_dot_acc_gmacs"].append(acc_ceiling)
            for label, (kind, target, _nbytes, _what) in ready.items():
                say(f"threads {threads}, round {rnd + 1}/{rounds}: {label}")
                if kind == "bitnet.cpp":
                    from benchmarks.peers.bitnet_cpp import run_llama_bench

                    r = run_llama_bench(target, threads, n_prefill, 64, reps=reps)
                else:
                    r = _run_worker(kind, target, threads, n_prefill, n_decode, reps)
                acc = samples[label]
                acc["round_prefill_s"].append(statistics.median(r["prefill_s"]))
                acc["prefill_s"] += r.pop("prefill_s")
                steps = r.pop("decode_step_s")
                acc["decode_step_s"] += steps
                acc["round_step_median_s"].append(statistics.median(steps))
                prof = r.pop("profile_ms_per_token", None)
                if prof:
                    acc.setdefault("profiles", []).append(prof)
                pprof = r.pop("prefill_profile_ms", None)
                if pprof:
                    acc.setdefault("prefill_profiles", []).append(pprof)
                acc.update(r)
        bw = statistics.median(probe["read_gbs"])
        peak = statistics.median(probe["int8_dot_gmacs"]) if probe["int8_dot_gmacs"] else None
        acc_ceiling = statistics.median(probe["int8_dot_acc_gmacs"]) if probe["int8_dot_acc_gmacs"] else None
        res["machine_probe"][str(threads)] = {"read_gbs": bw, "read_gbs_rounds": probe["read_gbs"],
                                              "int8_dot_gmacs": peak, "int8_dot_rounds": probe["int8_dot_gmacs"],
                                              "int8_dot": probe.get("int8_dot"),
                                              "int8_dot_acc_gmacs": acc_ceiling,
                                              "int8_dot_acc_rounds": probe["int8_dot_acc_gmacs"]}
        for label, (kind, target, wbytes, what) in ready.items():
            acc = samples[label]
            nbytes = wbytes + kv[label]
            pre = statistics.median(acc["round_prefill_s"])
            step = statistics.median(acc["round_step_median_s"])
            row = {"engine": label, "threads": threads, "what": what,
                   "prefill_tok_s": n_prefill / pre, "decode_tok_s": 1.0 / step,
                   "decode_ms_per_token": step * 1e3,
                   "decode_tok_s_best_round": 1.0 / min(acc["round_step_median_s"]),
                   "prefill_tok_s_best": n_prefill / min(acc["prefill_s"]),
                   "bytes_per_token": nbytes, "weight_bytes_per_token": wbytes, "kv_bytes_per_token": kv[label],
                   "effective_gbs": nbytes / step / 1e9,
                   "fraction_of_read_bandwidth": nbytes / step / 1e9 / bw,
                   "prefill_gmacs": macs * n_prefill / pre / 1e9,
                   "fraction_of_int8_peak": (macs * n_prefill / pre / 1e9 / peak) if peak else None,
                   "round_prefill_s": acc["round_prefill_s"],
                   "round_decode_ms": [x * 1e3 for x in acc["round_step_median_s"]]}
            if acc.get("profiles"):
                prof = {k: statistics.median(p[k] for p in acc["profiles"]) for k in acc["profiles"][0]}
                row["profile_ms_per_token"] = prof
                row["outside_linears_ms_per_token"] = prof["glue"] + prof["attention"]
            if acc.get("prefill_profiles"):  # one whole prompt: where the prefill time goes
                pp = {k: statistics.median(p[k] for p in acc["prefill_profiles"]) for k in acc["prefill_profiles"][0]}
                row["prefill_profile_ms"] = pp
                row["prefill_linears_share"] = pp["linears"] / sum(pp.values())
                lin_gmacs = macs * n_prefill / (pp["linears"] / 1e3) / 1e9
                row["prefill_linears_gmacs"] = lin_gmacs
                row["prefill_linears_fraction_of_int8_peak"] = lin_gmacs / peak if peak else None
                row["prefill_linears_fraction_of_int8_acc_ceiling"] = lin_gmacs / acc_ceiling if acc_ceiling else None
            row["fraction_of_int8_acc_ceiling"] = (macs * n_prefill / pre / 1e9 / acc_ceiling) if acc_ceiling else None
            row.update({k: v for k, v in acc.items() if k not in (
                "prefill_s", "decode_step_s", "round_step_median_s", "round_prefill_s", "profiles",
                "prefill_profiles")})
            res["rows"].append(row)
    _ratios(res)
    return res


def _ratios(res: dict) -> None:
    peers = {"bitnet.cpp": "bitnet_cpp", "llama.cpp TQ2_0+Q8_0": "tq2", "llama.cpp TQ1_0+Q8_0": "tq1",
             "ours": "ours_2bit"}
    for row in res["rows"]:
        for label, key in peers.items():
            base = next((x for x in res["rows"] if x["engine"] == label and x["threads"] == row["threads"]), None)
            if base is None or base is row:
                continue
            row[f"decode_x_{key}"] = row["decode_tok_s"] / base["decode_tok_s"]
            row[f"prefill_x_{key}"] = row["prefill_tok_s"] / base["prefill_tok_s"]
    summary, goals = {}, {}
    for row in res["rows"]:
        if not row["engine"].startswith("ours"):
            continue
        tag = f"{row['threads']}t_{row['engine']}"
        for k in ("decode_tok_s", "prefill_tok_s", "fraction_of_read_bandwidth", "fraction_of_int8_peak",
                  "fraction_of_int8_acc_ceiling", "prefill_linears_fraction_of_int8_peak", "prefill_linears_share",
                  "decode_x_bitnet_cpp", "prefill_x_bitnet_cpp", "decode_x_tq2", "prefill_x_tq2",
                  "decode_x_ours_2bit", "outside_linears_ms_per_token"):
            if row.get(k) is not None:
                summary[f"{tag}_{k}"] = row[k]
        if row["engine"] == "ours" and row["threads"] == 2:
            for k, want in GOALS.items():
                got = row.get(k)
                goals[k] = {"want": f">= {want}", "got": got, "met": got is not None and got >= want}
            got = row.get("outside_linears_ms_per_token")
            goals["outside_linears_ms_per_token"] = {"want": "< 1.0", "got": got, "met": got is not None and got < 1.0}
    res["summary"], res["goals_2_threads"] = summary, goals


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 layers, 32 prefill + 32 decode tokens (no bitnet.cpp)")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--engines", default=None, help=f"comma-separated, of: {', '.join(ALL_ENGINES)} "
                                                      f"(default: {', '.join(DEFAULT_ENGINES)})")
    ap.add_argument("--bitnet-cpp", default=None, help="folder of the bitnet.cpp peer build (peer.json)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per engine (default 3; quick 2)")
    ap.add_argument("--layers", type=int, default=None,
                    help="fewer layers (prefill 128 / decode 128 as the full run; bitnet.cpp is not run)")
    ap.add_argument("--keep", action="store_true", help="keep the model files (printed path)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the model files go and stay (reused when a previous run left them there)")
    ap.add_argument("--worker", choices=["ours", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--prefill", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--decode", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        fn = _worker_ours if args.worker == "ours" else _worker_llama
        print(json.dumps(fn(args.target, int(args.threads), args.prefill, args.decode, args.reps)))
        return

    from rich.console import Console
    from rich.table import Table

    from bitnet_edge.sdk.info import collect_info

    console = Console(width=None if sys.stdout.isatty() else 200)
    engines = [e.strip() for e in args.engines.split(",")] if args.engines else None
    unknown = [e for e in engines or () if e not in ALL_ENGINES]
    if unknown:
        ap.error(f"unknown engine(s) {unknown}; known: {', '.join(ALL_ENGINES)}")
    avail = len(os.sched_getaffinity(0))
    threads = [int(x) for x in args.threads.split(",")] if args.threads else sorted({1, min(2, avail)})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bitnet-edge-decode-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args.quick, threads, workdir, args.rounds, engines, args.bitnet_cpp, say=console.print,
                  layers=args.layers)
    finally:
        if args.keep or args.workdir:
            console.print(f"model files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info = collect_info()
    res["machine"] = {"cpu": info["cpu"], "platform": platform.platform(),
                      "load_average_at_end": os.getloadavg(),
                      "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}}
    cfg = res["config"]
    t = Table(title=f"decode benchmark: BitNet-2B-4T shape, {cfg['layers']} layers, prefill {cfg['prefill_tokens']}, "
                    f"decode {cfg['decode_tokens']} (medians of {cfg['rounds']} interleaved rounds)")
    cols = ("engine", "thr", "prefill tok/s", "decode tok/s", "ms/token", "MB/token", "GB/s", "% read BW",
            "% int8 peak", "decode × bitnet.cpp", "prefill × bitnet.cpp", "decode × TQ2_0", "prefill × TQ2_0")
    for col in cols:
        t.add_column(col, justify="left" if col == "engine" else "right")
    for r in res["rows"]:
        frac = r["fraction_of_int8_peak"]
        t.add_row(r["engine"], str(r["threads"]), f"{r['prefill_tok_s']:.1f}", f"{r['decode_tok_s']:.2f}",
                  f"{r['decode_ms_per_token']:.1f}", f"{r['bytes_per_token'] / 1e6:.0f}", f"{r['effective_gbs']:.1f}",
                  f"{r['fraction_of_read_bandwidth']:.0%}", "-" if frac is None else f"{frac:.0%}",
                  _fmt(r.get("decode_x_bitnet_cpp"), ".2f"), _fmt(r.get("prefill_x_bitnet_cpp"), ".2f"),
                  _fmt(r.get("decode_x_tq2"), ".2f"), _fmt(r.get("prefill_x_tq2"), ".2f"))
    console.print(t)
    for th, p in res["machine_probe"].items():
        console.print(f"machine, {th} thread(s): read {p['read_gbs']:.1f} GB/s, int8 dot peak "
                      f"{_fmt(p['int8_dot_gmacs'], '.0f')} GMAC/s ({p.get('int8_dot')}), accumulating "
                      f"{_fmt(p.get('int8_dot_acc_gmacs'), '.0f')} GMAC/s")
    for r in res["rows"]:
        if r.get("prefill_profile_ms"):
            frac = r.get("prefill_linears_fraction_of_int8_peak")
            console.print(f"{r['engine']} {r['threads']}t prefill profile (ms, whole prompt): " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["prefill_profile_ms"].items())
                + f"; linears {r['prefill_linears_gmacs']:.0f} GMAC/s"
                + ("" if frac is None else f" = {frac:.0%} of the int8 peak"))
        if r.get("profile_ms_per_token"):
            console.print(f"{r['engine']} {r['threads']}t decode step profile (ms): " + ", ".join(
                f"{k} {v:.2f}" for k, v in r["profile_ms_per_token"].items()))
    for label, why in res["not_run"].items():
        console.print(f"not run: {label}: {why}")
    if res["goals_2_threads"]:
        console.print("goals (ours, 2 threads): " + "; ".join(
            f"{k} {_fmt(v['got'], '.3g')} ({v['want']}: {'met' if v['met'] else 'NOT met'})"
            for k, v in res["goals_2_threads"].items()))
    out = args.out or Path("benchmarks/results") / f"decode-{'quick-' if args.quick else ''}{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
