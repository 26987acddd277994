"""Run C test programs against a cross-built kernel library under qemu-user.

The library is the one bundles ship: :func:`build_library` with the toolchain under test (zig by
default).  A test program (native/tests/harness.c, conv_harness.c) is compiled by the same
toolchain, linked dynamically against that library, and run by ``qemu-<arch> -L SYSROOT -cpu CPU``,
where SYSROOT holds the target's glibc (Debian's libc6-*-cross).  The qemu CPU model decides what
the library's runtime detection (HWCAP / riscv_hwprobe) reports, so each CPU exercises one
dispatch path.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.tools import IN_CI, REPO, require_tool

from bitnet_edge.packagers.targets import BASE_CFLAGS, ZIG_CFLAGS, build_library, get_target, zig_command
from bitnet_edge.sdk.native.targets import find_tool

NATIVE = REPO / "native"


@dataclass(frozen=True)
class Arch:
    target: str  # build target
    qemu: str  # qemu-user binary
    sysroot: Path  # the target glibc (-L)
    loader: str  # its dynamic loader, relative to sysroot
    sysroot_package: str  # Debian package of the sysroot
    library_target: str  # what bne_target() says


ARCHES = {
    "linux-aarch64": Arch("linux-aarch64", "qemu-aarch64", Path("/usr/aarch64-linux-gnu"), "lib/ld-linux-aarch64.so.1",
                          "libc6-arm64-cross", "aarch64-linux"),
    "linux-armv7": Arch("linux-armv7", "qemu-arm", Path("/usr/arm-linux-gnueabihf"), "lib/ld-linux-armhf.so.3",
                        "libc6-armhf-cross", "armv7-linux"),
    "linux-riscv64": Arch("linux-riscv64", "qemu-riscv64", Path("/usr/riscv64-linux-gnu"),
                          "lib/ld-linux-riscv64-lp64d.so.1", "libc6-riscv64-cross", "riscv64-linux"),
}


def require_file(path: Path, package: str) -> None:
    """Fail under CI, skip elsewhere, when ``path`` (from apt ``package``) is missing."""
    if not path.exists():
        msg = f"{path} not found; install it with: apt-get install {package}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)


def require_zig() -> list[str]:
    cmd = zig_command()
    if cmd is None:
        msg = "zig not found; install it with: pip install 'bitnet-edge[builder]' (the ziglang wheel)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)
    return cmd


def require_arch(arch: Arch, toolchain: str = "zig") -> None:
    require_tool(arch.qemu, "qemu-user")
    require_file(arch.sysroot / arch.loader, arch.sysroot_package)
    if toolchain == "zig":
        require_zig()
    else:
        b = get_target(arch.target).system
        require_tool(b.compiler, b.package)


def compiler_command(target: str, toolchain: str) -> list[str]:
    """The C compiler of ``toolchain`` for ``target``, with the target's baseline flags."""
    b = get_target(target).build(toolchain)
    if toolchain == "zig":
        return [*require_zig(), "cc", "-target", b.compiler, *ZIG_CFLAGS, *b.cflags]
    cc = find_tool(b.compiler)
    assert cc, b.compiler
    return [cc, *b.cflags]


@dataclass(frozen=True)
class Linked:
    exe: Path
    library: Path


def build_linked(arch: Arch, program: str, out: Path, toolchain: str = "zig", library: Path | None = None) -> Linked:
    """native/tests/``program`` linked dynamically against ``library`` (default: the target's
    library built here with ``toolchain``)."""
    lib = library or build_library(arch.target, NATIVE, out / "lib", toolchain=toolchain)
    exe = out / Path(program).stem
    cmd = [*compiler_command(arch.target, toolchain), "-O2", "-std=c11", "-ffp-contract=off",
           f"-I{NATIVE / 'include'}", str(NATIVE / "tests" / program), f"-L{lib.parent}", "-lbitnet_edge",
           f"-Wl,-rpath,{lib.parent}", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return Linked(exe, lib)


def run(arch: Arch, exe: Path, cpu: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([arch.qemu, "-L", str(arch.sysroot), "-cpu", cpu, str(exe), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def loaded_objects(arch: Arch, exe: Path) -> str:
    """What the target's dynamic loader maps for ``exe`` (ldd under qemu)."""
    proc = subprocess.run([arch.qemu, "-L", str(arch.sysroot), "-E", "LD_TRACE_LOADED_OBJECTS=1", str(exe)],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def warnings_of(target: str, toolchain: str = "zig") -> dict[str, str]:
    """The compiler's stderr for each kernel variant of ``target`` built with -Wall -Wextra (empty: clean)."""
    b = get_target(target).build(toolchain)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bne-warn-") as tmp:
        for src, flags in b.variants.items():
            cmd = [*compiler_command(target, toolchain), *BASE_CFLAGS, *flags, "-Iinclude", "-Isrc", "-c", src,
                   "-o", str(Path(tmp) / (Path(src).stem + ".o"))]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=NATIVE)
            assert proc.returncode == 0, proc.stderr
            out[src] = proc.stderr
    return out
