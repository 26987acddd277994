"""Fleet pieces without a broker: database migrations, the bundle store, publishing, bundle and
delta selection, the metrics text."""

from __future__ import annotations

import io
import sqlite3

import pytest
from tests.support.fleet_helpers import bundles

from bitnet_edge.fleet import db as dbmod
from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.errors import DatabaseError, NotFound, PublishError
from bitnet_edge.fleet.metrics import render_metrics
from bitnet_edge.fleet.publish import publish_bundles
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.selection import BundleRow, DeltaRow, ReleaseInfo, device_targets, pick_bundle, release_ref
from bitnet_edge.fleet.store import BundleStore


def test_a_fresh_database_gets_every_migration_in_wal_mode(tmp_path):
    d = Database(tmp_path / "f.db")
    assert d.version() == dbmod.SCHEMA_VERSION == len(dbmod.MIGRATIONS)
    assert d.one("PRAGMA journal_mode")[0] == "wal"
    assert {r["name"] for r in d.query("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "schema_version", "devices", "bundles", "releases", "rollouts", "rollout_members", "desired", "leases"}
    d.close()
    assert Database(tmp_path / "f.db").version() == dbmod.SCHEMA_VERSION  # reopening changes nothing


def test_an_old_database_is_migrated_in_order_and_a_newer_one_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS[:1])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", 1)
    old = Database(tmp_path / "f.db")
    with old.tx() as c:
        c.execute("INSERT INTO releases(model, version, release, created_at) VALUES ('m', '1', 1, 0)")
    assert old.version() == 1 and not old.query("SELECT name FROM sqlite_master WHERE name='leases'")
    old.close()
    monkeypatch.undo()
    new = Database(tmp_path / "f.db")
    assert new.version() == dbmod.SCHEMA_VERSION
    assert new.query("SELECT name FROM sqlite_master WHERE name='leases'")
    assert new.one("SELECT version FROM releases")["version"] == "1"  # data kept
    with new.tx() as c:
        c.execute("INSERT INTO schema_version(version) VALUES (99)")
    new.close()
    with pytest.raises(DatabaseError) as e:
        Database(tmp_path / "f.db")
    assert e.value.reason == "newer-schema"


def test_a_failed_migration_leaves_the_schema_where_it_was(tmp_path, monkeypatch):
    def broken(c):
        c.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS + [broken])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", len(dbmod.MIGRATIONS))
    with pytest.raises(sqlite3.OperationalError):
        Database(tmp_path / "f.db")
    raw = sqlite3.connect(tmp_path / "f.db")
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(dbmod.MIGRATIONS) - 1
    assert not raw.execute("SELECT name FROM sqlite_master WHERE name='half'").fetchall()


def test_the_store_is_content_addressed(tmp_path):
    s = BundleStore(tmp_path)
    sha, n = s.add_stream(io.BytesIO(b"hello world"))
    assert n == 11 and s.path(sha).name == sha and s.path(sha).parent.name == sha[:2]
    assert s.add_stream(io.BytesIO(b"hello world")) == (sha, 11)  # same bytes, same file
    assert s.read(sha, 6, 100) == b"world"
    with pytest.raises(PublishError) as e:
        s.add_stream(io.BytesIO(b"x" * 100), max_bytes=10)
    assert e.value.reason == "too-large"
    with pytest.raises(PublishError):
        s.add_stream(io.BytesIO(b"short"), length=10)
    with pytest.raises(NotFound):
        s.read("0" * 64, 0, 1)
    assert not list(tmp_path.glob(".incoming-*"))


