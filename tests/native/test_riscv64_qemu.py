"""RISC-V kernels (linux-riscv64: rvv, ref) checked bit-exact against numpy under qemu-riscv64.

The library is built the way bundles are (zig, ``-target riscv64-linux-gnu.2.27``: rv64gc for the
common code, V only in arch/riscv/rvv.c), and native/tests/harness.c is linked dynamically against
it.  The RVV kernels are vector-length agnostic: the same binary runs under ``-cpu rv64,v=true``
with VLEN 128 (the V minimum: a 32-byte block in two pieces), 256 (SpacemiT K1: one piece) and 1024
(wider than any board; the piece is still one block); without V (``v=false``) the library's runtime
detection (riscv_hwprobe / HWCAP 'V') must send AUTO to the scalar kernels.  Every case of
tests/support/kernel_vectors.py (K up to 65536, all -128 activations, quantizer ties and NaN/inf ...)
runs on AUTO and on every backend the CPU supports, with 1 and 2 threads; the harness reports which
path AUTO took.

Needs zig (the ziglang wheel), qemu-riscv64 (qemu-user) and the riscv64 glibc (libc6-riscv64-cross):
skipped without them, a failure under CI=true.
"""

from __future__ import annotations

import pytest
from tests.support import qemu as Q
from tests.support.kernel_vectors import QEMU_TIMEOUT, check_run

from bitnet_edge.sdk.native.targets import binary_kind

pytestmark = pytest.mark.toolchain
ARCH = Q.ARCHES["linux-riscv64"]

# (qemu cpu, the path AUTO must take, the backends the harness runs)
CPUS = [
    ("rv64,v=true,vlen=128", "rvv", ["auto", "ref", "rvv"]),
    ("rv64,v=true,vlen=256", "rvv", ["auto", "ref", "rvv"]),  # SpacemiT X60 (K1)
    ("rv64,v=true,vlen=1024", "rvv", ["auto", "ref", "rvv"]),
    ("rv64,v=false", "ref", ["auto", "ref"]),  # e.g. SiFive U74 (VisionFive 2)
]


@pytest.fixture(scope="module")
def linked(tmp_path_factory) -> Q.Linked:
    Q.require_arch(ARCH, "zig")
    return Q.build_linked(ARCH, "harness.c", tmp_path_factory.mktemp("riscv64"), "zig")


def test_the_library_is_rv64_lp64d(linked):
    head = linked.library.read_bytes()[:64]
    assert binary_kind(head) == ("elf", "riscv64")
    e_flags = int.from_bytes(head[48:52], "little")
    assert e_flags & 0x6 == 0x4, f"not the lp64d float ABI (e_flags {e_flags:#x})"  # EF_RISCV_FLOAT_ABI_DOUBLE


def test_rvv_kernels_compile_without_warnings():
    Q.require_zig()
    assert Q.warnings_of("linux-riscv64", "zig") == {"src/arch/riscv/rvv.c": ""}


@pytest.mark.parametrize("cpu,best,backends", CPUS, ids=[c[0] for c in CPUS])
def test_kernels_bit_exact_under_qemu_riscv64(linked, kernel_vectors, tmp_path, cpu, best, backends):
    in_path, cases = kernel_vectors
    out_path = tmp_path / "results.bner"
    proc = Q.run(ARCH, linked.exe, cpu, in_path, out_path, timeout=QEMU_TIMEOUT)
    report = check_run(proc, out_path, cases, target="riscv64-linux", best=best, backends=backends)
    assert ("v" in report["features"]) == (best == "rvv")
    assert str(linked.library) in Q.loaded_objects(ARCH, linked.exe)
