"""Device profiles (devices/*.toml): every profile validates, maps to a target that fits it, and
`bitnet-edge devices` lists them."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.packagers.builder import check_library_fits
from bitnet_edge.sdk.bundle.devices import DEVICES_DIR, get_devices, load_devices
from bitnet_edge.sdk.bundle.errors import DeviceProfileError, UnknownDevice
from bitnet_edge.sdk.native.targets import TARGETS

REQUIRED = {
    "raspberry-pi-4": ("linux-aarch64", "none"),
    "raspberry-pi-5": ("linux-aarch64", "none"),
    "nxp-imx8mp": ("linux-aarch64", "none"),
    "jetson-orin-nano": ("jetson", "cuda"),
    "jetson-agx-orin": ("jetson", "cuda"),
    "jetson-thor": ("jetson", "cuda"),
    "x86-64-v3": ("linux-x86_64", "none"),
    "x86-64-v4": ("linux-x86_64", "none"),
    "apple-m": ("macos-arm64", "apple-gpu"),
    "raspberry-pi-2": ("linux-armv7", "none"),
    "raspberry-pi-3-armhf": ("linux-armv7", "none"),
    "odroid-xu4": ("linux-armv7", "none"),
    "armhf-generic": ("linux-armv7", "none"),
    "bananapi-bpi-f3": ("linux-riscv64", "none"),
    "visionfive-2": ("linux-riscv64", "none"),
}


def test_every_required_profile_is_there_with_its_target():
    profiles = load_devices()
    assert set(REQUIRED) <= set(profiles)
    for name, (target, accel) in REQUIRED.items():
        assert profiles[name].target == target, name
        assert profiles[name].accelerator.kind == accel, name


def test_isa_facts():
    p = load_devices()
    assert "dotprod" not in p["raspberry-pi-4"].isa_required + p["raspberry-pi-4"].isa_optional
    assert "dotprod" in p["raspberry-pi-5"].isa_required
    assert "dotprod" not in p["nxp-imx8mp"].isa_required
    assert p["jetson-orin-nano"].accelerator.cuda_arch == "sm_87"
    assert p["jetson-agx-orin"].accelerator.cuda_arch == "sm_87"
    assert p["jetson-thor"].accelerator.cuda_arch == "sm_110"
    assert "avx2" in p["x86-64-v3"].isa_required and "avx512f" not in p["x86-64-v3"].isa_required
    assert {"avx512f", "avx512bw", "avx512vl"} <= set(p["x86-64-v4"].isa_required)
    assert p["apple-m"].os == "macos"
    # 32-bit ARM: NEON where the board has it, none promised by the generic armhf floor
    assert all("neon" in p[n].isa_required for n in ("raspberry-pi-2", "raspberry-pi-3-armhf", "odroid-xu4"))
    assert "neon" in p["armhf-generic"].isa_optional and p["armhf-generic"].isa_required == ["vfpv3"]
    assert "Cortex-A7" in p["raspberry-pi-2"].cpu and "Cortex-A15" in p["odroid-xu4"].cpu
    # RISC-V: the K1 has V 1.0 with VLEN 256, the JH7110 no vector unit
    assert {"v", "zvl256b"} <= set(p["bananapi-bpi-f3"].isa_required) and "X60" in p["bananapi-bpi-f3"].cpu
    assert "v" not in p["visionfive-2"].isa_required + p["visionfive-2"].isa_optional


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_target_library_loads_on_the_device(name):
    p = load_devices()[name]
    assert check_library_fits(p, p.target) == []
    t = TARGETS[p.target]
    assert (t.os, {"arm64": "aarch64"}.get(t.arch, t.arch)) == (p.os, p.arch)
    if p.accelerator.kind == "cuda":
        assert p.accelerator.cuda_arch in t.cuda_archs


def test_unknown_field_and_bad_values_are_typed_errors(tmp_path):
    d = tmp_path / "devices"
    d.mkdir()
    src = (DEVICES_DIR / "raspberry-pi-5.toml").read_text()
    (d / "raspberry-pi-5.toml").write_text(src.replace('name = "raspberry-pi-5"', 'name = "raspberry-pi-5"\ncolour = 1'))
    with pytest.raises(DeviceProfileError) as e:
        load_devices(d)
    assert "colour" in e.value.detail and e.value.path.endswith("raspberry-pi-5.toml")

    (d / "raspberry-pi-5.toml").write_text(src.replace('target = "linux-aarch64"', 'target = "linux-x86_64"'))
    with pytest.raises(DeviceProfileError, match="builds for linux/x86_64"):
        load_devices(d)

    (d / "raspberry-pi-5.toml").write_text(src.replace('"dotprod"', '"dotprot"'))
    with pytest.raises(DeviceProfileError, match="isa_required"):
        load_devices(d)

    (d / "raspberry-pi-5.toml").write_text(src.replace('kind = "none"', 'kind = "cuda"'))
    with pytest.raises(DeviceProfileError, match="cuda_arch"):
        load_devices(d)

    (d / "raspberry-pi-5.toml").write_text("name = [")
    with pytest.raises(DeviceProfileError, match="unreadable TOML"):
        load_devices(d)

    (d / "raspberry-pi-5.toml").unlink()
    shutil.copy(DEVICES_DIR / "apple-m.toml", d / "apple-m2.toml")
    with pytest.raises(DeviceProfileError, match="differs from the file name"):
        load_devices(d)


def test_unknown_device_names_the_known_ones():
    with pytest.raises(UnknownDevice) as e:
        get_devices(["raspberry-pi-9"])
    assert e.value.name == "raspberry-pi-9" and "raspberry-pi-5" in e.value.known


def test_devices_command(monkeypatch):
    res = CliRunner().invoke(main, ["devices", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(REQUIRED) <= set(rows)
    assert rows["jetson-thor"]["accelerator"] == {"kind": "cuda", "cuda_arch": "sm_110"}
    res = CliRunner().invoke(main, ["devices"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "raspberry-pi-4" in res.output and "macos-arm64" in res.output


def test_devices_command_says_which_toolchain_builds_what(monkeypatch):
    from bitnet_edge.packagers import targets

    res = CliRunner().invoke(main, ["devices", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    pi2, k1, jet = rows["raspberry-pi-2"]["build"], rows["bananapi-bpi-f3"]["build"], rows["jetson-thor"]["build"]
    assert pi2["default"] == "zig" and pi2["zig"]["compiler"] == "zig cc -target arm-linux-gnueabihf.2.17"
    assert pi2["system"]["compiler"] == "arm-linux-gnueabihf-gcc"
    assert k1["zig"]["compiler"] == "zig cc -target riscv64-linux-gnu.2.27"
    assert jet["library_target"] == "linux-aarch64"
    assert rows["apple-m"]["build"]["zig"]["threads"] and not rows["apple-m"]["build"]["system"]["threads"]
    # without zig installed the table says so, with the command that installs it
    monkeypatch.setattr(targets, "zig_command", lambda: None)
    res = CliRunner().invoke(main, ["devices", "--json"])
    pi2 = {r["name"]: r for r in json.loads(res.output)}["raspberry-pi-2"]["build"]["zig"]
    assert not pi2["ready"] and pi2["missing"] == [targets.ZIG_INSTALL]
    res = CliRunner().invoke(main, ["devices"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "which toolchain builds what" in res.output and "missing" in res.output
    assert "linux-riscv64" in res.output and "linux-armv7" in res.output
