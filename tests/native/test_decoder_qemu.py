"""The C decoder (bne_decoder_forward) on every variant: x86-64 here, aarch64 under qemu-user.

native/tests/decoder_harness.c runs a small random decoder - every weight format (2-bit and base-3
ternary, int8, float32), sub norms, relu2 and the LLaMA layout with SiLU, grouped-query attention -
through a prompt and single-token steps, for every KV cache type, every backend the CPU runs and 1
and 2 threads.  The float glue is written so that no variant reorders or fuses float operations and
the integer kernels are exact, so every run of one cache type must give the same bits: across
backends, thread counts and the two architectures (qemu ``cortex-a72``: neon, ``cortex-a76``:
neon + dotprod).  test_decoder_native.py checks the x86 results against the numpy reference.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bitnet_edge.sdk import packing
from tests.support.tools import REPO, require_tool

NATIVE = REPO / "native"
COMMON = ["api.c", "cpu.c", "pool.c", "kernels_ref.c", "decoder.c"]
X86 = {"arch/x86/avx2.c": ["-mavx2", "-mfma", "-mf16c"],
       "arch/x86/avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}
ARM = {"arch/arm/neon.c": ["-march=armv8-a"], "arch/arm/neon_dotprod.c": ["-march=armv8.2-a+dotprod"]}
FLAGS = ["-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", f"-I{NATIVE / 'include'}", f"-I{NATIVE / 'src'}"]
FORMATS = {"ternary2": 1, "ternary_b3": 2, "int8": 3, "f32": 4}
KV = {0: "f32", 1: "f16", 2: "int8"}


def _linear(rng, fmt: str, n: int, k: int) -> bytes:
    if fmt in ("ternary2", "ternary_b3"):
        q = rng.integers(-1, 2, (n, k)).astype(np.int8)
        w = packing.pack_ternary_2bit(q) if fmt == "ternary2" else packing.pack_ternary_b3(q)
        body = w.tobytes()
        scale = float(np.float32(rng.uniform(0.05, 0.3)))
        extra = b""
    elif fmt == "int8":
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        body, scale = w.tobytes(), 0.0
        extra = rng.uniform(1e-3, 1e-2, n).astype("<f4").tobytes() + w.sum(1, dtype=np.int32).astype("<i4").tobytes()
    else:
        body, scale, extra = (rng.standard_normal((n, k)) * 0.1).astype("<f4").tobytes(), 0.0, b""
    return struct.pack("<IIIfQ", FORMATS[fmt], n, k, scale, len(body)) + body + extra


def decoder_blob(seed: int, act: int, sub_norms: bool, heads: int, kvh: int, hd: int, n_prompt: int = 9,
                 n_steps: int = 5) -> bytes:
    """A random decoder in the harness's input format."""
    rng = np.random.default_rng(seed)
    hidden, ffn, layers, vocab, maxpos = 64, 160, 2, 50, 32
    qd = heads * hd
    parts = [b"BNDV", struct.pack("<I", 1),
             struct.pack("<12I", hidden, ffn, layers, heads, kvh, hd, vocab, maxpos, act, n_prompt, n_steps,
                         int(sub_norms)),
             struct.pack("<ff", 1e-5, hd ** -0.5)]
    plans = [("ternary2", "ternary_b3", "int8", "f32", "ternary2", "ternary_b3", "int8"),
             ("ternary_b3", "ternary2", "ternary2", "ternary_b3", "int8", "ternary2", "ternary_b3")]
    f32 = lambda a: np.asarray(a, "<f4").tobytes()  # noqa: E731
    for li in range(layers):
        parts += [f32(1 + 0.1 * rng.standard_normal(hidden)), f32(1 + 0.1 * rng.standard_normal(hidden))]
        if sub_norms:
            parts += [f32(1 + 0.1 * rng.standard_normal(qd)), f32(1 + 0.1 * rng.standard_normal(ffn))]
        shapes = [(qd, hidden), (kvh * hd, hidden), (kvh * hd, hidden), (hidden, qd), (ffn, hidden), (ffn, hidden),
                  (hidden, ffn)]
        for fmt, (n, k) in zip(plans[li % 2], shapes):
            parts.append(_linear(rng, fmt, n, k))
    parts += [f32(1 + 0.1 * rng.standard_normal(hidden)), _linear(rng, "int8", vocab, hidden)]
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(maxpos)[:, None] * inv[None, :]
    parts += [f32(np.cos(ang)), f32(np.sin(ang)), f32(rng.standard_normal((n_prompt + n_steps, hidden)))]
    return b"".join(parts)


