"""Agent benchmark: idle RSS, RSS with a model, install time, local-API latency, 2B load time.

    python -m benchmarks.agent [--quick]

Runs a real agent daemon (subprocess) with real signed bundles on this machine; JSON to
benchmarks/results/.  Latency is measured over HTTP on loopback, one request at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitnet_edge.agent.worker import rss_mb


def _bert_dir(path: Path, rng) -> Path:
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
    from bitnet_edge.sdk.convert.hf import _bert_expected
    from bitnet_edge.sdk.manifest import EncoderConfig, SourceInfo

    cfg = EncoderConfig(vocab_size=8000, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                        num_attention_heads=12, max_position_embeddings=256, type_vocab_size=2,
                        layer_norm_eps=1e-12, hidden_act="gelu")
    tensors = {}
    for name, shape in _bert_expected(cfg).items():
        if name.endswith("LayerNorm.weight"):
            data = np.ones(shape, np.float32)
        elif len(shape) == 1:
            data = np.zeros(shape, np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        tensors[name] = ImportedTensor("float", data)
    m = ImportedModel("minilm-shaped", cfg, tensors, SourceInfo(kind="synthetic", path="benchmarks/agent.py"))
    return convert(m, path, precision="ternary")


def _mlp_dir(path: Path, rng) -> Path:
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
    from bitnet_edge.sdk.manifest import MlpConfig, SourceInfo

    sizes = [64, 256, 256, 10]
    tensors = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        tensors[f"layers.{i}.weight"] = ImportedTensor("float", rng.standard_normal((b, a)).astype(np.float32))
        tensors[f"layers.{i}.bias"] = ImportedTensor("float", np.zeros(b, np.float32))
    m = ImportedModel("sensor-mlp", MlpConfig(layer_sizes=sizes, activation="relu"), tensors,
                      SourceInfo(kind="synthetic", path="benchmarks/agent.py"))
    return convert(m, path, precision="ternary")


def _percentiles(samples: list[float]) -> dict:
    a = np.array(samples) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(samples)}


def _latency(d, path: str, body: dict, n: int) -> dict:
    for _ in range(10):
        d.request("POST", path, body)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, _ = d.request("POST", path, body)
        times.append(time.perf_counter() - t0)
        assert code == 200
    return _percentiles(times)


def _load_2b(tmp: Path, layers: int) -> dict:
    """Convert a BitNet-2B-shaped random ternary model, then time load_model in a fresh process."""
    out = tmp / "bitnet-2b"
    code = ("from benchmarks.decode import build_model; from bitnet_edge.sdk.convert.convert import convert; "
            f"convert(build_model({layers}), {str(out)!r}, precision='ternary', head='int8', embeddings='int8')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    probe = ("import time,resource; t0=time.perf_counter(); from bitnet_edge.sdk import load_model; t1=time.perf_counter(); "
             f"m=load_model({str(out)!r}); t2=time.perf_counter(); "
             "print(t2-t1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"layers": layers, "model_bytes": size, "load_s_median": statistics.median(float(r[0]) for r in runs),
            "peak_rss_mb_after_load": statistics.median(float(r[1]) for r in runs)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bitnet_edge.packagers.builder import package_model
    from bitnet_edge.packagers.keys import generate_keypair, load_private_key
    from tests.support.agent_fixtures import HOST_DEVICE, Daemon, free_port, write_config

    rng = np.random.default_rng(0)
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="bne-bench-agent-") as t:
        tmp = Path(t)
        generate_keypair(tmp / "keys", "release")
        key = load_private_key(tmp / "keys" / "release.key")
        mlp = package_model(_mlp_dir(tmp / "mlp", rng), [HOST_DEVICE], "1.0.0", [key], tmp / "b1", release=1)[0].path
        bert = package_model(_bert_dir(tmp / "bert", rng), [HOST_DEVICE], "2.0.0", [key], tmp / "b2",
                             release=2)[0].path
        port = free_port()
        cfg = write_config(tmp / "agent.toml", tmp / "data", [tmp / "keys" / "release.pub"], port=port)
        d = Daemon(cfg, port)
        try:
            time.sleep(1.0)
            res["idle_rss_mb_no_model"] = rss_mb(d.proc.pid)
            installs = {}
            for name, bundle, path, body in (
                ("mlp", mlp, "/v1/infer", {"inputs": [[0.1] * 64]}),
                ("bert", bert, "/v1/embeddings", {"input": [[101, 2023, 2003, 1037, 3231, 102]]}),
            ):
                t0 = time.perf_counter()
                code, out = d.request("POST", "/v1/admin/install", {"path": str(bundle)}, timeout=600)
                installs[name] = {"seconds": time.perf_counter() - t0, "bundle_bytes": bundle.stat().st_size,
                                  "result": out.get("result")}
                _, st = d.request("GET", "/v1/admin/status")
                worker_pid = st["worker"]["pid"]
                res[f"{name}_rss_mb"] = {"agent": rss_mb(d.proc.pid), "worker": rss_mb(worker_pid)}
                res[f"{name}_latency"] = _latency(d, path, body, 200 if args.quick else 1000)
            res["install"] = installs
        finally:
            d.stop()
        res["bitnet_2b_load"] = _load_2b(tmp, 4 if args.quick else 30)
    res["machine"] = {"python": sys.version.split()[0]}
    print(json.dumps(res, indent=2))
    out = args.out or Path("benchmarks/results") / f"agent-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
