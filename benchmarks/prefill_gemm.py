"""Prefill GEMM benchmark: the ternary linears of one BitNet-2B layer at m = 128 activation rows.

    python -m benchmarks.prefill_gemm [--threads 1,2] [--rounds 5] [--formats 2bit,base3]
                                      [--baseline-lib OTHER/libbitnet_edge.so] [--out FILE.json]

A 128-token prompt runs every linear as a GEMM of 128 int8 activation rows (the panel GEMM,
ADR 0020).  This times the seven of one layer (q, k, v, o: 2560|640 x 2560; gate, up: 6912 x 2560;
down: 2560 x 6912) through the C API with pointers prepared once, float epilogue as the decoder
uses it, for each weight layout; in every round the machine's int8 limits are probed first
(:mod:`benchmarks.machine`: the ``vpmaddubsw`` peak and the accumulating ``vpmaddubsw + vpaddw``
rate) and the figures of the round are divided by them.  ``--baseline-lib`` times a second build of
the library in the same rounds (A B A B ...), for a before/after ratio on a noisy machine.

Figures: GMAC/s from the median wall time of each GEMM (over the layer: total multiply-adds / summed
medians), and at 1 thread also from process CPU time (a shared machine's waiting is not counted),
each as a share of the peak measured the same way (wall, or CPU time of the probe loops); medians
over rounds.  The JSON is written by this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.kernels import LAYER, _random_packed
from bitnet_edge.sdk import kernels

M = 128
PROBE_ITERS, PROBE_REPS = 2_000_000, 5


def _open_library(path: str | None):
    """(ffi, lib, label): the package's own library, or the build at ``path``."""
    import cffi

    from bitnet_edge.sdk.native import load
    from bitnet_edge.sdk.native._loader import cdef_from_header

    own = load()
    if path is None:
        return own.ffi, own.lib, str(own.path)
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(own.header.read_text()))
    return ffi, ffi.dlopen(path), path


def _random_b3(rng, n: int, k: int, lib, ffi) -> np.ndarray:
    """Random base-3 rows, packed by the library from random ternary weights (one tiled block)."""
    rows = min(n, 64)
    q = rng.integers(-1, 2, size=(rows, k), dtype=np.int8)
    rb = lib.bne_ternary3_row_bytes(k)
    out = np.empty((rows, rb), dtype=np.uint8)
    rc = lib.bne_ternary3_pack(ffi.from_buffer("int8_t[]", q), rows, k, k, ffi.from_buffer("uint8_t[]", out),
                               out.nbytes)
    assert rc == 0, rc
    return np.resize(out, (n, rb))


class Case:
    """One linear of the layer in one layout, ready to call on one library."""

    def __init__(self, ffi, lib, fmt: str, n: int, k: int, rng):
        self.n, self.k = n, k
        self.w = _random_packed(rng, n, k) if fmt == "2bit" else _random_b3(rng, n, k, lib, ffi)
        self.x = rng.integers(-128, 128, size=(M, k), dtype=np.int8)
        self.xs = rng.uniform(0.5, 2.0, size=M).astype(np.float32)
        self.y = np.empty((M, n), dtype=np.float32)
        fn = lib.bne_ternary_gemm_f32 if fmt == "2bit" else lib.bne_ternary3_gemm_f32
        bid = kernels.NATIVE_BACKENDS[kernels.resolve_backend()]
        args = (bid, ffi.from_buffer("uint8_t[]", self.w), n, k, 0.01, ffi.from_buffer("int8_t[]", self.x), M, k,
                ffi.from_buffer("float[]", self.xs), ffi.from_buffer("float[]", self.y), n)

        def call():
            rc = fn(*args)
            assert rc == 0, rc
        self.call = call


def _time_layer(cases: list[Case], reps: int) -> tuple[float, float]:
    """(wall s, process CPU s) of the layer: per GEMM the median over ``reps`` runs, summed."""
    wall = cpu = 0.0
    for c in cases:
        c.call()  # warm: the weights into the caches like the decoder's previous layer would not
        ws, cs = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            c.call()
            cs.append(time.process_time() - c0)
            ws.append(time.perf_counter() - t0)
        wall += statistics.median(ws)
        cpu += statistics.median(cs)
    return wall, cpu


