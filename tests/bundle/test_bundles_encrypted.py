"""Encrypted bundles (ADR 0011): the payload sealed to device X25519 keys, multi-recipient.

A recipient verifies and installs (golden vectors, deltas); a device that is not a recipient is
refused with a typed error before the payload is read, and the agent reports ``not_recipient``
while its model keeps serving; the recipients list is signed; the sealed chunks resist reordering,
truncation and section swaps; device keys are 0600 and can come from a hook (TPM / secure element)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.cli import main
from bitnet_edge.packagers import keys, seal
from bitnet_edge.sdk.bundle import crypt
from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.sdk.bundle.container import encode_envelope, read_envelope
from bitnet_edge.sdk.bundle.errors import DecryptionError, KeyFileError, NotRecipient, SignatureError
from bitnet_edge.sdk.bundle.install import install_bundle
from bitnet_edge.sdk.bundle.manifest import canonical_json, parse_manifest, release_digest
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.native.targets import host_target
from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle
from bitnet_edge.sdk.modeldir import open_model_dir
from tests.support.bundle_models import built_library, make_mlp_dir
from tests.support.agent_fixtures import HOST_DEVICE, write_config

SIZES = (32, 48, 4)


class Keys:
    def __init__(self, root):
        kp = generate_keypair(root / "keys", "release")
        self.pub_path, self.key = kp.public_path, load_private_key(kp.private_path)
        self.pub = load_public_key(kp.public_path)
        self.files = {n: keys.generate_device_key(root / "dev", n) for n in ("a", "b", "c", "archive")}
        self.dev = {n: crypt.FileDeviceKey(f.private_path) for n, f in self.files.items()}
        self.dpub = {n: seal.load_device_public_key(f.public_path) for n, f in self.files.items()}


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    """Release 1 (full) and release 2 (full + delta), encrypted to devices a, b and the archive key."""
    root = tmp_path_factory.mktemp("enc")
    k = Keys(root)
    opts = PackageOptions(libraries={host_target(): built_library(host_target())},
                          encrypt_to=(k.dpub["a"], k.dpub["b"], k.dpub["archive"]), base_keys=(k.dev["archive"],))
    m1 = make_mlp_dir(root / "m1", SIZES, seed=3, name="enc-mlp")
    m2 = make_mlp_dir(root / "m2", SIZES, seed=3, change=0.1, name="enc-mlp")
    (r1,) = package_model(m1, [HOST_DEVICE], "1.0.0", [k.key], root / "d1", options=opts)
    (r2,) = package_model(m2, [HOST_DEVICE], "2.0.0", [k.key], root / "d2", delta_from=[r1.path], options=opts)
    return dict(root=root, keys=k, m1=m1, m2=m2, r1=r1, r2=r2, opts=opts)


def test_a_recipient_installs_what_was_packaged(enc, tmp_path):
    k, r1 = enc["keys"], enc["r1"]
    env, m = read_unverified(r1.path)
    assert m.encryption is not None and m.encryption.aead == "aes-256-gcm"
    assert [r.key_id for r in m.encryption.recipients] == sorted(k.dev[n].key_id for n in ("a", "b", "archive"))
    data = r1.path.read_bytes()
    lib = built_library(host_target()).read_bytes()
    assert lib[:4096] not in data and b"\x28\xb5\x2f\xfd" not in data[env.payload_offset:env.payload_offset + 4]
    vb = verify_bundle(r1.path, [k.pub], device_keys=[k.dev["b"]])
    assert vb.deep
    inst = install_bundle(r1.path, tmp_path / "inst", [k.pub], device_keys=[k.dev["a"]])
    want, got = open_model_dir(enc["m1"]), open_model_dir(inst.path)
    assert got.manifest == want.manifest
    for t in want.manifest.tensors:
        np.testing.assert_array_equal(got.array(t.name), want.array(t.name))
    assert inst.golden is not None and inst.golden.exists()  # golden vectors travel encrypted, install plain
    assert inst.library.read_bytes() == lib


def test_a_device_that_is_not_a_recipient_is_refused_before_the_payload(enc, tmp_path):
    k, r1 = enc["keys"], enc["r1"]
    env, _ = read_unverified(r1.path)
    head = tmp_path / "head-only.bundle"  # the envelope alone: the refusal needs nothing more
    head.write_bytes(r1.path.read_bytes()[:env.payload_offset])
    for src in (r1.path, head):
        with pytest.raises(NotRecipient) as e:
            verify_bundle(src, [k.pub], device_keys=[k.dev["c"]])
        assert e.value.reason == "not-recipient" and e.value.part == "encryption"
        assert e.value.key_ids == [k.dev["c"].key_id] and len(e.value.recipients) == 3
    with pytest.raises(NotRecipient):
        install_bundle(r1.path, tmp_path / "x", [k.pub], device_keys=[k.dev["c"]])
    with pytest.raises(DecryptionError) as e:  # no device key at all: typed, not a KeyError
        install_bundle(r1.path, tmp_path / "y", [k.pub])
    assert e.value.reason == "no-device-key"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    shallow = verify_bundle(r1.path, [k.pub])  # the fleet: signatures and stored (sealed) bytes, no key
    assert not shallow.deep


def test_the_recipients_list_is_signed(enc, tmp_path):
    k, r1 = enc["keys"], enc["r1"]
    data = r1.path.read_bytes()
    with open(r1.path, "rb") as f:
        env = read_envelope(f)
    m = parse_manifest(env.manifest_bytes)
    c = k.dev["c"]
    forged_list = m.encryption.recipients[:1] + [m.encryption.recipients[1].model_copy(
        update={"key_id": c.key_id})]
    forged_list.sort(key=lambda r: r.key_id)
    forged = m.model_copy(update={"encryption": m.encryption.model_copy(update={"recipients": forged_list})})
    path = tmp_path / "forged.bundle"
    path.write_bytes(encode_envelope(canonical_json(forged), list(env.signatures)) + data[env.payload_offset:])
    with pytest.raises(SignatureError) as e:
        verify_bundle(path, [k.pub], device_keys=[c])
    assert e.value.reason == "bad-signature"


def test_deltas_of_encrypted_releases(enc, tmp_path):
    k, r1, r2 = enc["keys"], enc["r1"], enc["r2"]
    full2, delta2 = read_unverified(r2.path)[1], read_unverified(r2.delta_path)[1]
    assert delta2.delta is not None and delta2.encryption is not None
    assert delta2.encryption.salt != full2.encryption.salt  # a fresh content key per file: no nonce reuse
    assert release_digest(delta2) == release_digest(full2)  # the fleet maps the delta to its release
    assert r2.delta_size < r2.size
    base = install_bundle(r1.path, tmp_path / "r1", [k.pub], device_keys=[k.dev["b"]])
    inst = install_bundle(r2.delta_path, tmp_path / "r2", [k.pub], base=base.path, device_keys=[k.dev["b"]])
    want = open_model_dir(enc["m2"])
    for t in want.manifest.tensors:
        np.testing.assert_array_equal(open_model_dir(inst.path).array(t.name), want.array(t.name))
    # the packager reads an encrypted base only with a recipient's key (the archive key here)
    with pytest.raises(DecryptionError) as e:
        package_model(enc["m2"], [HOST_DEVICE], "2.0.1", [k.key], tmp_path / "d", delta_from=[r1.path],
                      options=PackageOptions(libraries=enc["opts"].libraries, encrypt_to=(k.dpub["a"],)))
    assert e.value.reason == "no-device-key"


@pytest.mark.parametrize("aead", sorted(crypt.AEADS))
def test_sealed_chunks_resist_reordering_truncation_and_swaps(aead):
    dev = _MemKey()
    for n in (0, 1, 1023, 1024, 1025, 5000):
        data = os.urandom(n)
        s = seal.Sealer([dev.public_key()], aead, chunk_bytes=1024)
        sealed = {name: s.seal(name, data) for name in ("lib.x", "weights.dense")}
        assert len(sealed["lib.x"]) == seal.sealed_size(n, 1024)
        ck = crypt.open_content_key(s.info, [dev])
        assert crypt.open_section(s.info, ck, "lib.x", sealed["lib.x"]) == data
        bad = [sealed["weights.dense"]]  # another section's chunks
        step = 1024 + crypt.TAG_BYTES
        if n > 1024:
            c = sealed["lib.x"]
            bad += [c[step:2 * step] + c[:step] + c[2 * step:],  # chunks swapped
                    c[:step]]  # cut after a full chunk: the final flag is missing
        bad += [sealed["lib.x"][:-1], sealed["lib.x"] + b"\0", b"\0" * 15]
        for b in bad:
            with pytest.raises(DecryptionError) as e:
                crypt.open_section(s.info, ck, "lib.x", b)
            assert e.value.reason == "bad-ciphertext"
    with pytest.raises(ValueError):
        s.seal("lib.x", b"again")  # one content key never seals a section name twice


class _MemKey(crypt.DeviceKey):
    """A device key held elsewhere (what a TPM / secure-element hook implements)."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._k = X25519PrivateKey.generate()

    def public_key(self):
        return self._k.public_key()

    def exchange(self, peer):
        return self._k.exchange(peer)


