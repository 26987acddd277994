"""32-bit ARMv7 kernels (linux-armv7: neon, ref) checked bit-exact against numpy under qemu-arm.

The library is built the way bundles are (zig, ``-target arm-linux-gnueabihf.2.17``: the armhf
baseline ARMv7-A + VFPv3-D16 for the common code, NEON only in arch/arm32/neon.c), and
native/tests/harness.c is linked dynamically against it.  ``qemu-arm -cpu cortex-a7`` and
``cortex-a15`` report NEON in AT_HWCAP, so AUTO takes the NEON kernels; ``cortex-r5f`` has VFPv3-D16
and no NEON, so AUTO takes the scalar ones.  Every case of tests/support/kernel_vectors.py (K up
to 65536, all -128 activations, quantizer ties and NaN/inf ...) runs on AUTO and on every backend
the CPU supports, with 1 and 2 threads; the harness reports which path AUTO took.

Needs zig (the ziglang wheel), qemu-arm (qemu-user) and the armhf glibc (libc6-armhf-cross):
skipped without them, a failure under CI=true.
"""

from __future__ import annotations

import pytest
from tests.support import qemu as Q
from tests.support.kernel_vectors import QEMU_TIMEOUT, check_run

from bitnet_edge.sdk.native.targets import binary_kind

pytestmark = pytest.mark.toolchain
ARCH = Q.ARCHES["linux-armv7"]

# (qemu cpu, the path AUTO must take, the backends the harness runs)
CPUS = [
    ("cortex-a7", "neon", ["auto", "ref", "neon"]),  # Raspberry Pi 2, in-order
    ("cortex-a15", "neon", ["auto", "ref", "neon"]),  # ODROID-XU4's big cores, out-of-order
    ("cortex-r5f", "ref", ["auto", "ref"]),  # VFPv3-D16 without NEON: the scalar fallback
]


@pytest.fixture(scope="module")
def linked(tmp_path_factory) -> Q.Linked:
    Q.require_arch(ARCH, "zig")
    return Q.build_linked(ARCH, "harness.c", tmp_path_factory.mktemp("armv7"), "zig")


def test_the_library_is_hard_float_arm(linked):
    head = linked.library.read_bytes()[:52]
    assert binary_kind(head) == ("elf", "arm") and head[4] == 1  # ELFCLASS32
    e_flags = int.from_bytes(head[36:40], "little")
    assert e_flags & 0x400, f"not hard-float (e_flags {e_flags:#x})"  # EF_ARM_ABI_FLOAT_HARD


def test_arm32_kernels_compile_without_warnings():
    Q.require_zig()
    assert Q.warnings_of("linux-armv7", "zig") == {"src/arch/arm32/neon.c": ""}


@pytest.mark.parametrize("cpu,best,backends", CPUS, ids=[c[0] for c in CPUS])
def test_kernels_bit_exact_under_qemu_arm(linked, kernel_vectors, tmp_path, cpu, best, backends):
    in_path, cases = kernel_vectors
    out_path = tmp_path / "results.bner"
    proc = Q.run(ARCH, linked.exe, cpu, in_path, out_path, timeout=QEMU_TIMEOUT)
    report = check_run(proc, out_path, cases, target="armv7-linux", best=best, backends=backends)
    assert ("neon" in report["features"]) == (best == "neon")
    assert str(linked.library) in Q.loaded_objects(ARCH, linked.exe)
