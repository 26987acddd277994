"""``graph`` models against TFLite + XNNPACK: latency and size of our plans on the same model.

    python -m benchmarks.graphs [--threads 1,2] [--quick] [--out benchmarks/results/graphs-<date>.json]

Models (random He-initialised weights, built with the test suite's TFLite writer, the float and the
int8-quantized TFLite file of each):

- ``mobilenet_v1_0.25_128``: MobileNet v1, width 0.25, 128x128x3 input, 1000 classes (a classic
  edge vision model; 13 depthwise-separable blocks);
- ``ds_cnn_kws``: the MLPerf Tiny keyword-spotting DS-CNN (49x10x1 MFCC input, 64 channels, 12 classes);
- ``fc_sensor``: a fully-connected sensor classifier 8x64 -> 1024 -> 1024 -> 256 -> 16.

For each: TFLite float and int8 with ai-edge-litert's interpreter (XNNPACK delegate applied by
default) at each thread count, and our ``f32``, ``int8``, ``ternary`` and ``auto`` (budget 0.99 on
random calibration inputs) plans at the same thread count; one sample per call (edge latency),
medians; numpy's BLAS (our float layers) limited to the same thread count; the model size on disk
(the .tflite file; our manifest.json + weights.safetensors).  Ratios (ours / TFLite) are computed in
the same run.  Run it with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (see README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks._timing import median_seconds
from bitnet_edge.sdk import kernels, load_model
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.tflite import load_interpreter, read_tflite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.graph_models import RELU, RELU6, TflBuilder, tflite_int8_model, tflite_model  # noqa: E402

PLANS = ("f32", "int8", "ternary", "auto")


def mobilenet_v1(b: TflBuilder, alpha: float = 0.25, size: int = 128, int8: bool = False):
    ch = lambda c: max(8, int(c * alpha))  # noqa: E731
    x = b.input("image", [1, size, size, 3])
    x = b.conv("conv0", x, ch(32), 3, stride=2, act=RELU6)
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (c, s) in enumerate(blocks):
        x = b.dwconv(f"dw{i}", x, 3, stride=s, act=RELU6)
        x = b.conv(f"pw{i}", x, ch(c), 1, act=RELU6)
    x = b.mean("gap", x, [1, 2])
    x = b.fc("logits", x, 1000)
    return b.output(b.softmax("probs", x))


def ds_cnn_kws(b: TflBuilder, int8: bool = False):
    x = b.input("mfcc", [1, 49, 10, 1])
    x = b.conv("conv0", x, 64, 3, stride=2, act=RELU)  # a 3x3 stem (the original is 10x4; the writer takes square kernels)
    for i in range(4):
        x = b.dwconv(f"dw{i}", x, 3, act=RELU)
        x = b.conv(f"pw{i}", x, 64, 1, act=RELU)
    x = b.mean("gap", x, [1, 2])
    x = b.fc("logits", x, 12)
    return b.output(b.softmax("probs", x))


def fc_sensor(b: TflBuilder, int8: bool = False):
    x = b.input("window", [1, 8, 64])
    x = b.reshape("flat", x, [1, 512])
    x = b.fc("fc1", x, 1024, act=RELU)
    x = b.fc("fc2", x, 1024, act=RELU)
    x = b.fc("fc3", x, 256, act=RELU)
    x = b.fc("logits", x, 16)
    return b.output(b.softmax("probs", x))


MODELS = {"mobilenet_v1_0.25_128": (mobilenet_v1, (128, 128, 3)), "ds_cnn_kws": (ds_cnn_kws, (49, 10, 1)),
          "fc_sensor": (fc_sensor, (8, 64))}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def bench_model(name: str, tmp: Path, threads: list[int], min_time: float) -> dict:
    program, shape = MODELS[name]
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, *shape)).astype(np.float32)
    x = rng.standard_normal((1, *shape)).astype(np.float32)
    files = {"tflite_f32": tflite_model(program), "tflite_int8": tflite_int8_model(program, calib[:8])}
    out: dict = {"model": name, "input_shape": [1, *shape], "sizes_bytes": {}, "latency_ms": {}, "ratios": {}}
    paths = {}
    for k, content in files.items():
        p = tmp / f"{name}-{k}.tflite"
        p.write_bytes(content)
        paths[k] = p
        out["sizes_bytes"][k] = len(content)
    imported = read_tflite(paths["tflite_f32"])
    models = {}
    for plan in PLANS:
        md = convert(imported, tmp / f"{name}-{plan}", precision=plan, calibration=calib if plan == "auto" else None,
                     budget=0.99)
        models[plan] = load_model(md)
        out["sizes_bytes"][plan] = _dir_bytes(md)
        if plan == "auto":
            out["auto_plan"] = {"precision_counts": {p: list(models[plan].manifest.precision.values()).count(p)
                                                     for p in ("ternary", "int8", "f16")},
                                "calibration": models[plan].manifest.calibration}
    ref_probs = None
    for t in threads:
        # ours first, then TFLite: XNNPACK's and OpenBLAS's worker threads keep spinning after a
        # call, and on a 2-core machine three pools in one process slow each other down
        kernels.set_threads(t)
        lat: dict[str, float] = {}
        with threadpool_limits(t):  # numpy's BLAS (our float layers) gets the same thread count
            for plan, m in models.items():
                lat[plan] = median_seconds(lambda m=m: m.predict(x), min_time=min_time)[0] * 1e3
        for k, p in paths.items():
            it = load_interpreter(model_path=p, num_threads=t)
            it.allocate_tensors()
            i = it.get_input_details()[0]
            xin = x
            if i["dtype"] != np.float32:
                s, z = i["quantization"]
                xin = np.clip(np.round(x / s) + z, -128, 127).astype(i["dtype"])

            def run(it=it, i=i, xin=xin):
                it.set_tensor(i["index"], xin)
                it.invoke()
            lat[k] = median_seconds(run, min_time=min_time)[0] * 1e3
            if k == "tflite_f32":
                ref_probs = it.get_tensor(it.get_output_details()[0]["index"]).copy()
            del it, run
            gc.collect()
        out["latency_ms"][str(t)] = lat
        out["ratios"][str(t)] = {f"{plan}_vs_tflite_f32": lat[plan] / lat["tflite_f32"] for plan in PLANS}
        out["ratios"][str(t)].update({f"{plan}_vs_tflite_int8": lat[plan] / lat["tflite_int8"] for plan in PLANS})
    out["size_ratios"] = {f"{plan}_vs_tflite_f32": out["sizes_bytes"][plan] / out["sizes_bytes"]["tflite_f32"]
                          for plan in PLANS}
    out["size_ratios"].update({f"{plan}_vs_tflite_int8": out["sizes_bytes"][plan] / out["sizes_bytes"]["tflite_int8"]
                               for plan in PLANS})
    out["f32_plan_max_abs_diff_vs_tflite"] = float(np.abs(models["f32"].predict(x) - ref_probs).max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    results = {"benchmark": "graphs", "date": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "backend": kernels.resolve_backend(), "load_average_at_start": os.getloadavg()},
               "note": "one sample per call; medians; TFLite via ai-edge-litert with its default XNNPACK delegate",
               "models": []}
    with tempfile.TemporaryDirectory(prefix="bne-bench-graphs-") as tmp:
        for name in args.models.split(","):
            r = bench_model(name, Path(tmp), threads, 0.15 if args.quick else 0.5)
            results["models"].append(r)
            print(json.dumps({"model": name, "latency_ms": r["latency_ms"], "sizes_bytes": r["sizes_bytes"]}),
                  flush=True)
    out = args.out or Path("benchmarks/results") / f"graphs-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