HOOK_KEY = _MemKey()


def make_hook_key() -> crypt.DeviceKey:
    return HOOK_KEY


def test_device_keys_are_private_files_or_a_hook(tmp_path):
    kp = keys.generate_device_key(tmp_path, "dev")
    assert kp.private_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileError) as e:
        keys.generate_device_key(tmp_path, "dev")
    assert e.value.reason == "exists"
    os.chmod(kp.private_path, 0o644)
    with pytest.raises(KeyFileError) as e:
        crypt.load_device_key(kp.private_path)
    assert e.value.reason == "insecure-permissions"
    with pytest.raises(KeyFileError) as e:
        seal.load_device_public_key(kp.private_path)
    assert e.value.reason == "bad-format"
    key = crypt.load_device_key(f"python:{__name__}:make_hook_key")
    assert key.key_id == HOOK_KEY.key_id
    with pytest.raises(KeyFileError):
        crypt.load_device_key(f"python:{__name__}:no_such_factory")


def _agent(tmp_path, enc, name: str | None):
    extra = f'device_key = "{enc["keys"].files[name].private_path}"' if name else ""
    cfg = load_config(write_config(tmp_path / f"agent-{name}.toml", tmp_path / f"data-{name}",
                                   [enc["keys"].pub_path], extra=extra))
    return Agent(cfg)


