"""TUF distribution trust without a broker (ADR 0010): the fleet's repository, the device's
DeviceTrust over an in-memory fetcher, root and targets key rotation, expiry and the
offline-device policy, the MQTT fetcher's framing and limits, and the `fleet tuf` key ceremony."""

from __future__ import annotations

import json
import queue

import pytest
from tests.support.tuf_helpers import DAY, MemoryFetcher, device_clock, make_world, resign
from click.testing import CliRunner
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError, SlowRetrievalError
from tuf.api.metadata import TargetFile

from bitnet_edge.agent.errors import TufRejected
from bitnet_edge.agent.tuf_client import DeviceTrust, check_target
from bitnet_edge.agent.tuf_fetcher import FetchLimits, MqttFetcher
from bitnet_edge.cli import main
from bitnet_edge.fleet import tuf_sign as S
from bitnet_edge.fleet.errors import TufError
from bitnet_edge.fleet.tuf_repo import online_key
from bitnet_edge.sdk.wire import protocol as P
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.tuf_meta import target_path
from tests.support.agent_fixtures import bundles  # noqa: F401


def _desired(path, *, sha=None, **over):
    import hashlib

    from bitnet_edge.sdk.bundle.verify import read_unverified

    data = path.read_bytes()
    _, m = read_unverified(path)
    ref = dict(model=m.name, version=m.version, release=m.release, target=m.target,
               bundle_sha256=sha or hashlib.sha256(data).hexdigest(), bundle_size=len(data), chunk_size=65536)
    ref.update(over)
    return P.DesiredState(device_id="dev-1", rollout_id=None, release=P.ReleaseRef(**ref), issued_at=1.0)


def _trust(tmp_path, world, name="dev", **kw):
    kw.setdefault("device_target", "linux-x86_64")
    return DeviceTrust(tmp_path / name, world.root_file.read_bytes(), MemoryFetcher(world.repo.read), **kw)


# ---- the repository and the device's checks ------------------------------------------------------

def test_publish_then_admit_and_check_the_downloaded_file(tmp_path, bundles):
    w = make_world(tmp_path)
    w.publish(bundles.v1, bundles.v2)
    t = _trust(tmp_path, w, device_profile="x86-64-v3")
    d = _desired(bundles.v2)
    assert t.admit(d, None) is False  # no delta offered
    t.check_file(_copy(bundles.v2, tmp_path, d.release.bundle_sha256))
    bad = bytearray(bundles.v2.read_bytes())
    bad[-1] ^= 1
    (tmp_path / "bad").mkdir()
    p = tmp_path / "bad" / f"{d.release.bundle_sha256}.bundle"
    p.write_bytes(bytes(bad))
    with pytest.raises(TufRejected) as e:
        t.check_file(p)
    assert (e.value.reason, e.value.kind) == ("tuf_rejected", "length-or-hash")
    with pytest.raises(TufRejected) as e:  # a file that was never admitted
        t.check_file(_copy(bundles.v1, tmp_path, "1" * 64))
    assert e.value.kind == "not-approved"
    st = w.repo.status()
    assert st["targets"]["version"] == 2 and st["targets"]["targets"] == 2 and st["snapshot"]["version"] == 2


def _copy(src, tmp_path, sha):
    d = tmp_path / "dl"
    d.mkdir(exist_ok=True)
    p = d / f"{sha}.bundle"
    p.write_bytes(src.read_bytes())
    return p


def test_a_delta_is_used_only_when_it_is_listed_too(tmp_path):
    import hashlib

    from tests.support.fleet_helpers import bundles as fleet_bundles

    b = fleet_bundles()  # release 1, release 2 and its delta from 1 (x86-64-v4)
    sha = {k: hashlib.sha256(getattr(b, k).read_bytes()).hexdigest() for k in ("r1", "r2", "r2_delta")}
    w = make_world(tmp_path)
    w.publish(b.r1, b.r2)
    delta = P.DeltaRef(base_sha256=sha["r1"], sha256=sha["r2_delta"], size=b.r2_delta.stat().st_size)
    d = _desired(b.r2, delta=delta)
    t = _trust(tmp_path, w)
    assert t.admit(d, sha["r1"]) is False and not t.approved(sha["r2_delta"])  # unlisted: fetch the full bundle
    w.publish(b.r2_delta)
    assert t.admit(d, sha["r1"]) is True
    t.check_file(_copy(b.r2_delta, tmp_path, sha["r2_delta"]))
    assert t.admit(d, "f" * 64) is False  # not holding the base


