"""The machine's limits, measured: DRAM read bandwidth and the int8 dot-product peak.

    python -m benchmarks.machine [--threads 1,2]

``benchmarks/probe.c`` is compiled with the system C compiler (``$CC``, else cc/gcc/clang) on first
use and loaded with cffi.  Read bandwidth: every thread sums its slice of a 1 GiB buffer with the
widest loads the CPU has, all threads starting together; GB/s = bytes / wall time, median of the
rounds.  Dot-product peak: every thread runs a loop of 16 independent ``vpdpbusd zmm`` (or 12 ``vpmaddubsw ymm``) (64 int8
multiply-adds each); GMAC/s = multiply-adds / wall time, median of the rounds (None without
AVX2; ``vpmaddubsw ymm``, 32 multiply-adds into int16 pairs, on AVX2-only CPUs).  The decode
benchmark divides each engine's work by these.  On AVX2 also the accumulating rate
(``int8_dot_acc_ceiling``: each ``vpmaddubsw`` result added into an int16 sum, ``vpaddw``), the
most any AVX2 int8 kernel that keeps its sums can reach (~82% of the peak on Zen 3).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

_SRC = Path(__file__).with_name("probe.c")
_CDEF = """
int probe_kind(void);
int probe_has_vnni512(void);
int probe_read(const uint8_t *buf, size_t bytes, int threads, int reps, double *out_s);
int probe_int8dot(long iters, int threads, int reps, double *out_s);
int probe_int8dot_acc(long iters, int threads, int reps, double *out_s);
"""


@lru_cache(maxsize=1)
def _lib():
    import cffi

    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise RuntimeError("no C compiler (set CC) to build benchmarks/probe.c")
    tmp = Path(tempfile.mkdtemp(prefix="bne-probe-"))
    atexit.register(shutil.rmtree, tmp, True)  # the library stays loaded; its file is not needed
    out = tmp / "probe.so"
    subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-pthread", str(_SRC), "-o", str(out)], check=True,
                   capture_output=True)
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi, ffi.dlopen(str(out))


def read_bandwidth(threads: int, nbytes: int = 1 << 30, reps: int = 7) -> float:
    """GB/s (1e9 bytes/s) of reading ``nbytes`` with ``threads`` threads: median over ``reps`` rounds."""
    ffi, lib = _lib()
    raw = np.ones(nbytes + 64, dtype=np.uint8)  # touched: every page is mapped before timing
    off = (-raw.ctypes.data) % 64
    buf = raw[off:off + nbytes]
    times = np.empty(reps, np.float64)
    rc = lib.probe_read(ffi.from_buffer("uint8_t[]", buf), nbytes, threads, reps,
                        ffi.from_buffer("double[]", times))
    if rc != 0:
        raise RuntimeError(f"probe_read failed ({rc})")
    per = nbytes // threads // 256 * 256 * threads
    return per / statistics.median(times.tolist()) / 1e9


def int8_dot_peak(threads: int, iters: int = 2_000_000, reps: int = 5) -> tuple[float, str] | None:
    """(GMAC/s, instruction): int8 multiply-adds per second of independent ``vpdpbusd zmm`` (AVX-512
    VNNI) or, without it, ``vpmaddubsw ymm`` (AVX2) on ``threads`` threads; None without either."""
    ffi, lib = _lib()
    times = np.empty(reps, np.float64)
    per = lib.probe_int8dot(iters, threads, reps, ffi.from_buffer("double[]", times))
    if per < 0:
        return None
    return iters * per * threads / statistics.median(times.tolist()) / 1e9, \
        "vpdpbusd zmm" if per == 16 * 64 else "vpmaddubsw ymm"


def int8_dot_acc_ceiling(threads: int, iters: int = 2_000_000, reps: int = 5) -> float | None:
    """GMAC/s of ``vpmaddubsw ymm`` with each result added into an int16 accumulator (``vpaddw``) on
    ``threads`` threads: what an AVX2 int8 kernel that keeps its sums can reach at most (the prefill
    GEMM's inner loop is this pair plus loads and broadcasts); None without AVX2."""
    ffi, lib = _lib()
    times = np.empty(reps, np.float64)
    per = lib.probe_int8dot_acc(iters, threads, reps, ffi.from_buffer("double[]", times))
    if per < 0:
        return None
    return iters * per * threads / statistics.median(times.tolist()) / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    out = {}
    for t in (int(x) for x in args.threads.split(",")):
        peak = int8_dot_peak(t)
        out[t] = {"read_gbs": read_bandwidth(t), "int8_dot_gmacs": peak and peak[0], "int8_dot": peak and peak[1],
                  "int8_dot_acc_gmacs": int8_dot_acc_ceiling(t)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
