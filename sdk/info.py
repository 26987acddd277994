"""What ``bitnet-edge info`` reports: package, native library, CPU, backend, model device, toolchains."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bitnet_edge import __version__
from bitnet_edge.sdk.native.targets import find_tool
from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["CPU_FEATURE_BITS", "TOOLCHAINS", "collect_info", "cpu_model", "toolchains"]

#: enum bne_cpu_feature
CPU_FEATURE_BITS = {
    "avx2": 1, "fma": 2, "avx512f": 4, "avx512bw": 8, "avx512vl": 16, "avx512vnni": 32,
    "neon": 64, "dotprod": 128,
}

#: tool -> (what it is for, Debian package)
TOOLCHAINS = {
    "gcc": ("host kernel library", "gcc"),
    "aarch64-linux-gnu-gcc": ("linux-aarch64 kernel library", "gcc-aarch64-linux-gnu"),
    "qemu-aarch64": ("running aarch64 tests", "qemu-user"),
    "clang": ("macos-arm64 kernel library", "clang"),
    "ld64.lld": ("macos-arm64 Mach-O linking", "lld"),
    "llvm-objdump": ("inspecting built libraries", "llvm"),
    "nvcc": ("CUDA fatbin for Jetson", "nvidia-cuda-toolkit"),
    "mosquitto": ("MQTT broker for tests", "mosquitto"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_line(tool: str) -> str:
    try:
        proc = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0].strip() if out else ""


def toolchains() -> dict[str, dict]:
    result = {}
    for tool, (purpose, package) in TOOLCHAINS.items():
        path = find_tool(tool)
        result[tool] = {
            "present": path is not None,
            "path": path,
            "version": _version_line(path) if path else None,
            "purpose": purpose,
            "install": f"apt-get install {package}",
        }
    return result


def collect_info() -> dict:
    from bitnet_edge.sdk.native.targets import host_target
    from bitnet_edge.sdk import kernels
    from bitnet_edge.sdk.native import _binding as nb
    from bitnet_edge.sdk.native import load

    info: dict = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "target": host_target()},
        "cpu": {"model": cpu_model(), "cores": os.cpu_count()},
    }
    try:
        lib = load()
        bits = nb.features()
        info["native"] = {
            "loaded": True,
            "path": str(lib.path),
            "version": lib.version,
            "target": lib.ffi.string(lib.lib.bne_target()).decode(),
            "threads": nb.get_threads(),
            "compiled_backends": [b for b, i in kernels.NATIVE_BACKENDS.items() if nb.backend_id_info(i)[1]],
        }
        info["cpu"]["features"] = [name for name, bit in CPU_FEATURE_BITS.items() if bits & bit]
    except BitnetEdgeError as exc:
        info["native"] = {"loaded": False, "error": str(exc)}
        info["cpu"]["features"] = []
    info["backends"] = {"available": kernels.available_backends()}
    try:
        info["backends"]["selected"] = kernels.resolve_backend()
        info["backends"]["requested"] = os.environ.get("BITNET_EDGE_KERNEL") or "auto"
    except BitnetEdgeError as exc:
        info["backends"]["selected"] = None
        info["backends"]["error"] = str(exc)
    from bitnet_edge.sdk import mlx_backend
    from bitnet_edge.sdk.models.device import available_devices, resolve_device

    from bitnet_edge.sdk import cuda

    info["devices"] = {"available": available_devices(), "requested": os.environ.get("BITNET_EDGE_DEVICE") or "auto",
                       "mlx": mlx_backend.info(), "cuda": cuda.probe().as_dict()}
    try:
        info["devices"]["selected"] = resolve_device()
    except BitnetEdgeError as exc:
        info["devices"]["selected"] = None
        info["devices"]["error"] = str(exc)
    info["toolchains"] = toolchains()
    return info