def test_custom_fields_must_match_the_desired_release_and_the_device(bundles):
    tp, info = S.bundle_target(bundles.v2)
    rel = _desired(bundles.v2).release
    assert check_target(info, rel, device_target="linux-x86_64", device_profile="x86-64-v3").release == 2
    cases = {
        "other model": (rel.model_copy(update={"model": "x"}), "linux-x86_64", None),
        "other release": (rel.model_copy(update={"release": 9}), "linux-x86_64", None),
        "other device target": (rel, "linux-aarch64", None),
        "other profile": (rel, "linux-x86_64", "raspberry-pi-5"),
        "endless bundle": (rel.model_copy(update={"bundle_size": rel.bundle_size * 1000}), "linux-x86_64", None),
    }
    for what, (r, target, profile) in cases.items():
        with pytest.raises(TufRejected) as e:
            check_target(info, r, device_target=target, device_profile=profile)
        assert e.value.kind == "mismatch", what
    no_custom = TargetFile(info.length, info.hashes, tp)
    with pytest.raises(TufRejected):
        check_target(no_custom, rel, device_target="linux-x86_64", device_profile=None)


def test_the_repository_refuses_what_does_not_verify(tmp_path, bundles):
    w = make_world(tmp_path)
    cur = w.repo.read("targets.json")
    one = w.targets_signers()[:1]
    bad = {
        "unsigned": S.sign_targets(cur, one, add=dict([S.bundle_target(bundles.v1)])),  # 1 of 2 targets keys
        "version": resign(w.signed_targets(bundles.v1), w.targets_signers(), version=1),
        "expired": w.signed_targets(bundles.v1, days=-1),
    }
    tp, tf = S.bundle_target(bundles.v1)
    wrong_path = TargetFile(tf.length, tf.hashes, target_path("0" * 64), tf.unrecognized_fields)
    bad["bad-metadata"] = S.sign_targets(cur, w.targets_signers(), add={wrong_path.path: wrong_path})
    for reason, data in bad.items():
        with pytest.raises(TufError) as e:
            w.repo.update(targets=data)
        assert e.value.reason == reason
    # a root that names an online key the service does not hold
    (tmp_path / "x").mkdir()
    other = S.key_from_file(online_key(tmp_path / "x"))
    r2 = S.rotate_root(w.repo.read("root.json"), w.root_signers(), online_key=other)
    with pytest.raises(TufError) as e:
        w.repo.update(root=r2)
    assert e.value.reason == "online-key"
    with pytest.raises(TufError) as e:  # one root key is below the threshold of two
        S.rotate_root(w.repo.read("root.json"), w.root_signers(1))
    assert e.value.reason == "unsigned"
    assert w.repo.status()["targets"]["version"] == 1 and w.repo.status()["root"]["version"] == 1


# ---- rotation ------------------------------------------------------------------------------------

def test_root_rotation_chain_and_targets_key_rotation(tmp_path, bundles):
    w = make_world(tmp_path)
    w.publish(bundles.v1)
    t = _trust(tmp_path, w)
    t.admit(_desired(bundles.v1), None)  # the device trusts root 1
    from bitnet_edge.packagers.keys import generate_keypair

    new = [generate_keypair(tmp_path / "new", f"root-{i}") for i in range(2)]
    new_keys = [S.key_from_file(k.public_path) for k in new]
    new_signers = [S.signer_from_file(k.private_path) for k in new]
    old_ids = [S.key_from_file(k.with_suffix(".pub")).keyid for k in w.ceremony.root_keys]
    # root 2: two new root keys added, threshold 3 (signed by a threshold of the old and of the new keys)
    r2 = S.rotate_root(w.repo.read("root.json"), w.root_signers(3) + new_signers, add_root=new_keys, root_threshold=3)
    w.repo.update(root=r2)
    # root 3: every old root key revoked; the new keys alone, threshold 2; signed by 3 of root 2's keys
    # (two old + one new) and 2 of root 3's keys
    r3 = S.rotate_root(r2, w.root_signers(2) + new_signers, remove_root=old_ids, root_threshold=2)
    w.repo.update(root=r3)
    # targets key rotation (root 4) with targets signed by the new key, pushed together
    tk = generate_keypair(tmp_path / "new", "targets-next")
    r4 = S.rotate_root(r3, new_signers, targets_keys=[S.key_from_file(tk.public_path)], targets_threshold=1)
    with pytest.raises(TufError) as e:  # the old targets keys' targets would no longer verify
        w.repo.update(root=r4)
    assert e.value.reason == "unsigned"
    new_t = [S.signer_from_file(tk.private_path)]
    w.repo.update(root=r4, targets=w.signed_targets(bundles.v2, signers=new_t))
    assert t.admit(_desired(bundles.v2), None) is False  # the device walked roots 2, 3, 4
    assert json.loads((t.dir / "root.json").read_bytes())["signed"]["version"] == 4
    # the revoked targets keys (still in an attacker's hands) no longer sign anything the device takes
    evil = w.signed_targets(bundles.unsigned_by_us, signers=w.targets_signers())
    with pytest.raises(TufError):
        w.repo.update(targets=evil)
    # nor can the old root keys sign root 5 any more
    with pytest.raises(TufError) as e:
        w.repo.update(root=resign(r4, w.root_signers(3), version=5))
    assert e.value.reason == "unsigned"


