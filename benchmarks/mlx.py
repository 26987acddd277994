"""The mlx device against our CPU kernels on this machine: BitNet-2B GEMV/GEMM and a small decoder.

    python -m benchmarks.mlx [--quick] [--out benchmarks/results/mlx-<date>.json]

Per shape (W (n, k) ternary, the LM head int8), both paths are first checked bit-exact against each
other (and the CPU kernel is checked against numpy by the kernel tests), then timed, medians:

- ``kernel``: the integer product alone -- ``mx.quantized_matmul`` on the 2-bit compute layout
  (mx.eval) vs the native ``matmul_int8``;
- ``layer``: what a model layer pays, float x -> float y -- host activation quantization, the MLX
  product, the transfer back and the host epilogue vs the native ``linear``.

Then a small BitNet-shaped decoder (random ternary weights, int8 head) end to end on device cpu and
device mlx: prefill tokens/s and decode ms/token; the generated tokens must be identical.

On Linux this is MLX's CPU backend (mlx[cpu]), whose 2-bit quantized matmul is generic code, not the
Metal path the backend is for: the figures say what the mlx device costs where it is tested, not
what it does on a Mac.  The native kernels run at every core of the machine (``set_threads``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._timing import median_seconds
from bitnet_edge.sdk import kernels, load_model, mlx_backend

# (label, n out, k in, format, token counts)
SHAPES = [
    ("attn 2560x2560", 2560, 2560, "ternary", (1, 64)),
    ("ffn up 6912x2560", 6912, 2560, "ternary", (1, 64)),
    ("ffn down 2560x6912", 2560, 6912, "ternary", (1, 64)),
    ("lm head 128256x2560", 128256, 2560, "int8", (1,)),
]
QUICK_SHAPES = [("attn 2560x2560", 2560, 2560, "ternary", (1, 16)), ("lm head 32000x2560", 32000, 2560, "int8", (1,))]


def _matrices(n: int, k: int, fmt: str, rng):
    if fmt == "ternary":
        cpu = kernels.TernaryMatrix.from_ternary(rng.integers(-1, 2, (n, k)).astype(np.int8), 0.02)
    else:
        cpu = kernels.Int8Matrix(rng.integers(-127, 128, (n, k)).astype(np.int8),
                                 (rng.random(n) * 0.01 + 1e-3).astype(np.float32))
    return cpu, mlx_backend.from_matrix(cpu)


def _mlx_kernel_call(w, xq: np.ndarray):
    """The MLX product alone, input already on the device in MLX order."""
    mx = mlx_backend._mx()
    inp = mlx_backend._Inputs(None, (xq, np.ones(xq.shape[0], np.float32)))
    kind = "ternary" if isinstance(w, mlx_backend.MlxTernaryMatrix) else "int8"
    for a, b, *_ in w._chunks:
        mx.eval(inp.get(kind, w.kp, a, b))
    return lambda: mx.eval(w._acc(inp))


def bench_shapes(shapes, min_time: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for label, n, k, fmt, ms in shapes:
        cpu, mxw = _matrices(n, k, fmt, rng)
        for m in ms:
            xq = rng.integers(-127, 128, (m, k)).astype(np.int8)
            x = rng.standard_normal((m, k)).astype(np.float32)
            # check before timing: the integer product and the layer output, bit for bit
            if not np.array_equal(mxw.matmul_int8(xq), cpu.matmul_int8(xq)):
                raise SystemExit(f"{label} m={m}: mlx product differs from the CPU kernel")
            if not np.array_equal(mxw.linear(x), cpu.linear(x)):
                raise SystemExit(f"{label} m={m}: mlx linear differs from the CPU kernel")
            reps = dict(min_time=min_time, min_reps=3, warmup=1)
            t_nk, _ = median_seconds(lambda: cpu.matmul_int8(xq), **reps)
            t_mk, _ = median_seconds(_mlx_kernel_call(mxw, xq), **reps)
            t_nl, _ = median_seconds(lambda: cpu.linear(x), **reps)
            t_ml, _ = median_seconds(lambda: mxw.linear(x), **reps)
            rows.append({"shape": label, "n": n, "k": k, "format": fmt, "m": m,
                         "cpu_backend": kernels.resolve_backend(), "cpu_threads": kernels.get_threads(),
                         "cpu_kernel_ms": t_nk * 1e3, "mlx_kernel_ms": t_mk * 1e3,
                         "cpu_layer_ms": t_nl * 1e3, "mlx_layer_ms": t_ml * 1e3,
                         "mlx_over_cpu_kernel": t_mk / t_nk, "mlx_over_cpu_layer": t_ml / t_nl,
                         "cpu_weight_bytes": int(cpu.packed.nbytes if fmt == "ternary" else cpu.weights.nbytes),
                         "mlx_weight_bytes": int(mxw.nbytes)})
    return rows


def _small_decoder(root: Path, quick: bool) -> Path:
    from bitnet_edge.sdk.convert.convert import convert
    from bitnet_edge.sdk.convert.hf import _decoder_expected
    from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
    from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo

    cfg = DecoderConfig(vocab_size=8192, hidden_size=512 if quick else 1024, intermediate_size=1408 if quick else 2816,
                        num_hidden_layers=2 if quick else 4, num_attention_heads=8, num_key_value_heads=2,
                        head_dim=64 if quick else 128, max_position_embeddings=512, rms_norm_eps=1e-5,
                        rope_theta=500000.0, hidden_act="relu2", sub_norms=True, tie_word_embeddings=True)
    rng = np.random.default_rng(1)
    t = {}
    for name, shape in _decoder_expected(cfg).items():
        if len(shape) == 1:
            t[name] = ImportedTensor("float", np.ones(shape, np.float32))
        elif name.endswith("embed_tokens.weight"):
            t[name] = ImportedTensor("float", rng.standard_normal(shape).astype(np.float32))
        else:
            t[name] = ImportedTensor("ternary", rng.integers(-1, 2, shape).astype(np.int8), scale=0.05)
    m = ImportedModel("bench-decoder", cfg, t, SourceInfo(kind="synthetic", path="benchmarks/mlx.py"))
    return convert(m, root / "decoder", precision="ternary", head="int8")


def bench_decoder(quick: bool) -> dict:
    prompt_n, new_n, rounds = (32, 16, 2) if quick else (64, 32, 5)
    root = Path(tempfile.mkdtemp(prefix="bne-bench-mlx-"))
    try:
        path = _small_decoder(root, quick)
        out: dict = {}
        tokens = {}
        for dev in ("cpu", "mlx"):
            m = load_model(path, device=dev)
            ids = np.random.default_rng(2).integers(0, m.cfg.vocab_size, prompt_n)
            prefill, decode = [], []
            for _ in range(rounds):
                cache = m.new_cache(prompt_n + new_n)
                t0 = time.perf_counter()
                tok = int(np.argmax(m.forward(ids, cache)[-1]))
                t1 = time.perf_counter()
                gen = [tok]
                for _ in range(new_n - 1):
                    tok = int(np.argmax(m.forward(np.array([tok]), cache)[-1]))
                    gen.append(tok)
                t2 = time.perf_counter()
                prefill.append(prompt_n / (t1 - t0))
                decode.append((t2 - t1) * 1e3 / (new_n - 1))
            tokens[dev] = gen
            out[dev] = {"prefill_tok_s": float(np.median(prefill)), "decode_ms_per_token": float(np.median(decode)),
                        "linear_weight_bytes": int(sum(lin.weight_bytes for layer in m.layers for lin in (
                            layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down))
                            + m.lm_head.weight_bytes)}
        if tokens["cpu"] != tokens["mlx"]:
            raise SystemExit("decoder: mlx generated other tokens than cpu")
        c = m.cfg
        out["config"] = {"hidden": c.hidden_size, "ffn": c.intermediate_size, "layers": c.num_hidden_layers,
                         "vocab": c.vocab_size, "prompt_tokens": prompt_n, "new_tokens": new_n, "rounds": rounds}
        out["tokens_identical"] = True
        out["mlx_over_cpu_prefill_time"] = out["cpu"]["prefill_tok_s"] / out["mlx"]["prefill_tok_s"]
        out["mlx_over_cpu_decode_time"] = out["mlx"]["decode_ms_per_token"] / out["cpu"]["decode_ms_per_token"]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, smaller shapes and shorter runs")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    console = Console()
    if not mlx_backend.available():
        raise SystemExit(f"mlx does not import ({mlx_backend.import_error()}); pip install 'bitnet-edge[mlx]'")
    kernels.set_threads(os.cpu_count() or 1)
    res = {"machine": {"platform": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count()},
           "mlx": mlx_backend.info(), "cpu_backend": kernels.resolve_backend(), "cpu_threads": kernels.get_threads(),
           "quick": args.quick}
    res["shapes"] = bench_shapes(QUICK_SHAPES if args.quick else SHAPES, 0.2 if args.quick else 0.5)
    t = Table(title=f"mlx {res['mlx'].get('version')} ({res['mlx'].get('device')}) vs CPU kernels "
                    f"({res['cpu_backend']}, {res['cpu_threads']} threads), medians")
    for col in ("shape", "m", "cpu kernel ms", "mlx kernel ms", "mlx/cpu", "cpu layer ms", "mlx layer ms", "mlx/cpu"):
        t.add_column(col, justify="right")
    for r in res["shapes"]:
        t.add_row(r["shape"], str(r["m"]), f"{r['cpu_kernel_ms']:.3f}", f"{r['mlx_kernel_ms']:.3f}",
                  f"{r['mlx_over_cpu_kernel']:.1f}x", f"{r['cpu_layer_ms']:.3f}", f"{r['mlx_layer_ms']:.3f}",
                  f"{r['mlx_over_cpu_layer']:.1f}x")
    console.print(t)
    res["decoder"] = d = bench_decoder(args.quick)
    console.print(f"decoder {d['config']}: prefill {d['cpu']['prefill_tok_s']:.1f} tok/s (cpu) vs "
                  f"{d['mlx']['prefill_tok_s']:.1f} tok/s (mlx); decode {d['cpu']['decode_ms_per_token']:.2f} ms/token "
                  f"(cpu) vs {d['mlx']['decode_ms_per_token']:.2f} ms/token (mlx); tokens identical")
    out = args.out or Path("benchmarks/results") / f"mlx-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
