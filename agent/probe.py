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

__all__ = ["probe", "match_profile", "cpu_features", "cuda_compute_capability", "memory_mb"]


#: /proc/cpuinfo flag -> the ISA name device profiles use
_CPUINFO = {"avx": "avx", "avx2": "avx2", "bmi1": "bmi1", "bmi2": "bmi2", "f16c": "f16c", "fma": "fma",
            "abm": "lzcnt", "movbe": "movbe", "avx_vnni": "avx-vnni", "avx512f": "avx512f",
            "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
            "avx512_vnni": "avx512vnni", "asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16",
            "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2"}


def cpu_features() -> list[str]:
    """The kernel library's view (cpuid + xgetbv / HWCAP) joined with /proc/cpuinfo's flags."""
    feats: set[str] = set()
    try:
        from bitnet_edge.sdk.info import CPU_FEATURE_BITS
        from bitnet_edge.sdk.native import _binding as nb

        bits = nb.features()
        feats |= {name for name, bit in CPU_FEATURE_BITS.items() if bits & bit}
    except Exception:  # noqa: BLE001 - no library here: /proc/cpuinfo alone
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                feats |= {_CPUINFO[f] for f in line.split(":", 1)[1].split() if f in _CPUINFO}
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
    """The device profile for these capabilities: ``wanted`` if given (checked), else the most
    specific profile of the same OS/arch whose required ISA features the CPU has."""
    from bitnet_edge.sdk.bundle.devices import load_devices

    profiles = list(load_devices().values())
    if wanted:
        return next((p for p in profiles if p.name == wanted), None)
    feats = set(caps.cpu_features)
    ok = [p for p in profiles if p.os == caps.os and p.arch == ("aarch64" if caps.arch == "arm64" else caps.arch)
          and set(p.isa_required) <= feats
          and (p.accelerator.kind != "cuda" or p.accelerator.cuda_arch == caps.cuda_sm)]
    return max(ok, key=lambda p: (len(p.isa_required), p.accelerator.kind != "none"), default=None)


def model_runtimes() -> list[str]:
    """Where models can run here (cpu, mlx, cuda), asked of a short-lived child process: finding
    out imports mlx / libcuda, which would stay in the agent's memory though only model workers
    use them (the agent without a model stays small)."""
    import json
    import subprocess
    import sys

    code = "import json; from bitnet_edge.sdk.models.device import available_devices as a; print(json.dumps(a()))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return list(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else ["cpu"]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return ["cpu"]


def probe(data_dir: str | os.PathLike, profile: str | None = None) -> Capabilities:
    from bitnet_edge.sdk import kernels
    from bitnet_edge.sdk.native.targets import host_target
    machine = platform.machine().lower()
    system = {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    caps = Capabilities(
        arch=machine, os=system, cpu_features=cpu_features(),
        backends=[b for b in kernels.available_backends() if b != "numpy"],
        memory_mb=memory_mb(), disk_free_mb=shutil.disk_usage(data_dir).free // (1024 * 1024),
        cuda_sm=cuda_compute_capability(), apple_gpu=system == "macos" and machine == "arm64",
        target=host_target().replace("darwin-arm64", "macos-arm64"), agent_version=__version__,
        runtimes=model_runtimes(),
    )
    found = match_profile(caps, profile)
    return caps.model_copy(update={"profile": found.name if found else None})
