"""Kernel benchmark: ternary and int8 GEMV/GEMM for BitNet-2B shapes.

    python -m benchmarks.kernels [--quick] [--out benchmarks/results/kernels-<date>.json]

Prints medians, GOPS, effective weight GB/s and, measured in the same run,
ratios against numpy float32 ``W @ x`` (same shape, same thread count) and
against our scalar reference kernel; plus the machine's read bandwidth and a
whole decode step (all 30 layers of BitNet-2B, weights streamed from DRAM) at
all threads.  Kernels are called through the C API with pointers prepared once,
so Python overhead is not in the figures.

numpy's BLAS: the machine may pin OPENBLAS_CORETYPE (an older, slower kernel);
for a fair baseline run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``.
The BLAS kernel actually used is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._timing import median_seconds
from bitnet_edge.sdk import kernels
from bitnet_edge.sdk.info import collect_info
from bitnet_edge.sdk.native import load

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover - the bench extra installs it
    threadpool_info = lambda: []  # noqa: E731
    threadpool_limits = None

# (label, n out, k in, weight format)
SHAPES = [
    ("attn 2560x2560", 2560, 2560, "ternary"),
    ("ffn up 6912x2560", 6912, 2560, "ternary"),
    ("ffn down 2560x6912", 2560, 6912, "ternary"),
    ("square 4096x4096", 4096, 4096, "ternary"),
    ("lm head 128256x2560", 128256, 2560, "int8"),
]
PREFILL_M = 64
# one BitNet-2B decoder layer: q, k, v, o, gate, up, down (n, k)
LAYER = [(2560, 2560), (640, 2560), (640, 2560), (2560, 2560), (6912, 2560), (6912, 2560), (2560, 6912)]
N_LAYERS = 30


class Bench:
    def __init__(self):
        self.L = load()
        self.ffi, self.lib = self.L.ffi, self.L.lib

    def ternary_call(self, backend: str, n: int, k: int, m: int, rng):
        packed = _random_packed(rng, n, k)
        x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        y = np.empty((m, n), dtype=np.int32)
        f = self.ffi
        pw, px, py = f.from_buffer("uint8_t[]", packed), f.from_buffer("int8_t[]", x), f.from_buffer("int32_t[]", y)
        bid = kernels.NATIVE_BACKENDS[backend]
        fn = self.lib.bne_ternary_gemm_i32

        def call():
            rc = fn(bid, pw, n, k, px, m, k, py, n)
            assert rc == 0, rc
        return call, packed.nbytes

    def int8_call(self, backend: str, n: int, k: int, m: int, rng):
        w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
        wsum = w.sum(axis=1, dtype=np.int32)
        x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        y = np.empty((m, n), dtype=np.int32)
        f = self.ffi
        ptrs = (f.from_buffer("int8_t[]", w), f.from_buffer("int32_t[]", wsum),
                f.from_buffer("int8_t[]", x), f.from_buffer("int32_t[]", y))
        bid = kernels.NATIVE_BACKENDS[backend]
        fn = self.lib.bne_int8_gemm_i32

        def call():
            rc = fn(bid, ptrs[0], n, k, k, ptrs[1], ptrs[2], m, k, ptrs[3], n)
            assert rc == 0, rc
        return call, w.nbytes


def _random_packed(rng, n: int, k: int) -> np.ndarray:
    """Random valid 2-bit rows (codes 0..2), made from a tiled random block to stay fast."""
    rb = -(-k // 128) * 32
    valid = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], dtype=np.uint8)
    block = rng.choice(valid, size=min(n * rb, 1 << 22))
    return np.resize(block, (n, rb))


def _limit(threads: int):
    if threadpool_limits is None:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def read_bandwidth(threads: int, nbytes: int = 1 << 30) -> float:
    """GB/s of summing a 1 GiB int64 array split across ``threads`` threads."""
    a = np.ones(nbytes // 8, dtype=np.int64)
    chunks = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as ex:
        t, _ = median_seconds(lambda: list(ex.map(np.sum, chunks)), min_reps=5, min_time=1.0)
    return nbytes / t / 1e9


def run(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    b = Bench()
    all_threads = len(os.sched_getaffinity(0))
    thread_counts = [1] if all_threads == 1 else [1, all_threads]
    backends = [x for x in kernels.available_backends() if x != "numpy"]
    results = {"rows": []}
    shapes = SHAPES[:2] + SHAPES[3:4] if quick else SHAPES
    for threads in thread_counts:
        kernels.set_threads(threads)
        for label, n, k, fmt in shapes:
            for m in (1, PREFILL_M):
                if fmt == "int8" and m > 1 and quick:
                    continue
                w32 = rng.standard_normal((n, k), dtype=np.float32)
                x32 = rng.standard_normal((k, m), dtype=np.float32)
                x32 = x32[:, 0].copy() if m == 1 else x32
                with _limit(threads):
                    t_np, _ = median_seconds(lambda: w32 @ x32, min_time=0.3 if quick else 0.6)
                del w32
                ref_t = None
                for be in (["ref"] if "ref" in backends else []) + [x for x in backends if x != "ref"]:
                    if be == "ref" and n * k * m > 2e8:  # the scalar reference is too slow for these
                        continue
                    call, wbytes = (b.ternary_call if fmt == "ternary" else b.int8_call)(be, n, k, m, rng)
                    t, reps = median_seconds(call, min_time=0.2 if be == "ref" else (0.3 if quick else 0.6),
                                             min_reps=3 if be == "ref" else 5)
                    if be == "ref":
                        ref_t = t
                    results["rows"].append({
                        "shape": label, "n": n, "k": k, "m": m, "format": fmt, "backend": be,
                        "threads": threads, "median_s": t, "reps": reps,
                        "gops": 2.0 * n * k * m / t / 1e9, "weight_gbs": wbytes / t / 1e9,
                        "numpy_f32_s": t_np, "x_numpy_f32": t_np / t,
                        "x_ref": (ref_t / t) if ref_t else None,
                    })
    # a whole decode step: every layer's GEMV once, weights far larger than the caches
    best = backends[0]
    kernels.set_threads(all_threads)
    layers = 8 if quick else N_LAYERS
    calls, total = [], 0
    for _ in range(layers):
        for n, k in LAYER:
            c, nbytes = b.ternary_call(best, n, k, 1, rng)
            calls.append(c)
            total += nbytes
    # decode step and read bandwidth take turns, so a change in machine load hits both alike;
    # the share is the median of the per-round ratios
    rounds = []
    for _ in range(3 if quick else 5):
        t, _ = median_seconds(lambda: [c() for c in calls], min_time=0.5)
        bw = read_bandwidth(all_threads, 1 << 29)
        rounds.append((t, bw, total / t / 1e9 / bw))
    t = float(np.median([r[0] for r in rounds]))
    bw = float(np.median([r[1] for r in rounds]))
    frac = float(np.median([r[2] for r in rounds]))
    results["decode_step"] = {"backend": best, "threads": all_threads, "layers": layers,
                              "weight_bytes": total, "median_s": t, "weight_gbs": total / t / 1e9,
                              "read_bandwidth_gbs": bw, "fraction_of_bandwidth": frac,
                              "rounds": [{"seconds": a, "read_gbs": b, "fraction": c} for a, b, c in rounds]}
    results["read_bandwidth_gbs"] = {"1": read_bandwidth(1), str(all_threads): bw}
    return results


def _summary(res: dict) -> dict:
    rows = res["rows"]

    def pick(shape, be, threads, m=1):
        return next((r for r in rows if r["shape"] == shape and r["backend"] == be
                     and r["threads"] == threads and r["m"] == m), None)

    s = {}
    sq = pick("square 4096x4096", "avx512", 1) or pick("square 4096x4096", "avx2", 1) \
        or pick("square 4096x4096", "neon-dotprod", 1)
    if sq:
        s["gemv_4096_1t_x_numpy_f32"] = sq["x_numpy_f32"]
        s["gemv_4096_1t_backend"] = sq["backend"]
    ratios = []
    for r in rows:
        if r["backend"] == "avx512":
            twin = pick(r["shape"], "avx2", r["threads"], r["m"])
            if twin:
                ratios.append(twin["median_s"] / r["median_s"])
    if ratios:
        s["avx512_over_avx2_median"] = float(np.median(ratios))
    s["decode_fraction_of_read_bandwidth"] = res["decode_step"]["fraction_of_bandwidth"]
    return s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and shorter runs")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    console = Console()
    res = run(args.quick)
    info = collect_info()
    res["machine"] = {"cpu": info["cpu"], "platform": platform.platform(),
                      "blas": [{k: d.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
                               for d in threadpool_info()],
                      "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}}
    res["summary"] = _summary(res)
    t = Table(title="ternary / int8 kernels (median; ratios measured in this run)")
    for col in ("shape", "m", "backend", "thr", "median µs", "GOPS", "weight GB/s", "× numpy f32", "× ref"):
        t.add_column(col, justify="right" if col not in ("shape", "backend") else "left")
    for r in res["rows"]:
        t.add_row(r["shape"], str(r["m"]), r["backend"], str(r["threads"]), f"{r['median_s'] * 1e6:,.0f}",
                  f"{r['gops']:,.1f}", f"{r['weight_gbs']:,.1f}", f"{r['x_numpy_f32']:,.1f}",
                  f"{r['x_ref']:,.1f}" if r["x_ref"] else "-")
    console.print(t)
    d = res["decode_step"]
    console.print(f"decode step ({d['layers']} BitNet-2B layers, {d['weight_bytes'] / 1e6:,.0f} MB of 2-bit weights, "
                  f"{d['backend']}, {d['threads']} threads): {d['median_s'] * 1e3:,.2f} ms = {d['weight_gbs']:,.1f} GB/s "
                  f"= {d['fraction_of_bandwidth']:.0%} of the measured read bandwidth ({d['read_bandwidth_gbs']:,.1f} GB/s)")
    console.print("summary: " + json.dumps(res["summary"], indent=None))
    out = args.out or Path("benchmarks/results") / f"kernels-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
