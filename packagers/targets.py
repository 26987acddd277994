"""The table of native build targets, the toolchains that build them, and the one function that compiles them.

Pure standard library on purpose: ``setup.py`` loads this file by path to build
the host library during ``pip install``, before any dependency is importable.

Each target says, per toolchain, its compiler, common flags and per-source ISA
flags.  The kernel variants of a target are compiled with their own CPU flags
into one shared library that picks the best variant at run time (cpuid on
x86-64, ``getauxval(AT_HWCAP)`` on Linux aarch64 and armv7, riscv_hwprobe /
HWCAP on Linux riscv64; every Apple Silicon core has NEON and dotprod).

Toolchains (docs/adr/0012-zig-toolchain-armv7-rvv.md):
  zig     (default) zig's bundled clang from the ``ziglang`` wheel (the ``builder`` extra):
          ``python -m ziglang cc -target T`` builds every CPU target from any host with
          nothing else installed: glibc stubs for a fixed glibc floor, the macOS libSystem
          stubs, its own linker.  CPU spelling: ``-mcpu=cortex_a76``, ``-mcpu=generic+dotprod``.
  system  the Debian cross compilers (``--toolchain system``): gcc, aarch64-linux-gnu-gcc,
          arm-linux-gnueabihf-gcc, riscv64-linux-gnu-gcc (GCC >= 13 for the RVV intrinsics),
          clang + ld64.lld for a freestanding, single-threaded macOS dylib.

Targets:
  linux-x86_64   scalar / AVX2 / AVX-512 VNNI dispatch                         -> ELF x86-64 .so (glibc >= 2.17)
  linux-aarch64  NEON / NEON-dotprod dispatch                                  -> ELF AArch64 .so (glibc >= 2.17)
  linux-armv7    ARMv7-A hard-float (VFPv3-D16 baseline): scalar / NEON        -> ELF ARM .so (glibc >= 2.17)
  linux-riscv64  rv64gc: scalar / RVV 1.0 (vector-length agnostic)             -> ELF RISC-V .so (glibc >= 2.27)
  macos-arm64    NEON / NEON-dotprod, ad-hoc signed Mach-O dylib; zig links libSystem (threads),
                 the system toolchain builds it freestanding and single-threaded (BNE_NO_THREADS)
  jetson         the linux-aarch64 CPU library + the CUDA fatbin (packagers/cuda.py: SASS for sm_87,
                 sm_90, sm_110 and compute_80 PTX, built with nvcc)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BACKEND_FEATURES",
    "COMMON_SOURCES",
    "DEFAULT_TOOLCHAIN",
    "TARGETS",
    "TOOLCHAINS",
    "Build",
    "Target",
    "ToolchainMissing",
    "BuildFailed",
    "UnknownTarget",
    "UnknownToolchain",
    "binary_kind",
    "build_library",
    "find_tool",
    "get_target",
    "host_target",
    "library_filename",
    "resolve_toolchain",
    "toolchain_info",
    "toolchain_status",
    "toolchain_versions",
    "zig_command",
    "zig_version",
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

#: What zig adds to every compile: no debug info (it would carry the checkout's absolute
#: paths into the library; zig cc emits it unless told not to).
ZIG_CFLAGS = ("-g0",)

#: The toolchains, default first.
TOOLCHAINS = ("zig", "system")
DEFAULT_TOOLCHAIN = "zig"
#: How the zig toolchain is installed (it is a wheel: the builder extra pins it).
ZIG_INSTALL = "pip install 'bitnet-edge[builder]'  (the ziglang wheel)"

#: CPU features each backend needs at run time (what api.c's ``required()`` checks).
BACKEND_FEATURES: dict[str, tuple[str, ...]] = {
    "ref": (),
    "avx2": ("avx2",),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),
    "neon": ("neon",),
    "neon-dotprod": ("neon", "dotprod"),
    "rvv": ("v",),
}

#: Kernel source file -> backend name.
_VARIANT_BACKENDS = {"avx2.c": "avx2", "avx512.c": "avx512", "neon.c": "neon", "neon_dotprod.c": "neon-dotprod",
                     "rvv.c": "rvv"}


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
UnknownToolchain = _errors.UnknownToolchain


@dataclass(frozen=True)
class Build:
    """How one toolchain builds one target's library.

    ``compiler``: for ``system`` the compiler executable (Debian name); for ``zig`` the
    ``-target`` triple with its libc floor (``aarch64-linux-gnu.2.17``, ``aarch64-macos.11.0``).
    """

    compiler: str
    package: str  # where the compiler comes from (apt package; "ziglang" for zig)
    cflags: tuple[str, ...] = ()  # every source
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> ISA flags (after cflags)
    ldflags: tuple[str, ...] = ("-shared", "-lpthread")
    linker: str | None = None  # link with this tool (ldflags are its own) instead of through the compiler
    linker_package: str | None = None  # where the linker comes from


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # uname -m of the devices it runs on (armv7 for armv7l/armv8l userlands)
    os: str
    zig: Build
    system: Build
    requires: tuple[str, ...] = ()  # CPU features the library needs to load at all
    library_target: str | None = None  # reuse another target's CPU library (jetson -> linux-aarch64)
    cuda_archs: tuple[str, ...] = ()  # GPU architectures of the target's devices (profiles must use one)
    cuda_kernels: bool = False  # bundles carry the CUDA fatbin (packagers/cuda.py)
    description: str = ""

    def __post_init__(self):
        if set(self.zig.variants) != set(self.system.variants):
            raise ValueError(f"{self.name}: the toolchains compile different kernel sources")

    def build(self, toolchain: str) -> Build:
        if toolchain not in TOOLCHAINS:
            raise UnknownToolchain(toolchain, list(TOOLCHAINS))
        return self.zig if toolchain == "zig" else self.system

    @property
    def backends(self) -> tuple[str, ...]:
        return ("ref",) + tuple(_VARIANT_BACKENDS[Path(s).name] for s in self.zig.variants)

    @property
    def cpu_library_target(self) -> str:
        """The target whose build is this target's CPU library (itself, or jetson's linux-aarch64)."""
        return self.library_target or self.name


_ELF_LD = ("-shared", "-s", "-Wl,--build-id=none", "-lpthread")  # zig: stripped, no build id (reproducible)

_LINUX_AARCH64 = Target(
    name="linux-aarch64",
    arch="aarch64",
    os="linux",
    zig=Build(
        compiler="aarch64-linux-gnu.2.17",
        package="ziglang",
        cflags=("-mcpu=generic",),
        variants={
            "src/arch/arm/neon.c": ("-mcpu=generic",),
            "src/arch/arm/neon_dotprod.c": ("-mcpu=generic+dotprod",),
        },
        ldflags=_ELF_LD,
    ),
    system=Build(
        compiler="aarch64-linux-gnu-gcc",
        package="gcc-aarch64-linux-gnu",
        cflags=("-march=armv8-a",),
        variants={
            "src/arch/arm/neon.c": ("-march=armv8-a",),
            "src/arch/arm/neon_dotprod.c": ("-march=armv8.2-a+dotprod",),
        },
    ),
    requires=("neon",),
    description="Linux aarch64 (Raspberry Pi, i.MX 8M): NEON and NEON-dotprod dispatch",
)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="linux-x86_64",
            arch="x86_64",
            os="linux",
            zig=Build(
                compiler="x86_64-linux-gnu.2.17",
                package="ziglang",
                cflags=("-mcpu=x86_64",),
                variants={
                    "src/arch/x86/avx2.c": ("-mcpu=x86_64+avx2+fma",),
                    "src/arch/x86/avx512.c": ("-mcpu=x86_64+avx512f+avx512bw+avx512vl+avx512vnni",),
                },
                ldflags=_ELF_LD,
            ),
            system=Build(
                compiler="gcc",
                package="gcc",
                cflags=("-march=x86-64", "-mtune=generic"),
                variants={
                    "src/arch/x86/avx2.c": ("-mavx2", "-mfma"),
                    "src/arch/x86/avx512.c": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
                },
            ),
            description="Linux x86-64: scalar, AVX2 and AVX-512 VNNI dispatch",
        ),
        _LINUX_AARCH64,
        Target(
            name="linux-armv7",
            arch="armv7",
            os="linux",
            zig=Build(
                compiler="arm-linux-gnueabihf.2.17",
                package="ziglang",
                # Debian armhf's floor: ARMv7-A, VFPv3 with 16 double registers, no NEON
                cflags=("-mcpu=generic+v7a-neon-d32",),
                variants={"src/arch/arm32/neon.c": ("-mcpu=generic+v7a+neon",)},
                ldflags=_ELF_LD,
            ),
            system=Build(
                compiler="arm-linux-gnueabihf-gcc",
                package="gcc-arm-linux-gnueabihf",
                cflags=("-march=armv7-a", "-mfpu=vfpv3-d16", "-mfloat-abi=hard"),
                variants={"src/arch/arm32/neon.c": ("-mfpu=neon",)},
            ),
            description="Linux 32-bit ARMv7-A hard-float (Cortex-A7/A9/A15, Raspberry Pi OS 32-bit): "
                        "scalar and NEON dispatch",
        ),
        Target(
            name="linux-riscv64",
            arch="riscv64",
            os="linux",
            zig=Build(
                compiler="riscv64-linux-gnu.2.27",
                package="ziglang",
                cflags=("-mcpu=baseline_rv64",),  # rv64gc (imafdc)
                variants={"src/arch/riscv/rvv.c": ("-mcpu=baseline_rv64+v",)},
                ldflags=_ELF_LD,
            ),
            system=Build(
                compiler="riscv64-linux-gnu-gcc",
                package="gcc-riscv64-linux-gnu",  # GCC >= 13 for the RVV intrinsics of rvv.c
                cflags=("-march=rv64gc", "-mabi=lp64d"),
                variants={"src/arch/riscv/rvv.c": ("-march=rv64gcv",)},
            ),
            description="Linux RISC-V 64 (rv64gc): scalar and RVV 1.0 dispatch, any VLEN",
        ),
        Target(
            name="macos-arm64",
            arch="arm64",
            os="macos",
            zig=Build(
                compiler="aarch64-macos.11.0",
                package="ziglang",
                cflags=("-mcpu=apple_m1",),
                variants={"src/arch/arm/neon.c": (), "src/arch/arm/neon_dotprod.c": ()},
                # a normal dylib against zig's libSystem stubs (libc, pthreads); zig's linker signs it ad hoc
                ldflags=("-shared", "-Wl,-install_name,@rpath/libbitnet_edge.dylib"),
            ),
            system=Build(
                compiler="clang",
                package="clang",
                # Freestanding: no libc, no pthreads (pool.c's BNE_NO_THREADS path), no macOS SDK.
                cflags=("-target", "arm64-apple-macos11", "-mcpu=apple-m1", "-ffreestanding",
                        "-fno-stack-protector", "-DBNE_NO_THREADS"),
                variants={"src/arch/arm/neon.c": (), "src/arch/arm/neon_dotprod.c": ()},
                linker="ld64.lld",
                linker_package="lld",
                ldflags=("-arch", "arm64", "-platform_version", "macos", "11.0", "11.0", "-dylib",
                         "-install_name", "@rpath/libbitnet_edge.dylib", "-adhoc_codesign"),
            ),
            requires=("neon", "dotprod"),
            description="macOS on Apple Silicon: ad-hoc signed Mach-O dylib (zig: libSystem and threads; "
                        "system: freestanding, single-threaded)",
        ),
        Target(
            name="jetson",
            arch="aarch64",
            os="linux",
            zig=_LINUX_AARCH64.zig,
            system=_LINUX_AARCH64.system,
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
    """The target name for the machine this runs on, e.g. ``linux-x86_64``, ``linux-armv7``."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armv7", "armv7hl": "armv7",
               "armv8l": "armv7"}.get(machine, machine)  # armv8l: a 32-bit userland on a 64-bit kernel
    return f"{platform.system().lower()}-{machine}"


