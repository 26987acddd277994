"""Per-kernel GPU time of one greedy decode step (the one-kernel-per-operation path), read by Nsight
Compute on the GPU machine, written as JSON by this script.

    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \\
        python -m benchmarks.cuda_kernel_profile run --layers 4 > ncu.csv
    python -m benchmarks.cuda_kernel_profile summarize ncu.csv --layers 4 --out benchmarks/results/x.json

``run`` builds the 2B-shaped model (``benchmarks.decode.build_model``, fewer layers: every layer is
the same shape), prefills 128 tokens, replays the captured greedy step a few times, then profiles
exactly one replay (cuProfilerStart/Stop around it).  ncu replays every kernel node alone, so the
times are each kernel's own duration without the overlap that programmatic dependent launch gives
inside the graph; the graph's own step time is in ``benchmarks/cuda.py``'s JSON.  ``summarize``
groups the rows by kernel: launches and microseconds per layer and per token (the layer figures
scaled to 30 layers, the LM head and final norm counted once).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np



def run(layers: int, prompt: int = 128) -> None:
    from benchmarks.decode import build_model
    from bitnet_edge.sdk import load_model
    from bitnet_edge.sdk.convert.convert import convert

    with tempfile.TemporaryDirectory(prefix="bne-ncu-") as tmp:
        path = convert(build_model(layers), Path(tmp) / "m", precision="ternary", head="int8", embeddings="int8")
        model = load_model(path, device="cuda")
        model.decode_mode = "kernels"
        ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, size=prompt).tolist()
        cache = model.new_cache(prompt + 2)
        tok = int(np.argmax(model.forward(np.asarray(ids), cache)[-1]))
        model._embed_step(tok, cache)
        step = model._decode_step(cache, greedy=True)
        for _ in range(3):
            step()
        model.gpu.synchronize()
        cuda = ctypes.CDLL("libcuda.so.1")
        cuda.cuProfilerStart()
        step()
        model.gpu.synchronize()
        cuda.cuProfilerStop()


def summarize(csv_path: Path, layers: int, target_layers: int = 30) -> dict:
    """Rows grouped by kernel and grid (the LM head is the launch with the largest grid): a group
    launched once a step counts once a token, the others ``launches / layers`` times a layer."""
    rows = [ln for ln in csv_path.read_text(errors="replace").splitlines() if ln.startswith('"')]
    per: dict[str, list[float]] = {}
    for r in csv.DictReader(rows):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        us = v / 1e3 if r.get("Metric Unit", "ns") in ("ns", "nsecond") else v
        key = f"{r['Kernel Name'].split('(')[0].strip()} grid {r.get('Grid Size', '?').replace(' ', '')}"
        per.setdefault(key, []).append(us)
    kernels, token_us = {}, 0.0
    for key, times in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        once = len(times) == 1 and layers > 1
        per_layer = 0.0 if once else len(times) / layers
        mean = float(np.mean(times))
        scaled = mean * (1 if once else per_layer * target_layers)
        token_us += scaled
        kernels[key] = {"launches_profiled": len(times), "launches_per_layer": per_layer, "mean_us": mean,
                        "median_us": float(np.median(times)), f"us_per_token_at_{target_layers}_layers": scaled}
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "layers_profiled": layers,
            "target_layers": target_layers, "source": "ncu --metrics gpu__time_duration.sum, one greedy step",
            "note": "each kernel timed alone (ncu serializes graph nodes, cold caches): no PDL overlap",
            "kernels": kernels, "sum_us_per_token": token_us}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--layers", type=int, default=4)
    s = sub.add_parser("summarize")
    s.add_argument("csv", type=Path)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run(a.layers)
        return
    res = summarize(a.csv, a.layers)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    for name, k in res["kernels"].items():
        print(f"{name:34s} x{k['launches_per_layer']:.0f}/layer  {k['mean_us']:7.2f} us each  "
              f"{k['us_per_token_at_30_layers']:8.1f} us/token")
    print(f"sum (kernels alone, 30 layers): {res['sum_us_per_token']:.0f} us/token; wrote {a.out}")


if __name__ == "__main__":
    main()
