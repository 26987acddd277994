"""The conv kernels (depthwise int8 / float32, conv GEMM) on aarch64, armv7 and riscv64, bit for bit
against numpy.  (Below: the gcc static build; the zig-built libraries bundles ship are at the end.)

native/tests/conv_harness.c is cross-compiled statically with the library sources and run under
``qemu-aarch64 -cpu cortex-a72`` and ``-cpu cortex-a76``: every case on AUTO and on every backend
the CPU supports, with 1 and 2 threads.  (On x86-64, tests/sdk/test_graphs.py runs every backend in
process.)  Needs ``aarch64-linux-gnu-gcc`` and ``qemu-aarch64``: skipped without them, a failure
under ``CI=true``.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bitnet_edge.sdk import reference
from bitnet_edge.sdk.conv import Conv2DGeometry, ConvMatrix, same_pads
from tests.conftest import require_tool
from tests.support import qemu as Q

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "native"
LIB_SOURCES = ["api.c", "cpu.c", "pool.c", "kernels_ref.c", "conv.c", "decoder.c"]
ARM_SOURCES = {"arch/arm/neon.c": "-march=armv8-a", "arch/arm/neon_dotprod.c": "-march=armv8.2-a+dotprod"}
FLAGS = ["-static", "-O3", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", f"-I{NATIVE / 'include'}",
         f"-I{NATIVE / 'src'}"]
NAMES = {0: "auto", 1: "ref", 4: "neon", 5: "neon-dotprod", 6: "rvv"}
DW_FIELDS = ("n", "h", "w", "c", "kh", "kw", "stride_h", "stride_w", "dil_h", "dil_w", "pad_top", "pad_left", "oh", "ow")


def _cases():
    rng = np.random.default_rng(0xC0)
    cases = []
    for kind in (1, 2):
        for n, h, w, c, k, s, d, same in ((1, 7, 9, 5, 3, 1, 1, True), (2, 16, 16, 130, 3, 2, 1, True),
                                          (1, 6, 5, 67, 5, 1, 2, True), (1, 9, 9, 64, 3, 2, 1, False)):
            pads = (*same_pads(h, k, s, d), *same_pads(w, k, s, d)) if same else (0, 0, 0, 0)
            geom = Conv2DGeometry(k, k, (s, s), (d, d), pads).native(n, h, w, c)
            bias = rng.standard_normal(c).astype(np.float32) if c % 2 else None
            if kind == 1:
                x = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
                data = dict(x=x, xscale=rng.uniform(0.5, 50, n).astype(np.float32),
                            taps=rng.integers(-127, 128, (k, k, c)).astype(np.int8),
                            wscale=rng.uniform(1e-3, 1, c).astype(np.float32))
            else:
                data = dict(x=rng.standard_normal((n, h, w, c)).astype(np.float32),
                            taps=rng.standard_normal((k, k, c)).astype(np.float32))
            cases.append((kind, geom, data, bias, (0.0, 6.0) if c % 3 == 0 else (-np.inf, np.inf)))
    for m, k, n in ((1, 1, 1), (5, 27, 16), (37, 300, 65), (130, 64, 129)):
        x = rng.integers(-128, 128, (m, k)).astype(np.int8)
        x[rng.random((m, k)) < 0.4] = 0
        data = dict(x=x, xscale=rng.uniform(0.5, 50, m).astype(np.float32),
                    w=rng.integers(-127, 128, (n, k)).astype(np.int8), wscale=rng.uniform(1e-3, 1, n).astype(np.float32))
        cases.append((3, dict(m=m, k=k, n=n), data, rng.standard_normal(n).astype(np.float32), (0.0, np.inf)))
    return cases


def _expected(kind, geom, d, bias, lo, hi) -> np.ndarray:
    if kind == 1:
        return reference.dwconv_i8(geom, d["x"], d["xscale"], d["taps"], d["wscale"], bias, lo, hi)
    if kind == 2:
        return reference.dwconv_f32(geom, d["x"], d["taps"], bias, lo, hi)
    y = reference.epilogue(reference.int_matmul(d["w"], d["x"]), d["wscale"], d["xscale"])
    y = y + bias if bias is not None else y
    return np.minimum(np.maximum(y, np.float32(lo)), np.float32(hi)).astype(np.float32)


def _write(path: Path, cases) -> None:
    parts = [struct.pack("<4sII", b"BNCV", 1, len(cases))]
    for kind, geom, d, bias, (lo, hi) in cases:
        parts.append(struct.pack("<IIff", kind, bias is not None, lo, hi))
        if kind in (1, 2):
            parts.append(struct.pack("<14I", *(geom[f] for f in DW_FIELDS)))
            arrays = [d["x"], d.get("xscale"), d["taps"], d.get("wscale"), bias]
        else:
            parts.append(struct.pack("<3I", geom["m"], geom["k"], geom["n"]))
            cm = ConvMatrix(d["w"], d["wscale"])
            arrays = [d["x"], d["xscale"], cm.w4, cm.wsum, d["wscale"], bias]
        parts += [np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays if a is not None]
    path.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cc = require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    require_tool("qemu-aarch64", "qemu-user")
    out = tmp_path_factory.mktemp("conv-aarch64")
    objs = []
    for src, march in ARM_SOURCES.items():
        obj = out / (Path(src).stem + ".o")
        subprocess.run([cc, *FLAGS, march, "-c", str(NATIVE / "src" / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / "conv_harness"
    proc = subprocess.run([cc, *FLAGS, "-march=armv8-a", str(NATIVE / "tests" / "conv_harness.c"),
                           *(str(NATIVE / "src" / s) for s in LIB_SOURCES), *objs, "-pthread", "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return exe


def _check(proc, out: Path, cases, target: str, best: str, backends: set[str]) -> None:
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and report["target"] == target and report["best"] == best, report
    data = out.read_bytes()
    magic, _, ncases, nruns = struct.unpack_from("<4sIII", data, 0)
    assert magic == b"BNCR" and ncases == len(cases)
    off, failures, seen = 16, [], set()
    for kind, geom, d, bias, (lo, hi) in cases:
        want = _expected(kind, geom, d, bias, lo, hi)
        for _ in range(nruns):
            be, threads, status = struct.unpack_from("<IIi", data, off)
            off += 12
            got = np.frombuffer(data, "<f4", want.size, off).reshape(want.shape)
            off += want.size * 4
            seen.add((NAMES[be], threads))
            if status or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
                failures.append(f"kind {kind} {geom} on {NAMES[be]} x{threads}: status {status}")
    assert off == len(data)
    assert {b for b, _ in seen} == backends
    assert not failures, "\n".join(failures[:10])


@pytest.mark.toolchain
@pytest.mark.parametrize("cpu,best", [("cortex-a72", "neon"), ("cortex-a76", "neon-dotprod")])
def test_conv_kernels_bit_exact_under_qemu(harness, tmp_path, cpu, best):
    cases = _cases()
    _write(tmp_path / "in.bncv", cases)
    proc = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(harness), str(tmp_path / "in.bncv"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    _check(proc, tmp_path / "out", cases, "aarch64-linux", best,
           {"auto", "ref", "neon", "neon-dotprod"} if best == "neon-dotprod" else {"auto", "ref", "neon"})


# The libraries bundles ship (zig): the aarch64 one takes the SDOT conv path through clang's
# target("dotprod") attribute; armv7 and riscv64 run the portable conv code under every backend.
ZIG_RUNS = [("linux-aarch64", "cortex-a72", "neon", {"auto", "ref", "neon"}),
            ("linux-aarch64", "cortex-a76", "neon-dotprod", {"auto", "ref", "neon", "neon-dotprod"}),
            ("linux-armv7", "cortex-a7", "neon", {"auto", "ref", "neon"}),
            ("linux-riscv64", "rv64,v=true,vlen=256", "rvv", {"auto", "ref", "rvv"})]


@pytest.fixture(scope="module")
def zig_harnesses(tmp_path_factory):
    built = {}

    def get(target):
        if target not in built:
            arch = Q.ARCHES[target]
            Q.require_arch(arch, "zig")
            built[target] = Q.build_linked(arch, "conv_harness.c", tmp_path_factory.mktemp(target), "zig")
        return built[target]
    return get


@pytest.mark.toolchain
@pytest.mark.parametrize("target,cpu,best,backends", ZIG_RUNS, ids=[f"{t}-{c}" for t, c, _, _ in ZIG_RUNS])
def test_conv_kernels_of_the_zig_library_bit_exact_under_qemu(zig_harnesses, tmp_path, target, cpu, best, backends):
    arch = Q.ARCHES[target]
    linked = zig_harnesses(target)
    cases = _cases()
    _write(tmp_path / "in.bncv", cases)
    proc = Q.run(arch, linked.exe, cpu, tmp_path / "in.bncv", tmp_path / "out", timeout=180)
    _check(proc, tmp_path / "out", cases, arch.library_target, best, backends)
