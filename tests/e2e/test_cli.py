import json
import os
import subprocess
import sys

from click.testing import CliRunner

from bitnet_edge import __version__
from bitnet_edge.cli import main
from bitnet_edge.sdk import kernels


def test_info_json_tells_the_truth():
    res = CliRunner().invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["version"] == __version__
    assert data["native"]["loaded"] and data["native"]["version"] == __version__
    assert os.path.isfile(data["native"]["path"])
    assert data["backends"]["selected"] == kernels.resolve_backend()
    assert data["backends"]["available"] == kernels.available_backends()
    cpu = open("/proc/cpuinfo").read()
    if " avx2" in cpu:
        assert "avx2" in data["cpu"]["features"]
    if " avx512_vnni" in cpu and " avx512bw" in cpu:
        assert "avx512vnni" in data["cpu"]["features"] and data["backends"]["selected"] == "avx512"
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64", "qemu-arm", "qemu-riscv64", "clang", "ld64.lld",
                 "llvm-objdump"):
        assert set(data["toolchains"][tool]) >= {"present", "path", "version", "install"}
    # which toolchain builds which bundle target: zig by default for every CPU target
    builds = {(r["target"], r["toolchain"]): r for r in data["builds"]}
    for t in ("linux-x86_64", "linux-aarch64", "linux-armv7", "linux-riscv64", "macos-arm64"):
        assert builds[(t, "zig")]["default"] and not builds[(t, "system")]["default"]
    from bitnet_edge.packagers.targets import zig_version

    assert builds[("linux-armv7", "zig")]["ready"] == (zig_version() is not None)


def test_info_table_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "bitnet_edge", "info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "selected backend" in out.stdout and "toolchains" in out.stdout and "which toolchain builds" in out.stdout


def test_selfcheck_passes():
    res = CliRunner().invoke(main, ["selfcheck", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["ok"] and {r["backend"] for r in data["backends"]} == set(kernels.available_backends())


def test_version_flag():
    res = CliRunner().invoke(main, ["--version"])
    assert __version__ in res.output
