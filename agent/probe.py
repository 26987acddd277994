"""Capability probe: what this device is and runs, matched to a device profile."""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

from bitnet_edge import __version__
from bitnet_edge.sdk.wire.protocol import Capabilities

__all__ = ["probe", "match_profile", "profile_arch", "cpu_features", "cuda_compute_capability", "memory_mb"]


#: /proc/cpuinfo flag -> the ISA name device profiles use
_CPUINFO = {"avx": "avx", "avx2": "avx2", "bmi1": "bmi1", "bmi2": "bmi2", "f16c": "f16c", "fma": "fma",
            "abm": "lzcnt", "movbe": "movbe", "avx_vnni": "avx-vnni", "avx512f": "avx512f",
            "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
            "avx512_vnni": "avx512vnni", "asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16",
            "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2",
            "neon": "neon", "vfpv3": "vfpv3", "vfpv4": "vfpv4"}  # 32-bit ARM spells NEON "neon"
#: RISC-V ISA-string extensions device profiles name
_RISCV_EXT = {"v", "zba", "zbb", "zvl256b"}
#: platform.machine() -> the arch device profiles use
_ARCH = {"arm64": "aarch64", "amd64": "x86_64", "armv7l": "armv7", "armv7hl": "armv7", "armv8l": "armv7"}


def profile_arch(machine: str) -> str:
    """The device-profile spelling of ``platform.machine()`` (arm64 -> aarch64, armv7l -> armv7)."""
    m = machine.lower()
    return _ARCH.get(m, m)


def _riscv_isa(isa: str) -> set[str]:
    """Extensions of a /proc/cpuinfo ``isa`` line (rv64imafdcv_zba_zbb_zvl256b) that profiles name."""
    isa = isa.strip().lower()
    if not isa.startswith(("rv64", "rv32")):
        return set()
    base, *multi = isa[4:].split("_")
    return ({c for c in base} | set(multi)) & _RISCV_EXT


def library_features() -> list[str]:
    """The kernel library's view of the CPU (cpuid + xgetbv / HWCAP); [] without a library."""
    try:
        from bitnet_edge.sdk.info import CPU_FEATURE_BITS
        from bitnet_edge.sdk.native import _binding as nb

        bits = nb.features()
        return sorted(name for name, bit in CPU_FEATURE_BITS.items() if bits & bit)
    except Exception:  # noqa: BLE001 - no library here: /proc/cpuinfo alone
        return []


def cpu_features(from_library: list[str] | None = None) -> list[str]:
    """The kernel library's view (``from_library``, default: asked here) joined with /proc/cpuinfo's flags."""
    feats: set[str] = set(library_features() if from_library is None else from_library)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                feats |= {_CPUINFO[f] for f in line.split(":", 1)[1].split() if f in _CPUINFO}
            elif line.startswith("isa") and ":" in line:
                feats |= _riscv_isa(line.split(":", 1)[1])
    except OSError:
        pass
    return sorted(feats)


def memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 0


def cuda_compute_capability() -> str | None:
    """sm_XY of the first NVIDIA GPU, when the driver (libcuda) is present."""
    if ctypes.util.find_library("cuda") is None and not Path("/proc/driver/nvidia").exists():
        return None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip().splitlines()
            if out and out[0]:
                return "sm_" + out[0].strip().replace(".", "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:  # the driver API directly: cuInit + cuDeviceGetAttribute(major=75, minor=76)
        lib = ctypes.CDLL(ctypes.util.find_library("cuda") or "libcuda.so.1")
        if lib.cuInit(0) != 0:
            return None
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if lib.cuDeviceGet(ctypes.byref(dev), 0) != 0:
            return None
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        return f"sm_{major.value}{minor.value}"
    except OSError:
        return None


def match_profile(caps: Capabilities, wanted: str | None = None):
    """The device profile for these capabilities: ``wanted`` if given (ConfigError ``unknown-profile``
    when no profile has that name, ``wrong-profile`` when it is for another OS/arch), else the most
    specific profile of the same OS/arch whose required ISA features the CPU has."""
    from bitnet_edge.agent.errors import ConfigError
    from bitnet_edge.sdk.bundle.devices import load_devices

    profiles = list(load_devices().values())
    if wanted:
        p = next((p for p in profiles if p.name == wanted), None)
        if p is None:
            raise ConfigError("profile", f"no device profile {wanted!r}; known: "
                                         f"{', '.join(sorted(x.name for x in profiles))}", reason="unknown-profile")
        arch = "aarch64" if caps.arch == "arm64" else caps.arch
        if (p.os, p.arch) != (caps.os, arch):
            raise ConfigError("profile", f"{wanted!r} is a {p.os}/{p.arch} profile; this device is "
                                         f"{caps.os}/{arch}", reason="wrong-profile")
        return p
    feats = set(caps.cpu_features)
    ok = [p for p in profiles if p.os == caps.os and p.arch == profile_arch(caps.arch)
          and set(p.isa_required) <= feats
          and (p.accelerator.kind != "cuda" or p.accelerator.cuda_arch == caps.cuda_sm)]
    return max(ok, key=lambda p: (len(p.isa_required), p.accelerator.kind != "none"), default=None)


def _runtime_probe() -> dict:
    """Where models can run here (runtimes: cpu, mlx, cuda) and the kernel backends, asked of a
    short-lived child process: finding out imports numpy, mlx / libcuda and loads the kernel
    library (with its thread pool), which would stay in the agent's memory though only model
    workers use them (the agent without a model stays small, issue 18)."""
    import json
    import subprocess
    import sys

    code = ("import json; from bitnet_edge.sdk.models.device import available_devices as a; "
            "from bitnet_edge.sdk.kernels import available_backends as b; "
            "from bitnet_edge.agent.probe import library_features as f; "
            "print(json.dumps({'runtimes': a(), 'backends': b(), 'features': f()}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        got = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        got = {}
    return {"runtimes": list(got.get("runtimes") or ["cpu"]), "backends": list(got.get("backends") or ["numpy"]),
            "features": list(got.get("features") or [])}


def model_runtimes() -> list[str]:
    """Where models can run here (cpu, mlx, cuda); see :func:`_runtime_probe`."""
    return _runtime_probe()["runtimes"]


def probe(data_dir: str | os.PathLike, profile: str | None = None) -> Capabilities:
    from bitnet_edge.sdk.native.targets import host_target
    rt = _runtime_probe()
    machine = platform.machine().lower()
    system = {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    caps = Capabilities(
        arch=machine, os=system, cpu_features=cpu_features(rt["features"]),
        backends=[b for b in rt["backends"] if b != "numpy"],
        memory_mb=memory_mb(), disk_free_mb=shutil.disk_usage(data_dir).free // (1024 * 1024),
        cuda_sm=cuda_compute_capability(), apple_gpu=system == "macos" and machine == "arm64",
        target=host_target().replace("darwin-arm64", "macos-arm64"), agent_version=__version__,
        runtimes=rt["runtimes"],
    )
    found = match_profile(caps, profile)
    return caps.model_copy(update={"profile": found.name if found else None})
