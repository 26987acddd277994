"""Building the kernel library for a target (the build host's side of the target table).

The table itself (:mod:`bitnet_edge.sdk.native.targets`: compilers, flags, ISA variants, what
each library needs) sits beside the runtime's loader; this module compiles it.  Standard library
only on purpose: ``setup.py`` loads it from the source tree to build the host library during
``pip install``, before any dependency is importable.

Each target lists its compiler, common flags and per-source ISA flags.  The
kernel variants of a target are compiled with their own ``-m`` / ``-march``
flags into one shared library that picks the best variant at run time
(cpuid on x86-64, ``getauxval(AT_HWCAP)`` on Linux aarch64; every Apple
Silicon core has NEON and dotprod).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bitnet_edge.packagers.errors import BuildFailed, ToolchainMissing, UnknownTarget
from bitnet_edge.sdk.native.targets import TARGETS, Target, binary_kind, find_tool, host_target, library_filename

__all__ = [
    "BASE_CFLAGS",
    "COMMON_SOURCES",
    "build_library",
    "build_host_library",
    "get_target",
    "toolchain_versions",
]

#: Sources every target compiles with the target's baseline flags.
COMMON_SOURCES = ("src/api.c", "src/cpu.c", "src/pool.c", "src/kernels_ref.c", "src/conv.c")

#: Flags every target shares: C11, no FP contraction (bit-exact float epilogues),
#: hidden symbols except the BNE_API ones.
BASE_CFLAGS = (
    "-std=c11",
    "-O3",
    "-fPIC",
    "-fvisibility=hidden",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wextra",
)


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(name, sorted(TARGETS)) from None


def build_library(target: str, native_root: Path, out_dir: Path, cc: str | None = None) -> Path:
    """Compile the kernel library for ``target`` into ``out_dir``; return its path.

    ``native_root`` is the ``native/`` folder (``include/`` and ``src/``).  The
    compiler can be overridden with ``cc`` or ``$BITNET_EDGE_CC``.  The compiler
    runs in ``native_root`` with relative source paths, so the library's bytes do
    not depend on where the checkout is (reproducible bundles).  The result's
    binary format and machine are checked against the target.
    """
    t = get_target(target)
    if t.library_target:
        return build_library(t.library_target, native_root, out_dir, cc)
    compiler = cc or os.environ.get("BITNET_EDGE_CC") or t.cc
    compiler_path = find_tool(compiler)
    if compiler_path is None:
        raise ToolchainMissing(target, compiler, t.apt_package)
    linker_path = None
    if t.linker:
        linker_path = find_tool(t.linker)
        if linker_path is None:
            raise ToolchainMissing(target, t.linker, t.linker_package or t.linker)
    native_root = Path(native_root).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = ("-Iinclude", "-Isrc")
    units = [(s, t.cflags) for s in COMMON_SOURCES] + [(s, t.cflags + f) for s, f in t.variants.items()]
    name = library_filename(target)
    with tempfile.TemporaryDirectory(prefix="bne-build-") as tmp:
        objects = []
        for src, flags in units:
            obj = Path(tmp) / (Path(src).stem + ".o")
            _run(target, [compiler_path, *BASE_CFLAGS, *flags, *includes, "-c", src, "-o", str(obj)], native_root)
            objects.append(str(obj))
        # Link under the final file name (a Mach-O code signature records it), then move it in.
        staged = Path(tmp) / name
        if linker_path:
            _run(target, [linker_path, *t.ldflags, *objects, "-o", str(staged)], native_root)
        else:
            _run(target, [compiler_path, *objects, "-o", str(staged), *t.ldflags], native_root)
        kind = binary_kind(staged.read_bytes()[:64])
        want = _EXPECTED_KIND[(t.os, t.arch)]
        if kind != want:
            raise BuildFailed(target, [compiler_path], f"the linker produced {kind}, expected {want} "
                                                       f"(is $BITNET_EDGE_CC set to another target's compiler?)")
        tmp_out = out_dir / (name + ".tmp")
        shutil.copyfile(staged, tmp_out)
        os.replace(tmp_out, out_dir / name)  # never leave a half-written library behind
    return out_dir / name


def build_host_library(native_root: Path, out_dir: Path, cc: str | None = None) -> Path:
    """:func:`build_library` for the machine this runs on (``pip install``, ``make native``)."""
    return build_library(host_target(), native_root, out_dir, cc)


#: (os, arch) -> what :func:`binary_kind` must say about the library.
_EXPECTED_KIND = {
    ("linux", "x86_64"): ("elf", "x86-64"),
    ("linux", "aarch64"): ("elf", "aarch64"),
    ("macos", "arm64"): ("mach-o", "arm64"),
}


def toolchain_versions(target: str, cc: str | None = None) -> dict[str, str]:
    """First line of ``--version`` of each tool that builds ``target`` (recorded in bundles)."""
    t_name = get_target(target).cpu_library_target
    t = get_target(t_name)
    tools = {"cc": cc or os.environ.get("BITNET_EDGE_CC") or t.cc}
    if t.linker:
        tools["linker"] = t.linker
    out = {}
    for role, tool in tools.items():
        path = find_tool(tool)
        if path is None:
            pkg = t.apt_package if role == "cc" else (t.linker_package or tool)
            raise ToolchainMissing(t_name, tool, pkg)
        proc = subprocess.run([path, "--version"], capture_output=True, text=True)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        out[role] = f"{tool}: {lines[0].strip() if lines else 'unknown version'}"
    return out


def _run(target: str, cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise BuildFailed(target, cmd, proc.stdout + proc.stderr)