def read_results(path: Path, vocab: int = 50, hidden: int = 64, total: int = 14) -> list[tuple]:
    data = path.read_bytes()
    assert data[:4] == b"BNDR"
    _, nruns = struct.unpack_from("<II", data, 4)
    off, out = 12, []
    for _ in range(nruns):
        kv, backend, threads, status = struct.unpack_from("<IIIi", data, off)
        off += 16
        logits = np.frombuffer(data, "<f4", total * vocab, off).reshape(total, vocab)
        off += logits.nbytes
        hid = np.frombuffer(data, "<f4", total * hidden, off).reshape(total, hidden)
        off += hid.nbytes
        out.append((KV[kv], backend, threads, status, logits, hid))
    assert off == len(data)
    return out


def _build(cc: str, objs_flags: dict, base: list[str], out: Path, extra: list[str]) -> Path:
    objs = []
    for src, fl in objs_flags.items():
        o = out / (Path(src).stem + ".o")
        subprocess.run([cc, *FLAGS, *base, *fl, "-c", str(NATIVE / "src" / src), "-o", str(o)], check=True,
                       capture_output=True)
        objs.append(str(o))
    exe = out / "decoder_harness"
    proc = subprocess.run([cc, *FLAGS, *base, str(NATIVE / "tests" / "decoder_harness.c"),
                           *(str(NATIVE / "src" / s) for s in COMMON), *objs, *extra, "-pthread", "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("decoders")
    out = {}
    # head_dim 32: the attention's vector path (2 query heads a kv head); 16: its general path (4)
    for name, act, sub, heads, kvh, hd in (("bitnet", 0, True, 4, 2, 32), ("llama", 1, False, 8, 2, 16)):
        p = d / f"{name}.bndv"
        p.write_bytes(decoder_blob(7, act, sub, heads, kvh, hd))
        out[name] = p
    return out


@pytest.fixture(scope="module")
def host_results(blobs, tmp_path_factory):
    require_tool("gcc", "gcc")
    d = tmp_path_factory.mktemp("x86")
    exe = _build("gcc", X86, ["-march=x86-64"], d, [])
    res = {}
    for name, blob in blobs.items():
        out = d / f"{name}.bndr"
        proc = subprocess.run([str(exe), str(blob), str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        res[name] = (json.loads(proc.stdout.strip().splitlines()[-1]), read_results(out))
    return res


def _check_runs_agree(runs) -> dict[str, tuple]:
    """Every run of a cache type gives the same bits; returns kv -> (logits, hidden)."""
    first: dict[str, tuple] = {}
    for kv, backend, threads, status, logits, hid in runs:
        assert status == 0, (kv, backend, threads, status)
        assert np.isfinite(logits).all()
        if kv not in first:
            first[kv] = (logits, hid)
            continue
        assert np.array_equal(logits.view(np.uint32), first[kv][0].view(np.uint32)), (kv, backend, threads)
        assert np.array_equal(hid.view(np.uint32), first[kv][1].view(np.uint32)), (kv, backend, threads)
    return first


def test_host_variants_agree_bit_for_bit(host_results):
    for name, (report, runs) in host_results.items():
        assert "ref" in report["backends"]
        first = _check_runs_agree(runs)
        # the caches change the numbers, not the model (int8 activations amplify any change a little;
        # benchmarks/kv_accuracy.py measures the cost on the transformers parity models)
        ref = first["f32"][0]
        for kv in ("f16", "int8"):
            err = np.abs(first[kv][0] - ref).max() / np.abs(ref).max()
            assert 0 < err < (0.05 if kv == "f16" else 0.2), (name, kv, err)


@pytest.mark.parametrize("cpu,best", [("cortex-a72", "neon"), ("cortex-a76", "neon-dotprod")])
def test_aarch64_equals_host_bit_for_bit(blobs, host_results, tmp_path, cpu, best):
    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    require_tool("qemu-aarch64", "qemu-user")
    exe = _build("aarch64-linux-gnu-gcc", ARM, ["-static"], tmp_path, [])
    for name, blob in blobs.items():
        out = tmp_path / f"{name}-{cpu}.bndr"
        proc = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(exe), str(blob), str(out)], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["target"] == "aarch64-linux" and report["best"] == best
        arm = _check_runs_agree(read_results(out))
        host = _check_runs_agree(host_results[name][1])
        for kv in KV.values():
            assert np.array_equal(arm[kv][0].view(np.uint32), host[kv][0].view(np.uint32)), (name, kv)
            assert np.array_equal(arm[kv][1].view(np.uint32), host[kv][1].view(np.uint32)), (name, kv)
