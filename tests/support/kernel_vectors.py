"""The kernel test vectors every ISA is checked with (native/tests/harness.c): GEMM / GEMV cases
around the 16-byte vectors and 128-weight blocks, adversarial magnitudes (every product at its
extreme, K up to BNE_MAX_K = 65536, all -128 activations), quantizer ties / tiny / huge / NaN / inf
cases; their binary formats; the numpy expectations; and the check of one harness run.

Used by the qemu tests of every foreign architecture (tests/native/test_*_qemu.py) and by the
bundle install test, so aarch64, armv7 and riscv64 see exactly the same cases.
"""

from __future__ import annotations

import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.packing import pack_ternary_b3

QEMU_TIMEOUT = 120  # seconds per harness run
BNE_MAX_K = 65536
BLOCK = 128  # weights per packed block
BLOCK_BYTES = 32

KIND_TERNARY, KIND_INT8, KIND_QUANT, KIND_TERNARY3 = 1, 2, 3, 4  # 4: the 1.6-bit base-3 format
TERNARY_KINDS = (KIND_TERNARY, KIND_TERNARY3)
BNE_OK, BNE_ERR_NONFINITE = 0, 6

BACKEND_NAMES = {0: "auto", 1: "ref", 2: "avx2", 3: "avx512", 4: "neon", 5: "neon-dotprod", 6: "rvv"}


# ---- packing --------------------------------------------------------------------------

