"""The table of native build targets and the one function that compiles them.

Pure standard library on purpose: ``setup.py`` loads this file by path to build
the host library during ``pip install``, before any dependency is importable.

Each target lists its compiler, common flags and per-source ISA flags.  The
kernel variants of a target are compiled with their own ``-m`` / ``-march``
flags into one shared library that picks the best variant at run time
(cpuid on x86-64, ``getauxval(AT_HWCAP)`` on Linux aarch64).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "COMMON_SOURCES",
    "TARGETS",
    "Target",
    "ToolchainMissing",
    "BuildFailed",
    "build_library",
    "find_tool",
    "host_target",
    "library_filename",
]

#: Sources every target compiles with the target's baseline flags.
COMMON_SOURCES = ("src/api.c", "src/cpu.c", "src/pool.c", "src/kernels_ref.c")

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


class ToolchainMissing(RuntimeError):
    """A compiler or linker for a target is not installed."""

    def __init__(self, target: str, tool: str, package: str):
        super().__init__(
            f"target {target!r} needs {tool!r}, which is not on PATH; "
            f"install it with: apt-get install {package}"
        )
        self.target, self.tool, self.package = target, tool, package


class BuildFailed(RuntimeError):
    """The compiler ran and failed."""

    def __init__(self, target: str, command: list[str], output: str):
        super().__init__(f"building {target!r} failed:\n$ {' '.join(command)}\n{output}")
        self.target, self.command, self.output = target, command, output


@dataclass(frozen=True)
class Target:
    name: str
    cc: str  # compiler executable
    apt_package: str  # where the compiler comes from
    arch: str  # uname -m of the devices it runs on
    os: str
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ("-shared", "-lpthread")
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> ISA flags

    @property
    def backends(self) -> tuple[str, ...]:
        names = {"avx2.c": "avx2", "avx512.c": "avx512", "neon.c": "neon", "neon_dotprod.c": "neon-dotprod"}
        return ("ref",) + tuple(names[Path(s).name] for s in self.variants)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="linux-x86_64",
            cc="gcc",
            apt_package="gcc",
            arch="x86_64",
            os="linux",
            cflags=("-march=x86-64", "-mtune=generic"),
            variants={
                "src/arch/x86/avx2.c": ("-mavx2", "-mfma"),
                "src/arch/x86/avx512.c": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
            },
        ),
        Target(
            name="linux-aarch64",
            cc="aarch64-linux-gnu-gcc",
            apt_package="gcc-aarch64-linux-gnu",
            arch="aarch64",
            os="linux",
            cflags=("-march=armv8-a",),
            variants={
                "src/arch/arm/neon.c": ("-march=armv8-a",),
                "src/arch/arm/neon_dotprod.c": ("-march=armv8.2-a+dotprod",),
            },
        ),
    )
}


def find_tool(name: str) -> str | None:
    """Path of ``name`` on PATH (or /usr/sbin), accepting Debian's versioned
    names (``ld64.lld-14``) when the plain one is missing; the newest wins."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    best: tuple[int, str] | None = None
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            suffix = e[len(name) + 1 :]
            if e.startswith(name + "-") and suffix.isdigit() and os.access(os.path.join(d, e), os.X_OK):
                cand = (int(suffix), os.path.join(d, e))
                best = max(best, cand) if best else cand
    return best[1] if best else None


def host_target() -> str:
    """The target name for the machine this runs on, e.g. ``linux-x86_64``."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{platform.system().lower()}-{machine}"


def library_filename(target: str) -> str:
    return "libbitnet_edge.dylib" if "macos" in target else "libbitnet_edge.so"


def build_library(target: str, native_root: Path, out_dir: Path, cc: str | None = None) -> Path:
    """Compile the kernel library for ``target`` into ``out_dir``; return its path.

    ``native_root`` is the ``native/`` folder (``include/`` and ``src/``).  The
    compiler can be overridden with ``cc`` or ``$BITNET_EDGE_CC``.
    """
    if target not in TARGETS:
        raise KeyError(f"unknown target {target!r}; known: {', '.join(sorted(TARGETS))}")
    t = TARGETS[target]
    compiler = cc or os.environ.get("BITNET_EDGE_CC") or t.cc
    if find_tool(compiler) is None:
        raise ToolchainMissing(target, compiler, t.apt_package)
    native_root = Path(native_root).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = (f"-I{native_root / 'include'}", f"-I{native_root / 'src'}")
    units = [(s, t.cflags) for s in COMMON_SOURCES] + [(s, t.cflags + f) for s, f in t.variants.items()]
    with tempfile.TemporaryDirectory(prefix="bne-build-") as tmp:
        objects = []
        for src, flags in units:
            obj = Path(tmp) / (Path(src).stem + ".o")
            _run(target, [compiler, *BASE_CFLAGS, *flags, *includes, "-c", str(native_root / src), "-o", str(obj)])
            objects.append(str(obj))
        out = out_dir / library_filename(target)
        staging = out.with_suffix(out.suffix + ".tmp")
        _run(target, [compiler, *objects, "-o", str(staging), *t.ldflags])
        os.replace(staging, out)  # never leave a half-written library behind
    return out


def _run(target: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildFailed(target, cmd, proc.stdout + proc.stderr)
