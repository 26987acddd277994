"""One pip-installed toolchain builds every CPU target: ``bitnet-edge package`` with PATH stripped of
every compiler (no gcc, no apt cross compiler, no clang, no linker) builds bundles for x86-64,
raspberry-pi-5 (aarch64), a Mac (arm64), a Raspberry Pi 2 (armv7) and a Banana Pi BPI-F3 (riscv64)
with zig from the ziglang wheel alone; ``bitnet-edge inspect`` shows each library's architecture,
the bytes agree, a second run gives byte-identical bundles, and the armv7 and riscv64 libraries
taken out of their bundles run the kernel test vectors bit-exact under qemu.

The shared test venv stands in for a fresh ``pip install '.[builder]'`` (ziglang is in both
extras); the install itself is tested by the fresh-venv install tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from tests.support import qemu as Q
from tests.support.bundle_models import make_mlp_dir
from tests.support.kernel_vectors import QEMU_TIMEOUT, check_run

from bitnet_edge.packagers.keys import generate_keypair
from bitnet_edge.packagers.targets import zig_version
from bitnet_edge.sdk.bundle.install import install_bundle
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.bundle.verify import verify_bundle
from bitnet_edge.sdk.native.targets import binary_kind

pytestmark = pytest.mark.toolchain

#: device -> (bundle target, the architecture inspect must show)
DEVICES = {
    "x86-64-v3": ("linux-x86_64", "elf/x86-64"),
    "raspberry-pi-5": ("linux-aarch64", "elf/aarch64"),
    "apple-m": ("macos-arm64", "mach-o/arm64"),
    "raspberry-pi-2": ("linux-armv7", "elf/arm"),
    "bananapi-bpi-f3": ("linux-riscv64", "elf/riscv64"),
}
#: what must not be reachable on the stripped PATH
COMPILERS = ("gcc", "cc", "clang", "aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc", "riscv64-linux-gnu-gcc",
             "ld", "ld.lld", "ld64.lld", "zig")


def _stripped_env(tmp) -> dict:
    """The environment of a builder that has Python and the package, and no compiler on PATH."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_EDGE_CC", "BITNET_EDGE_TOOLCHAIN",
                                                                       "BITNET_EDGE_ZIG", "CC", "CFLAGS"))}
    env.update(PATH=str(bin_dir), SOURCE_DATE_EPOCH="1700000000", COLUMNS="200")
    for c in COMPILERS:
        assert shutil.which(c, path=env["PATH"]) is None, c
    return env


def _cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    Q.require_zig()
    root = tmp_path_factory.mktemp("every-target")
    env = _stripped_env(root)
    kp = generate_keypair(root / "keys")
    model = make_mlp_dir(root / "mlp", sizes=(200, 96, 10))
    device_args = [a for d in DEVICES for a in ("--device", d)]
    runs = []
    for out in ("dist", "again"):
        proc = _cli(env, "package", model, *device_args, "--version", "1.0.0", "--key", kp.private_path,
                    "-o", root / out, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs.append({r["target"]: r for r in json.loads(proc.stdout)})
    return dict(root=root, env=env, pub=load_public_key(kp.public_path), rows=runs[0], again=runs[1])


def test_package_builds_every_cpu_target_with_zig_alone(packaged):
    rows = packaged["rows"]
    assert set(rows) == {t for t, _ in DEVICES.values()}
    version = zig_version()
    for device, (target, arch) in DEVICES.items():
        r = rows[target]
        assert r["devices"] == [device] and r["library"] == arch
        assert r["toolchain"]["name"] == "zig" and r["toolchain"]["version"] == version


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_inspect_shows_the_right_architecture(packaged, device):
    target, arch = DEVICES[device]
    bundle = packaged["rows"][target]["bundle"]
    proc = _cli(packaged["env"], "inspect", bundle, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    (lib,) = info["libraries"]
    assert (lib["target"], lib["binary"]) == (target, arch)
    assert info["toolchain"]["name"] == "zig" and info["toolchain"]["target"]
    table = _cli(packaged["env"], "inspect", bundle)
    assert table.returncode == 0 and arch in table.stdout and f"zig {zig_version()}" in table.stdout
    # the bytes say the same as the manifest
    vb = verify_bundle(bundle, [packaged["pub"]], keep_contents=True)
    lib_bytes = vb.contents[f"lib.{target}"]
    assert "/".join(binary_kind(lib_bytes[:64])) == arch


def test_bundles_are_reproducible(packaged):
    """Same inputs, same toolchain version, SOURCE_DATE_EPOCH set: the same bytes, signature included."""
    for target, r in packaged["rows"].items():
        again = packaged["again"][target]
        with open(r["bundle"], "rb") as a, open(again["bundle"], "rb") as b:
            assert a.read() == b.read(), target


@pytest.mark.parametrize("target,cpu,best", [("linux-armv7", "cortex-a7", "neon"),
                                             ("linux-riscv64", "rv64,v=true,vlen=256", "rvv")])
def test_bundled_library_runs_bit_exact_under_qemu(packaged, kernel_vectors, tmp_path, target, cpu, best):
    arch = Q.ARCHES[target]
    Q.require_arch(arch)
    inst = install_bundle(packaged["rows"][target]["bundle"], tmp_path / "m", [packaged["pub"]], check_host=False)
    linked = Q.build_linked(arch, "harness.c", tmp_path, library=inst.library)
    vin, cases = kernel_vectors
    vout = tmp_path / "results.bner"
    proc = Q.run(arch, linked.exe, cpu, vin, vout, timeout=QEMU_TIMEOUT)
    check_run(proc, vout, cases, target=arch.library_target, best=best, backends=["auto", "ref", best])
    assert str(inst.library) in Q.loaded_objects(arch, linked.exe)
