"""aarch64 kernels (neon, neon-dotprod) checked bit-exact against numpy under qemu-user.

Built two ways: the library bundles ship (zig, the default toolchain) with the harness
(native/tests/harness.c) linked dynamically against it; and the harness cross-compiled
statically with the library sources by the Debian gcc (``--toolchain system``).  Each runs under
``qemu-aarch64 -cpu cortex-a72`` (NEON, no dotprod) and ``-cpu cortex-a76`` (NEON + dotprod),
so the library's runtime dispatch (getauxval HWCAP) picks a different best backend on each.
Every case (tests/support/kernel_vectors.py) runs on AUTO and on every backend the CPU
supports, with 1 and 2 threads; every result must equal the numpy one bit for bit.

Needs zig (the ziglang wheel), ``aarch64-linux-gnu-gcc``, ``qemu-aarch64`` and the aarch64 glibc
(libc6-arm64-cross); skipped without them, except under ``CI=true`` where a missing tool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tests.support import qemu as Q
from tests.support.kernel_vectors import (
    QEMU_TIMEOUT,
    check_run,
    pack_ternary_np,
)

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "native"
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
INSTALL_HINT = "sudo apt-get install gcc-aarch64-linux-gnu qemu-user"

BASE_FLAGS = [
    "-static", "-O2", "-std=c11", "-ffp-contract=off",
    f"-I{NATIVE / 'include'}", f"-I{NATIVE / 'src'}",
]
WARN_FLAGS = ["-Wall", "-Wextra"]
LIB_SOURCES = ["api.c", "cpu.c", "pool.c", "kernels_ref.c", "decoder.c"]
ARM_SOURCES = {  # compiled one by one: each ISA level has its own -march
    "arch/arm/neon.c": "-march=armv8-a",
    "arch/arm/neon_dotprod.c": "-march=armv8.2-a+dotprod",
}

# (qemu cpu, expected best backend, expected backends the harness runs)
CPUS = [
    ("cortex-a72", "neon", ["auto", "ref", "neon"]),
    ("cortex-a76", "neon-dotprod", ["auto", "ref", "neon", "neon-dotprod"]),
]


# ---- build and run -------------------------------------------------------------------

def _require_tools() -> None:
    missing = [t for t in (CC, QEMU) if shutil.which(t) is None]
    if missing:
        msg = f"{' and '.join(missing)} not found; install with: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):  # as tests/conftest.py
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)


def _cc(args: list[str]) -> str:
    proc = subprocess.run([CC, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{CC} {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stderr


@dataclass(frozen=True)
class Build:
    harness: Path
    arm_warnings: dict[str, str]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Build:
    _require_tools()
    out = tmp_path_factory.mktemp("aarch64")
    objs, warnings = [], {}
    for src, march in ARM_SOURCES.items():
        obj = out / (Path(src).stem + ".o")
        warnings[src] = _cc([*BASE_FLAGS, *WARN_FLAGS, march, "-c",
                             str(NATIVE / "src" / src), "-o", str(obj)])
        objs.append(str(obj))
    exe = out / "harness"
    _cc([*BASE_FLAGS, "-march=armv8-a", str(NATIVE / "tests" / "harness.c"),
         *(str(NATIVE / "src" / s) for s in LIB_SOURCES), *objs, "-pthread", "-o", str(exe)])
    return Build(exe, warnings)


def test_pack_ternary_np_layout():
    q = np.zeros((1, 130), np.int8)
    q[0, 33] = 1  # block 0, byte 1, bits 2-3 -> code 2
    q[0, 127] = -1  # block 0, byte 31, bits 6-7 -> code 0
    q[0, 129] = 1  # block 1, byte 1, bits 0-1 -> code 2
    p = pack_ternary_np(q)
    assert p.shape == (1, 64)
    assert p[0, 1] == 0b01_01_10_01
    assert p[0, 31] == 0b00_01_01_01
    assert p[0, 33] == 0b01_01_01_10
    assert p[0, 0] == 0x55 and p[0, 63] == 0x55  # weight 0 and padding are code 1


def test_arm_kernels_compile_without_warnings(build):
    assert build.arm_warnings == {src: "" for src in ARM_SOURCES}


@pytest.mark.parametrize("cpu,best,backends", CPUS, ids=[c[0] for c in CPUS])
def test_kernels_bit_exact_under_qemu(build, kernel_vectors, tmp_path, cpu, best, backends):
    in_path, cases = kernel_vectors
    out_path = tmp_path / "results.bner"
    proc = subprocess.run([QEMU, "-cpu", cpu, str(build.harness), str(in_path), str(out_path)],
                          capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    report = check_run(proc, out_path, cases, target="aarch64-linux", best=best, backends=backends)
    assert ("dotprod" in report["features"]) == (best == "neon-dotprod")


# ---- the zig-built library (what bundles ship), harness linked against it ------------

@pytest.fixture(scope="module")
def zig_build(tmp_path_factory) -> Q.Linked:
    arch = Q.ARCHES["linux-aarch64"]
    Q.require_arch(arch, "zig")
    return Q.build_linked(arch, "harness.c", tmp_path_factory.mktemp("aarch64-zig"), "zig")


def test_zig_arm_kernels_compile_without_warnings():
    Q.require_zig()
    assert Q.warnings_of("linux-aarch64", "zig") == {src: "" for src in ARM_SOURCES_ZIG}


ARM_SOURCES_ZIG = ["src/arch/arm/neon.c", "src/arch/arm/neon_dotprod.c"]


@pytest.mark.toolchain
@pytest.mark.parametrize("cpu,best,backends", CPUS, ids=[c[0] for c in CPUS])
def test_zig_built_library_bit_exact_under_qemu(zig_build, kernel_vectors, tmp_path, cpu, best, backends):
    arch = Q.ARCHES["linux-aarch64"]
    in_path, cases = kernel_vectors
    out_path = tmp_path / "results.bner"
    proc = Q.run(arch, zig_build.exe, cpu, in_path, out_path, timeout=QEMU_TIMEOUT)
    report = check_run(proc, out_path, cases, target="aarch64-linux", best=best, backends=backends)
    assert ("dotprod" in report["features"]) == (best == "neon-dotprod")
    assert str(zig_build.library) in Q.loaded_objects(arch, zig_build.exe)  # the built library, not a copy