# ---- expiry and the offline-device policy ----------------------------------------------------------

def test_the_service_resigns_timestamp_and_snapshot_before_they_expire(tmp_path):
    w = make_world(tmp_path)
    ts1 = json.loads(w.repo.read("timestamp.json"))["signed"]
    assert not w.repo.refresh()  # fresh
    w.now[0] += 0.6 * DAY  # past half of the timestamp's lifetime
    assert w.repo.refresh()
    ts2 = json.loads(w.repo.read("timestamp.json"))["signed"]
    assert ts2["version"] == ts1["version"] + 1 and ts2["expires"] > ts1["expires"]
    assert w.repo.status()["snapshot"]["version"] == 1  # the snapshot still has most of its week
    w.now[0] += 4 * DAY
    assert w.repo.refresh() and w.repo.status()["snapshot"]["version"] == 2


def test_a_device_offline_for_200_days_catches_up_through_rotations(tmp_path, bundles):
    """Policy: serving never depends on metadata; installs need unexpired metadata, no grace period."""
    w = make_world(tmp_path, root_days=100)  # root 1 expires while the device is away
    w.publish(bundles.v1)
    t = _trust(tmp_path, w)
    t.admit(_desired(bundles.v1), None)
    # 200 days later: the fleet rotated root twice, renewed its targets, kept its timestamp fresh
    w.now[0] += 200 * DAY
    r2 = S.rotate_root(w.repo.read("root.json"), w.root_signers(), days=365, now=w.dt())
    r3 = S.rotate_root(r2, w.root_signers(), days=365, now=w.dt())
    w.repo.update(root=r2)
    w.repo.update(root=r3, targets=w.signed_targets(bundles.v2))
    with device_clock(200 * DAY):
        assert t.admit(_desired(bundles.v2), None) is False  # expired root 1 -> 2 -> 3: only the last must be valid
        # a fleet that froze (nobody re-signed): the device refuses and reports, it does not install
        w.now[0] += 120 * DAY  # the device's clock is ahead of what the fleet signed
    with device_clock(320 * DAY), pytest.raises(TufRejected) as e:
        t.admit(_desired(bundles.v2), None)
    assert (e.value.reason, e.value.kind) == ("tuf_expired", "expired")
    # expired offline-signed targets: the same answer (the targets keys must renew them in time)
    w2 = make_world(tmp_path / "w2")
    w2.now[0] -= 100 * DAY
    w2.publish(bundles.v1, days=90)
    w2.now[0] += 100 * DAY
    w2.repo.refresh(force=True)
    with pytest.raises(TufRejected) as e:
        _trust(tmp_path, w2, "dev2").admit(_desired(bundles.v1), None)
    assert e.value.reason == "tuf_expired"


# ---- the MQTT fetcher (framing and limits; the broker round trip is in test_tuf_attacks.py) ------

def _fetcher(limits=FetchLimits(part_timeout=0.5, file_timeout=2.0, max_file_bytes=4096)):
    sent = queue.Queue()
    f = MqttFetcher("dev-1", lambda topic, payload: sent.put(json.loads(payload)) or True, limits)
    return f, sent