def test_publishing_groups_full_bundles_and_deltas_into_releases(tmp_path):
    b = bundles()
    store, reg = BundleStore(tmp_path / "b"), Registry(Database(tmp_path / "f.db"))
    s1, s2, sd = (store.add_file(p)[0] for p in (b.r1, b.r2, b.r2_delta))
    with pytest.raises(PublishError) as e:
        publish_bundles(reg, store, [sd])
    assert e.value.reason == "no-base"
    publish_bundles(reg, store, [s1])
    with pytest.raises(PublishError) as e:
        publish_bundles(reg, store, [sd])
    assert e.value.reason == "no-full-bundle"
    out = publish_bundles(reg, store, [sd, s2], trusted=[b.public_key])  # order does not matter
    assert [(p.release, p.delta_base_sha256) for p in out] == [(2, None), (2, s1)]
    rel = reg.find_release("test-mlp", "1.1.0")
    assert rel.bundles["linux-x86_64"].sha256 == s2 and rel.deltas[0].base_sha256 == s1
    junk = store.add_stream(io.BytesIO(b"not a bundle at all"))[0]
    with pytest.raises(PublishError) as e:
        publish_bundles(reg, store, [junk])
    assert e.value.reason == "not-a-bundle"
    from bitnet_edge.packagers.keys import generate_keypair
    from bitnet_edge.sdk.bundle.signing import load_public_key

    other = load_public_key(generate_keypair(tmp_path / "k").public_path)
    with pytest.raises(PublishError) as e:
        publish_bundles(reg, store, [s1], trusted=[other])
    assert e.value.reason == "bad-signature"


def test_bundle_and_delta_selection_by_capabilities():
    rel = ReleaseInfo(7, "m", "2", 2, {"linux-aarch64": BundleRow("a" * 64, 100, "linux-aarch64"),
                                       "jetson": BundleRow("b" * 64, 120, "jetson"),
                                       "linux-x86_64": BundleRow("c" * 64, 90, "linux-x86_64")},
                      (DeltaRow("d" * 64, 10, "linux-aarch64", "e" * 64),))
    profiles = {"jetson-orin-nano": "jetson", "raspberry-pi-5": "linux-aarch64"}
    libs = {"jetson": "linux-aarch64", "linux-aarch64": "linux-aarch64", "linux-x86_64": "linux-x86_64"}
    assert device_targets("jetson-orin-nano", "linux-aarch64", profiles, libs) == ["jetson", "linux-aarch64"]
    assert pick_bundle(rel, device_targets("jetson-orin-nano", "linux-aarch64", profiles, libs)).target == "jetson"
    assert pick_bundle(rel, device_targets(None, "linux-x86_64", profiles, libs)).target == "linux-x86_64"
    assert pick_bundle(rel, device_targets(None, "macos-arm64", profiles, libs)) is None
    pi = pick_bundle(rel, device_targets("raspberry-pi-5", "linux-aarch64", profiles, libs))
    assert release_ref(rel, pi, "e" * 64, 4096).delta.sha256 == "d" * 64  # holds the base: delta offered
    assert release_ref(rel, pi, "f" * 64, 4096).delta is None
    assert release_ref(rel, pi, None, 4096).delta is None


def test_metrics_text_is_prometheus_exposition():
    text = render_metrics(
        [{"online": True, "model": "m", "version": "1", "release": 1},
         {"online": False, "model": None, "version": None, "release": None}],
        [{"id": "ro-1", "state": "running", "stage": 1, "counts": {"succeeded": 3, "assigned": 1}, "done": 3,
          "devices": 4}],
        {"bytes_sent": 123, "chunks_sent": 2, "rx:state": 5, "dropped:malformed": 2}, 0)
    lines = text.splitlines()
    assert 'bne_fleet_devices{state="online"} 1' in lines
    assert 'bne_fleet_devices_release{model="m",version="1",release="1"} 1' in lines
    assert 'bne_fleet_rollout_progress_ratio{rollout="ro-1"} 0.75' in lines
    assert "bne_fleet_bytes_sent_total 123" in lines
    assert 'bne_fleet_dropped_messages_total{reason="malformed"} 2' in lines
    assert all(ln.startswith("#") or " " in ln for ln in lines)
