"""Agent benchmark: idle RSS, memory per model (zygote-forked workers vs cold-started ones),
RSS with a model, install time, local-API latency, 2B load time.

    python -m benchmarks.agent [--quick] [--memory-only]

Memory is read from /proc/PID/smaps_rollup: RSS, PSS (shared pages divided among the processes
sharing them) and private (pages no other process maps: what one more worker really costs).
PSS also divides pages with unrelated processes that map the same files (other Pythons of the
same venv on a shared machine), so "together" counts the distinct physical pages the agent, its
zygote and its workers map (/proc/PID/pagemap; needs the privilege to read frame numbers).

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


def _mlp_dir(path: Path, rng, name: str = "sensor-mlp") -> Path:
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
    from bitnet_edge.sdk.manifest import MlpConfig, SourceInfo

    sizes = [64, 256, 256, 10]
    tensors = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        tensors[f"layers.{i}.weight"] = ImportedTensor("float", rng.standard_normal((b, a)).astype(np.float32))
        tensors[f"layers.{i}.bias"] = ImportedTensor("float", np.zeros(b, np.float32))
    m = ImportedModel(name, MlpConfig(layer_sizes=sizes, activation="relu"), tensors,
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


def _mem(pid) -> dict | None:
    from bitnet_edge.agent.daemon import _mem_mb

    m = _mem_mb(pid)
    return None if m is None else {k: round(v, 2) for k, v in m.items()}


def _resident_pfns(pid) -> set[int] | None:
    """Physical frames of the resident pages of ``pid`` (/proc/PID/pagemap; None without the
    privilege to see frame numbers)."""
    import struct

    frames: set[int] = set()
    seen_nonzero = False
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        with open(f"/proc/{pid}/pagemap", "rb") as pm:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if line.endswith("[vsyscall]"):
                    continue
                pm.seek(lo // 4096 * 8)
                raw = pm.read((hi - lo) // 4096 * 8)
                for (e,) in struct.iter_unpack("<Q", raw):
                    if e >> 63:  # present
                        pfn = e & ((1 << 55) - 1)
                        if pfn:
                            seen_nonzero = True
                            frames.add(pfn)
    except OSError:
        return None
    return frames if seen_nonzero else None


def _together_mb(pids) -> float | None:
    """What the processes take together: the distinct physical pages they map (shared pages once),
    independent of other processes on the machine that map the same files (unlike PSS)."""
    union: set[int] = set()
    for pid in pids:
        f = _resident_pfns(pid)
        if f is None:
            return None
        union |= f
    return round(len(union) * 4096 / 2**20, 2)


def _processes(d) -> dict:
    """smaps figures of the agent, its zygote and every model worker (from the agent's status)."""
    _, st = d.admin("GET", "/v1/admin/status")
    zpid = st.get("memory", {}).get("zygote_pid")
    workers = {n: _mem(m["worker"]["pid"]) for n, m in st["models"].items() if m.get("worker")}
    procs = {"agent": _mem(d.proc.pid), "zygote": _mem(zpid) if zpid else None, "workers": workers}
    procs["total_pss_mb"] = round(sum(x["pss"] for x in [procs["agent"], procs["zygote"], *workers.values()]
                                      if x is not None), 2)
    pids = [d.proc.pid] + ([zpid] if zpid else []) + [m["worker"]["pid"] for m in st["models"].values()
                                                      if m.get("worker")]
    procs["together_mb"] = _together_mb(pids)
    return procs


def _memory(tmp: Path, key, rng, n_models: int) -> dict:
    """Agent idle; agent + one small model; each further model.  With workers forked from the
    zygote, and (the peer, same run) with every worker a fresh interpreter (BITNET_EDGE_ZYGOTE=0)."""
    from bitnet_edge.packagers.builder import package_model
    from tests.support.agent_fixtures import HOST_DEVICE, Daemon, free_port, write_config

    paths = [package_model(_mlp_dir(tmp / f"mm{i}", rng, f"sensor-{i}"), [HOST_DEVICE], "1.0.0", [key],
                           tmp / f"mb{i}", release=1)[0].path for i in range(n_models)]
    out = {}
    for mode, env in (("zygote", {}), ("cold_start", {"BITNET_EDGE_ZYGOTE": "0"})):
        port = free_port()
        cfg = write_config(tmp / f"agent-{mode}.toml", tmp / f"data-{mode}", [tmp / "keys" / "release.pub"],
                           port=port)
        r: dict = {}
        d = Daemon(cfg, port, env=env)
        try:
            time.sleep(1.0)
            r["agent_idle"] = _mem(d.proc.pid)
            per_model = []
            for i, p in enumerate(paths):
                code, o = d.admin("POST", "/v1/admin/install", {"path": str(d.hand_over(p))}, timeout=600)
                assert o.get("result") == "installed", o
                code, _ = d.request("POST", "/v1/infer", {"inputs": [[0.1] * 64], "model": f"sensor-{i}"})
                assert code == 200
                procs = _processes(d)
                if i == 0:
                    r["one_model_after_install"] = procs
                per_model.append({"model": f"sensor-{i}", "worker": procs["workers"][f"sensor-{i}"],
                                  "total_pss_mb": procs["total_pss_mb"], "together_mb": procs["together_mb"]})
            r["per_model"] = per_model
        finally:
            d.stop()
        # steady state: a restarted agent serving what is installed (no install-time imports in it)
        d = Daemon(cfg, port, env=env)
        try:
            time.sleep(1.0)
            for i in range(n_models):
                d.request("POST", "/v1/infer", {"inputs": [[0.1] * 64], "model": f"sensor-{i}"})
            r["restarted_all_models"] = _processes(d)
        finally:
            d.stop()
        extra = [m["worker"]["private"] for m in per_model[1:]]
        steps = [b["total_pss_mb"] - a["total_pss_mb"] for a, b in zip(per_model, per_model[1:])]
        tsteps = [b["together_mb"] - a["together_mb"] for a, b in zip(per_model, per_model[1:])
                  if a["together_mb"] is not None and b["together_mb"] is not None]
        r["summary"] = {
            "agent_idle_rss_mb": r["agent_idle"]["rss"],
            "agent_plus_one_model_total_pss_mb": r["one_model_after_install"]["total_pss_mb"],
            "agent_plus_one_model_together_mb": r["one_model_after_install"]["together_mb"],
            "restarted_agent_plus_models_together_mb": r["restarted_all_models"]["together_mb"],
            "extra_model_private_mb_median": round(statistics.median(extra), 2) if extra else None,
            "extra_model_total_pss_increase_mb_median": round(statistics.median(steps), 2) if steps else None,
            "extra_model_together_increase_mb_median": round(statistics.median(tsteps), 2) if tsteps else None,
        }
        out[mode] = r
    z, c = out["zygote"]["summary"], out["cold_start"]["summary"]
    le = lambda v, cap: None if v is None else v <= cap  # noqa: E731
    out["targets"] = {  # issue 18 / 19, each measure named (PSS varies with unrelated processes sharing files)
        "agent_idle_rss_le_60mb": le(z["agent_idle_rss_mb"], 60),
        "agent_plus_one_small_model_le_100mb": {"pss": le(z["agent_plus_one_model_total_pss_mb"], 100),
                                                "together": le(z["agent_plus_one_model_together_mb"], 100)},
        "extra_model_overhead_le_15mb": {"private": le(z["extra_model_private_mb_median"], 15),
                                         "together": le(z["extra_model_together_increase_mb_median"], 15),
                                         "pss": le(z["extra_model_total_pss_increase_mb_median"], 15)},
        "cold_start_over_zygote_per_model_together": round(c["extra_model_together_increase_mb_median"]
                                                           / z["extra_model_together_increase_mb_median"], 2)
        if z["extra_model_together_increase_mb_median"] and c["extra_model_together_increase_mb_median"] else None,
    }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the memory figures (several small models)")
    ap.add_argument("--models", type=int, default=4, help="small models installed side by side for the memory run")
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
        res["memory"] = _memory(tmp, key, rng, max(2, args.models))
    if args.memory_only:
        _write(res, args)
        return
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
            for name, model, bundle, path, body in (  # installed side by side: requests name their model
                ("mlp", "sensor-mlp", mlp, "/v1/infer", {"inputs": [[0.1] * 64], "model": "sensor-mlp"}),
                ("bert", "minilm-shaped", bert, "/v1/embeddings",
                 {"input": [[101, 2023, 2003, 1037, 3231, 102]], "model": "minilm-shaped"}),
            ):
                t0 = time.perf_counter()
                code, out = d.admin("POST", "/v1/admin/install", {"path": str(d.hand_over(bundle))}, timeout=600)
                installs[name] = {"seconds": time.perf_counter() - t0, "bundle_bytes": bundle.stat().st_size,
                                  "result": out.get("result")}
                _, st = d.admin("GET", "/v1/admin/status")
                worker_pid = st["models"][model]["worker"]["pid"]
                res[f"{name}_rss_mb"] = {"agent": rss_mb(d.proc.pid), "worker": rss_mb(worker_pid)}
                res[f"{name}_latency"] = _latency(d, path, body, 200 if args.quick else 1000)
            res["install"] = installs
        finally:
            d.stop()
        res["bitnet_2b_load"] = _load_2b(tmp, 4 if args.quick else 30)
    _write(res, args)


def _write(res: dict, args) -> None:
    res["machine"] = {"python": sys.version.split()[0], "memory_only": bool(args.memory_only)}
    print(json.dumps(res, indent=2))
    out = args.out or Path("benchmarks/results") / f"agent-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
