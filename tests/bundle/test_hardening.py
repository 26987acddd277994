"""[hardening] (issue 18, security): bundle builder side."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from tests.support.bundle_models import make_mlp_dir

from bitnet_edge.cli import main
from bitnet_edge.packagers.keys import generate_keypair


def test_package_refuses_a_signing_key_other_users_can_read(tmp_path):
    kp = generate_keypair(tmp_path / "keys")
    model = make_mlp_dir(tmp_path / "m", sizes=(8, 8, 2))
    for mode in (0o666, 0o644, 0o640):
        os.chmod(kp.private_path, mode)
        res = CliRunner().invoke(main, ["package", str(model), "--device", "x86-64-v3", "--version", "1.0.0",
                                        "--key", str(kp.private_path), "-o", str(tmp_path / "out"), "--json"])
        assert res.exit_code == 2, res.output
        err = json.loads(res.output)["error"]
        assert err["reason"] == "insecure-permissions" and f"{mode:04o}" in err["detail"], err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- a signed bundle rewritten by a trusted key that makes mistakes ---------------------------------------

import hashlib  # noqa: E402
import io  # noqa: E402

import pytest  # noqa: E402
import zstandard  # noqa: E402
from tests.support.fleet_helpers import bundles  # noqa: E402

from bitnet_edge.packagers.keys import load_private_key, sign  # noqa: E402
from bitnet_edge.sdk.bundle import container  # noqa: E402
from bitnet_edge.sdk.bundle.container import CONTAINER_VERSION, Limits, encode_envelope, signed_message  # noqa: E402
from bitnet_edge.sdk.bundle.errors import BundleFormatError, OverBudget  # noqa: E402
from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle  # noqa: E402


def _key():
    b = bundles()
    return load_private_key(b.pub_path.with_suffix(".key")), b.public_key


def _split(data: bytes):
    env = container.read_envelope(io.BytesIO(data))
    m = json.loads(env.manifest_bytes)
    payload = data[env.payload_offset:]
    stored = {s["name"]: payload[s["offset"]:s["offset"] + s["stored_size"]] for s in m["sections"]}
    return m, stored


def _assemble(m: dict, stored: dict, key, manifest_bytes: bytes | None = None) -> bytes:
    off = 0
    for s in m["sections"]:
        s["offset"], s["stored_size"] = off, len(stored[s["name"]])
        s["stored_sha256"] = hashlib.sha256(stored[s["name"]]).hexdigest()
        off += s["stored_size"]
    mb = manifest_bytes if manifest_bytes is not None else json.dumps(
        m, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    sigs = sign(signed_message(CONTAINER_VERSION, mb), [key])
    return encode_envelope(mb, sigs) + b"".join(stored[s["name"]] for s in m["sections"])


def _bomb(honest_sizes: bool, mib: int = 64) -> bytes:
    """The release-1 test bundle with its library section replaced by ``mib`` MiB of zeros (a few
    KB stored), re-signed by the trusted key; ``honest_sizes`` False keeps the old (small)
    sizes.payload_content_bytes."""
    key, _ = _key()
    m, stored = _split(bundles().r1.read_bytes())
    lib = m["libraries"][0]
    content = bytes(mib << 20)
    stored[lib["section"]] = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(content)
    sec = next(s for s in m["sections"] if s["name"] == lib["section"])
    sec["size"], sec["sha256"] = len(content), hashlib.sha256(content).hexdigest()
    lib["size"], lib["sha256"] = sec["size"], sec["sha256"]
    sz = m["sizes"]
    stored_total = sum(len(v) for v in stored.values())
    sz["payload_stored_bytes"] = sz["full_payload_stored_bytes"] = stored_total
    if honest_sizes:
        sz["payload_content_bytes"] = sum(s["size"] for s in m["sections"])
    return _assemble(m, stored, key)


# ---- 4. contents are capped by the reader's budget while decoding, whatever the manifest says ----------

def test_a_decompression_bomb_signed_by_a_trusted_key_is_refused_within_the_budget(tmp_path):
    _, pub = _key()
    lying = _bomb(honest_sizes=False)
    assert len(lying) < 200_000
    with pytest.raises(BundleFormatError) as e:  # sizes.payload_content_bytes must be the sections' sum
        verify_bundle(lying, [pub])
    assert e.value.reason == "manifest-invalid" and "content" in str(e.value)
    honest = _bomb(honest_sizes=True)
    with pytest.raises(OverBudget) as e:  # charged before the 64 MiB section is decompressed
        verify_bundle(honest, [pub], limits=Limits(max_content_bytes=16 << 20))
    assert e.value.needed > 16 << 20 and e.value.budget == 16 << 20


def test_the_agent_caps_a_bomb_by_its_memory_budget(tmp_path):
    from bitnet_edge.agent.config import load_config
    from bitnet_edge.agent.daemon import Agent
    from tests.support.agent_fixtures import write_config

    cfg = load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles().pub_path],
                                   extra=""))
    cfg = cfg.model_copy(update={"limits": cfg.limits.model_copy(update={"memory_budget_mb": 32})})
    ag = Agent(cfg)
    try:
        for honest, reason in ((False, "corrupt"), (True, "too_large")):
            p = tmp_path / f"bomb-{honest}.bundle"
            p.write_bytes(_bomb(honest_sizes=honest))
            out = ag.install_file(p)
            assert (out.result, out.reason) == ("rejected", reason), out
        assert not any((tmp_path / "data" / "slots").rglob("libbitnet_edge.so"))  # nothing unpacked
    finally:
        ag.shutdown()


# ---- 5. file names in a signed manifest are one path component; the target matches the library ------

@pytest.mark.parametrize("field,value", [
    ("lib", "../../escape.so"), ("lib", "/tmp/abs.so"), ("lib", "sub/dir.so"), ("lib", ".."), ("lib", ""),
    ("lib", ".hidden.so"), ("lib", "a\\b.so"), ("tokenizer", "../tokenizer.json"), ("tokenizer", "/etc/passwd"),
    ("target", "linux-aarch64"),
])
def test_unsafe_file_names_and_a_mismatched_target_are_refused(field, value):
    key, pub = _key()
    m, stored = _split(bundles().r1.read_bytes())
    if field == "lib":
        m["libraries"][0]["file"] = value
    elif field == "tokenizer":
        m["model"]["tokenizer"] = value
    else:
        m["target"] = value
    with pytest.raises(BundleFormatError) as e:
        verify_bundle(_assemble(m, stored, key), [pub])
    assert e.value.reason == "manifest-invalid", e.value


def test_the_schema_names_the_file_rule():
    from bitnet_edge.sdk.bundle.manifest import BundleManifest

    schema = json.dumps(BundleManifest.model_json_schema())
    assert "A-Za-z0-9_][A-Za-z0-9._-]" in schema


# ---- 6. manifest JSON: canonical, no duplicate keys, bounded depth and size before parsing -----------------

def test_manifest_json_must_be_canonical_unique_and_shallow():
    key, pub = _key()
    data = bundles().r1.read_bytes()
    m, stored = _split(data)
    canon = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert verify_bundle(_assemble(m, stored, key, canon), [pub]).manifest.name == m["name"]
    cases = {
        "manifest-not-canonical": json.dumps(m, sort_keys=True, indent=1).encode(),
        "manifest-duplicate-key": canon.replace(b'{"build":', b'{"name":"evil","build":', 1),
        "manifest-too-deep": canon[:-1] + b',"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    }
    for reason, mb in cases.items():
        bad = _assemble(json.loads(canon), dict(stored), key, mb)
        for read in (lambda b: read_unverified(b), lambda b: verify_bundle(b, [pub])):  # inspect reads unverified
            with pytest.raises(BundleFormatError) as e:
                read(bad)
            assert e.value.reason == reason, (reason, e.value)


def test_inspect_prints_one_line_for_a_200k_deep_manifest(tmp_path):
    key, _ = _key()
    m, stored = _split(bundles().r1.read_bytes())
    canon = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    deep = canon[:-1] + b',"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    p = tmp_path / "deep.bundle"
    p.write_bytes(_assemble(m, stored, key, deep))
    res = CliRunner().invoke(main, ["inspect", str(p), "--json"])
    assert res.exit_code == 2 and "RecursionError" not in res.output, res.output
    assert json.loads(res.output)["error"]["reason"] == "manifest-too-deep"