def test_the_agent_installs_as_a_recipient_and_reports_not_recipient_otherwise(enc, tmp_path):
    r1, r2 = enc["r1"], enc["r2"]
    a = _agent(tmp_path, enc, "a")
    c = _agent(tmp_path, enc, "c")
    try:
        assert a.install_file(r1.path).result == "installed"
        out = a.install_file(r2.delta_path, release_sha256="f" * 64)  # a delta against the encrypted release
        assert out.result == "installed", out
        plain = _plain_v1(tmp_path, enc)
        assert c.install_file(plain).result == "installed"
        serving = c.acquire_worker()
        c.release_worker(serving)
        out = c.install_file(r2.path)
        assert (out.result, out.reason) == ("rejected", "not_recipient"), out
        assert c.reported_state().installed.version == "1.0.0-plain" and c.acquire_worker() is serving
    finally:
        a.shutdown()
        c.shutdown()
    none = _agent(tmp_path, enc, None)
    try:
        out = none.install_file(r1.path)
        assert (out.result, out.reason) == ("rejected", "not_recipient") and "device_key" in out.message
    finally:
        none.shutdown()


def _plain_v1(tmp_path, enc):
    k = enc["keys"]
    (r,) = package_model(enc["m1"], [HOST_DEVICE], "1.0.0-plain", [k.key], tmp_path / "plain", release=1,
                         options=PackageOptions(libraries=enc["opts"].libraries, golden=False))
    return r.path


def test_cli_generate_device_package_encrypt_to_inspect_verify(enc, tmp_path):
    k = enc["keys"]

    def run(*args, ok=True):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert (res.exit_code == 0) == ok, res.output + repr(res.exception)
        return json.loads(res.output) if "--json" in args else res.output

    dev = run("keys", "generate-device", "--out", tmp_path / "dev", "--json")
    assert (tmp_path / "dev" / "device.key").stat().st_mode & 0o777 == 0o600
    rows = run("package", enc["m1"], "--device", HOST_DEVICE, "--version", "1.0.0", "--key",
               enc["root"] / "keys" / "release.key", "-o", tmp_path / "out",
               "--encrypt-to", tmp_path / "dev" / "device.pub", "--encrypt-to", k.files["b"].public_path,
               "--aead", "chacha20-poly1305", "--no-golden", "--json")
    bundle = rows[0]["bundle"]
    assert sorted(rows[0]["encrypted_to"]) == sorted([dev["key_id"], k.dev["b"].key_id])
    info = run("inspect", bundle, "--json")
    assert info["encryption"]["aead"] == "chacha20-poly1305" and len(info["encryption"]["recipients"]) == 2
    shallow = run("verify", bundle, "--trust", k.pub_path, "--json")
    assert shallow["encrypted"] and not shallow["contents_checked"]
    deep = run("verify", bundle, "--trust", k.pub_path, "--device-key", tmp_path / "dev" / "device.key", "--json")
    assert deep["contents_checked"]
    res = CliRunner().invoke(main, ["verify", bundle, "--trust", str(k.pub_path), "--device-key",
                                    str(k.files["c"].private_path), "--json"])
    assert res.exit_code == 1 and json.loads(res.output)["error"]["reason"] == "not-recipient"