def _answer(f, sent, parts):
    import threading

    def run():
        req = sent.get(timeout=2)
        for i, status, last, data in parts:
            f.deliver(P.pack_tuf_part(req["request_id"], status, i, last, data))
    threading.Thread(target=run, daemon=True).start()


def test_mqtt_fetcher_streams_parts_and_maps_failures_to_download_errors():
    f, sent = _fetcher()
    _answer(f, sent, [(0, 200, False, b"ab"), (1, 200, True, b"cd")])
    assert f.download_bytes("mqtt-tuf://fleet/metadata/timestamp.json", 100) == b"abcd"
    f, sent = _fetcher()
    _answer(f, sent, [(0, 404, True, b"")])
    with pytest.raises(DownloadHTTPError) as e:
        f.download_bytes("mqtt-tuf://fleet/metadata/2.root.json", 100)
    assert e.value.status_code == 404
    f, sent = _fetcher()
    _answer(f, sent, [(0, 200, False, b"a"), (2, 200, True, b"c")])  # a lost (or forged) part
    with pytest.raises(DownloadError):
        f.download_bytes("mqtt-tuf://fleet/metadata/timestamp.json", 100)
    f, sent = _fetcher()
    _answer(f, sent, [(i, 200, False, b"x" * 1000) for i in range(10)])  # endless: max length while streaming
    with pytest.raises(DownloadLengthMismatchError):
        f.download_bytes("mqtt-tuf://fleet/metadata/timestamp.json", 2500)
    f, sent = _fetcher()
    with pytest.raises(SlowRetrievalError):  # nobody answers
        f.download_bytes("mqtt-tuf://fleet/metadata/timestamp.json", 100)
    with pytest.raises(DownloadError):
        f.download_bytes("mqtt-tuf://fleet/metadata/../../etc/passwd", 100)
    f.deliver(b"junk")
    f.deliver(P.pack_tuf_part("ab" * 16, 200, 0, True, b"{}"))
    assert f.stats["malformed_parts"] == 1 and f.stats["stray_parts"] == 1 and not f._pending


def test_tuf_part_framing_rejects_bad_input():
    head, data = P.unpack_tuf_part(P.pack_tuf_part("0f" * 16, 200, 3, True, b"xyz"))
    assert (head.index, head.last, head.status, data) == (3, True, 200, b"xyz")
    for bad in (b"", b"BNET", b"XXXX" + P.pack_tuf_part("0f" * 16, 200, 0, True)[4:],
                P.pack_tuf_part("0f" * 16, 200, 0, True)[:-1] + b"\x07"):
        with pytest.raises(FormatError):
            P.unpack_tuf_part(bad)
    with pytest.raises(FormatError):
        P.parse_message("tuf/req", json.dumps({"device_id": "d", "request_id": "0" * 32, "file": "../x.json",
                                               "max_bytes": 1}).encode())


# ---- the key ceremony (CLI, no service needed with --current/--out) --------------------------------

def test_cli_key_ceremony_offline(tmp_path, bundles):
    r = CliRunner()

    def run(*args):
        res = r.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    pub = run("fleet", "tuf", "online-key", "--data", tmp_path / "fleet").strip()
    out = json.loads(run("fleet", "tuf", "init", tmp_path / "offline", "--online-key", pub, "--root-keys", 2,
                         "--root-threshold", 2))
    assert len(out["root_keys"]) == 2 and (tmp_path / "offline" / "1.root.json").exists()
    keys = tmp_path / "offline" / "keys"
    run("fleet", "tuf", "sign-targets", bundles.v1, "--key", keys / "targets-1.key", "--current",
        out["targets"], "--out", tmp_path / "2.targets.json")
    t2 = json.loads((tmp_path / "2.targets.json").read_text())["signed"]
    assert t2["version"] == 2 and len(t2["targets"]) == 1
    run("fleet", "tuf", "rotate-root", "--key", keys / "root-1.key", "--key", keys / "root-2.key",
        "--current", out["root"], "--out", tmp_path / "next")
    assert json.loads((tmp_path / "next" / "2.root.json").read_text())["signed"]["version"] == 2
    res = r.invoke(main, ["fleet", "tuf", "rotate-root", "--key", str(keys / "root-1.key"), "--current",
                          out["root"], "--out", str(tmp_path / "next2")])
    assert res.exit_code == 1 and "unsigned" in res.output  # one key, threshold two
