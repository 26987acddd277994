"""Build the CUDA fatbin (native/cuda/) with nvcc, and list what a fatbin holds (cuobjdump).

Standard library only.  One fatbin holds SASS for every
architecture in :data:`FATBIN_ARCHS` — sm_87 (Jetson Orin), sm_110 (Jetson Thor), sm_90 (H100/H200,
where the kernels are tested) — plus :data:`FATBIN_PTX` PTX, which the driver JIT-compiles on any
newer GPU (and on sm_80/86/89).  nvcc runs in ``native/`` on the relative source path, so the
bytes do not depend on where the checkout is (same toolkit -> same fatbin).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bitnet_edge.packagers.errors import BuildFailed, ToolchainMissing
from bitnet_edge.sdk.native.targets import find_tool

__all__ = ["FATBIN_ARCHS", "FATBIN_PTX", "FATBIN_NAME", "NVCC_FLAGS", "CUDA_SOURCES", "find_nvcc", "find_cuobjdump",
           "build_fatbin", "fatbin_contents", "nvcc_version", "cuda_source_files"]

FATBIN_NAME = "bitnet_edge.fatbin"
FATBIN_ARCHS = ("sm_87", "sm_90", "sm_110")  # SASS: Orin, H100/H200, Thor
FATBIN_PTX = "compute_80"  # PTX for everything else from Ampere on (mma.sync int8 needs sm_80)
#: No fast math, no FMA contraction: the float epilogue and the quantizer are bit-exact (ADR 0003).
NVCC_FLAGS = ("-fatbin", "-O3", "--fmad=false", "-std=c++17", "-Xcompiler", "-fno-fast-math")
CUDA_SOURCES = "cuda/bitnet_edge.cu"  # the one translation unit (it includes the others)
NVCC_PACKAGE = "nvidia-cuda-toolkit"
CUOBJDUMP_PACKAGE = "nvidia-cuda-toolkit"


def find_nvcc() -> str | None:
    """``$BITNET_EDGE_NVCC``, nvcc on PATH, or /usr/local/cuda/bin/nvcc."""
    env = os.environ.get("BITNET_EDGE_NVCC")
    if env:
        return env if Path(env).is_file() else None
    return find_tool("nvcc") or next((str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.is_file()), None)


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, in a CUDA toolkit folder, or from the ``nvidia-cuda-cuobjdump`` wheel."""
    found = find_tool("cuobjdump")
    if found:
        return found
    dirs = [Path("/usr/local/cuda/bin")] + sorted(Path("/usr/local").glob("cuda-*/bin"), reverse=True)
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        dirs += sorted(Path(base).glob("cu*/bin"), reverse=True)
    return next((str(d / "cuobjdump") for d in dirs if (d / "cuobjdump").is_file()), None)


def cuda_source_files(native_root: Path) -> list[Path]:
    root = Path(native_root)
    return sorted([*root.glob("cuda/*.cu"), *root.glob("cuda/*.cuh"), *root.glob("cuda/*.h")])


def nvcc_flags() -> list[str]:
    flags = list(NVCC_FLAGS)
    for sm in FATBIN_ARCHS:
        flags += ["-gencode", f"arch=compute_{sm[3:]},code={sm}"]
    flags += ["-gencode", f"arch={FATBIN_PTX},code={FATBIN_PTX}"]
    return flags


def nvcc_version(nvcc: str | None = None) -> str:
    """``nvcc: Cuda compilation tools, release 13.0, V13.0.88`` (recorded in bundles)."""
    path = nvcc or find_nvcc()
    if path is None:
        raise ToolchainMissing("jetson", "nvcc", NVCC_PACKAGE)
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release [^\n]*", out)
    return f"nvcc: Cuda compilation tools, {m.group(0) if m else 'unknown version'}"


def build_fatbin(native_root: Path, out_dir: Path, nvcc: str | None = None) -> Path:
    """Compile native/cuda/ into ``out_dir/bitnet_edge.fatbin``; return its path."""
    path = nvcc or find_nvcc()
    if path is None:
        raise ToolchainMissing("jetson", "nvcc", NVCC_PACKAGE)
    native_root = Path(native_root).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bne-cuda-") as tmp:
        staged = Path(tmp) / FATBIN_NAME
        cmd = [path, *nvcc_flags(), "-Icuda", "-o", str(staged), CUDA_SOURCES]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=native_root)
        if proc.returncode != 0 or not staged.is_file():
            raise BuildFailed("jetson", cmd, proc.stdout + proc.stderr)
        final = out_dir / FATBIN_NAME
        tmp_out = out_dir / (FATBIN_NAME + ".tmp")
        shutil.copyfile(staged, tmp_out)
        os.replace(tmp_out, final)
    return final


def fatbin_contents(path: Path, cuobjdump: str | None = None) -> tuple[list[str], list[str]]:
    """(SASS archs, PTX archs) in a fatbin, as ``cuobjdump --list-elf`` / ``--list-ptx`` name them,
    e.g. (["sm_87", "sm_90", "sm_110"], ["sm_80"])."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise ToolchainMissing("jetson", "cuobjdump", CUOBJDUMP_PACKAGE)
    lists = []
    for flag, ext in (("--list-elf", "cubin"), ("--list-ptx", "ptx")):
        proc = subprocess.run([tool, flag, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildFailed("jetson", [tool, flag, str(path)], proc.stdout + proc.stderr)
        lists.append(sorted(set(re.findall(rf"\.(sm_\d+a?)\.{ext}", proc.stdout)), key=lambda s: int(s[3:].rstrip("a"))))
    return lists[0], lists[1]
