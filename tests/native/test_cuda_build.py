"""The CUDA backend without a GPU (CI): the fatbin builds with nvcc and holds SASS for sm_87, sm_90
and sm_110 plus PTX; its entry points match bne_cuda.h; the driver declarations match the toolkit's
cuda.h; the loader and the device choice explain themselves on a machine without libcuda."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tests.support.tools import IN_CI, REPO, require_tool

from bitnet_edge import __version__
from bitnet_edge.packagers import cuda as cb
from bitnet_edge.sdk.bundle.manifest import CudaInfo
from bitnet_edge.sdk.cuda import _driver, _loader, parse_kernels, probe
from bitnet_edge.sdk.errors import BackendError, CudaUnavailable

HEADER = REPO / "native" / "cuda" / "bne_cuda.h"


def _cuobjdump() -> str:
    tool = cb.find_cuobjdump()
    if tool is None:
        msg = "cuobjdump not found; install it with: pip install nvidia-cuda-cuobjdump (or the CUDA toolkit)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)
    return tool


@pytest.fixture(scope="module")
def fatbin(tmp_path_factory) -> Path:
    require_tool("nvcc", "nvidia-cuda-toolkit")
    return cb.build_fatbin(REPO / "native", tmp_path_factory.mktemp("fatbin"))


def test_fatbin_holds_sm87_sm90_sm110_and_ptx(fatbin):
    elf, ptx = cb.fatbin_contents(fatbin, _cuobjdump())
    assert elf == ["sm_87", "sm_90", "sm_110"] and list(cb.FATBIN_ARCHS) == elf
    assert ptx == ["sm_80"] and cb.FATBIN_PTX == "compute_80"
    assert fatbin.read_bytes()[:4] == bytes.fromhex("50ed55ba")  # fatbin magic 0xBA55ED50


def test_fatbin_entry_points_match_the_header(fatbin):
    import subprocess

    ptx = subprocess.run([_cuobjdump(), "--dump-ptx", str(fatbin)], capture_output=True, text=True, check=True).stdout
    entries = {m.group(1): m.group(2) for m in re.finditer(r"\.visible \.entry (\w+)\((.*?)\)", ptx, re.S)}
    sigs = parse_kernels(HEADER.read_text())
    assert set(entries) == set(sigs)
    for name, kinds in sigs.items():
        params = re.findall(r"\.param \.(\w+)", entries[name])
        width = {"ptr": "u64", "int": "u32", "float": "f32"}
        assert [width[k] for k in kinds] == [p.replace("b32", "u32").replace("s32", "u32") for p in params], name
    for glob in ("bne_cuda_version", "bne_cuda_info", "bne_cuda_arch"):
        assert re.search(rf"\.global .*{glob}", ptx), glob
    assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in ptx and "dp4a.s32.s32" in ptx
    assert "fma.rn.f32" not in ptx.split(".entry bne_ternary_gemv")[1].split(".entry")[0]  # no contraction
    # the persistent decode kernel's GEMV phase (its epilogue) is contraction-free too
    gemv = re.search(r"\.func\s*(?:\([^)]*\)\s*)?_Z12bne_dec_gemv\w*\((.*?)^}", ptx, re.S | re.M)
    assert gemv and "dp4a" in gemv.group(1) and "fma.rn.f32" not in gemv.group(1)
    assert "cp.async.cg.shared.global" in ptx and "ld.acquire.gpu" in ptx


def test_header_versions_match_the_package():
    text = HEADER.read_text()
    assert re.search(r'#define BNE_CUDA_VERSION_STRING "([^"]+)"', text).group(1) == __version__
    assert int(re.search(r"#define BNE_CUDA_ABI (\d+)", text).group(1)) == _loader.CUDA_ABI
    assert int(re.search(r"#define BNE_CUDA_BLOCK (\d+)", text).group(1)) == 128


def test_driver_declarations_match_cuda_h():
    nvcc = require_tool("nvcc", "nvidia-cuda-toolkit")
    heads = [Path(nvcc).resolve().parent.parent / "include" / "cuda.h", Path("/usr/local/cuda/include/cuda.h")]
    heads += sorted(Path("/usr/local").glob("cuda-*/include/cuda.h"), reverse=True)
    head = next((h for h in heads if h.is_file()), None)
    if head is None:
        pytest.skip("no cuda.h beside nvcc")
    cuda_h = head.read_text(errors="replace")
    # cuda.h declares the plain names and maps them to the versioned symbols libcuda exports
    alias = {target: plain for plain, target in
             re.findall(r"#define (cu\w+)\s+(?:__CUDA_API_PT(?:DS|SZ)\()?(cu\w+)\)?\s*$", cuda_h, re.M)}
    for ret, name, params in re.findall(r"^(CUresult) (\w+)\((.*?)\);", _driver.CDEF, re.M | re.S):
        if name in _driver.LEGACY:
            continue
        base = alias.get(name, name)
        assert base != name or not name.endswith("_v2"), f"cuda.h does not map a plain name to {name}"
        m = re.search(rf"CUresult CUDAAPI {base}\((.*?)\);", cuda_h, re.S)
        assert m, f"{base} is not declared in {head}"
        n_ours = 0 if params.strip() == "void" else params.count(",") + 1
        n_theirs = 0 if m.group(1).strip() == "void" else m.group(1).count(",") + 1
        assert n_ours == n_theirs, name


def test_loader_reports_a_missing_driver_clearly(tmp_path):
    with pytest.raises(CudaUnavailable) as e:
        _driver.load_driver([str(tmp_path / "libcuda.so.1")])
    assert e.value.reason == "no-driver" and e.value.tried[0][0] == str(tmp_path / "libcuda.so.1")
    assert "BITNET_EDGE_DEVICE=cpu" in str(e.value)


def test_missing_fatbin_lists_every_path(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_EDGE_CUDA_FATBIN", str(tmp_path / "none.fatbin"))
    monkeypatch.setattr(_loader, "_PKG_LIB", tmp_path)
    monkeypatch.setattr(_loader, "_REPO_ROOT", tmp_path)
    with pytest.raises(CudaUnavailable) as e:
        _loader.find_fatbin()
    assert e.value.reason == "no-fatbin" and str(tmp_path / "none.fatbin") in [p for p, _ in e.value.tried]


def test_kernel_abi_parsing_rejects_other_parameter_types():
    ok = "/* BNE_KERNELS_BEGIN */\nBNE_KERNEL void k(const float *a, int n, float s);\n/* BNE_KERNELS_END */"
    assert parse_kernels(ok) == {"k": ("ptr", "int", "float")}
    with pytest.raises(CudaUnavailable):
        parse_kernels(ok.replace("int n", "double n"))


def test_cuda_info_needs_the_fatbin_fields_when_included():
    base = dict(archs=["sm_87"], ptx=True, note="x")
    CudaInfo(included=False, **base)
    CudaInfo(included=True, section="cuda.jetson", file="bitnet_edge.fatbin", size=1, sha256="0" * 64, **base)
    with pytest.raises(ValueError):
        CudaInfo(included=True, **base)
    with pytest.raises(ValueError):
        CudaInfo(included=False, section="cuda.jetson", **base)


@pytest.fixture
def no_gpu():
    p = probe()
    if p.available:
        pytest.skip(f"this machine has a usable GPU ({p.message})")
    return p


def test_device_choice_without_a_gpu(no_gpu, monkeypatch):
    from bitnet_edge.sdk.models.device import available_devices, resolve_device, resolve_device_reason

    assert "cuda" not in available_devices()
    monkeypatch.delenv("BITNET_EDGE_DEVICE", raising=False)
    dev, why = resolve_device_reason("cpu")
    assert dev == "cpu"
    with pytest.raises(BackendError) as e:
        resolve_device("cuda")
    assert no_gpu.reason in str(e.value)
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "gpu")
    with pytest.raises(BackendError):
        resolve_device()
    monkeypatch.setenv("BITNET_EDGE_DEVICE", "auto")
    dev, why = resolve_device_reason()
    if dev == "cpu":
        assert why.startswith(f"no CUDA ({no_gpu.reason})")


def test_decoder_falls_back_to_the_cpu_with_the_reason(no_gpu, monkeypatch, tmp_path):
    from tests.native.test_cuda_kernels import tiny_decoder_dir

    from bitnet_edge.sdk import load_model

    monkeypatch.setenv("BITNET_EDGE_DEVICE", "auto")
    monkeypatch.setattr("bitnet_edge.sdk.models.device.mlx_backend.available", lambda: False)
    m = load_model(tiny_decoder_dir(tmp_path / "m"))
    assert m.device == "cpu" and m.device_reason.startswith(f"no CUDA ({no_gpu.reason})")
    assert np.isfinite(m.logits([1, 2, 3])).all()
    with pytest.raises(BackendError):
        load_model(tmp_path / "m", device="cuda")
