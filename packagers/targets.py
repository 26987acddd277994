"""Building the kernel library for a target (the build host's side of the target table), with
zig (the default: the ``ziglang`` wheel) or the system's compilers.

The table itself (:mod:`bitnet_edge.sdk.native.targets`: per toolchain the compiler, flags and ISA
variants; what each library needs) sits beside the runtime's loader; this module compiles it.
Standard library only on purpose: ``setup.py`` loads it from the source tree to build the host
library during ``pip install``, before any dependency is importable.

The kernel variants of a target are compiled with their own CPU flags into one shared library
that picks the best variant at run time.  zig builds are reproducible: no debug info (it would
carry the checkout's path), no build id, fixed object names, relative source paths; the toolchain
and its version go into every bundle manifest (docs/adr/0017-zig-toolchain-armv7-rvv.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bitnet_edge.packagers.errors import BuildFailed, ToolchainMissing, UnknownTarget, UnknownToolchain
from bitnet_edge.sdk.durable import copy_atomic
from bitnet_edge.sdk.native.targets import (
    DEFAULT_TOOLCHAIN,
    TARGETS,
    TOOLCHAINS,
    Target,
    binary_kind,
    find_tool,
    host_target,
    library_filename,
)

__all__ = [
    "BASE_CFLAGS",
    "COMMON_SOURCES",
    "ZIG_CFLAGS",
    "ZIG_INSTALL",
    "build_library",
    "build_host_library",
    "get_target",
    "resolve_toolchain",
    "toolchain_info",
    "toolchain_status",
    "toolchain_versions",
    "zig_command",
    "zig_version",
]

#: Sources every target compiles with the target's baseline flags.
COMMON_SOURCES = ("src/api.c", "src/cpu.c", "src/pool.c", "src/kernels_ref.c", "src/conv.c", "src/decoder.c")

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

#: What zig adds to every compile: no debug info (it would carry the checkout's absolute
#: paths into the library; zig cc emits it unless told not to).
ZIG_CFLAGS = ("-g0",)
#: How the zig toolchain is installed (it is a wheel: the builder extra pins it).
ZIG_INSTALL = "pip install 'bitnet-edge[builder]'  (the ziglang wheel)"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(name, sorted(TARGETS)) from None


def resolve_toolchain(toolchain: str | None = None, cc: str | None = None) -> str:
    """The toolchain to use: the one named, else ``system`` when a compiler is forced with ``cc``,
    else ``$BITNET_EDGE_TOOLCHAIN``, else zig."""
    name = toolchain or ("system" if cc else os.environ.get("BITNET_EDGE_TOOLCHAIN") or DEFAULT_TOOLCHAIN)
    if name not in TOOLCHAINS:
        raise UnknownToolchain(name, list(TOOLCHAINS))
    return name


def zig_command() -> list[str] | None:
    """How to run zig: ``$BITNET_EDGE_ZIG`` (an executable), else the ``ziglang`` wheel's binary
    in this interpreter's environment; None when neither is there."""
    env = os.environ.get("BITNET_EDGE_ZIG")
    if env:
        found = find_tool(env) or (env if os.path.isfile(env) and os.access(env, os.X_OK) else None)
        return [found] if found else None
    try:
        spec = importlib.util.find_spec("ziglang")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        exe = Path(d) / ("zig.exe" if os.name == "nt" else "zig")
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [sys.executable, "-m", "ziglang"]


@functools.lru_cache(maxsize=8)
def _zig_version(cmd: tuple[str, ...]) -> tuple[str, str]:
    """(zig version, first line of ``zig cc --version``: its clang)."""
    def first(args):
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        return lines[0].strip() if proc.returncode == 0 and lines else "unknown"
    return first(["version"]), first(["cc", "--version"])


def zig_version() -> str | None:
    """The version of the zig toolchain (``0.17.1``), or None when it is not installed."""
    cmd = zig_command()
    return _zig_version(tuple(cmd))[0] if cmd else None


def _missing_zig(target: str) -> ToolchainMissing:
    return ToolchainMissing(target, "zig", "ziglang", ZIG_INSTALL)


