"""`bitnet-edge keys generate`, `package`, `inspect`, `verify` end to end."""

from __future__ import annotations

import json

import pytest
from tests.support.bundle_models import built_library, make_mlp_dir, require_toolchain
from click.testing import CliRunner
from tests.support.tools import require_tool

from bitnet_edge.cli import main


def _run(args, env=None, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if ok:
        assert res.exit_code == 0, res.output + (repr(res.exception) if res.exception else "")
    return res


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    require_toolchain("linux-x86_64")  # zig builds every target's library
    require_tool("nvcc", "nvidia-cuda-toolkit")  # the jetson bundle carries the CUDA fatbin
    built_library("linux-x86_64")
    root = tmp_path_factory.mktemp("cli")
    return dict(root=root, m1=make_mlp_dir(root / "m1"), m2=make_mlp_dir(root / "m2", change=0.07))


def test_keys_package_inspect_verify(cli_setup):
    root = cli_setup["root"]
    res = _run(["keys", "generate", "--out", root / "keys", "--json"])
    key = json.loads(res.output)
    assert (root / "keys" / "signing.key").stat().st_mode & 0o777 == 0o600
    assert len(key["key_id"]) == 64 and not key["encrypted"]
    bad = _run(["keys", "generate", "--out", root / "keys", "--json"], ok=False)
    assert bad.exit_code == 2 and json.loads(bad.output)["error"]["reason"] == "exists"

    res = _run(["package", cli_setup["m1"], "--device", "raspberry-pi-5", "--device", "jetson-orin-nano",
                "--device", "raspberry-pi-4", "--version", "1.0.0", "--key", root / "keys" / "signing.key",
                "-o", root / "dist", "--json"])
    rows = json.loads(res.output)
    assert {r["target"] for r in rows} == {"linux-aarch64", "jetson"}
    arm = next(r for r in rows if r["target"] == "linux-aarch64")
    assert arm["devices"] == ["raspberry-pi-5", "raspberry-pi-4"] and arm["ternary_bits_per_weight"] <= 1.65

    res = _run(["inspect", arm["bundle"], "--json"])
    info = json.loads(res.output)
    assert info["verified"] is False and info["release"] == 1 and info["signatures"] == [key["key_id"]]
    assert info["manifest"]["format"] == "bitnet-edge-bundle" and info["delta"] is None
    res = _run(["inspect", next(r for r in rows if r["target"] == "jetson")["bundle"]], env={"COLUMNS": "200"})
    assert "included (sm_87, sm_90, sm_110 + PTX compute_80" in res.output and "not included" not in res.output
    assert "bits/weight" in res.output

    res = _run(["verify", arm["bundle"], "--trust", root / "keys" / "signing.pub", "--json"])
    v = json.loads(res.output)
    assert v["ok"] and v["signed_by"] == [key["key_id"]] and v["contents_checked"]
    res = _run(["verify", arm["bundle"], "--trust", root / "keys" / "signing.pub"], env={"COLUMNS": "200"})
    assert res.output.startswith("OK ")

    # release 2 with a delta; the table names the ratio
    res = _run(["package", cli_setup["m2"], "--device", "raspberry-pi-5", "--version", "1.1.0",
                "--key", root / "keys" / "signing.key", "-o", root / "dist2", "--delta-from", arm["bundle"], "--json"])
    (r2,) = json.loads(res.output)
    assert r2["release"] == 2 and 0 < r2["delta_ratio"] < 0.5
    res = _run(["verify", r2["delta_bundle"], "--trust", root / "keys" / "signing.pub", "--base", arm["bundle"],
                "--json"])
    assert json.loads(res.output)["contents_checked"]
    res = _run(["inspect", r2["delta_bundle"], "--json"])
    assert json.loads(res.output)["delta"]["base_release"] == 1

    # failures: exit 2 and a typed error
    other = _run(["keys", "generate", "--out", root / "other", "--json"])
    res = _run(["verify", arm["bundle"], "--trust", json.loads(other.output)["public_key"], "--json"], ok=False)
    err = json.loads(res.output)["error"]
    assert res.exit_code == 2 and (err["type"], err["reason"], err["part"]) == ("SignatureError", "untrusted-key",
                                                                                 "signatures")
    data = bytearray(open(arm["bundle"], "rb").read())
    data[-10] ^= 0x40
    tampered = root / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    res = _run(["verify", tampered, "--trust", root / "keys" / "signing.pub", "--json"], ok=False)
    err = json.loads(res.output)["error"]
    assert (err["type"], err["part"], err["section"]) == ("IntegrityError", "section:weights.ternary",
                                                          "weights.ternary")
    res = _run(["verify", tampered, "--trust", root / "keys" / "signing.pub"], ok=False)
    assert res.exit_code == 2 and "weights.ternary" in res.output
    res = _run(["package", cli_setup["m1"], "--device", "pi-9", "--version", "1", "--key",
                root / "keys" / "signing.key", "-o", root / "x", "--json"], ok=False)
    assert json.loads(res.output)["error"]["type"] == "UnknownDevice"


def test_encrypted_key_with_passphrase(cli_setup):
    root = cli_setup["root"]
    env = {"BITNET_EDGE_KEY_PASSPHRASE": "s3cret"}
    res = _run(["keys", "generate", "--out", root / "enc", "--passphrase", "--json"], env=env)
    assert json.loads(res.output)["encrypted"]
    res = _run(["package", cli_setup["m1"], "--device", "x86-64-v3", "--version", "1.0.0", "--key",
                root / "enc" / "signing.key", "-o", root / "encdist", "--no-golden", "--json"], env=env)
    assert json.loads(res.output)[0]["target"] == "linux-x86_64"
    res = _run(["package", cli_setup["m1"], "--device", "x86-64-v3", "--version", "1.0.0", "--key",
                root / "enc" / "signing.key", "-o", root / "encdist", "--no-golden", "--json"],
               env={"BITNET_EDGE_KEY_PASSPHRASE": "wrong"}, ok=False)
    assert json.loads(res.output)["error"]["reason"] == "bad-passphrase"
