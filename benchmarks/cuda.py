"""The CUDA kernels on the GPU machine: GEMV bandwidth, against torch float16, and the 2B model end to end.

    python -m benchmarks.cuda [--quick] [--no-e2e] [--cpu-ref] [--layers 30] [--out benchmarks/results/cuda-<date>.json]

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
- ``e2e``: ``convert(build_model(30), precision="ternary", head="int8", embeddings="int8")`` loaded
  with device ``cuda``: prefill of 128 tokens (median of 3) and 128 greedy decode steps.
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


def end_to_end(layers: int, prompt: int = 128, new: int = 128, reps: int = 3, cpu_ref: bool = False) -> dict:
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
        ids = rng.integers(0, model.cfg.vocab_size, size=prompt)
        model.generate(ids[:16].tolist(), 4, stop=[])  # warm-up: graphs, caches
        prefill, steps, tokens = [], [], None
        for r in range(reps):
            stamps: list[float] = []
            t = time.perf_counter()
            out = model.generate(ids.tolist(), new + 1 if r == 0 else 1, stop=[],
                                 on_token=lambda _t: stamps.append(time.perf_counter()))
            prefill.append(stamps[0] - t)
            if r == 0:
                steps, tokens = np.diff(stamps).tolist(), out[:8]
        step = float(np.median(steps))
        wbytes = model.device_weight_bytes
        cpu = None
        if cpu_ref:  # the same model on this machine's CPU library: 1 prefill, 32 decode steps
            cm = load_model(path, device="cpu")
            stamps = []
            t = time.perf_counter()
            cout = cm.generate(ids.tolist(), 33, stop=[], on_token=lambda _t: stamps.append(time.perf_counter()))
            csteps = np.diff(stamps)
            cpu = {"backend": __import__("bitnet_edge.sdk.kernels", fromlist=["x"]).resolve_backend(),
                   "threads": __import__("bitnet_edge.sdk.kernels", fromlist=["x"]).get_threads(),
                   "prefill_tok_s": prompt / (stamps[0] - t), "decode_tok_s": 1.0 / float(np.median(csteps)),
                   "first_tokens": cout[:8], "same_first_tokens_as_gpu": cout[:8] == tokens}
        return {"cpu_reference": cpu, "layers": layers, "device": model.device, "device_reason": model.device_reason,
                "convert_s": t1 - t0, "load_s": t2 - t1, "prompt_tokens": prompt, "new_tokens": new,
                "prefill_tok_s": prompt / float(np.median(prefill)), "prefill_s": prefill,
                "decode_tok_s": 1.0 / step, "decode_ms_per_token": step * 1e3,
                "decode_step_ms_p10_p90": [float(np.percentile(steps, 10)) * 1e3, float(np.percentile(steps, 90)) * 1e3],
                "weights_read_per_token_bytes": wbytes, "decode_effective_gb_s": wbytes / step / 1e9,
                "graphs": model.use_graphs and model.graph_error is None, "graph_error": model.graph_error,
                "first_tokens": tokens}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
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
    for label, n, k, fmt in GEMV_SHAPES:
        if a.quick and label not in QUICK:
            continue
        r = gemv(g, label, n, k, fmt, res["copy"]["gb_s"], rng, torch_mod)
        res["gemv"].append(r)
        save()
        tt = f", torch f16 {r['torch_f16']['us']:.1f} us -> {r['speedup_vs_torch_f16']:.2f}x" if "torch_f16" in r else ""
        print(f"gemv {label}: {r['us']:.2f} us, {r['gb_s']:.0f} GB/s = {r['share_of_copy']:.0%} of copy, "
              f"exact={r['bit_exact']}{tt}", flush=True)
    res["gemm"] = []
    for m, n, k in (GEMM_SHAPES[:2] if a.quick else GEMM_SHAPES):
        r = gemm(g, m, n, k, rng)
        res["gemm"].append(r)
        save()
        print(f"gemm {m}x{n}x{k}: {r['us']:.1f} us, {r['tops']:.1f} TOPS, exact={r['bit_exact']}", flush=True)
    if not a.no_e2e:
        res["e2e"] = end_to_end(a.layers, new=32 if a.quick else 128, cpu_ref=a.cpu_ref)
        e = res["e2e"]
        print(f"e2e {a.layers} layers: prefill {e['prefill_tok_s']:.0f} tok/s, decode {e['decode_tok_s']:.0f} tok/s "
              f"({e['decode_ms_per_token']:.2f} ms/token, {e['decode_effective_gb_s']:.0f} GB/s effective); "
              f"convert {e['convert_s']:.0f} s, load {e['load_s']:.1f} s", flush=True)
        if e["cpu_reference"]:
            c = e["cpu_reference"]
            print(f"cpu reference ({c['backend']}, {c['threads']} threads): prefill {c['prefill_tok_s']:.1f} tok/s, "
                  f"decode {c['decode_tok_s']:.1f} tok/s, same first tokens: {c['same_first_tokens_as_gpu']}")
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
