"""The CUDA kernels on the GPU machine: GEMV bandwidth, against torch float16, and the 2B model end to end.

    python -m benchmarks.cuda [--quick] [--no-e2e] [--e2e-only] [--cpu-ref] [--layers 30] [--rounds 3]
                              [--out benchmarks/results/cuda-<date>.json]

Needs a GPU, the fatbin (``make cuda``, or ``BITNET_EDGE_CUDA_FATBIN``) and, for the float16
baseline, torch with CUDA.  Every figure is GPU time from CUDA events around a captured CUDA graph of
back-to-back launches (so neither side pays Python launch overhead), median of several replays:

- ``copy``: device-to-device copy of 1 GiB (cuMemcpyDtoD); bandwidth = bytes read + bytes written.
- ``gemv``: per shape, one launch per weight copy, enough copies (>= 4x the L2 cache in all) that
  every launch streams its weights from DRAM; effective bandwidth = weight bytes / time per GEMV,
  and its share of the copy bandwidth.  Before timing, each shape's result is checked bit-exact
  against numpy on one copy.
- ``torch_f16``: ``F.linear`` of the same (n, k) in float16 with one activation row, same scheme;
  ratio = torch time / our time.
- ``gemm``: the prefill kernel, m tokens, in int8 tensor-core TOPS (2 * m * n * k / time).
- ``e2e``: ``convert(build_model(30), precision="ternary", head="int8", embeddings="int8")`` (the
  BitNet-b1.58-2B-4T shape) loaded with device ``cuda``: 128-token prompt, 128 greedy decode steps,
  with the persistent decode kernel and with the one-kernel-per-operation graph (9 kernels a layer:
  bne_norm_quant + GEMV for q/k/v, o, gate/up and down, bne_rope_attention; programmatic dependent
  launch; the LM head picks the greedy token on the GPU; BITNET_EDGE_CUDA_FUSED=1: bne_norm_gemv,
  5 kernels a layer), interleaved over rounds; each round also reads the copy bandwidth.  Per path: wall-clock tokens/s of
  ``generate`` (median step), the GPU time of one captured step (events), and both as a share of
  the copy bandwidth over the bytes a step reads (weights, scales, norms and the KV cache at the
  mean context).  ``--cpu-ref`` checks the greedy tokens against the CPU library.  ``--profile``
  adds the step time by context and the kernels path with PDL and bne_norm_gemv each switched off;
  per-kernel times come from ``benchmarks/cuda_kernel_profile.py`` (Nsight Compute).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bitnet_edge.sdk import packing, quant, reference
from bitnet_edge.sdk.cuda import gpu as open_gpu
from bitnet_edge.sdk.cuda import probe
from bitnet_edge.sdk.cuda.ops import CudaInt8Matrix, CudaTernaryMatrix, QuantizedRows
from bitnet_edge.sdk.errors import CudaError

# (label, n, k, format)
GEMV_SHAPES = [
    ("2B q/o 2560x2560", 2560, 2560, "ternary"),
    ("2B k/v 640x2560", 640, 2560, "ternary"),
    ("2B qkv fused 3840x2560", 3840, 2560, "ternary"),
    ("2B gate+up fused 13824x2560", 13824, 2560, "ternary"),
    ("2B down 2560x6912", 2560, 6912, "ternary"),
    ("2B lm head 128256x2560 int8", 128256, 2560, "int8"),
    ("8192x8192", 8192, 8192, "ternary"),
    ("16384x16384", 16384, 16384, "ternary"),
    ("32768x8192", 32768, 8192, "ternary"),
]
QUICK = {"2B q/o 2560x2560", "2B gate+up fused 13824x2560", "2B lm head 128256x2560 int8", "16384x16384"}
GEMM_SHAPES = [(128, 2560, 2560), (128, 13824, 2560), (128, 2560, 6912), (512, 13824, 2560)]


def _copies(nbytes: int, l2: int, cap: int = 256) -> int:
    return int(min(cap, max(2, -(-4 * l2 // max(nbytes, 1)))))


def copy_bandwidth(g) -> dict:
    size = 1 << 30
    a, b = g.zeros(size, np.uint8), g.zeros(size, np.uint8)
    g.dtod(b.ptr, a.ptr, size)
    g.synchronize()
    ms = g.time_ms(lambda: [g.dtod(b.ptr, a.ptr, size) for _ in range(5)], repeat=5) / 5
    return {"bytes": size, "ms": ms, "gb_s": 2 * size / (ms * 1e-3) / 1e9, "counting": "read + write"}


def _matrix(g, n, k, fmt, rng):
    if fmt == "ternary":
        q = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        return q, CudaTernaryMatrix(g, packing.pack_ternary_2bit(q), k, 0.02)
    q = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    return q, CudaInt8Matrix(g, q, (rng.random(n) * 0.01 + 1e-3).astype(np.float32))


def gemv(g, label, n, k, fmt, copy_gb_s, rng, torch_mod) -> dict:
    q, W = _matrix(g, n, k, fmt, rng)
    x = rng.standard_normal((1, k)).astype(np.float32)
    xq, s = quant.absmax_int8(x)
    want = reference.epilogue(reference.int_matmul(q, xq), np.float32(0.02) if fmt == "ternary" else
                              W.wscale.download(), s)
    got = W.linear_quantized(xq, s, kernel="gemv")
    exact = bool(np.array_equal(got.view(np.int32), want.view(np.int32)))
    del q
    wbytes = W.weights.nbytes
    copies = _copies(wbytes, g.info.l2_bytes)
    mats = [W]
    for _ in range(copies - 1):  # same bytes, other addresses: every launch reads DRAM
        M = object.__new__(type(W))
        M.gpu, M.out_features, M.in_features, M.wscale = g, W.out_features, W.in_features, W.wscale
        M.weights = g.empty(W.weights.shape, W.weights.dtype)
        g.dtod(M.weights.ptr, W.weights.ptr, wbytes)
        mats.append(M)
    qr = QuantizedRows.from_host(g, xq, s)
    y = g.empty((1, n), np.float32)
    launches = []
    for M in mats:
        name, grid, block, args = M.args(qr, 1, None, None, y, "gemv")
        launches.append(g.prepare(name, grid, block, args))
    graph = g.capture(lambda: [lc() for lc in launches])
    graph()
    g.synchronize()
    ms = g.time_ms(graph, repeat=7) / len(launches)
    out = {"shape": label, "n": n, "k": k, "format": fmt, "weight_bytes": wbytes, "copies": copies,
           "bit_exact": exact, "us": ms * 1e3, "gb_s": wbytes / (ms * 1e-3) / 1e9}
    out["share_of_copy"] = out["gb_s"] / copy_gb_s
    del mats, launches, graph
    if torch_mod is not None:
        out["torch_f16"] = torch_linear(torch_mod, n, k, g.info.l2_bytes)
        out["speedup_vs_torch_f16"] = out["torch_f16"]["us"] / out["us"]
    return out


def torch_linear(torch, n, k, l2) -> dict:
    import torch.nn.functional as F

    dev = torch.device("cuda")
    w0 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
    copies = _copies(w0.numel() * 2, l2, cap=64)
    free = torch.cuda.mem_get_info()[0]
    copies = max(1, min(copies, int(0.5 * free // (w0.numel() * 2))))
    ws = [w0] + [w0.clone() for _ in range(copies - 1)]
    x = torch.randn(1, k, device=dev, dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for w in ws:
            F.linear(x, w)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [F.linear(x, w) for w in ws]
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / len(ws))
    ms = float(np.median(times))
    del ws, outs, graph
    torch.cuda.empty_cache()
    return {"us": ms * 1e3, "weight_bytes": n * k * 2, "gb_s": n * k * 2 / (ms * 1e-3) / 1e9, "copies": copies,
            "torch": torch.__version__}


def gemm(g, m, n, k, rng) -> dict:
    q, W = _matrix(g, n, k, "ternary", rng)
    xq = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    exact = bool(np.array_equal(W.matmul_int8(xq, kernel="gemm"), reference.int_matmul(q, xq)))
    qr = QuantizedRows.from_host(g, xq, np.ones(m, np.float32))
    y = g.empty((m, n), np.float32)
    name, grid, block, args = W.args(qr, m, None, None, y, "gemm")
    lc = g.prepare(name, grid, block, args)
    graph = g.capture(lambda: [lc() for _ in range(20)])
    graph()
    g.synchronize()
    ms = g.time_ms(graph, repeat=5) / 20
    return {"m": m, "n": n, "k": k, "bit_exact": exact, "us": ms * 1e3, "tops": 2 * m * n * k / (ms * 1e-3) / 1e12}


def _bytes_read_per_token(model, context: float) -> dict:
    """What one decode step must read from device memory at this context length: every weight
    matrix, its per-row scales and the norms, plus the K and V rows attention reads."""
    cfg = model.cfg
    mats = [m for gl in model.glayers for m in (gl.qkv, gl.o, gl.gate_up, gl.down)] + [model.head]
    weights = sum(m.weights.nbytes for m in mats)
    scales = sum(m.wscale.nbytes for m in mats)
    norms = sum(a.nbytes for gl in model.glayers for a in (gl.in_norm, gl.post_norm, gl.attn_sub, gl.ffn_sub)
                if a is not None) + model.gnorm.nbytes
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4 * context
    return {"weights": weights, "scales_and_norms": scales + norms, "kv_cache": int(kv),
            "total": int(weights + scales + norms + kv), "context": context}


def _gpu_step_us(model, ids, mode: str, reps: int = 30) -> float:
    """GPU time (events) of one captured decode step after the prompt, median of ``reps`` replays."""
    g = model.gpu
    model.decode_mode = mode
    cache = model.new_cache(len(ids) + 2)
    tok = int(np.argmax(model.forward(np.asarray(ids), cache)[-1]))
    # the greedy step generate() runs: on either path the GPU picks the token (8 bytes come back)
    model._embed_step(tok, cache)
    cache.greedy = model._decode_step(cache, greedy=True)
    step = cache.greedy
    step()
    g.synchronize()
    return g.time_ms(step, repeat=reps) * 1e3


_STEP = {1: "norm-sumsq", 2: "norm-amax", 3: "norm-quant", 4: "dot-wait", 5: "dot-loop", 6: "prefetch-issue",
         7: "sync", 8: "store", 9: "barrier", 10: "l2-prefetch", 11: "rope-kv", 12: "scores", 13: "softmax",
         14: "pv", 15: "end"}
_PHASE = {1: "A", 2: "B", 3: "C", 4: "D", 5: "E", 6: "head"}


def _phase_table(trace: np.ndarray, layers: int) -> dict:
    """Microseconds between the kernel's stamps (label = phase << 4 | step, see common.cuh), summed
    by label: per layer (mean over the layers) for A..E, per step for the head; blocks 0 and grid-1."""
    out = {}
    for b, name in ((0, "block0"), (1, "block_last")):
        ns, lab = trace[b, :, 0].astype(np.float64), trace[b, :, 1].astype(np.int64)
        n = int(np.count_nonzero(ns))
        if n < 2:
            continue
        row: dict[str, float] = {}
        for i in range(1, n):
            ph, st = _PHASE.get(int(lab[i]) >> 4, "?"), _STEP.get(int(lab[i]) & 15, str(int(lab[i]) & 15))
            key = f"{ph}.{st}"
            row[key] = row.get(key, 0.0) + (ns[i] - ns[i - 1]) / 1e3
        for k in row:
            if k[0] in "ABCDE":
                row[k] /= layers
        row["layer_total"] = sum(v for k, v in row.items() if k[0] in "ABCDE")
        row["step_total"] = float((ns[n - 1] - ns[0]) / 1e3)
        out[name] = {k: round(v, 3) for k, v in row.items()}
    return out


def decode_profile(model, ids, contexts=(16, 128, 512, 2048)) -> dict:
    """Where a decode step's GPU time goes: one captured step at several context lengths on both
    paths, and the persistent kernel with its plan cut to fewer layers (0 = final norm, LM head and
    argmax only): a line through those times gives the time a layer and the fixed part."""
    import os

    g = model.gpu
    out: dict = {"gpu_step_us_by_context": {}}
    for ctx in contexts:
        ids_ctx = (list(ids) * (ctx // len(ids) + 1))[:ctx]
        out["gpu_step_us_by_context"][ctx] = {m: _gpu_step_us(model, ids_ctx, m, reps=20)
                                              for m in ("persistent", "kernels")}
    # the kernels path with and without programmatic dependent launch and bne_norm_gemv (fused)
    saved = {k: os.environ.get(k) for k in ("BITNET_EDGE_CUDA_PDL", "BITNET_EDGE_CUDA_FUSED")}
    variants = {}
    for pdl in ("1", "0"):
        for fused in ("1", "0"):
            os.environ["BITNET_EDGE_CUDA_PDL"], os.environ["BITNET_EDGE_CUDA_FUSED"] = pdl, fused
            key = f"pdl {'on' if pdl == '1' else 'off'}, fused {'on' if fused == '1' else 'off'}"
            variants[key] = _gpu_step_us(model, ids, "kernels", reps=20)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out["kernels_variants_us"] = variants
    model.decode_mode = "persistent"
    cache = model.new_cache(len(ids) + 2)
    tok = int(np.argmax(model.forward(np.asarray(ids), cache)[-1]))
    step = model._persistent(cache)
    if step is None:
        return out
    model._embed_step(tok, cache)
    graph = model._decode_step(cache, greedy=True)
    words = step.plan.download()
    total = int(words[g.plan_layout["LAYERS"]])
    sweep = {}
    for n in sorted({0, 1, 2, 4, 8, total // 2, total}):
        w = words.copy()
        w[g.plan_layout["LAYERS"]] = n
        step.plan.upload(w)
        graph()
        g.synchronize()
        sweep[n] = g.time_ms(graph, repeat=20) * 1e3
    step.plan.upload(words)
    opts = {}  # the L2 prefetches on and off (bit 0: weights during attention, bit 1: KV rows)
    for o in (0, 1, 2, 3):
        step.set_word("OPTS", o)
        graph()
        g.synchronize()
        opts[o] = g.time_ms(graph, repeat=20) * 1e3
    step.set_word("OPTS", 0)
    out["persistent_opts_us"] = opts
    out["trace"] = _phase_table(step.traced(graph), total)
    slope, icept = np.polyfit(list(sweep), list(sweep.values()), 1)
    head = model.head.weights.nbytes + model.head.wscale.nbytes
    out.update({"persistent_layers_sweep_us": sweep, "context": len(ids) + 1, "us_per_layer": float(slope),
                "fixed_us": float(icept), "head_bytes": head, "head_and_fixed_gb_s": head / icept / 1e3})
    return out


def end_to_end(g, layers: int, prompt: int = 128, new: int = 128, rounds: int = 3, cpu_ref: bool = False,
               profile: bool = False) -> dict:
    """The 2B-shaped model, greedy generation: the persistent decode kernel against the one-kernel-
    per-operation graph, interleaved over rounds, each round with its own copy-bandwidth reading."""
    from benchmarks.decode import build_model
    from bitnet_edge.sdk import load_model
    from bitnet_edge.sdk.convert.convert import convert

    with tempfile.TemporaryDirectory(prefix="bne-cuda-e2e-") as tmp:
        t0 = time.perf_counter()
        path = convert(build_model(layers), Path(tmp) / "m", precision="ternary", head="int8", embeddings="int8")
        t1 = time.perf_counter()
        model = load_model(path, device="cuda")
        t2 = time.perf_counter()
        rng = np.random.default_rng(1)
        ids = rng.integers(0, model.cfg.vocab_size, size=prompt).tolist()
        modes = ["persistent", "kernels"]
        per = {m: {"steps_ms": [], "prefill_s": [], "gpu_step_us": [], "tokens": None} for m in modes}
        copies, errors = [], {}
        for mode in modes:  # warm-up; a path that fails is reported, the other still measured
            model.decode_mode = mode
            try:
                model.generate(ids[:16], 4, stop=[])
            except CudaError as exc:
                errors[mode] = str(exc)
        for r in range(rounds):
            copies.append(copy_bandwidth(g)["gb_s"])
            for mode in modes:
                if mode in errors and not per[mode]["steps_ms"]:
                    continue
                model.decode_mode, model.persistent_error = mode, None
                stamps: list[float] = []
                t = time.perf_counter()
                try:
                    out = model.generate(ids, new, stop=[], on_token=lambda _t: stamps.append(time.perf_counter()))
                except CudaError as exc:
                    errors[mode] = str(exc)
                    continue
                if model.decode_mode != mode:  # the persistent kernel could not run here
                    errors[mode] = model.persistent_error
                per[mode]["prefill_s"].append(stamps[0] - t)
                per[mode]["steps_ms"] += (np.diff(stamps) * 1e3).tolist()
                per[mode]["tokens"] = out if per[mode]["tokens"] is None else per[mode]["tokens"]
                per[mode]["same_tokens_every_round"] = per[mode].get("same_tokens_every_round", True) and \
                    out == per[mode]["tokens"]
                # one captured step at the mean context of the decode steps (prompt + new / 2)
                try:
                    per[mode]["gpu_step_us"].append(_gpu_step_us(model, ids + ids[: new // 2], mode))
                except CudaError as exc:
                    errors[mode + " (gpu step)"] = str(exc)
        copy = float(np.median(copies))
        nbytes = _bytes_read_per_token(model, prompt + new / 2)  # mean context over the decode steps
        res = {"layers": layers, "device": model.device, "device_reason": model.device_reason,
               "convert_s": t1 - t0, "load_s": t2 - t1, "prompt_tokens": prompt, "new_tokens": new, "rounds": rounds,
               "copy_gb_s_per_round": copies, "copy_gb_s": copy, "bytes_read_per_token": nbytes,
               "graphs": model.use_graphs and model.graph_error is None, "graph_error": model.graph_error,
               "pdl": g.pdl, "greedy_on_gpu": True,
               "norm_gemv_fused": __import__("os").environ.get("BITNET_EDGE_CUDA_FUSED", "0").strip() == "1",
               "persistent_error": errors.get("persistent")}
        res["errors"] = errors
        for mode in modes:
            d = per[mode]
            if not d["steps_ms"]:
                res[mode] = {"error": errors.get(mode)}
                continue
            step_ms = float(np.median(d["steps_ms"]))
            gpu_us = float(np.median(d["gpu_step_us"])) if d["gpu_step_us"] else float("nan")
            res[mode] = {
                "decode_tok_s": 1e3 / step_ms, "decode_ms_per_token": step_ms,
                "decode_step_ms_p10_p90": [float(np.percentile(d["steps_ms"], 10)),
                                           float(np.percentile(d["steps_ms"], 90))],
                "gpu_step_us": gpu_us, "gpu_step_us_per_round": d["gpu_step_us"],
                "gpu_tok_s": 1e6 / gpu_us,
                "effective_gb_s": nbytes["total"] / step_ms / 1e6,
                "share_of_copy": nbytes["total"] / step_ms / 1e6 / copy,
                "gpu_share_of_copy": nbytes["total"] / gpu_us / 1e3 / copy,
                "prefill_tok_s": prompt / float(np.median(d["prefill_s"])),
                "first_tokens": d["tokens"][:16], "same_tokens_every_round": d["same_tokens_every_round"]}
        ok = all("decode_ms_per_token" in res[m] for m in modes)
        res["persistent_over_kernels"] = (res["kernels"]["decode_ms_per_token"] / res["persistent"]["decode_ms_per_token"]
                                          if ok else None)
        res["same_tokens_both_paths"] = per["persistent"]["tokens"] == per["kernels"]["tokens"] if ok else None
        model.decode_mode = "persistent"
        cache = model.new_cache(prompt + 2)
        model.forward(np.asarray(ids), cache)
        step = model._persistent(cache)
        res["persistent_plan"] = step.as_dict() if step is not None else None
        if profile:
            try:
                res["profile"] = decode_profile(model, ids)
            except CudaError as exc:
                res["profile"] = {"error": str(exc)}
        if cpu_ref:  # the same model on this machine's CPU library: greedy tokens must be identical
            from bitnet_edge.sdk import kernels as K

            cm = load_model(path, device="cpu")
            n_cpu = 32
            stamps = []
            t = time.perf_counter()
            cout = cm.generate(ids, n_cpu, stop=[], on_token=lambda _t: stamps.append(time.perf_counter()))
            # logits of the first decode step after the prompt: CPU library vs the persistent kernel
            cc, gc = cm.new_cache(prompt + 1), model.new_cache(prompt + 1)
            tok = int(np.argmax(cm.forward(np.asarray(ids), cc)[-1]))
            model.forward(np.asarray(ids), gc)
            lc, lg = cm.forward(np.array([tok]), cc)[-1], model.forward(np.array([tok]), gc)[-1]
            res["cpu_reference"] = {
                "step_logits_max_diff_over_range": float(np.abs(lg - lc).max() / (lc.max() - lc.min())),
                "step_logits_argmax_equal": int(np.argmax(lg)) == int(np.argmax(lc)),
                "step_logits_path": model.decode_kernel,
                "backend": K.resolve_backend(), "threads": K.get_threads(),
                "prefill_tok_s": prompt / (stamps[0] - t), "decode_tok_s": 1.0 / float(np.median(np.diff(stamps))),
                "tokens": n_cpu, "distinct_tokens": len(set(cout)),
                "same_tokens_as_gpu_persistent": cout == (per["persistent"]["tokens"] or [])[:n_cpu],
                "same_tokens_as_gpu_kernels": cout == (per["kernels"]["tokens"] or [])[:n_cpu]}
        return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--e2e-only", action="store_true", help="only the copy bandwidth and the end-to-end model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also: step time by context, time a layer (plan sweep)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--cpu-ref", action="store_true", help="also run the model on the CPU library (short)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    p = probe()
    if not p.available:
        raise SystemExit(f"no usable GPU: {p.message}")
    g = open_gpu()
    torch_mod = None
    if not a.no_torch:
        try:
            import torch

            torch_mod = torch if torch.cuda.is_available() else None
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "gpu": p.as_dict()["device"],
           "host": platform.node(), "quick": a.quick}
    out = a.out or Path("benchmarks/results") / f"cuda-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a run cut short keeps what it measured
        out.write_text(json.dumps(res, indent=2) + "\n")

    res["copy"] = copy_bandwidth(g)
    print(f"[{g.info.name}] device-to-device copy: {res['copy']['gb_s']:.0f} GB/s (read + write)", flush=True)
    res["gemv"] = []
    for label, n, k, fmt in [] if a.e2e_only else GEMV_SHAPES:
        if a.quick and label not in QUICK:
            continue
        r = gemv(g, label, n, k, fmt, res["copy"]["gb_s"], rng, torch_mod)
        res["gemv"].append(r)
        save()
        tt = f", torch f16 {r['torch_f16']['us']:.1f} us -> {r['speedup_vs_torch_f16']:.2f}x" if "torch_f16" in r else ""
        print(f"gemv {label}: {r['us']:.2f} us, {r['gb_s']:.0f} GB/s = {r['share_of_copy']:.0%} of copy, "
              f"exact={r['bit_exact']}{tt}", flush=True)
    res["gemm"] = []
    for m, n, k in [] if a.e2e_only else (GEMM_SHAPES[:2] if a.quick else GEMM_SHAPES):
        r = gemm(g, m, n, k, rng)
        res["gemm"].append(r)
        save()
        print(f"gemm {m}x{n}x{k}: {r['us']:.1f} us, {r['tops']:.1f} TOPS, exact={r['bit_exact']}", flush=True)
    if not a.no_e2e:
        res["e2e"] = e = end_to_end(g, a.layers, new=32 if a.quick else 128, rounds=a.rounds, cpu_ref=a.cpu_ref,
                                    profile=a.profile)
        save()
        nb = e["bytes_read_per_token"]
        print(f"e2e {a.layers} layers, {nb['total'] / 1e6:.0f} MB read per token at context {nb['context']:.0f}, "
              f"copy {e['copy_gb_s']:.0f} GB/s (median of rounds); convert {e['convert_s']:.0f} s, "
              f"load {e['load_s']:.1f} s; programmatic dependent launch: {e['pdl']}", flush=True)
        for mode in ("persistent", "kernels"):
            r = e[mode]
            if "error" in r:
                print(f"  {mode:10s}: FAILED: {r['error']}")
                continue
            print(f"  {mode:10s}: decode {r['decode_tok_s']:.0f} tok/s ({r['decode_ms_per_token'] * 1e3:.0f} us/token wall, "
                  f"{r['share_of_copy']:.1%} of copy); GPU step {r['gpu_step_us']:.0f} us ({r['gpu_share_of_copy']:.1%}); "
                  f"prefill {r['prefill_tok_s']:.0f} tok/s", flush=True)
        print(f"  persistent / kernels: {e['persistent_over_kernels'] or 0:.2f}x; same tokens on both paths: "
              f"{e['same_tokens_both_paths']}; persistent error: {e['persistent_error']}")
        if e.get("profile"):
            pr = e["profile"]
            for ctx, r in pr.get("gpu_step_us_by_context", {}).items():
                print(f"  GPU step at context {ctx}: persistent {r['persistent']:.0f} us, kernels {r['kernels']:.0f} us")
            for k, us in pr.get("kernels_variants_us", {}).items():
                print(f"  kernels path GPU step at the prompt + 1, {k}: {us:.0f} us")
            for o, us in pr.get("persistent_opts_us", {}).items():
                print(f"  persistent opts {o} (1: no weight L2 prefetch, 2: no KV prefetch): {us:.0f} us")
            for blk, row in pr.get("trace", {}).items():
                print(f"  trace {blk}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
            if "us_per_layer" in pr:
                print(f"  persistent: {pr['us_per_layer']:.2f} us a layer + {pr['fixed_us']:.0f} us fixed (norm, LM head "
                      f"{pr['head_bytes'] / 1e6:.0f} MB -> {pr['head_and_fixed_gb_s']:.0f} GB/s, argmax, launch)")
        if e.get("cpu_reference"):
            c = e["cpu_reference"]
            print(f"cpu reference ({c['backend']}, {c['threads']} threads): decode {c['decode_tok_s']:.1f} tok/s; "
                  f"step logits max|diff|/range {c['step_logits_max_diff_over_range']:.2e} ({c['step_logits_path']}); "
                  f"first {c['tokens']} greedy tokens identical: persistent {c['same_tokens_as_gpu_persistent']}, "
                  f"kernels {c['same_tokens_as_gpu_kernels']} ({c['distinct_tokens']} distinct)")
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
