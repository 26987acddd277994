"""Bundle size benchmark: bits per ternary weight on the wire, and delta / full size ratios.

    python -m benchmarks.bundles [--sizes 2048,4096,4096,2048] [--out benchmarks/results/bundles-<date>.json]

Builds a ternary MLP (absmean-quantized Gaussian weights, float32 biases) as a converted-model
directory, packages release 1 for linux-x86_64, then release 2 as a full and a delta bundle for
three kinds of update:

- ``finetune-stepS``: the float weights move by a Gaussian step of S standard deviations and are
  re-quantized with absmean (how a fine-tune looks after quantization: weights near a threshold flip);
- ``random-5pct`` / ``random-10pct``: that fraction of the ternary weights gets a different value,
  scattered over every row.

Reports the fraction of weights that changed, both bundle sizes, delta / full, the encoding the
packager chose for the ternary section, what zstd patch-from alone would give for it, and the
time each step took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.packagers.targets import build_library
from bitnet_edge.sdk import packing, quant
from bitnet_edge.sdk.bundle import codec
from bitnet_edge.sdk.bundle.verify import read_unverified
from bitnet_edge.sdk.manifest import MlpConfig, ModelManifest, SourceInfo, TensorEntry
from bitnet_edge.sdk.modeldir import write_model_dir

TARGET_DEVICE = "x86-64-v4"


def float_layers(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, k)).astype(np.float32), (rng.standard_normal(n) * 0.1).astype(np.float32))
            for k, n in zip(sizes[:-1], sizes[1:])]


def write_mlp(path: Path, sizes, qlayers) -> Path:
    tensors, entries, precision = {}, [], {}
    for i, (q, g, b) in enumerate(qlayers):
        w = f"layers.{i}.weight"
        tensors[w], tensors[f"layers.{i}.bias"] = packing.pack_ternary_2bit(q), b
        entries += [TensorEntry(name=w, format="ternary2", shape=list(q.shape), scale=g),
                    TensorEntry(name=f"layers.{i}.bias", format="f32", shape=[q.shape[0]])]
        precision[w] = "ternary"
    m = ModelManifest(name="bench-mlp", config=MlpConfig(layer_sizes=list(sizes), activation="relu"),
                      precision=precision, tensors=entries, source=SourceInfo(kind="synthetic", path="benchmarks"))
    return write_model_dir(path, m, tensors)


def quantized(layers):
    out = []
    for w, b in layers:
        q, g = quant.absmean_ternary(w)
        out.append((q.astype(np.int8), float(g), b))
    return out


def updates(layers, q1):
    rng = np.random.default_rng(99)
    for step in (0.1, 0.2):
        ft = [(w + np.float32(step) * rng.standard_normal(w.shape).astype(np.float32), b) for w, b in layers]
        yield f"finetune-step{step}", quantized(ft)
    for frac in (0.05, 0.10):
        new = []
        for q, g, b in q1:
            q = q.copy()
            mask = rng.random(q.shape) < frac
            q[mask] = (q[mask] + 1 + rng.integers(0, 2, int(mask.sum())) + 1) % 3 - 1  # a different value
            new.append((q, g, b))
        yield f"random-{round(frac * 100)}pct", new


def run(sizes) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bne-bench-bundles-"))
    key = load_private_key(generate_keypair(tmp / "keys").private_path)
    layers = float_layers(sizes)
    q1 = quantized(layers)
    m1 = write_mlp(tmp / "m1", sizes, q1)
    opts = PackageOptions()
    t = time.perf_counter()
    (r1,) = package_model(m1, [TARGET_DEVICE], "1.0.0", [key], tmp / "v1", options=opts)
    t_full = time.perf_counter() - t
    s = r1.manifest.sizes
    res = {"sizes": list(sizes), "ternary_weights": s.ternary_weights, "release1": {
        "bundle_bytes": r1.size, "ternary_stored_bytes": s.ternary_stored_bytes,
        "ternary_bits_per_weight": s.ternary_bits_per_weight, "package_seconds": round(t_full, 2),
        "library": r1.manifest.libraries[0].binary}, "updates": []}
    lib = build_library("linux-x86_64", opts.native_root, tmp / "lib")
    opts = PackageOptions(libraries={"linux-x86_64": lib})
    for name, q2 in updates(layers, q1):
        changed = sum(int((a[0] != b[0]).sum()) for a, b in zip(q1, q2)) / s.ternary_weights
        m2 = write_mlp(tmp / f"m2-{name}", sizes, q2)
        t = time.perf_counter()
        (r2,) = package_model(m2, [TARGET_DEVICE], "1.1.0", [key], tmp / f"v2-{name}", delta_from=[r1.path],
                              options=opts)
        dt_s = time.perf_counter() - t
        _, dm = read_unverified(r2.delta_path)
        t1 = b"".join(packing.pack_ternary_base3(q) for q, _, _ in q1)
        t2 = b"".join(packing.pack_ternary_base3(q) for q, _, _ in q2)
        res["updates"].append({
            "update": name, "weights_changed": round(changed, 4), "full_bytes": r2.size,
            "delta_bytes": r2.delta_size, "delta_over_full": round(r2.delta_ratio, 4),
            "ternary_encoding": dm.section("weights.ternary").encoding,
            "ternary_delta_bits_per_weight": round(8 * dm.section("weights.ternary").stored_size
                                                   / s.ternary_weights, 4),
            "package_full_and_delta_seconds": round(dt_s, 2),
            "ternary_patch_from_bits_per_weight": round(8 * len(codec.encode_patch(t2, t1)) / s.ternary_weights, 4)})
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2048,4096,4096,2048", help="MLP layer sizes")
    ap.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = ap.parse_args(argv)
    res = run([int(x) for x in args.sizes.split(",")])
    text = json.dumps(res, indent=2)
    print(text)
    out = args.out or Path("benchmarks/results") / f"bundles-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
