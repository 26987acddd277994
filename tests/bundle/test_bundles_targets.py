"""Cross builds of the kernel library for every bundle target, from this Linux host, with the
default toolchain (zig, the ziglang wheel) and with the system one (apt compilers): ELF machine
of the Linux libraries (readelf), an ARM64 Mach-O dylib with an ad-hoc code signature for macOS
(llvm-objdump), reproducible bytes (another checkout path, another zig cache), and a missing
toolchain named with how to install it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from tests.support.bundle_models import LIB_TARGETS, NATIVE, SYSTEM_TOOLS, built_library, require_toolchain
from tests.support.tools import REPO, require_tool

from bitnet_edge.packagers import targets
from bitnet_edge.packagers.errors import BuildFailed, PackagerError, ToolchainMissing, UnknownTarget, UnknownToolchain
from bitnet_edge.packagers.targets import build_library, get_target
from bitnet_edge.sdk.native.targets import TARGETS, binary_kind

pytestmark = pytest.mark.toolchain

ELF = [("linux-x86_64", "X86-64", "zig"), ("linux-aarch64", "AArch64", "zig"), ("linux-armv7", "ARM", "zig"),
       ("linux-riscv64", "RISC-V", "zig"), ("linux-x86_64", "X86-64", "system"),
       ("linux-aarch64", "AArch64", "system")]
BUILDS = [(t, "zig") for t in LIB_TARGETS] + [(t, "system") for t in sorted(SYSTEM_TOOLS)]


@pytest.mark.parametrize("target,machine,toolchain", ELF, ids=[f"{t}-{tc}" for t, _, tc in ELF])
def test_linux_library_elf_machine(target, machine, toolchain):
    require_toolchain(target, toolchain)
    readelf = require_tool("readelf", "binutils")
    lib = built_library(target, toolchain)
    out = subprocess.run([readelf, "-h", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "DYN (Shared object file)" in out or "DYN (Position-Independent" in out
    assert f"Machine:                           {machine}" in out.replace("Advanced Micro Devices ", "")
    assert binary_kind(lib.read_bytes()[:64]) == ("elf", {"X86-64": "x86-64", "AArch64": "aarch64", "ARM": "arm",
                                                          "RISC-V": "riscv64"}[machine])
    syms = subprocess.run([readelf, "--dyn-syms", "-W", str(lib)], capture_output=True, text=True).stdout
    assert " bne_version" in syms and " bne_ternary_gemm_f32" in syms
    assert " bne_detect_cpu" not in syms  # internal symbols stay hidden
    if toolchain == "zig":  # the glibc floor: nothing newer than 2.17 (riscv64: 2.27, its first glibc)
        floor = (2, 27) if target == "linux-riscv64" else (2, 17)
        versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9]+\.[0-9]+)", syms)}
        assert versions and max(versions) <= floor, versions
        dyn = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True).stdout
        assert "libpthread.so.0" in dyn or "libc.so.6" in dyn


def test_zig_libraries_carry_no_paths_and_no_debug_info():
    require_toolchain("linux-x86_64", "zig")
    for t in LIB_TARGETS:
        data = built_library(t, "zig").read_bytes()
        assert str(REPO).encode() not in data and b"/native/src" not in data, t
        assert b".debug_info" not in data and b"__debug_info" not in data, t


def test_macos_zig_library_is_a_signed_arm64_dylib_with_threads():
    require_toolchain("macos-arm64", "zig")
    objdump = require_tool("llvm-objdump", "llvm")
    lib = built_library("macos-arm64", "zig")
    assert lib.name == "libbitnet_edge.dylib"
    out = subprocess.run([objdump, "--macho", "--private-headers", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    header = out.splitlines()[out.splitlines().index("Mach header") + 2].split()
    assert header[0] == "MH_MAGIC_64" and header[1] == "ARM64" and header[4] == "DYLIB"
    assert "cmd LC_CODE_SIGNATURE" in out  # Apple Silicon refuses unsigned code
    assert "@rpath/libbitnet_edge.dylib" in out  # LC_ID_DYLIB
    assert "/usr/lib/libSystem.B.dylib" in out  # a normal dylib: libc and pthreads from libSystem
    nm = require_tool("llvm-nm", "llvm")
    undef = subprocess.run([nm, "-u", str(lib)], capture_output=True, text=True, check=True).stdout.split()
    assert "_pthread_create" in undef  # the worker pool runs on real threads (no BNE_NO_THREADS)
    syms = subprocess.run([objdump, "--macho", "--exports-trie", str(lib)], capture_output=True, text=True).stdout
    assert "_bne_version" in syms and "_bne_ternary_gemm_f32" in syms and "_bne_detect_cpu" not in syms


def test_macos_system_library_is_a_freestanding_signed_dylib():
    require_toolchain("macos-arm64", "system")
    objdump = require_tool("llvm-objdump", "llvm")
    lib = built_library("macos-arm64", "system")
    out = subprocess.run([objdump, "--macho", "--private-headers", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    assert "cmd LC_CODE_SIGNATURE" in out and "@rpath/libbitnet_edge.dylib" in out
    assert "NOUNDEFS" in out and "libSystem" not in out  # freestanding: needs nothing from libSystem


def test_jetson_uses_the_aarch64_cpu_library_and_carries_cuda(tmp_path):
    require_toolchain("linux-aarch64", "zig")
    t = get_target("jetson")
    assert t.cpu_library_target == "linux-aarch64" and t.cuda_archs == ("sm_87", "sm_110") and t.cuda_kernels
    lib = build_library("jetson", NATIVE, tmp_path)
    assert lib.read_bytes() == built_library("linux-aarch64", "zig").read_bytes()


#: one ELF and one Mach-O build per toolchain: what keeps paths out of the bytes is the toolchain's
#: flags, the same for every ELF target of it (the other ELF targets' zig builds are compared with a
#: cold cache below and by the packaging tests); each build here costs ~11 s of the CI's 20 minutes
REPRO = [(t, tc) for t, tc in BUILDS if t in ("linux-x86_64", "macos-arm64")]


@pytest.mark.parametrize("lib_target,toolchain", REPRO, ids=[f"{t}-{tc}" for t, tc in REPRO])
def test_library_builds_are_reproducible_from_another_checkout(lib_target, toolchain, tmp_path):
    """Same sources, another path: the same bytes (no paths, no build ids, no timestamps)."""
    require_toolchain(lib_target, toolchain)
    copy = tmp_path / "elsewhere" / "native"
    shutil.copytree(NATIVE, copy)
    again = build_library(lib_target, copy, tmp_path / "again", toolchain=toolchain)
    assert again.read_bytes() == built_library(lib_target, toolchain).read_bytes()


def test_zig_build_does_not_depend_on_its_cache(tmp_path, monkeypatch):
    """A cold zig cache elsewhere gives the same library bytes as the warm one."""
    require_toolchain("linux-armv7", "zig")
    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(tmp_path / "zig-cache"))
    cold = build_library("linux-armv7", NATIVE, tmp_path / "cold")
    assert (tmp_path / "zig-cache").is_dir()
    assert cold.read_bytes() == built_library("linux-armv7", "zig").read_bytes()


def test_missing_linker_names_the_package(tmp_path, monkeypatch):
    real = targets.find_tool
    monkeypatch.setattr(targets, "find_tool", lambda name: None if name == "ld64.lld" else real(name))
    with pytest.raises(ToolchainMissing) as e:
        build_library("macos-arm64", NATIVE, tmp_path, toolchain="system")
    assert (e.value.tool, e.value.package) == ("ld64.lld", "lld")
    assert "apt-get install lld" in str(e.value)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_missing_system_compiler_names_the_package(target, tmp_path):
    with pytest.raises(ToolchainMissing) as e:
        build_library(target, NATIVE, tmp_path, cc="no-such-compiler-xyz")
    assert e.value.package == TARGETS[TARGETS[target].cpu_library_target].system.package
    assert isinstance(e.value, PackagerError) and isinstance(e.value, RuntimeError)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_missing_zig_says_how_to_install_it(target, tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "zig_command", lambda: None)
    with pytest.raises(ToolchainMissing) as e:
        build_library(target, NATIVE, tmp_path)
    assert e.value.tool == "zig" and e.value.package == "ziglang"
    assert "pip install 'bitnet-edge[builder]'" in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_toolchain_choice(monkeypatch):
    monkeypatch.delenv("BITNET_EDGE_TOOLCHAIN", raising=False)
    assert targets.resolve_toolchain() == "zig"
    assert targets.resolve_toolchain(cc="gcc") == "system"  # a forced compiler is a system build
    monkeypatch.setenv("BITNET_EDGE_TOOLCHAIN", "system")
    assert targets.resolve_toolchain() == "system" and targets.resolve_toolchain("zig") == "zig"
    with pytest.raises(UnknownToolchain, match="unknown toolchain 'msvc'; known: zig, system"):
        targets.resolve_toolchain("msvc")


def test_a_library_for_the_wrong_machine_is_caught(tmp_path, monkeypatch):
    """E.g. $BITNET_EDGE_CC set to the host compiler while building another target."""
    require_toolchain("linux-x86_64", "zig")
    monkeypatch.setitem(targets._EXPECTED_KIND, ("linux", "x86_64"), ("elf", "aarch64"))
    with pytest.raises(BuildFailed, match="produced \\('elf', 'x86-64'\\), expected \\('elf', 'aarch64'\\)"):
        build_library("linux-x86_64", NATIVE, tmp_path)
    assert not (tmp_path / "libbitnet_edge.so").exists()


def test_toolchain_status_covers_every_library_target():
    rows = targets.toolchain_status()
    assert {(r["target"], r["toolchain"]) for r in rows} == {(t, tc) for t in LIB_TARGETS for tc in ("zig", "system")}
    mac = {r["toolchain"]: r for r in rows if r["target"] == "macos-arm64"}
    assert mac["zig"]["threads"] and not mac["system"]["threads"] and mac["zig"]["default"]
    arm = next(r for r in rows if r["target"] == "linux-armv7" and r["toolchain"] == "zig")
    assert arm["compiler"] == "zig cc -target arm-linux-gnueabihf.2.17"


def test_binary_kind():
    assert binary_kind(b"\x7fELF\x02\x01\x01" + bytes(11) + b"\xb7\x00") == ("elf", "aarch64")
    assert binary_kind(b"\x7fELF\x01\x01\x01" + bytes(11) + b"\x28\x00") == ("elf", "arm")
    assert binary_kind(b"\x7fELF\x02\x01\x01" + bytes(11) + b"\xf3\x00") == ("elf", "riscv64")
    assert binary_kind(b"\x7fELF\x01\x01\x01" + bytes(11) + b"\xf3\x00") == ("elf", "riscv32")
    assert binary_kind(b"\xcf\xfa\xed\xfe\x0c\x00\x00\x01") == ("mach-o", "arm64")
    assert binary_kind(b"MZ") == ("unknown", "unknown")


def test_unknown_target():
    with pytest.raises(UnknownTarget) as e:
        build_library("windows-x86_64", NATIVE, "/nonexistent")
    assert "linux-aarch64" in e.value.known and "linux-riscv64" in e.value.known and isinstance(e.value, KeyError)