def build_library(target: str, native_root: Path, out_dir: Path, cc: str | None = None,
                  toolchain: str | None = None) -> Path:
    """Compile the kernel library for ``target`` into ``out_dir``; return its path.

    ``native_root`` is the ``native/`` folder (``include/`` and ``src/``).  ``toolchain`` is
    ``zig`` (the default) or ``system``; see :func:`resolve_toolchain`.  With ``system`` the
    compiler can be overridden with ``cc`` or ``$BITNET_EDGE_CC``.  The compiler runs in
    ``native_root`` with relative source paths and without debug info, so the library's bytes do
    not depend on where the checkout is (reproducible bundles).  The result's binary format and
    machine are checked against the target.
    """
    t = get_target(target)
    if t.library_target:
        return build_library(t.library_target, native_root, out_dir, cc, toolchain)
    toolchain = resolve_toolchain(toolchain, cc)
    b = t.build(toolchain)
    linker_path = None
    if toolchain == "zig":
        zig = zig_command()
        if zig is None:
            raise _missing_zig(target)
        compile_cmd = [*zig, "cc", "-target", b.compiler, *BASE_CFLAGS, *ZIG_CFLAGS]
        link_cmd = [*zig, "cc", "-target", b.compiler]
        report = zig[-1] if len(zig) == 1 else "python -m ziglang"
    else:
        compiler = cc or os.environ.get("BITNET_EDGE_CC") or b.compiler
        compiler_path = find_tool(compiler)
        if compiler_path is None:
            raise ToolchainMissing(target, compiler, b.package)
        if b.linker:
            linker_path = find_tool(b.linker)
            if linker_path is None:
                raise ToolchainMissing(target, b.linker, b.linker_package or b.linker)
        compile_cmd = [compiler_path, *BASE_CFLAGS]
        link_cmd = [compiler_path]
        report = compiler_path
    native_root = Path(native_root).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = ("-Iinclude", "-Isrc")
    units = [(src, b.cflags) for src in COMMON_SOURCES] + [(src, b.cflags + f) for src, f in b.variants.items()]
    name = library_filename(target)
    with tempfile.TemporaryDirectory(prefix="bne-build-") as tmp:
        # one object per source, compiled in parallel (the link order is the list's)
        objects = [str(Path(tmp) / f"{i:02d}-{Path(src).stem}.o") for i, (src, _) in enumerate(units)]
        cmds = [[*compile_cmd, *flags, *includes, "-c", src, "-o", obj] for (src, flags), obj in zip(units, objects)]
        with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as pool:
            for fut in [pool.submit(_run, target, cmd, native_root) for cmd in cmds]:
                fut.result()
        # Link under the final file name (a Mach-O code signature records it), then move it in.
        staged = Path(tmp) / name
        if linker_path:
            _run(target, [linker_path, *b.ldflags, *objects, "-o", str(staged)], native_root)
        else:
            _run(target, [*link_cmd, *objects, "-o", str(staged), *b.ldflags], native_root)
        kind = binary_kind(staged.read_bytes()[:64])
        want = _EXPECTED_KIND[(t.os, t.arch)]
        if kind != want:
            raise BuildFailed(target, [report], f"the linker produced {kind}, expected {want} "
                                                f"(is $BITNET_EDGE_CC set to another target's compiler?)")
        copy_atomic(staged, out_dir / name)  # never leave a half-written library behind
    return out_dir / name


def build_host_library(native_root: Path, out_dir: Path, cc: str | None = None) -> Path:
    """:func:`build_library` for the machine this runs on (``pip install``, ``make native``), with the
    host's own compiler: pip's isolated build environment has no ziglang, and a host build needs no
    cross toolchain (bundles for devices are built with zig)."""
    return build_library(host_target(), native_root, out_dir, cc, toolchain="system")


#: (os, arch) -> what :func:`binary_kind` must say about the library.
_EXPECTED_KIND = {
    ("linux", "x86_64"): ("elf", "x86-64"),
    ("linux", "aarch64"): ("elf", "aarch64"),
    ("linux", "armv7"): ("elf", "arm"),
    ("linux", "riscv64"): ("elf", "riscv64"),
    ("macos", "arm64"): ("mach-o", "arm64"),
}


def toolchain_info(target: str, toolchain: str | None = None, cc: str | None = None) -> dict[str, str | None]:
    """What builds ``target``'s library: name (zig | system), version (zig's, or the compiler's
    ``--version`` line) and the zig ``-target`` triple (None for system)."""
    t = get_target(get_target(target).cpu_library_target)
    toolchain = resolve_toolchain(toolchain, cc)
    if toolchain == "zig":
        version = zig_version()
        if version is None:
            raise _missing_zig(t.name)
        return {"name": "zig", "version": version, "target": t.zig.compiler}
    versions = toolchain_versions(t.name, cc, "system")
    return {"name": "system", "version": versions["cc"].split(": ", 1)[-1], "target": None}


def toolchain_versions(target: str, cc: str | None = None, toolchain: str | None = None) -> dict[str, str]:
    """First line of ``--version`` of each tool that builds ``target`` (recorded in bundles)."""
    t_name = get_target(target).cpu_library_target
    t = get_target(t_name)
    toolchain = resolve_toolchain(toolchain, cc)
    if toolchain == "zig":
        cmd = zig_command()
        if cmd is None:
            raise _missing_zig(t_name)
        version, clang = _zig_version(tuple(cmd))
        return {"cc": f"zig {version} cc -target {t.zig.compiler}: {clang}"}
    b = t.system
    tools = {"cc": cc or os.environ.get("BITNET_EDGE_CC") or b.compiler}
    if b.linker:
        tools["linker"] = b.linker
    out = {}
    for role, tool in tools.items():
        path = find_tool(tool)
        if path is None:
            pkg = b.package if role == "cc" else (b.linker_package or tool)
            raise ToolchainMissing(t_name, tool, pkg)
        proc = subprocess.run([path, "--version"], capture_output=True, text=True)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        out[role] = f"{tool}: {lines[0].strip() if lines else 'unknown version'}"
    return out


def toolchain_status() -> list[dict]:
    """Which toolchain can build which target here (``bitnet-edge info`` / ``devices``): one row per
    (CPU-library target, toolchain) with the tools it needs, the missing ones and how to install them."""
    zig = zig_command()
    zv = _zig_version(tuple(zig))[0] if zig else None
    rows = []
    for t in TARGETS.values():
        if t.library_target:
            continue
        for name in TOOLCHAINS:
            b = t.build(name)
            if name == "zig":
                tools = [{"tool": "zig", "present": zig is not None, "version": zv, "install": ZIG_INSTALL}]
            else:
                tools = [{"tool": tool, "present": find_tool(tool) is not None, "version": None,
                          "install": f"apt-get install {pkg}"}
                         for tool, pkg in ((b.compiler, b.package), (b.linker, b.linker_package)) if tool]
            rows.append({"target": t.name, "toolchain": name, "default": name == DEFAULT_TOOLCHAIN,
                         "compiler": f"zig cc -target {b.compiler}" if name == "zig" else b.compiler,
                         "ready": all(x["present"] for x in tools), "tools": tools,
                         "threads": not any("BNE_NO_THREADS" in f for f in b.cflags)})
    return rows


def _run(target: str, cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise BuildFailed(target, cmd, proc.stdout + proc.stderr)
