"""The C decoder's time outside the linears (glue and attention) per decode step, 2B-4T shape.

    python -m benchmarks.decoder_glue [--threads 1,2] [--contexts 136,192] [--kv f16,int8]
                                      [--baseline DIR] [--rounds 3] [--steps 32] [--out FILE]

``native/tests/decoder_bench.c`` is compiled with the system C compiler (``$CC``, else gcc/cc/clang)
and the flags of the host library against this tree's ``native/`` (and, with ``--baseline``, against
another checkout's ``native/`` folder, e.g. ``git worktree add /tmp/base main``).  It builds a decoder
of the microsoft/bitnet-b1.58-2B-4T shape (30 layers, 20 query / 5 KV heads of 128, hidden 2560,
FFN 6912) with random 2-bit ternary linears and a small head, fills the KV cache with random rows up
to the context (no prefill), and times single-token steps; the decoder's own profile gives each
phase (``glue``: norms, quantization, RoPE, cache writes on the caller's thread; ``attention``;
``linears``), the median over the steps.  Rounds alternate the builds (A B A B ...) so a change in
machine load hits both alike; figures are medians over rounds.  Whole-model decode speed against
the peers is :mod:`benchmarks.decode`; this isolates the work outside the kernels.  The JSON
(benchmarks/results/) is written by this script.
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
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KV = {"f32": 0, "f16": 1, "int8": 2}
SOURCES = ("api.c", "cpu.c", "pool.c", "kernels_ref.c", "conv.c", "decoder.c")
VARIANTS = {"arch/x86/avx2.c": ("-mavx2", "-mfma", "-mf16c"),
            "arch/x86/avx512.c": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")}
FLAGS = ("-std=c11", "-O3", "-ffp-contract=off", "-fno-strict-aliasing")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cc() -> str:
    for c in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if c and shutil.which(c):
            return c
    raise SystemExit("no C compiler (set $CC)")


def build(native: Path, out: Path) -> Path:
    """decoder_bench linked statically against the library sources of `native` (x86-64 hosts)."""
    cc, objs = _cc(), []
    out.mkdir(parents=True, exist_ok=True)
    inc = [f"-I{native / 'include'}", f"-I{native / 'src'}"]
    units = [(s, ()) for s in SOURCES] + list(VARIANTS.items())
    for src, extra in units:
        obj = out / (Path(src).stem + ".o")
        subprocess.run([cc, *FLAGS, *extra, *inc, "-c", str(native / "src" / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / "decoder_bench"
    bench = REPO / "native" / "tests" / "decoder_bench.c"
    subprocess.run([cc, *FLAGS, *inc, str(bench), *objs, "-o", str(exe), "-lpthread", "-lm"], check=True)
    return exe


def run_once(exe: Path, threads: int, kv: str, context: int, steps: int) -> dict:
    p = subprocess.run([str(exe), str(threads), str(KV[kv]), str(context), str(steps)], capture_output=True,
                       text=True, check=True)
    return json.loads(p.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--contexts", default="136,192", help="cached positions before the timed steps")
    ap.add_argument("--kv", default="f16", help="comma-separated cache types: f32, f16, int8")
    ap.add_argument("--baseline", type=Path, help="another checkout's native/ folder, timed in turn with this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="decoder-glue-") as tmp:
        builds = {"this": build(REPO / "native", Path(tmp) / "this")}
        if args.baseline:
            builds["baseline"] = build(args.baseline.resolve(), Path(tmp) / "baseline")
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            for kv in args.kv.split(","):
                for ctx in [int(c) for c in args.contexts.split(",")]:
                    runs: dict[str, list[dict]] = {k: [] for k in builds}
                    for _ in range(args.rounds):
                        for name, exe in builds.items():
                            runs[name].append(run_once(exe, threads, kv, ctx, args.steps))
                    for name, rs in runs.items():
                        med = {k: statistics.median(r[k] for r in rs)
                               for k in ("glue_ms", "attention_ms", "linears_ms")}
                        row = {"build": name, "threads": threads, "kv": kv, "context": ctx, "backend": rs[0]["backend"],
                               **med, "outside_linears_ms": med["glue_ms"] + med["attention_ms"],
                               "round_attention_ms": [r["attention_ms"] for r in rs],
                               "round_glue_ms": [r["glue_ms"] for r in rs]}
                        rows.append(row)
                        print(f"{name:9s} threads {threads} kv {kv:5s} ctx {ctx:5d}: glue {med['glue_ms']:.3f} "
                              f"attention {med['attention_ms']:.3f} outside linears {row['outside_linears_ms']:.3f} ms "
                              f"(linears {med['linears_ms']:.1f})")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    res = {"what": "decoder time outside the linears per decode step, 2B-4T shape (decoder_bench.c)",
           "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count(), "loadavg": load},
           "config": {"rounds": args.rounds, "steps": args.steps,
                      "baseline": str(args.baseline) if args.baseline else None},
           "rows": rows}
    out = args.out or REPO / "benchmarks" / "results" / f"decoder-glue-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
