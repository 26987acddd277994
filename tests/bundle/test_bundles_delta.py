"""Delta bundles: applied to their base they reconstruct the new release exactly; a wrong or
missing base is a typed error; release counters must increase."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.bundle_models import make_mlp_dir, prebuilt
from tests.support.tools import require_tool

from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.packagers.errors import PackagingError
from bitnet_edge.sdk.bundle.errors import DeltaError
from bitnet_edge.sdk.bundle.install import base_from_installed, install_bundle
from bitnet_edge.sdk.bundle.manifest import release_digest
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.bundle.verify import base_from_bundle, verify_bundle

TARGET = "linux-x86_64"
SIZES = (512, 768, 768, 16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_tool("gcc", "gcc")
    root = tmp_path_factory.mktemp("delta")
    kp = generate_keypair(root / "keys")
    key, pub = load_private_key(kp.private_path), load_public_key(kp.public_path)
    opts = PackageOptions(libraries=prebuilt([TARGET]))
    m1 = make_mlp_dir(root / "m1", SIZES)
    m2 = make_mlp_dir(root / "m2", SIZES, change=0.08)  # ~5% of the weights really change
    (r1,) = package_model(m1, ["x86-64-v4"], "1.0.0", [key], root / "v1", options=opts)
    (r2,) = package_model(m2, ["x86-64-v4"], "1.1.0", [key], root / "v2", delta_from=[r1.path], options=opts)
    return dict(root=root, key=key, pub=pub, opts=opts, m1=m1, m2=m2, r1=r1, r2=r2)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_delta_is_small_and_named_after_its_base(setup):
    r1, r2 = setup["r1"], setup["r2"]
    assert r2.manifest.release == 2 and r2.delta_path.name.endswith(".delta-from-r1.bundle")
    d = verify_bundle(r2.delta_path, [setup["pub"]]).manifest
    assert d.delta.base_release == 1 and d.delta.base_version == "1.0.0"
    assert d.delta.base_release_sha256 == verify_bundle(r1.path, [setup["pub"]]).release_sha256
    # the full and the delta bundle of release 2 name the same release
    assert verify_bundle(r2.path, [setup["pub"]]).release_sha256 == release_digest(d)
    enc = {s.name: s.encoding for s in d.sections}
    assert enc["weights.ternary"] == "trit-delta"
    assert enc["lib.linux-x86_64"] == "zstd-patch"  # unchanged: a few bytes
    assert d.section("lib.linux-x86_64").stored_size < 100
    # same release content as the full bundle, section by section
    full = r2.manifest
    assert [(s.name, s.sha256, s.size) for s in d.sections] == [(s.name, s.sha256, s.size) for s in full.sections]
    assert r2.delta_ratio < 0.35, r2.delta_ratio
    assert d.sizes.full_payload_stored_bytes == full.sizes.payload_stored_bytes > d.sizes.payload_stored_bytes


def test_delta_applied_to_its_base_reconstructs_the_release(setup, tmp_path):
    pub = setup["pub"]
    base = base_from_bundle(setup["r1"].path, [pub])
    vd = verify_bundle(setup["r2"].delta_path, [pub], base=base, keep_contents=True)
    vf = verify_bundle(setup["r2"].path, [pub], keep_contents=True)
    assert vd.deep and vd.contents == vf.contents  # the payload, byte for byte
    full = install_bundle(setup["r2"].path, tmp_path / "full", [pub])
    from_delta = install_bundle(setup["r2"].delta_path, tmp_path / "delta", [pub], base=setup["r1"].path)
    files = _files(full.path)
    assert files.pop("bundle.envelope") != _files(from_delta.path).pop("bundle.envelope")  # different signed manifests
    got = _files(from_delta.path)
    got.pop("bundle.envelope")
    assert got == files
    # the new model directory is the one that was packaged
    assert files["weights.safetensors"] == (setup["m2"] / "weights.safetensors").read_bytes()
    assert files["manifest.json"] == (setup["m2"] / "manifest.json").read_bytes()


def test_an_installed_directory_is_a_base_too(setup, tmp_path):
    pub = setup["pub"]
    v1 = install_bundle(setup["r1"].path, tmp_path / "v1", [pub])
    v2 = install_bundle(setup["r2"].delta_path, tmp_path / "v2", [pub], base=v1.path)
    assert (v2.path / "weights.safetensors").read_bytes() == (setup["m2"] / "weights.safetensors").read_bytes()
    # and the release installed from a delta is the base of the next delta
    m3 = make_mlp_dir(tmp_path / "m3", SIZES, change=0.08, seed=0)
    (r3,) = package_model(m3, ["x86-64-v4"], "1.2.0", [setup["key"]], tmp_path / "v3",
                          delta_from=[setup["r2"].path], options=setup["opts"])
    v3 = install_bundle(r3.delta_path, tmp_path / "v3i", [pub], base=v2.path)
    assert v3.manifest.release == 3
    # a changed installed file is noticed
    (v1.path / "golden.bin").write_bytes(b"\0" + (v1.path / "golden.bin").read_bytes()[1:])
    with pytest.raises(DeltaError) as e:
        base_from_installed(v1.path, [pub])
    assert e.value.reason == "base-mismatch" and e.value.part == "delta-base"


def test_wrong_or_missing_base(setup, tmp_path):
    pub = setup["pub"]
    # another release of the same model as base: refused before decoding
    other = make_mlp_dir(tmp_path / "other", SIZES, seed=5)
    (ro,) = package_model(other, ["x86-64-v4"], "1.0.0", [setup["key"]], tmp_path / "o", options=setup["opts"])
    with pytest.raises(DeltaError) as e:
        verify_bundle(setup["r2"].delta_path, [pub], base=base_from_bundle(ro.path, [pub]))
    assert e.value.reason == "base-mismatch" and e.value.expected != e.value.found
    with pytest.raises(DeltaError) as e:
        install_bundle(setup["r2"].delta_path, tmp_path / "x", [pub], base=ro.path)
    assert e.value.reason == "base-mismatch"
    with pytest.raises(DeltaError) as e:
        install_bundle(setup["r2"].delta_path, tmp_path / "y", [pub])
    assert e.value.reason == "base-required"
    with pytest.raises(DeltaError) as e:
        base_from_bundle(setup["r2"].delta_path, [pub])
    assert e.value.reason == "base-is-delta"
    # without a base, verify checks the stored bytes only and says so
    assert verify_bundle(setup["r2"].delta_path, [pub]).deep is False


def test_release_counter_must_increase(setup, tmp_path):
    with pytest.raises(PackagingError) as e:
        package_model(setup["m2"], ["x86-64-v4"], "1.1.0", [setup["key"]], tmp_path, release=1,
                      delta_from=[setup["r1"].path], options=setup["opts"])
    assert e.value.reason == "release-not-increasing"
    with pytest.raises(PackagingError) as e:
        package_model(setup["m2"], ["raspberry-pi-5"], "1.1.0", [setup["key"]], tmp_path,
                      delta_from=[setup["r1"].path], options=PackageOptions(libraries=prebuilt(["linux-aarch64"])))
    assert e.value.reason == "base-target-unused"


def test_delta_across_a_shape_change(setup, tmp_path):
    """A release with other layer sizes still round-trips (patch-from; trit-delta needs equal sizes)."""
    m = make_mlp_dir(tmp_path / "wider", (512, 800, 768, 16))
    (r,) = package_model(m, ["x86-64-v4"], "2.0.0", [setup["key"]], tmp_path / "w", delta_from=[setup["r1"].path],
                         options=setup["opts"])
    d = verify_bundle(r.delta_path, [setup["pub"]], base=base_from_bundle(setup["r1"].path, [setup["pub"]]))
    assert d.deep and d.manifest.section("weights.ternary").encoding in ("zstd-patch", "zstd")
    inst = install_bundle(r.delta_path, tmp_path / "i", [setup["pub"]], base=setup["r1"].path)
    assert (inst.path / "weights.safetensors").read_bytes() == (m / "weights.safetensors").read_bytes()


def test_trit_delta_codec_round_trip():
    from bitnet_edge.sdk.bundle import codec
    from bitnet_edge.sdk import packing

    rng = np.random.default_rng(3)
    old = rng.integers(-1, 2, (7, 333))
    new = old.copy()
    new[rng.random(new.shape) < 0.1] = 0
    a, b = packing.pack_ternary_base3(old), packing.pack_ternary_base3(new)
    td = codec.encode_trit_delta(b, a)
    assert codec.decode("t", "trit-delta", td, len(b), a) == b
    assert codec.encode_trit_delta(b, a[:-1]) is None and codec.encode_trit_delta(b"\xff" * len(a), a) is None
