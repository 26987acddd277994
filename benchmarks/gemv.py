"""Decode GEMVs of one BitNet-2B token, kernel libraries side by side (interleaved A/B).

    python -m benchmarks.gemv [--lib A.so --lib B.so ...] [--threads 1,2] [--rounds 7]
                              [--out benchmarks/results/gemv-<date>.json]

What a decode step asks of the kernels, without the rest of the decoder: the 210 ternary GEMVs of
30 layers (q, k, v, o, gate, up, down) in the 2-bit and in the base-3 layout, and the int8 LM head
(128256 x 2560), each read from DRAM (all weights of a kind are far larger than the caches) with
huge pages advised as the model loader does; plus, as a compute-only figure, one L2-resident GEMV
(512 x 2560) of each kind at one thread.  Every library given with ``--lib`` (default: the one the
package loads) is loaded side by side (ctypes, RTLD_LOCAL) and the libraries take turns inside each
round, so a change in machine load hits them alike; figures are medians over rounds, ratios are
medians of the per-round ratios to the first library.  The machine's read bandwidth
(:mod:`benchmarks.machine`) is measured in the same run.  The JSON is written by this script.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import mmap
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

LAYERS = 30
LAYER = [(2560, 2560), (640, 2560), (640, 2560), (2560, 2560), (6912, 2560), (6912, 2560), (2560, 6912)]
HEAD = (128256, 2560)
L2_ROWS = 512
KINDS = ("ternary2", "ternary_b3", "int8_head")


def _row_bytes(kind: str, k: int) -> int:
    if kind == "ternary2":
        return -(-k // 128) * 32
    if kind == "ternary_b3":
        return -(-k // 320) * 64
    return k


def _huge(nbytes: int) -> np.ndarray:
    """An anonymous buffer with transparent huge pages advised (as the weight mappings are)."""
    mm = mmap.mmap(-1, max(nbytes, 1))
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return np.frombuffer(mm, dtype=np.uint8, count=nbytes)


def _fill(kind: str, buf: np.ndarray, rng) -> None:
    """Valid random weight bytes of the layout, from a tiled random block (fast for 500 MB)."""
    if kind == "ternary2":
        valid = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], np.uint8)
    elif kind == "ternary_b3":
        valid = np.array([-(-v * 256 // 243) for v in range(243)], np.uint8)
    else:
        valid = np.arange(-127, 128).astype(np.int8).view(np.uint8)
    block = rng.choice(valid, size=1 << 22)
    for off in range(0, buf.size, block.size):
        n = min(block.size, buf.size - off)
        buf[off:off + n] = block[:n]


#: bne_backend ids (native/include/bitnet_edge.h) that --backends takes
BACKENDS = {"auto": 0, "ref": 1, "avx2": 2, "avx512": 3, "neon": 4, "neon-dotprod": 5, "rvv": 6}


class Lib:
    """One kernel library, run through one of its backends (``auto``: the best the CPU runs)."""

    def __init__(self, path: str, backend: str = "auto"):
        self.path, self.backend = path, backend
        self.label = path if backend == "auto" else f"{path}[{backend}]"
        self.bid = BACKENDS[backend]
        self.c = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        p, sz = ctypes.c_void_p, ctypes.c_size_t
        self.c.bne_set_threads.argtypes = [ctypes.c_int]
        for name in ("bne_ternary_gemm_i32", "bne_ternary3_gemm_i32"):
            getattr(self.c, name).argtypes = [ctypes.c_int, p, sz, sz, p, sz, sz, p, sz]
        self.c.bne_int8_gemm_i32.argtypes = [ctypes.c_int, p, sz, sz, sz, p, p, sz, sz, p, sz]

    def gemv(self, kind: str, w: int, n: int, k: int, x: int, y: int, wsum: int) -> None:
        if kind == "int8_head":
            rc = self.c.bne_int8_gemm_i32(self.bid, w, n, k, k, wsum, x, 1, k, y, n)
        else:
            fn = self.c.bne_ternary_gemm_i32 if kind == "ternary2" else self.c.bne_ternary3_gemm_i32
            rc = fn(self.bid, w, n, k, x, 1, k, y, n)
        if rc != 0:
            raise RuntimeError(f"{self.label}: {kind} GEMV returned status {rc}")


def _plan(kind: str) -> list[tuple[int, int, int]]:
    """(byte offset, n, k) of every GEMV of one token of `kind`."""
    shapes = [HEAD] if kind == "int8_head" else LAYER * LAYERS
    out, off = [], 0
    for n, k in shapes:
        out.append((off, n, k))
        off += n * _row_bytes(kind, k)
    return out


def run(libs: list[str], thread_counts: list[int], rounds: int, say=print,
        backends: tuple[str, ...] = ("auto",)) -> dict:
    from benchmarks.machine import read_bandwidth

    rng = np.random.default_rng(0)
    L = [Lib(p, b) for p in libs for b in backends]
    libs = [lib.label for lib in L]
    x = rng.integers(-128, 128, size=8192, dtype=np.int8)
    y = np.empty(HEAD[0], dtype=np.int32)
    wsum = np.zeros(HEAD[0], dtype=np.int32)  # the int32 product does not read it
    px, py, pws = x.ctypes.data, y.ctypes.data, wsum.ctypes.data
    data, plans = {}, {}
    for kind in KINDS:
        plans[kind] = _plan(kind)
        off, n, k = plans[kind][-1]
        buf = _huge(off + n * _row_bytes(kind, k))
        _fill(kind, buf, rng)
        data[kind] = buf
        say(f"{kind}: {buf.size / 1e6:.0f} MB of weights a token")

    def token(lib: Lib, kind: str) -> float:
        base = data[kind].ctypes.data
        t0 = time.perf_counter()
        for off, n, k in plans[kind]:
            lib.gemv(kind, base + off, n, k, px, py, pws)
        return time.perf_counter() - t0

    res: dict = {"libs": libs, "backends": list(backends), "rounds": rounds, "rows": [], "l2": []}
    for threads in thread_counts:
        for lib in L:
            lib.c.bne_set_threads(threads)
        per = {(i, kind): [] for i in range(len(L)) for kind in KINDS}
        bws = []
        for r in range(rounds):
            bws.append(read_bandwidth(threads, 1 << 29, reps=3))
            for kind in KINDS:
                for i, lib in enumerate(L):
                    token(lib, kind)  # warm (pages, pool)
                    per[(i, kind)].append(min(token(lib, kind) for _ in range(3)))
        bw = statistics.median(bws)
        for kind in KINDS:
            nbytes = data[kind].size
            for i, p in enumerate(libs):
                ts = per[(i, kind)]
                ratio = statistics.median(a / b for a, b in zip(per[(0, kind)], ts))
                med = statistics.median(ts)
                res["rows"].append({"lib": p, "kind": kind, "threads": threads, "ms": 1e3 * med,
                                    "gbs": nbytes / med / 1e9, "fraction_of_read_bandwidth": nbytes / med / 1e9 / bw,
                                    "x_first_lib": ratio, "ms_rounds": [1e3 * t for t in ts]})
                say(f"{threads}t {kind:11s} {_short(p)}: {1e3 * med:7.2f} ms "
                    f"{nbytes / med / 1e9:5.1f} GB/s ({nbytes / med / 1e9 / bw:4.0%} of {bw:.1f}) x{ratio:.3f}")
        res.setdefault("read_bandwidth_gbs", {})[str(threads)] = bw
    # compute-only: one L2-resident GEMV of each kind, one thread
    for lib in L:
        lib.c.bne_set_threads(1)
    for kind in KINDS:
        k = 2560
        nbytes = L2_ROWS * _row_bytes(kind, k)
        w = data[kind][:nbytes]
        best = {}
        for _ in range(rounds):
            for i, lib in enumerate(L):
                t0 = time.perf_counter()
                for _ in range(50):
                    lib.gemv(kind, w.ctypes.data, L2_ROWS, k, px, py, pws)
                t = (time.perf_counter() - t0) / 50
                best[i] = min(best.get(i, t), t)
        for i, p in enumerate(libs):
            res["l2"].append({"lib": p, "kind": kind, "rows": L2_ROWS, "k": k, "us": 1e6 * best[i],
                              "gweights_s": L2_ROWS * k / best[i] / 1e9, "gbs": nbytes / best[i] / 1e9})
            say(f"L2 1t {kind:11s} {_short(p)}: {L2_ROWS * k / best[i] / 1e9:5.1f} Gweights/s")
    return res


def _short(label: str) -> str:
    return f"{Path(label).parent.name}/{Path(label).name}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", action="append", help="a kernel library (repeat; default: the package's)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--backends", default="auto",
                    help=f"comma-separated kernel variants each library runs, of {', '.join(BACKENDS)} (default auto)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    libs = args.lib
    if not libs:
        from bitnet_edge.sdk.native import load

        libs = [str(load().path)]
    backends = tuple(args.backends.split(","))
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend {unknown[0]!r} (one of {', '.join(BACKENDS)})")
    res = run([str(Path(p).resolve()) for p in libs], [int(t) for t in args.threads.split(",")], args.rounds,
              backends=backends)
    res["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()}
    out = args.out or Path("benchmarks/results") / f"gemv-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
