"""Cross builds of the kernel library for every bundle target, from this Linux host: ELF machine
of the Linux libraries (readelf), an ARM64 Mach-O dylib with an ad-hoc code signature for macOS
(llvm-objdump), reproducible bytes, and a missing toolchain named with its package."""

from __future__ import annotations

import subprocess

import pytest
from tests.support.bundle_models import NATIVE, TOOLS, built_library
from tests.support.tools import require_tool

from bitnet_edge.packagers import targets
from bitnet_edge.packagers.errors import BuildFailed, ToolchainMissing, UnknownTarget
from bitnet_edge.sdk.bundle.errors import PackagerError
from bitnet_edge.packagers.targets import build_library, get_target
from bitnet_edge.sdk.native.targets import TARGETS, binary_kind

pytestmark = pytest.mark.toolchain


def _need(lib_target: str) -> None:
    for tool, pkg in TOOLS[lib_target]:
        require_tool(tool, pkg)


@pytest.mark.parametrize("target,machine", [("linux-x86_64", "X86-64"), ("linux-aarch64", "AArch64")])
def test_linux_library_elf_machine(target, machine):
    _need(target)
    readelf = require_tool("readelf", "binutils")
    lib = built_library(target)
    out = subprocess.run([readelf, "-h", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "DYN (Shared object file)" in out or "DYN (Position-Independent" in out
    assert f"Machine:                           {machine}" in out.replace("Advanced Micro Devices ", "")
    assert binary_kind(lib.read_bytes()[:64]) == ("elf", machine.lower())
    syms = subprocess.run([readelf, "--dyn-syms", "-W", str(lib)], capture_output=True, text=True).stdout
    assert " bne_version" in syms and " bne_ternary_gemm_f32" in syms
    assert " bne_detect_cpu" not in syms  # internal symbols stay hidden


def test_macos_library_is_signed_arm64_dylib():
    _need("macos-arm64")
    objdump = require_tool("llvm-objdump", "llvm")
    lib = built_library("macos-arm64")
    assert lib.name == "libbitnet_edge.dylib"
    out = subprocess.run([objdump, "--macho", "--private-headers", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    header = out.splitlines()[out.splitlines().index("Mach header") + 2].split()
    assert header[0] == "MH_MAGIC_64" and header[1] == "ARM64" and header[4] == "DYLIB"
    assert "cmd LC_CODE_SIGNATURE" in out
    assert "@rpath/libbitnet_edge.dylib" in out  # LC_ID_DYLIB
    assert "NOUNDEFS" in out  # freestanding: needs nothing from libSystem
    syms = subprocess.run([objdump, "--macho", "--exports-trie", str(lib)], capture_output=True, text=True).stdout
    assert "_bne_version" in syms and "_bne_ternary_gemm_f32" in syms and "_bne_detect_cpu" not in syms


def test_jetson_uses_the_aarch64_cpu_library_and_carries_cuda(tmp_path):
    _need("linux-aarch64")
    t = get_target("jetson")
    assert t.cpu_library_target == "linux-aarch64" and t.cuda_archs == ("sm_87", "sm_110") and t.cuda_kernels
    lib = build_library("jetson", NATIVE, tmp_path)
    assert lib.read_bytes() == built_library("linux-aarch64").read_bytes()


@pytest.mark.parametrize("lib_target", sorted(TOOLS))
def test_library_builds_are_reproducible(lib_target, tmp_path):
    _need(lib_target)
    again = build_library(lib_target, NATIVE, tmp_path / "again")
    assert again.read_bytes() == built_library(lib_target).read_bytes()


def test_missing_linker_names_the_package(tmp_path, monkeypatch):
    real = targets.find_tool
    monkeypatch.setattr(targets, "find_tool", lambda name: None if name == "ld64.lld" else real(name))
    with pytest.raises(ToolchainMissing) as e:
        build_library("macos-arm64", NATIVE, tmp_path)
    assert (e.value.tool, e.value.package) == ("ld64.lld", "lld")
    assert "apt-get install lld" in str(e.value)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_missing_compiler_names_the_package(target, tmp_path):
    with pytest.raises(ToolchainMissing) as e:
        build_library(target, NATIVE, tmp_path, cc="no-such-compiler-xyz")
    assert e.value.package == TARGETS[TARGETS[target].cpu_library_target].apt_package
    assert isinstance(e.value, PackagerError) and isinstance(e.value, RuntimeError)


def test_a_library_for_the_wrong_machine_is_caught(tmp_path, monkeypatch):
    """E.g. $BITNET_EDGE_CC set to the host compiler while building another target."""
    require_tool("gcc", "gcc")
    monkeypatch.setitem(targets._EXPECTED_KIND, ("linux", "x86_64"), ("elf", "aarch64"))
    with pytest.raises(BuildFailed, match="produced \\('elf', 'x86-64'\\), expected \\('elf', 'aarch64'\\)"):
        build_library("linux-x86_64", NATIVE, tmp_path)
    assert not (tmp_path / "libbitnet_edge.so").exists()


def test_binary_kind():
    assert binary_kind(b"\x7fELF\x02\x01\x01" + bytes(11) + b"\xb7\x00") == ("elf", "aarch64")
    assert binary_kind(b"\xcf\xfa\xed\xfe\x0c\x00\x00\x01") == ("mach-o", "arm64")
    assert binary_kind(b"MZ") == ("unknown", "unknown")


def test_unknown_target():
    with pytest.raises(UnknownTarget) as e:
        build_library("windows-x86_64", NATIVE, "/nonexistent")
    assert "linux-aarch64" in e.value.known and isinstance(e.value, KeyError)
