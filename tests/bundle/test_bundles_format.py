"""Bundles: build, verify, the streamable layout, tampering, truncation, keys, versions,
bits per weight on the wire and reproducibility."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct

import numpy as np
import pytest
from tests.support.bundle_models import make_mlp_dir, prebuilt
from tests.support.tools import require_tool

from bitnet_edge.sdk.bundle import container
from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.sdk.bundle.container import CONTAINER_VERSION, Envelope, encode_envelope, signed_message
from bitnet_edge.packagers.errors import PackagingError
from bitnet_edge.sdk.bundle.errors import (
    BundleError,
    BundleFormatError,
    IntegrityError,
    KeyFileError,
    SignatureError,
    TruncatedBundle,
    UnsupportedVersion,
)
from bitnet_edge.sdk.bundle.manifest import BundleManifest, canonical_json, parse_manifest
from bitnet_edge.packagers.keys import generate_keypair, load_private_key, sign
from bitnet_edge.sdk.bundle.signing import key_id, load_public_key
from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle
from bitnet_edge.sdk import packing

TARGET = "linux-x86_64"


class Keys:
    def __init__(self, root):
        self.root = root

    def pair(self, name):
        if not (self.root / f"{name}.key").exists():
            generate_keypair(self.root, name)
        return load_private_key(self.root / f"{name}.key"), load_public_key(self.root / f"{name}.pub")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_mlp_dir(tmp_path_factory.mktemp("model") / "mlp")


@pytest.fixture(scope="module")
def bundle(model, keys, tmp_path_factory):
    require_tool("gcc", "gcc")
    key, _ = keys.pair("signing")
    (r,) = package_model(model, ["x86-64-v3", "x86-64-v4"], "1.0.0", [key], tmp_path_factory.mktemp("dist"),
                         options=PackageOptions(libraries=prebuilt([TARGET])))
    return r


def _regions(data: bytes) -> dict[str, tuple[int, int]]:
    env = container.read_envelope(io.BytesIO(data))
    m = parse_manifest(env.manifest_bytes)
    mlen = len(env.manifest_bytes)
    regions = {
        "header": (0, 16),
        "manifest": (16, 16 + mlen),
        "signature-length": (16 + mlen, 20 + mlen),
        "signatures": (20 + mlen, env.payload_offset),
    }
    for s in m.sections:
        regions[f"section:{s.name}"] = (env.payload_offset + s.offset, env.payload_offset + s.offset + s.stored_size)
    return regions


def test_round_trip_and_layout(bundle, keys):
    _, pub = keys.pair("signing")
    data = bundle.path.read_bytes()
    assert data[:8] == b"BNEBNDL1" and struct.unpack_from("<I", data, 8)[0] == 1
    vb = verify_bundle(bundle.path, [pub])
    assert vb.deep and vb.file_size == len(data) == bundle.size
    m = vb.manifest
    assert m == bundle.manifest
    assert (m.name, m.version, m.release, m.target) == ("test-mlp", "1.0.0", 1, TARGET)
    assert [d.name for d in m.devices] == ["x86-64-v3", "x86-64-v4"]
    assert m.model.config.architecture == "mlp" and m.model.precision
    assert [s.name for s in m.sections] == ["lib.linux-x86_64", "golden", "weights.dense", "weights.ternary"]
    lib = m.libraries[0]
    assert lib.binary == "elf/x86-64" and {b.name for b in lib.backends} == {"ref", "avx2", "avx512"}
    assert m.build.toolchains["cc"].startswith("gcc: ") and len(m.build.source_sha256) == 64
    assert m.golden is not None and m.golden.method == "predict"
    assert m.cuda is None and m.delta is None
    # canonical form is a fixed point, and the manifest's bytes are what was signed
    assert canonical_json(m) == vb.envelope.manifest_bytes
    # the tensor table's hashes are of the wire bytes
    t0 = m.tensors[0]
    assert t0.format == "ternary-base3" and t0.length == -(-t0.shape[0] * t0.shape[1] // 5)
    # verification accepts bytes and streams as well as paths
    assert verify_bundle(data, [pub]).manifest_sha256 == verify_bundle(io.BytesIO(data), [pub]).manifest_sha256


def test_bits_per_ternary_weight_on_the_wire(bundle):
    s = bundle.manifest.sizes
    sec = bundle.manifest.section("weights.ternary")
    assert s.ternary_weights == sum(int(np.prod(t.shape)) for t in bundle.manifest.tensors
                                    if t.format == "ternary-base3")
    assert s.ternary_bits_per_weight == pytest.approx(8 * sec.stored_size / s.ternary_weights)
    assert s.ternary_bits_per_weight <= 1.65


def test_reader_rejects_before_reading_the_payload(bundle, keys):
    """The envelope alone decides on signature and manifest: a stream that holds only the envelope
    (the payload not yet downloaded) already fails on a wrong key, and succeeds up to the payload."""
    data = bundle.path.read_bytes()
    env = container.read_envelope(io.BytesIO(data))
    head = data[:env.payload_offset]
    _, other = keys.pair("other")
    with pytest.raises(SignatureError) as e:
        verify_bundle(head, [other])
    assert e.value.reason == "untrusted-key"
    _, pub = keys.pair("signing")
    with pytest.raises(TruncatedBundle) as e:
        verify_bundle(head, [pub])
    assert e.value.part == "section:lib.linux-x86_64" and e.value.got == 0


def _flip_positions(lo: int, hi: int, rng, n: int = 24) -> list[int]:
    picks = {lo, hi - 1, (lo + hi) // 2}
    picks.update(int(p) for p in rng.integers(lo, hi, min(n, hi - lo)))
    return sorted(picks)


def test_every_flipped_byte_is_caught_and_named(bundle, keys):
    _, pub = keys.pair("signing")
    data = bundle.path.read_bytes()
    rng = np.random.default_rng(7)
    checked = 0
    for region, (lo, hi) in _regions(data).items():
        for pos in _flip_positions(lo, hi, rng):
            for mask in (0x01, 0x80, 0xFF):
                bad = bytearray(data)
                bad[pos] ^= mask
                with pytest.raises(BundleError) as e:
                    verify_bundle(bytes(bad), [pub])
                err = e.value
                where = f"{region} byte {pos} ^ {mask:#x}: {type(err).__name__} {err}"
                if region.startswith("section:"):
                    assert isinstance(err, IntegrityError), where
                    assert (err.part, err.section, err.stage) == (region, region[8:], "stored"), where
                elif region == "manifest":
                    assert isinstance(err, SignatureError) and err.reason == "bad-signature", where
                elif region == "signatures":
                    assert err.part == "signatures", where
                    assert err.reason in ("bad-signature", "untrusted-key", "bad-signature-block"), where
                else:  # header and length fields: the structure no longer adds up
                    assert isinstance(err, (BundleFormatError, SignatureError)), where
                    assert err.part in ("header", "manifest", "signatures") or err.part.startswith("section:"), where
                checked += 1
    assert checked > 400


def test_truncated_and_extended_files(bundle, keys):
    _, pub = keys.pair("signing")
    data = bundle.path.read_bytes()
    regions = _regions(data)
    cuts = {0, 1, 15, 16, len(data) - 1} | {lo + 1 for lo, _ in regions.values()} | {hi - 1 for _, hi in regions.values()}
    for cut in sorted(cuts):
        with pytest.raises(TruncatedBundle) as e:
            verify_bundle(data[:cut], [pub])
        region = next(r for r, (lo, hi) in regions.items() if lo <= cut < hi)
        expect = {"signature-length": "signatures"}.get(region, region)
        assert e.value.part == expect, (cut, region, e.value)
    with pytest.raises(BundleFormatError) as e:
        verify_bundle(data + b"\0", [pub])
    assert e.value.reason == "trailing-data"


def test_wrong_key_and_key_rotation(model, keys, tmp_path):
    old, old_pub = keys.pair("signing")
    new, new_pub = keys.pair("rotated")
    _, stranger = keys.pair("stranger")
    (r,) = package_model(model, ["x86-64-v3"], "1.0.1", [new, old], tmp_path,
                         options=PackageOptions(libraries=prebuilt([TARGET]), golden=False))
    assert len(r.manifest.signers) == 2
    assert verify_bundle(r.path, [old_pub]).signers == [key_id(old_pub).hex()]
    assert len(verify_bundle(r.path, [old_pub, new_pub]).signers) == 2
    verify_bundle(r.path, [new_pub])
    with pytest.raises(SignatureError) as e:
        verify_bundle(r.path, [stranger])
    assert e.value.reason == "untrusted-key" and sorted(e.value.key_ids) == r.manifest.signers
    with pytest.raises(SignatureError) as e:
        verify_bundle(r.path, [])
    assert e.value.reason == "no-trusted-keys"
    # dropping one of the two signatures is caught: the signed manifest names both signers
    data = r.path.read_bytes()
    env = container.read_envelope(io.BytesIO(data))
    stripped = encode_envelope(env.manifest_bytes, list(env.signatures[:1])) + data[env.payload_offset:]
    with pytest.raises(SignatureError) as e:
        verify_bundle(stripped, [old_pub, new_pub])
    assert e.value.reason == "signer-mismatch"
    none = encode_envelope(env.manifest_bytes, []) + data[env.payload_offset:]
    with pytest.raises(SignatureError) as e:
        verify_bundle(none, [old_pub])
    assert e.value.reason == "no-signatures"


def _resigned(data: bytes, manifest_bytes: bytes, key) -> bytes:
    env = container.read_envelope(io.BytesIO(data))
    sigs = sign(signed_message(CONTAINER_VERSION, manifest_bytes), [key])
    return encode_envelope(manifest_bytes, sigs) + data[env.payload_offset:]


def test_unknown_versions_are_refused_with_a_typed_error(bundle, keys):
    key, pub = keys.pair("signing")
    data = bundle.path.read_bytes()
    raw = json.loads(container.read_envelope(io.BytesIO(data)).manifest_bytes)
    raw["format_version"] = 2
    future = _resigned(data, json.dumps(raw, sort_keys=True, separators=(",", ":")).encode(), key)
    with pytest.raises(UnsupportedVersion) as e:
        verify_bundle(future, [pub])
    assert (e.value.what, e.value.found, e.value.supported, e.value.part) == ("manifest", 2, 1, "manifest")
    assert "bitnet-edge package" in str(e.value)

    v2 = bytearray(data)
    v2[8:12] = struct.pack("<I", 2)
    with pytest.raises(UnsupportedVersion) as e:
        verify_bundle(bytes(v2), [pub])
    assert (e.value.what, e.value.found, e.value.part) == ("container", 2, "header")

    with pytest.raises(BundleFormatError) as e:
        verify_bundle(b"PK\x03\x04" + data[4:], [pub])
    assert e.value.reason == "bad-magic"


def test_signed_but_invalid_manifests_are_refused(bundle, keys):
    """A validly signed manifest that breaks the schema or the layout (a packager bug) is still refused."""
    key, pub = keys.pair("signing")
    data = bundle.path.read_bytes()
    raw = json.loads(container.read_envelope(io.BytesIO(data)).manifest_bytes)
    for change, reason in (
        (lambda r: r.update(surprise=1), "manifest-invalid"),
        (lambda r: r["sections"][1].update(offset=0), "manifest-invalid"),
        (lambda r: r["sections"][0].update(encoding="trit-delta"), "manifest-invalid"),
    ):
        r = json.loads(json.dumps(raw))
        change(r)
        with pytest.raises(BundleFormatError) as e:
            verify_bundle(_resigned(data, json.dumps(r).encode(), key), [pub])
        assert e.value.reason == reason and e.value.part == "manifest", e.value
    with pytest.raises(BundleFormatError) as e:
        verify_bundle(_resigned(data, b"{not json", key), [pub])
    assert e.value.reason == "manifest-json"
    # content hash wrong although the stored bytes match: caught when decoding
    r = json.loads(json.dumps(raw))
    r["sections"][2]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError) as e:
        verify_bundle(_resigned(data, canonical_json(BundleManifest.model_validate(r)), key), [pub])
    assert (e.value.section, e.value.stage) == ("weights.dense", "content")


def test_manifest_too_large_is_refused_before_reading_it(bundle, keys):
    _, pub = keys.pair("signing")
    data = bytearray(bundle.path.read_bytes())
    data[12:16] = struct.pack("<I", 2**31)
    with pytest.raises(BundleFormatError) as e:
        verify_bundle(bytes(data), [pub])
    assert e.value.reason == "manifest-too-large"


def test_reproducible_with_source_date_epoch(model, keys, tmp_path, monkeypatch):
    key, _ = keys.pair("signing")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    elsewhere = tmp_path / "copy" / "somewhere" / "mlp"
    shutil.copytree(model, elsewhere)
    opts = PackageOptions(libraries=prebuilt([TARGET, "linux-aarch64"]))
    a = package_model(model, ["x86-64-v3", "raspberry-pi-4"], "2.0.0", [key], tmp_path / "a", options=opts)
    b = package_model(elsewhere, ["x86-64-v3", "raspberry-pi-4"], "2.0.0", [key], tmp_path / "b", options=opts)
    for ra, rb in zip(a, b):
        assert ra.path.name == rb.path.name
        assert hashlib.sha256(ra.path.read_bytes()).digest() == hashlib.sha256(rb.path.read_bytes()).digest()
        assert ra.manifest.created == 1790000000 and ra.manifest.build.source_date_epoch == 1790000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(PackagingError) as e:
        package_model(model, ["x86-64-v3"], "2.0.0", [key], tmp_path / "c", options=opts)
    assert e.value.reason == "bad-source-date-epoch"


def test_read_unverified_and_the_envelope(bundle):
    env, m = read_unverified(bundle.path)
    assert isinstance(env, Envelope) and m.name == "test-mlp" and len(env.signatures) == 1


def test_key_files(tmp_path):
    kp = generate_keypair(tmp_path, "k", passphrase=b"correct horse")
    assert (kp.private_path.stat().st_mode & 0o777) == 0o600
    assert b"ENCRYPTED" in kp.private_path.read_bytes()
    with pytest.raises(KeyFileError) as e:
        load_private_key(kp.private_path)
    assert e.value.reason == "passphrase-required"
    with pytest.raises(KeyFileError) as e:
        load_private_key(kp.private_path, b"wrong")
    assert e.value.reason == "bad-passphrase"
    assert load_private_key(kp.private_path, b"correct horse").public_key().public_bytes_raw() == \
        load_public_key(kp.public_path).public_bytes_raw()
    with pytest.raises(KeyFileError) as e:
        generate_keypair(tmp_path, "k")
    assert e.value.reason == "exists"
    with pytest.raises(KeyFileError) as e:
        load_public_key(kp.private_path)
    assert e.value.reason == "bad-format"
    with pytest.raises(KeyFileError) as e:
        load_private_key(tmp_path / "missing.key")
    assert e.value.reason == "unreadable"


def test_packaging_input_errors(model, keys, tmp_path):
    key, _ = keys.pair("signing")
    opts = PackageOptions(libraries=prebuilt([TARGET]), golden=False)
    for kwargs, reason in (
        (dict(devices=[], keys=[key], version="1"), "no-devices"),
        (dict(devices=["x86-64-v3"], keys=[], version="1"), "no-keys"),
        (dict(devices=["x86-64-v3"], keys=[key], version="1 0"), "bad-version"),
    ):
        with pytest.raises(PackagingError) as e:
            package_model(model, kwargs["devices"], kwargs["version"], kwargs["keys"], tmp_path, options=opts)
        assert e.value.reason == reason


def test_base3_is_what_travels(bundle, model):
    """The wire bytes of a ternary tensor are the base-3 packing of the model's weights."""
    from bitnet_edge.sdk.modeldir import open_model_dir

    md = open_model_dir(model)
    t = bundle.manifest.tensors[0]
    q = packing.unpack_ternary_2bit(md.array(t.name), t.shape[1])
    assert hashlib.sha256(packing.pack_ternary_base3(q)).hexdigest() == t.sha256