def library_filename(target: str) -> str:
    return "libbitnet_edge.dylib" if get_target(target).os == "macos" else "libbitnet_edge.so"


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
        tmp_out = out_dir / (name + ".tmp")
        shutil.copyfile(staged, tmp_out)
        os.replace(tmp_out, out_dir / name)  # never leave a half-written library behind
    return out_dir / name


#: (os, arch) -> what :func:`binary_kind` must say about the library.
_EXPECTED_KIND = {
    ("linux", "x86_64"): ("elf", "x86-64"),
    ("linux", "aarch64"): ("elf", "aarch64"),
    ("linux", "armv7"): ("elf", "arm"),
    ("linux", "riscv64"): ("elf", "riscv64"),
    ("macos", "arm64"): ("mach-o", "arm64"),
}


def binary_kind(head: bytes) -> tuple[str, str]:
    """(format, machine) from the first bytes of an ELF or 64-bit Mach-O file, e.g. ("elf", "aarch64")."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        order = "<" if head[5] == 1 else ">"
        machine = struct.unpack_from(order + "H", head, 18)[0]
        if machine == 243:  # EM_RISCV: the ELF class says 32 or 64 bits
            return "elf", "riscv64" if head[4] == 2 else "riscv32"
        return "elf", {62: "x86-64", 183: "aarch64", 40: "arm", 3: "x86"}.get(machine, f"em-{machine}")
    if head[:4] == b"\xcf\xfa\xed\xfe" and len(head) >= 8:  # MH_MAGIC_64, little-endian
        cputype = struct.unpack_from("<I", head, 4)[0]
        return "mach-o", {0x0100000C: "arm64", 0x01000007: "x86-64"}.get(cputype, f"cpu-{cputype:#x}")
    return "unknown", "unknown"


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
