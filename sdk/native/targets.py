"""The table of native targets: what each kernel library is, where it runs, what it needs.

Standard library only, and data only: the runtime reads it to find the library for this host
(:func:`host_target`, :func:`library_host_target`, :func:`library_filename`), the bundle contract
to check device profiles and installs against it, and ``packagers/targets.py`` (the build host)
compiles it (``build_library``).  ``setup.py`` loads that file, and so this one, from the source
tree before any dependency is importable.

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
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BACKEND_FEATURES",
    "TARGETS",
    "Target",
    "binary_kind",
    "find_tool",
    "host_target",
    "library_filename",
    "library_host_target",
]

#: CPU features each backend needs at run time (what api.c's ``required()`` checks).
BACKEND_FEATURES: dict[str, tuple[str, ...]] = {
    "ref": (),
    "avx2": ("avx2",),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),
    "neon": ("neon",),
    "neon-dotprod": ("neon", "dotprod"),
}


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
        return "elf", {62: "x86-64", 183: "aarch64", 40: "arm", 3: "x86"}.get(machine, f"em-{machine}")
    if head[:4] == b"\xcf\xfa\xed\xfe" and len(head) >= 8:  # MH_MAGIC_64, little-endian
        cputype = struct.unpack_from("<I", head, 4)[0]
        return "mach-o", {0x0100000C: "arm64", 0x01000007: "x86-64"}.get(cputype, f"cpu-{cputype:#x}")
    return "unknown", "unknown"


