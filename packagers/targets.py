"""The table of native build targets and the one function that compiles them.

Pure standard library on purpose: ``setup.py`` loads this file by path to build
the host library during ``pip install``, before any dependency is importable.

Each target lists its compiler, common flags and per-source ISA flags.  The
kernel variants of a target are compiled with their own ``-m`` / ``-march``
flags into one shared library that picks the best variant at run time
(cpuid on x86-64, ``getauxval(AT_HWCAP)`` on Linux aarch64; every Apple
Silicon core has NEON and dotprod).

Targets:
  linux-x86_64   gcc; scalar / AVX2 / AVX-512 VNNI dispatch                   -> ELF x86-64 .so
  linux-aarch64  aarch64-linux-gnu-gcc; NEON / NEON-dotprod dispatch           -> ELF AArch64 .so
  macos-arm64    clang -target arm64-apple-macos11 -ffreestanding + ld64.lld   -> Mach-O ARM64 dylib,
                 ad-hoc signed (LC_CODE_SIGNATURE); single-threaded (BNE_NO_THREADS), no macOS SDK
  jetson         the linux-aarch64 CPU library + the CUDA fatbin (packagers/cuda.py: SASS for sm_87,
                 sm_90, sm_110 and compute_80 PTX, built with nvcc)
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BACKEND_FEATURES",
    "COMMON_SOURCES",
    "TARGETS",
    "Target",
    "ToolchainMissing",
    "BuildFailed",
    "UnknownTarget",
    "binary_kind",
    "build_library",
    "find_tool",
    "get_target",
    "host_target",
    "library_filename",
    "toolchain_versions",
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

#: CPU features each backend needs at run time (what api.c's ``required()`` checks).
BACKEND_FEATURES: dict[str, tuple[str, ...]] = {
    "ref": (),
    "avx2": ("avx2",),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),
    "neon": ("neon",),
    "neon-dotprod": ("neon", "dotprod"),
}

def _load_errors():
    """packagers/errors.py, also when this file is loaded by path (setup.py) before the package is importable."""
    try:
        from bitnet_edge.packagers import errors
    except ImportError:
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("_bne_packager_errors", Path(__file__).with_name("errors.py"))
        errors = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = errors
        spec.loader.exec_module(errors)
    return errors


_errors = _load_errors()
ToolchainMissing = _errors.ToolchainMissing
BuildFailed = _errors.BuildFailed
UnknownTarget = _errors.UnknownTarget


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
    linker: str | None = None  # link with this tool (ldflags are its own) instead of through cc
    linker_package: str | None = None  # where the linker comes from
    requires: tuple[str, ...] = ()  # CPU features the library needs to load at all
    library_target: str | None = None  # reuse another target's CPU library (jetson -> linux-aarch64)
    cuda_archs: tuple[str, ...] = ()  # GPU architectures of the target's devices (profiles must use one)
    cuda_kernels: bool = False  # bundles carry the CUDA fatbin (packagers/cuda.py)
    description: str = ""

    @property
    def backends(self) -> tuple[str, ...]:
        names = {"avx2.c": "avx2", "avx512.c": "avx512", "neon.c": "neon", "neon_dotprod.c": "neon-dotprod"}
        return ("ref",) + tuple(names[Path(s).name] for s in self.variants)

    @property
    def cpu_library_target(self) -> str:
        """The target whose build is this target's CPU library (itself, or jetson's linux-aarch64)."""
        return self.library_target or self.name


_LINUX_AARCH64 = Target(
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
    requires=("neon",),
    description="Linux aarch64 (Raspberry Pi, i.MX 8M): NEON and NEON-dotprod dispatch",
)

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
            description="Linux x86-64: scalar, AVX2 and AVX-512 VNNI dispatch",
        ),
        _LINUX_AARCH64,
        Target(
            name="macos-arm64",
            cc="clang",
            apt_package="clang",
            arch="arm64",
            os="macos",
            # Freestanding: no libc, no pthreads (pool.c's BNE_NO_THREADS path), no macOS SDK.
            cflags=("-target", "arm64-apple-macos11", "-mcpu=apple-m1", "-ffreestanding",
                    "-fno-stack-protector", "-DBNE_NO_THREADS"),
            variants={"src/arch/arm/neon.c": (), "src/arch/arm/neon_dotprod.c": ()},
            linker="ld64.lld",
            linker_package="lld",
            ldflags=("-arch", "arm64", "-platform_version", "macos", "11.0", "11.0", "-dylib",
                     "-install_name", "@rpath/libbitnet_edge.dylib", "-adhoc_codesign"),
            requires=("neon", "dotprod"),
            description="macOS on Apple Silicon: ad-hoc signed Mach-O dylib, single-threaded, no SDK",
        ),
        Target(
            name="jetson",
            cc=_LINUX_AARCH64.cc,
            apt_package=_LINUX_AARCH64.apt_package,
            arch="aarch64",
            os="linux",
            cflags=_LINUX_AARCH64.cflags,
            variants=_LINUX_AARCH64.variants,
            requires=_LINUX_AARCH64.requires,
            library_target="linux-aarch64",
            cuda_archs=("sm_87", "sm_110"),
            cuda_kernels=True,
            description="NVIDIA Jetson: the linux-aarch64 CPU library + the CUDA fatbin (Orin sm_87, Thor sm_110)",
        ),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(name, sorted(TARGETS)) from None


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
    return "libbitnet_edge.dylib" if get_target(target).os == "macos" else "libbitnet_edge.so"


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


#: (os, arch) -> what :func:`binary_kind` must say about the library.
_EXPECTED_KIND = {
    ("linux", "x86_64"): ("elf", "x86-64"),
    ("linux", "aarch64"): ("elf", "aarch64"),
    ("macos", "arm64"): ("mach-o", "arm64"),
}


def binary_kind(head: bytes) -> tuple[str, str]:
    """(format, machine) from the first bytes of an ELF or 64-bit Mach-O file, e.g. ("elf", "aarch64")."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        order = "<" if head[5] == 1 else ">"
        machine = struct.unpack_from(order + "H", head, 18)[0]
        return "elf", {62: "x86-64", 183: "aarch64", 40: "arm", 3: "x86"}.get(machine, f"em-{machine}")
    if head[:4] == b"\xcf\xfa\xed\xfe" and len(head) >= 8:  # MH_MAGIC_64, little-endian
        cputype = struct.unpack_from("<I", head, 4)[0]
        return "mach-o", {0x0100000C: "arm64", 0x01000007: "x86-64"}.get(cputype, f"cpu-{cputype:#x}")
    return "unknown", "unknown"


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