def pack_ternary_np(q: np.ndarray) -> np.ndarray:
    """q (n, k) in {-1, 0, 1} -> (n, ceil(k/128) * 32) uint8 in the 2-bit compute format.

    Byte j of a block holds the codes (w + 1) of weights j, j+32, j+64, j+96 in bits
    0-1, 2-3, 4-5, 6-7; the last block is padded with code 1 (weight 0).
    """
    q = np.asarray(q)
    n, k = q.shape
    nb = -(-k // BLOCK)
    codes = np.ones((n, nb * BLOCK), np.uint8)
    codes[:, :k] = (q + 1).astype(np.uint8)
    c = codes.reshape(n, nb, 4, BLOCK_BYTES)  # [row, block, group g, byte j]: weight 32g + j
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return packed.reshape(n, nb * BLOCK_BYTES).astype(np.uint8)


# ---- test cases ----------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    kind: int
    w: np.ndarray | None  # ternary: (n, k) int8 in {-1,0,1}; int8: (n, k) int8
    wscale: np.ndarray | None  # float32: (1,) ternary, (n,) int8
    x: np.ndarray  # (m, k) int8, or float32 for quantize
    xscale: np.ndarray | None  # (m,) float32
    expect: int = BNE_OK

    @property
    def n(self) -> int:
        return 0 if self.w is None else self.w.shape[0]

    @property
    def m(self) -> int:
        return self.x.shape[0]

    @property
    def k(self) -> int:
        return self.x.shape[1]


def gemm_case(rng, name, kind, n, k, m, *, w=None, x=None) -> Case:
    if w is None:
        w = (rng.integers(-1, 2, (n, k)) if kind in TERNARY_KINDS
             else rng.integers(-127, 128, (n, k)))
    if x is None:
        x = rng.integers(-128, 128, (m, k))
    nws = 1 if kind in TERNARY_KINDS else n
    wscale = rng.uniform(1e-3, 2.0, nws).astype(np.float32)
    xscale = rng.uniform(0.5, 200.0, m).astype(np.float32)
    return Case(name, kind, np.asarray(w, np.int8), wscale, np.asarray(x, np.int8), xscale)


def quant_case(name, x, expect=BNE_OK) -> Case:
    return Case(name, KIND_QUANT, None, None, np.asarray(x, np.float32), None, expect)


def gemm_cases(rng, kind: int) -> list[Case]:
    tag = {KIND_TERNARY: "ternary", KIND_TERNARY3: "ternary3", KIND_INT8: "int8"}[kind]
    wmax = 1 if kind in TERNARY_KINDS else 127
    cases = [gemm_case(rng, f"{tag}-tiny", kind, 1, 1, 1)]
    # k around the 16-byte vectors and 128-weight blocks (base-3: 320); n = 5 and 7 leave a GEMV remainder
    for k in (1, 15, 16, 17, 127, 128, 129, 255, 256, 300) + ((319, 320, 321, 641) if kind == KIND_TERNARY3 else ()):
        for n, m in ((5, 1), (7, 2), (3, 3), (5, 5)):
            cases.append(gemm_case(rng, f"{tag}-n{n}-k{k}-m{m}", kind, n, k, m))
    # larger shapes: GEMV and a 4-row tile + remainder; m = 65 crosses api.c's 64-row tile
    cases.append(gemm_case(rng, f"{tag}-n64-k2560-m1", kind, 64, 2560, 1))
    cases.append(gemm_case(rng, f"{tag}-n64-k2560-m5", kind, 64, 2560, 5))
    cases.append(gemm_case(rng, f"{tag}-n9-k200-m65", kind, 9, 200, 65))
    # adversarial magnitudes: every product at its extreme, longest allowed k
    for k, n, m in ((2560, 7, 5), (BNE_MAX_K, 5, 1), (BNE_MAX_K, 1, 2)):
        for ws in (wmax, -wmax):
            for xv in (-128, 127):
                cases.append(gemm_case(
                    rng, f"{tag}-const-w{ws}-x{xv}-k{k}-m{m}", kind, n, k, m,
                    w=np.full((n, k), ws), x=np.full((m, k), xv)))
    # all -128 activations against random weights; all +-1 weights against random x
    cases.append(gemm_case(rng, f"{tag}-x-128-k300", kind, 6, 300, 5,
                            x=np.full((5, 300), -128)))
    cases.append(gemm_case(rng, f"{tag}-w+-1-k1000", kind, 6, 1000, 1,
                            w=rng.choice([-1, 1], (6, 1000)) * wmax))
    return cases


def quant_cases(rng) -> list[Case]:
    cases = []
    for k in (1, 7, 8, 9, 15, 16, 17, 31, 33, 300):
        for m in (1, 3):
            scale = 10.0 ** rng.uniform(-3, 3, (m, 1))
            cases.append(quant_case(f"quant-k{k}-m{m}", rng.standard_normal((m, k)) * scale))
    cases.append(quant_case("quant-k2560-m5", rng.standard_normal((5, 2560)) * 3.0))
    # ties at .5 must round to even: amax 127 gives s = 1, amax 63.5 gives s = 2
    ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, -3.5, 4.5, 127.0]
    cases.append(quant_case("quant-ties-s1", [ties * 3, [-127.0] + ties[:-1] * 3 + [0.0, 1.0]]))
    cases.append(quant_case("quant-ties-s2", [[0.25, 0.75, -0.25, -0.75, 1.25] * 4 + [63.5]]))
    # amax below 1e-5 (zeros, tiny, subnormal, -0.0) and the largest finite floats
    f32 = np.finfo(np.float32)
    cases.append(quant_case("quant-zeros", np.zeros((2, 19))))
    cases.append(quant_case("quant-tiny", [[1e-7, -3e-6, 9.99e-6, 0.0] * 5,
                                            [1e-40, -1e-42, -0.0, 0.0] * 5]))
    cases.append(quant_case("quant-huge", [[f32.max, -f32.max, 1e38, -3e37, 1.0] * 4,
                                            [f32.max / 3, 1e30, -2e30, 7.0, f32.tiny] * 4]))
    # NaN / inf anywhere in any row: in the SIMD part and in the scalar tail
    for bad, label in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        for pos in (3, 18):
            x = rng.standard_normal((3, 20))
            x[2, pos] = bad
            cases.append(quant_case(f"quant-{label}-at{pos}", x, BNE_ERR_NONFINITE))
    return cases


def all_cases() -> list[Case]:
    rng = np.random.default_rng(0x0B17E)
    return (gemm_cases(rng, KIND_TERNARY) + gemm_cases(rng, KIND_INT8) + quant_cases(rng)
            + gemm_cases(rng, KIND_TERNARY3))


# ---- expected results (plain numpy) ----------------------------------------------------

