"""The table of native targets: what each kernel library is, where it runs, what it needs, and how
each toolchain builds it.

Standard library only, and data only: the runtime reads it to find the library for this host
(:func:`host_target`, :func:`library_host_target`, :func:`library_filename`), the bundle contract
to check device profiles and installs against it, and ``packagers/targets.py`` (the build host)
compiles it (``build_library``).  ``setup.py`` loads that file, and so this one, from the source
tree before any dependency is importable.

Toolchains (docs/adr/0017-zig-toolchain-armv7-rvv.md):
  zig     (default) zig's bundled clang from the ``ziglang`` wheel (the ``builder`` extra):
          ``zig cc -target T`` builds every CPU target from any host with nothing else installed:
          glibc stubs for a fixed glibc floor, the macOS libSystem stubs, its own linkers.  CPU
          spelling: ``-mcpu=cortex_a76``, ``-mcpu=generic+dotprod``.
  system  the Debian compilers (``--toolchain system``): gcc, aarch64-linux-gnu-gcc,
          arm-linux-gnueabihf-gcc, riscv64-linux-gnu-gcc (GCC >= 13 for the RVV intrinsics),
          clang + ld64.lld for a freestanding, single-threaded macOS dylib.

Targets (one library each, kernel variants picked at run time):
  linux-x86_64   scalar / AVX2 / AVX-512 VNNI (cpuid)                            -> ELF x86-64 .so, glibc >= 2.17
  linux-aarch64  NEON / NEON-dotprod (AT_HWCAP)                                  -> ELF AArch64 .so, glibc >= 2.17
  linux-armv7    ARMv7-A hard-float, VFPv3-D16 baseline: scalar / NEON (AT_HWCAP) -> ELF ARM .so, glibc >= 2.17
  linux-riscv64  rv64gc: scalar / RVV 1.0, any VLEN (riscv_hwprobe, HWCAP 'V')   -> ELF RISC-V .so, glibc >= 2.27
  macos-arm64    NEON / NEON-dotprod, ad-hoc signed Mach-O dylib; zig links libSystem (threads), the
                 system toolchain builds it freestanding and single-threaded (BNE_NO_THREADS)
  jetson         the linux-aarch64 CPU library + the CUDA fatbin (packagers/cuda.py: SASS for sm_87,
                 sm_90, sm_110 and compute_80 PTX, built with nvcc)
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BACKEND_FEATURES",
    "DEFAULT_TOOLCHAIN",
    "TARGETS",
    "TOOLCHAINS",
    "Build",
    "Target",
    "binary_kind",
    "find_tool",
    "host_target",
    "library_filename",
    "library_host_target",
]

#: The toolchains, default first.
TOOLCHAINS = ("zig", "system")
DEFAULT_TOOLCHAIN = "zig"

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
        """The :class:`Build` of ``toolchain`` (``zig`` or ``system``)."""
        if toolchain not in TOOLCHAINS:
            raise ValueError(f"unknown toolchain {toolchain!r}; known: {', '.join(TOOLCHAINS)}")
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
                    "src/arch/x86/avx2.c": ("-mcpu=x86_64+avx2+fma+f16c",),
                    "src/arch/x86/avx512.c": ("-mcpu=x86_64+avx512f+avx512bw+avx512vl+avx512vnni",),
                },
                ldflags=_ELF_LD,
            ),
            system=Build(
                compiler="gcc",
                package="gcc",
                cflags=("-march=x86-64", "-mtune=generic"),
                variants={
                    "src/arch/x86/avx2.c": ("-mavx2", "-mfma", "-mf16c"),
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
               "armv8l": "armv7"}.get(machine, machine)  # armv8l: a 32-bit user space on a 64-bit kernel
    return f"{platform.system().lower()}-{machine}"


def library_host_target() -> str:
    """The library target this machine runs (``macos-arm64`` on Apple Silicon, else host_target())."""
    if platform.system() == "Darwin":
        return "macos-arm64" if platform.machine().lower() in ("arm64", "aarch64") else "macos-x86_64"
    return host_target()


def library_filename(target: str) -> str:
    """``libbitnet_edge.dylib`` for a macOS target, else ``libbitnet_edge.so`` (KeyError: unknown target)."""
    return "libbitnet_edge.dylib" if TARGETS[target].os == "macos" else "libbitnet_edge.so"


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