def run(thread_counts: list[int], rounds: int, formats: list[str], baseline: str | None, reps: int = 5,
        say=print) -> dict:
    from benchmarks.machine import int8_dot_acc_ceiling, int8_dot_peak

    rng = np.random.default_rng(0)
    libs = {"this": _open_library(None)}
    if baseline:
        libs["baseline"] = _open_library(baseline)
    macs = sum(n * k for n, k in LAYER) * M
    res = {"config": {"m": M, "layer": LAYER, "macs_per_layer": macs, "rounds": rounds, "reps": reps,
                      "formats": formats, "backend": kernels.resolve_backend(),
                      "libraries": {k: v[2] for k, v in libs.items()}},
           "rows": [], "machine_probe": {}}
    for threads in thread_counts:
        cases = {}
        for name, (ffi, lib, _path) in libs.items():
            assert lib.bne_set_threads(threads) == 0
            for fmt in formats:
                cases[(name, fmt)] = [Case(ffi, lib, fmt, n, k, rng) for n, k in LAYER]
        probe = {"peak": [], "acc": []}
        samples = {key: {"wall": [], "cpu": []} for key in cases}
        for rnd in range(rounds):
            c0 = time.process_time()
            peak = int8_dot_peak(threads, iters=PROBE_ITERS, reps=PROBE_REPS)
            c1 = time.process_time()
            probe["peak"].append(peak[0] if peak else None)
            probe["acc"].append(int8_dot_acc_ceiling(threads, iters=PROBE_ITERS, reps=PROBE_REPS))
            c2 = time.process_time()
            if threads == 1 and peak:  # the same loops by CPU time (one thread: the caller's)
                per = PROBE_ITERS * PROBE_REPS * 12 * 32 / 1e9
                probe.setdefault("cpu_peak", []).append(per / (c1 - c0))
                probe.setdefault("cpu_acc", []).append(per / (c2 - c1))
            for key, cs in cases.items():  # libraries and layouts interleaved in every round
                w, c = _time_layer(cs, reps)
                samples[key]["wall"].append(w)
                samples[key]["cpu"].append(c)
            say(f"threads {threads}, round {rnd + 1}/{rounds}: " + ", ".join(
                f"{k[0]} {k[1]} {macs / v['wall'][-1] / 1e9:.0f}" for k, v in samples.items()) + " GMAC/s")
        pk = [p for p in probe["peak"] if p]
        ac = [p for p in probe["acc"] if p]
        peak = statistics.median(pk) if pk else None
        acc = statistics.median(ac) if ac else None
        res["machine_probe"][str(threads)] = {"int8_dot_gmacs": peak, "int8_dot_acc_gmacs": acc,
                                              "int8_dot_rounds": probe["peak"], "int8_dot_acc_rounds": probe["acc"]}
        cpu_peak = statistics.median(probe["cpu_peak"]) if probe.get("cpu_peak") else None
        cpu_acc = statistics.median(probe["cpu_acc"]) if probe.get("cpu_acc") else None
        if cpu_peak:
            res["machine_probe"][str(threads)].update({"cpu_int8_dot_gmacs": cpu_peak, "cpu_int8_dot_acc_gmacs": cpu_acc})
        for (name, fmt), s in samples.items():
            gm = macs / statistics.median(s["wall"]) / 1e9
            row = {"library": name, "format": fmt, "threads": threads, "gmacs": gm,
                   "gmacs_rounds": [macs / w / 1e9 for w in s["wall"]],
                   "fraction_of_int8_peak": gm / peak if peak else None,
                   "fraction_of_int8_acc_ceiling": gm / acc if acc else None}
            if threads == 1:  # CPU time: the shared machine's waiting is not counted
                gc = macs / statistics.median(s["cpu"]) / 1e9
                row.update({"cpu_gmacs": gc, "cpu_fraction_of_int8_peak": gc / cpu_peak if cpu_peak else None,
                            "cpu_fraction_of_int8_acc_ceiling": gc / cpu_acc if cpu_acc else None})
            if name == "this" and ("baseline", fmt) in samples:
                b = samples[("baseline", fmt)]
                row["x_baseline_wall"] = statistics.median(
                    bw / tw for bw, tw in zip(b["wall"], s["wall"]))  # per round: load drifts hit both
                if threads == 1:
                    row["x_baseline_cpu"] = statistics.median(bc / tc for bc, tc in zip(b["cpu"], s["cpu"]))
            res["rows"].append(row)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--formats", default="2bit,base3")
    ap.add_argument("--baseline-lib", default=None, help="a second libbitnet_edge build, timed in the same rounds")
    ap.add_argument("--baseline-label", default=None, help="what the baseline build is (recorded in the JSON)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run([int(t) for t in args.threads.split(",")], args.rounds, args.formats.split(","), args.baseline_lib)
    if args.baseline_label:
        res["config"]["baseline_label"] = args.baseline_label
    from bitnet_edge.sdk.info import collect_info

    res["machine"] = {"platform": platform.platform(), "cpu": collect_info()["cpu"],
                      "load_average_at_end": os.getloadavg()}
    for r in res["rows"]:
        cpu = f", CPU time {r['cpu_gmacs']:.0f} GMAC/s ({r['cpu_fraction_of_int8_peak']:.0%} of peak)" \
            if r.get("cpu_gmacs") and r.get("cpu_fraction_of_int8_peak") else ""
        base = f", x baseline {r['x_baseline_wall']:.3f} wall" if "x_baseline_wall" in r else ""
        base += f" / {r['x_baseline_cpu']:.3f} CPU" if "x_baseline_cpu" in r else ""
        frac = r["fraction_of_int8_peak"]
        print(f"{r['library']:8s} {r['format']:5s} {r['threads']}t: {r['gmacs']:.0f} GMAC/s"
              + ("" if frac is None else f" ({frac:.0%} of peak)") + cpu + base)
    for t, p in res["machine_probe"].items():
        cpu = f" (CPU time: {p['cpu_int8_dot_gmacs']:.0f} and {p['cpu_int8_dot_acc_gmacs']:.0f})" \
            if p.get("cpu_int8_dot_gmacs") else ""
        print(f"machine, {t} thread(s): int8 dot peak {p['int8_dot_gmacs']:.0f} GMAC/s, accumulating "
              f"{p['int8_dot_acc_gmacs']:.0f} GMAC/s{cpu}")
    out = args.out or Path(__file__).with_name("results") / f"prefill-gemm-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
