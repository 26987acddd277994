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
    assert "colour" in e.value.problem and e.value.path.endswith("raspberry-pi-5.toml")

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
