"""The agent's probe on 32-bit ARM and RISC-V: platform.machine() spellings map to the profile
arch and the library target, /proc/cpuinfo's RISC-V ISA line gives the profile's extensions, and
the most specific profile of the right arch wins."""

from __future__ import annotations

import pytest

from bitnet_edge.agent import probe
from bitnet_edge.sdk.native import targets
from bitnet_edge.sdk.wire.protocol import Capabilities


@pytest.mark.parametrize("machine,arch,target", [("armv7l", "armv7", "linux-armv7"),
                                                 ("armv8l", "armv7", "linux-armv7"),
                                                 ("riscv64", "riscv64", "linux-riscv64"),
                                                 ("aarch64", "aarch64", "linux-aarch64"),
                                                 ("x86_64", "x86_64", "linux-x86_64")])
def test_machine_spellings(monkeypatch, machine, arch, target):
    assert probe.profile_arch(machine) == arch
    monkeypatch.setattr(targets.platform, "machine", lambda: machine)
    monkeypatch.setattr(targets.platform, "system", lambda: "Linux")
    assert targets.host_target() == target and target in targets.TARGETS


def test_riscv_isa_line():
    assert probe._riscv_isa("rv64imafdcv_zicbom_zicboz_zba_zbb_zbc_zbs_zvl256b") == {"v", "zba", "zbb", "zvl256b"}
    assert probe._riscv_isa("rv64imafdc_zicntr_zba_zbb") == {"zba", "zbb"}  # JH7110: no V
    assert probe._riscv_isa("garbage") == set()


def _caps(arch: str, feats: list[str], target: str) -> Capabilities:
    return Capabilities(arch=arch, os="linux", cpu_features=feats, backends=["ref"], memory_mb=2048,
                        disk_free_mb=4096, cuda_sm=None, apple_gpu=False, target=target, agent_version="0",
                        runtimes=["cpu"])


def test_the_most_specific_profile_of_the_arch_wins():
    k1 = probe.match_profile(_caps("riscv64", ["v", "zba", "zbb", "zvl256b"], "linux-riscv64"))
    assert k1.name == "bananapi-bpi-f3"
    assert probe.match_profile(_caps("riscv64", ["zba", "zbb"], "linux-riscv64")).name == "visionfive-2"
    pi = probe.match_profile(_caps("armv7l", ["neon", "vfpv3", "vfpv4"], "linux-armv7"))
    assert pi.arch == "armv7" and "neon" in pi.isa_required
    assert probe.match_profile(_caps("armv7l", ["vfpv3"], "linux-armv7")).name == "armhf-generic"
