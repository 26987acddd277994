"""Find the fatbin and its header, parse the kernel ABI, and open the GPU once per process.

Fatbin search order (the first file that exists is used; every path looked at is reported):
1. ``$BITNET_EDGE_CUDA_FATBIN``
2. beside ``$BITNET_EDGE_LIBRARY`` (an installed bundle's ``native/<target>/``, which the agent's
   worker points that variable at)
3. the package copy (``bitnet_edge/sdk/native/_lib/bitnet_edge.fatbin``)
4. a development build in the source tree (``build/cuda/bitnet_edge.fatbin``, ``make cuda``)

The device is ordinal ``$BITNET_EDGE_CUDA_DEVICE`` (default 0).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from bitnet_edge import __version__
from bitnet_edge.sdk.cuda._driver import open_driver
from bitnet_edge.sdk.cuda.runtime import Gpu
from bitnet_edge.sdk.errors import CudaUnavailable

__all__ = ["FATBIN_NAME", "HEADER_NAME", "fatbin_candidates", "header_candidates", "parse_kernels",
           "parse_plan_layout", "load_gpu", "find_fatbin", "CUDA_ABI"]

FATBIN_NAME = "bitnet_edge.fatbin"
HEADER_NAME = "bne_cuda.h"
CUDA_ABI = 3  # must equal BNE_CUDA_ABI in bne_cuda.h and the fatbin's bne_cuda_info[0]

_PKG_LIB = Path(__file__).resolve().parents[1] / "native" / "_lib"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOCK = threading.Lock()
_GPU: Gpu | None = None
_FAILED: CudaUnavailable | None = None


def fatbin_candidates() -> list[Path]:
    paths = []
    env = os.environ.get("BITNET_EDGE_CUDA_FATBIN")
    if env:
        paths.append(Path(env))
    lib = os.environ.get("BITNET_EDGE_LIBRARY")
    if lib:
        paths.append(Path(lib).parent / FATBIN_NAME)
    paths += [_PKG_LIB / FATBIN_NAME, _REPO_ROOT / "build" / "cuda" / FATBIN_NAME]
    return paths


def header_candidates() -> list[Path]:
    return [_PKG_LIB / HEADER_NAME, _REPO_ROOT / "native" / "cuda" / HEADER_NAME]


_TYPES = {"int": "int", "float": "float"}


def parse_kernels(text: str) -> dict[str, tuple[str, ...]]:
    """kernel name -> parameter kinds ("ptr", "int", "float") from the BNE_KERNELS region."""
    m = re.search(r"/\* BNE_KERNELS_BEGIN \*/(.*?)/\* BNE_KERNELS_END \*/", text, re.S)
    if not m:
        raise CudaUnavailable("version-mismatch", "bne_cuda.h has no BNE_KERNELS_BEGIN/BNE_KERNELS_END region")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    out: dict[str, tuple[str, ...]] = {}
    for name, params in re.findall(r"BNE_KERNEL\s+void\s+(\w+)\s*\((.*?)\)\s*;", body, re.S):
        kinds = []
        for p in (x.strip() for x in params.split(",")):
            if "*" in p:
                kinds.append("ptr")
            else:
                base = p.replace("const", "").split()[0]
                if base not in _TYPES:
                    raise CudaUnavailable("version-mismatch", f"{name}: parameter {p!r} is not a pointer, int or float")
                kinds.append(_TYPES[base])
        out[name] = tuple(kinds)
    if not out:
        raise CudaUnavailable("version-mismatch", "bne_cuda.h declares no kernels")
    return out


def parse_plan_layout(text: str) -> dict[str, int]:
    """The decode kernel's plan layout: ``BNE_PLAN_<NAME>`` word indices of bne_cuda.h as {name: index}."""
    return {name: int(v) for name, v in re.findall(r"^#define BNE_PLAN_(\w+) (\d+)", text, re.M)}


def find_fatbin() -> Path:
    tried = []
    for p in fatbin_candidates():
        if p.is_file():
            return p
        tried.append((str(p), "no such file"))
    raise CudaUnavailable("no-fatbin", "no CUDA fatbin found; install a bundle for this device's target, build one "
                                       "(make cuda) or set BITNET_EDGE_CUDA_FATBIN. Tried:", tried)


def _open() -> Gpu:
    drv = open_driver()  # first: "no driver" is the reason that matters on a machine without a GPU
    header = next((h for h in header_candidates() if h.is_file()), None)
    if header is None:
        raise CudaUnavailable("no-fatbin", f"{HEADER_NAME} not found", [(str(h), "missing") for h in header_candidates()])
    text = header.read_text()
    sigs = parse_kernels(text)
    path = find_fatbin()
    raw = os.environ.get("BITNET_EDGE_CUDA_DEVICE", "0").strip() or "0"
    if not raw.isdigit():
        raise CudaUnavailable("no-device", f"BITNET_EDGE_CUDA_DEVICE={raw!r} is not a device ordinal")
    return Gpu(drv, int(raw), path.read_bytes(), str(path), sigs, __version__, CUDA_ABI, parse_plan_layout(text))


def load_gpu() -> Gpu:
    """The process's GPU (opened on first use; a failure is remembered and raised again)."""
    global _GPU, _FAILED
    if _GPU is not None:
        return _GPU
    with _LOCK:
        if _GPU is not None:
            return _GPU
        if _FAILED is not None:
            raise _FAILED
        try:
            _GPU = _open()
        except CudaUnavailable as exc:
            _FAILED = exc
            raise
        return _GPU