def expected(c: Case) -> tuple[np.ndarray, np.ndarray]:
    if c.kind == KIND_QUANT:
        x = c.x.astype(np.float32)
        amax = np.maximum(np.max(np.abs(x), axis=1), np.float32(1e-5))
        s = (np.float32(127.0) / amax).astype(np.float32)
        q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
        return q, s
    acc = c.x.astype(np.int64) @ c.w.astype(np.int64).T  # (m, n)
    assert np.all(np.abs(acc) < 2**31)
    accf = acc.astype(np.int32).astype(np.float32)
    ws = c.wscale[None, :] if c.kind == KIND_INT8 else c.wscale[0]
    yf = ((accf * ws).astype(np.float32) / c.xscale[:, None]).astype(np.float32)
    return acc.astype(np.int32), yf


# ---- binary formats (see native/tests/harness.c) ---------------------------------------

def write_vectors(path: Path, cases: list[Case]) -> None:
    parts = [struct.pack("<4sII", b"BNEV", 1, len(cases))]
    for c in cases:
        parts.append(struct.pack("<IIIIi", c.kind, c.n, c.k, c.m, c.expect))
        if c.kind == KIND_QUANT:
            parts.append(np.ascontiguousarray(c.x, "<f4").tobytes())
            continue
        if c.kind == KIND_TERNARY:
            w = pack_ternary_np(c.w)
        elif c.kind == KIND_TERNARY3:
            w = pack_ternary_b3(c.w)  # the numpy reference packer of the base-3 compute format
        else:
            w = c.w.astype(np.int8)
        parts += [np.ascontiguousarray(w).tobytes(), c.wscale.astype("<f4").tobytes(),
                  np.ascontiguousarray(c.x, np.int8).tobytes(), c.xscale.astype("<f4").tobytes()]
    path.write_bytes(b"".join(parts))


def read_results(path: Path, cases: list[Case]):
    """Yield (case, backend name, threads, status, a, b) for every run of every case."""
    data = path.read_bytes()
    magic, version, ncases, nruns = struct.unpack_from("<4sIII", data, 0)
    assert (magic, version, ncases) == (b"BNER", 1, len(cases))
    off = 16
    for c in cases:
        if c.kind == KIND_QUANT:
            sizes = [(np.int8, c.m * c.k, (c.m, c.k)), ("<f4", c.m, (c.m,))]
        else:
            sizes = [("<i4", c.m * c.n, (c.m, c.n)), ("<f4", c.m * c.n, (c.m, c.n))]
        for _ in range(nruns):
            backend, threads, status = struct.unpack_from("<IIi", data, off)
            off += 12
            arrays = []
            for dt, count, shape in sizes:
                arr = np.frombuffer(data, dt, count, off).reshape(shape)
                off += arr.nbytes
                arrays.append(arr)
            yield c, BACKEND_NAMES.get(backend, str(backend)), threads, status, *arrays
    assert off == len(data), "trailing bytes in the harness output"


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    if got.dtype.kind == "f":
        return np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
    return np.array_equal(got, want)



def check_run(proc: subprocess.CompletedProcess, out_path: Path, cases: list[Case], *, target: str,
              best: str, backends: list[str]) -> dict:
    """Assert one harness run: its JSON report (target, the path AUTO took = ``best``, the backends
    it ran), every result bit-exact with numpy on every backend and thread count, and the harness's
    own checks (1 vs 2 threads, each backend vs ref, strides, the GEMV entry point).  Returns the report."""
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output from the harness (rc={proc.returncode}): {proc.stderr}"
    report = json.loads(lines[-1])
    assert "error" not in report, report
    assert report["target"] == target, report
    assert report["best"] == best, report
    assert report["backends"] == backends, report
    failures, seen = [], set()
    for c, backend, threads, status, got_a, got_b in read_results(out_path, cases):
        seen.add((backend, threads))
        where = f"{c.name} [{backend}, {threads} thread(s)]"
        if status != c.expect:
            failures.append(f"{where}: status {status}, expected {c.expect}")
            continue
        if c.expect != BNE_OK:
            continue
        want_a, want_b = expected(c)
        for label, got, want in (("int", got_a, want_a), ("float", got_b, want_b)):
            if not same_bits(got, want):
                bad = np.argwhere(got != want)[:3].tolist()
                failures.append(f"{where}: {label} result differs at {bad}")
    assert seen == {(b, t) for b in backends for t in (1, 2)}
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures[:20])
    assert proc.returncode == 0, f"harness rc={proc.returncode}: {report}"
    return report
