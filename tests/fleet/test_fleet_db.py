"""Fleet pieces without a broker: database migrations and the driver lease (on SQLite and on a real
PostgreSQL server), the bundle store, publishing, bundle and delta selection, the metrics text."""

from __future__ import annotations

import io
import sqlite3
import threading
import time

import pytest
from tests.support.fleet_helpers import bundles
from tests.support.postgres import postgres_server  # noqa: F401 - fixture

from bitnet_edge.fleet import db as dbmod
from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.driver import RolloutDriver
from bitnet_edge.fleet.errors import DatabaseError, NotFound, PublishError
from bitnet_edge.fleet.metrics import render_metrics
from bitnet_edge.fleet.publish import publish_bundles
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.selection import BundleRow, DeltaRow, ReleaseInfo, device_targets, pick_bundle, release_ref
from bitnet_edge.fleet.store import BundleStore


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a fresh registry database lives: a SQLite file, or a new database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "f.db"
    return request.getfixturevalue("postgres_server").new_database()


TABLES = {"schema_version", "devices", "bundles", "releases", "rollouts", "rollout_members", "desired", "leases"}


def test_a_fresh_database_gets_every_migration(target):
    d = Database(target)
    assert d.version() == dbmod.SCHEMA_VERSION == len(dbmod.MIGRATIONS)
    assert d.tables() >= TABLES
    if d.kind == "sqlite":
        assert d.one("PRAGMA journal_mode")[0] == "wal"
    else:  # PostgreSQL's INTEGER and REAL are 32-bit: sizes past 2 GiB and timestamps would not fit
        narrow = d.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                         "WHERE table_schema = current_schema() AND data_type IN ('integer', 'real') "
                         "AND table_name <> 'schema_version'")
        assert not narrow, [tuple(r) for r in narrow]
    d.close()
    again = Database(target)
    assert again.version() == dbmod.SCHEMA_VERSION  # reopening changes nothing
    assert [r["version"] for r in again.query("SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, dbmod.SCHEMA_VERSION + 1))


def test_an_old_database_is_migrated_in_order_and_a_newer_one_refused(target, monkeypatch):
    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS[:1])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", 1)
    old = Database(target)
    with old.tx() as c:
        c.execute("INSERT INTO releases(model, version, release, created_at) VALUES ('m', '1', 1, 0)")
    assert old.version() == 1 and "leases" not in old.tables()
    old.close()
    monkeypatch.undo()
    new = Database(target)
    assert new.version() == dbmod.SCHEMA_VERSION
    assert "leases" in new.tables()
    assert new.one("SELECT version FROM releases")["version"] == "1"  # data kept
    with new.tx() as c:
        c.execute("INSERT INTO schema_version(version) VALUES (99)")
    new.close()
    with pytest.raises(DatabaseError) as e:
        Database(target)
    assert e.value.reason == "newer-schema"


def test_a_failed_migration_leaves_the_schema_where_it_was(target, monkeypatch):
    def broken(c):
        c.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS + [broken])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", len(dbmod.MIGRATIONS))
    with pytest.raises(RuntimeError, match="boom"):
        Database(target)
    monkeypatch.undo()
    d = Database(target)  # DDL is transactional on both engines: the half-made table is gone
    assert d.version() == dbmod.SCHEMA_VERSION and "half" not in d.tables()
    if d.kind == "sqlite":
        raw = sqlite3.connect(target)
        assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == dbmod.SCHEMA_VERSION


def test_the_fleet_writes_portable_sql():
    """SQLite-only spellings break the PostgreSQL registry (fleet/dialect.py says what to write)."""
    import inspect
    import re
    from pathlib import Path

    import bitnet_edge.fleet as fleet_pkg

    sqlite_only = re.compile(r"INSERT OR (IGNORE|REPLACE)|\.lastrowid|json_extract\(|sqlite_master|PRAGMA ")
    offenders = [f"{p.name}:{i}" for p in Path(fleet_pkg.__file__).parent.glob("*.py")
                 if p.name not in ("dialect.py",)
                 for i, line in enumerate(p.read_text().splitlines(), 1) if sqlite_only.search(line)]
    assert not offenders, offenders
    raw_types = re.compile(r"\b(INTEGER|REAL|BLOB|AUTOINCREMENT|SERIAL|BYTEA)\b")
    for m in dbmod.MIGRATIONS:  # column types as tokens: {int} {real} {blob} {id}
        assert not raw_types.search(inspect.getsource(m)), m.__name__


def test_replicas_starting_together_apply_each_migration_once(target):
    opened, errors = [], []

    def open_one():
        try:
            opened.append(Database(target))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(opened) == 4
    assert sorted(r["version"] for r in opened[0].query("SELECT version FROM schema_version")) == list(
        range(1, dbmod.SCHEMA_VERSION + 1))
    for d in opened:
        d.close()


def test_the_driver_lease_has_one_holder_and_passes_on_expiry_or_release(target):
    dbs = [Database(target) for _ in range(3)]
    drivers = [RolloutDriver(d, Registry(d), lambda t, p: True, chunk_size=4096, holder=f"r{i}", lease_seconds=1.0)
               for i, d in enumerate(dbs)]
    # three replicas race for the lease, each from its own connection
    results: dict[str, list[bool]] = {d.holder: [] for d in drivers}
    barrier = threading.Barrier(3)

    def race(drv):
        barrier.wait()
        for _ in range(10):
            results[drv.holder].append(drv.is_leader())

    threads = [threading.Thread(target=race, args=(drv,)) for drv in drivers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [h for h, r in results.items() if any(r)]
    assert len(winners) == 1 and all(results[winners[0]][results[winners[0]].index(True):])  # kept once taken
    holder = dbs[0].one("SELECT holder FROM leases WHERE name='driver'")["holder"]
    assert holder == winners[0]
    leader = next(d for d in drivers if d.holder == holder)
    others = [d for d in drivers if d is not leader]
    # the leader stops renewing: nobody takes over before the lease expires, somebody after
    assert not any(d.is_leader() for d in others)
    time.sleep(1.2)
    assert [d.is_leader() for d in others].count(True) == 1
    assert not leader.is_leader()
    # a replica that stops releases the lease: the next one takes it at once
    new = next(d for d in others if d._held)
    new.release_lease()
    assert leader.is_leader()
    for d in dbs:
        d.close()


def test_the_postgresql_connection_reports_failures_without_the_password(postgres_server):
    url = postgres_server.url(password="not-the-password")
    with pytest.raises(DatabaseError) as e:
        Database(url)
    assert e.value.reason == "unreachable" and "not-the-password" not in str(e.value) and "***" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_dropped_postgresql_connection_is_reopened(postgres_server):
    url = postgres_server.new_database()
    d = Database(url)
    pid = d.one("SELECT pg_backend_pid() AS pid")["pid"]
    with postgres_server.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)
    assert d.one("SELECT pg_backend_pid() AS pid")["pid"] != pid  # reconnected, the read retried once
    with d.tx() as c:
        c.execute("INSERT INTO leases(name, holder, expires) VALUES ('x', 'y', 0)")
    assert d.one("SELECT holder FROM leases WHERE name='x'")["holder"] == "y"
    d.close()


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


def test_publishing_groups_full_bundles_and_deltas_into_releases(target, tmp_path):
    b = bundles()
    store, reg = BundleStore(tmp_path / "b"), Registry(Database(target))
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


def test_the_dialects_spell_types_and_placeholders_and_hide_passwords():
    from bitnet_edge.fleet.dialect import POSTGRES, SQLITE, redact

    ddl = "CREATE TABLE t (id {id}, n {int}, ts {real}, b {blob}, j TEXT DEFAULT '{}')"
    assert SQLITE.ddl(ddl) == ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, ts REAL, b BLOB, "
                               "j TEXT DEFAULT '{}')")
    assert POSTGRES.ddl(ddl) == ("CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, "
                                 "ts DOUBLE PRECISION, b BYTEA, j TEXT DEFAULT '{}')")
    with pytest.raises(ValueError, match="float"):
        POSTGRES.ddl("x {float}")
    q = "SELECT * FROM t WHERE a=? AND b LIKE 'x%' AND c=?"
    assert SQLITE.sql(q) == q and POSTGRES.sql(q) == "SELECT * FROM t WHERE a=%s AND b LIKE 'x%%' AND c=%s"
    assert redact("postgresql://fleet:s3cret@db.example:5432/fleet?sslmode=require") == \
        "postgresql://fleet:***@db.example:5432/fleet?sslmode=require"
    assert redact("postgresql://fleet@db/fleet?password=s3cret") == "postgresql://fleet@db/fleet?password=***"


def test_one_desired_state_per_device_migrates_to_one_per_model(target, monkeypatch):
    """Migration 4 (ADR 0021): each stored desired state is copied under its release's model; the
    old ``.../desired`` retained message stays for an older agent and is cleared once the device
    reports its models; a rollout then sets ``.../desired/{model}`` only."""
    from bitnet_edge.sdk.wire import protocol as P

    def desired(dev: str, model: str) -> bytes:
        ref = P.ReleaseRef(model=model, version="1", release=1, target="linux-x86_64", bundle_sha256="a" * 64,
                           bundle_size=10, chunk_size=4096)
        return P.DesiredState(device_id=dev, rollout_id="ro-1", release=ref, issued_at=5.0).model_dump_json().encode()

    monkeypatch.setattr(dbmod, "MIGRATIONS", dbmod.MIGRATIONS[:3])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", 3)
    old = Database(target)
    reg = Registry(old)
    for dev in ("d1", "d2", "d3"):
        reg.on_presence(P.Presence(type="birth", device_id=dev, ts=1.0), 1.0)
    with old.tx() as c:
        c.executemany("INSERT INTO desired(device_id, payload, rollout_id, updated_at) VALUES (?,?,?,?)",
                      [("d1", desired("d1", "test-mlp"), "ro-1", 2.0), ("d2", b"", "ro-1", 2.0),
                       ("d3", b"{not json", None, 2.0)])
    old.close()
    monkeypatch.undo()

    db = Database(target)
    assert db.version() == dbmod.SCHEMA_VERSION >= 4
    rows = [(r["device_id"], r["model"], bytes(r["payload"]), r["rollout_id"]) for r in db.query(
        "SELECT device_id, model, payload, rollout_id FROM desired_models ORDER BY device_id")]
    assert rows == [("d1", "test-mlp", desired("d1", "test-mlp"), "ro-1")]  # cleared and unreadable: not copied
    assert db.one("SELECT COUNT(*) AS n FROM desired")["n"] == 3  # what is retained on .../desired, kept
    sent: list[tuple[str, bytes]] = []
    reg = Registry(db)
    drv = RolloutDriver(db, reg, lambda t, p: sent.append((t, p)) or True, chunk_size=4096)
    assert drv.republish() == 4
    assert (P.desired_topic("d1", "test-mlp"), desired("d1", "test-mlp")) in sent
    assert (P.device_topic("d1", "desired"), desired("d1", "test-mlp")) in sent  # an older agent still reads it
    assert drv.allowed_files("d1") == {"a" * 64}
    # d1's agent now reports its models: its single-model retained message is cleared, once
    inst = P.InstalledRelease(model="test-mlp", version="1", release=1, bundle_sha256="a" * 64,
                              target="linux-x86_64")
    reg.on_state(P.ReportedState(device_id="d1", ts=3.0, installed=inst, health="ok", models=[
        P.ModelState(name="test-mlp", installed=inst, health="ok"),
        P.ModelState(name="test-det", installed=None, health="unknown")]), 3.0)
    sent.clear()
    assert drv.clear_legacy() == 1 and sent == [(P.device_topic("d1", "desired"), b"")]
    assert drv.clear_legacy() == 0
    assert {r["device_id"] for r in db.query("SELECT device_id FROM desired")} == {"d2", "d3"}
    d1 = reg.device("d1")
    assert d1.models_reported and [m.name for m in d1.models] == ["test-det", "test-mlp"]
    assert reg.device("d2").models == () and not reg.device("d2").models_reported
    db.close()


def test_a_single_model_mirror_is_cleared_only_once_the_device_is_done_with_it(tmp_path):
    """An agent that reads .../desired and .../desired/{model} takes an empty .../desired as "stop
    fetching the model it named": the fleet clears the mirror only after that install finished."""
    from bitnet_edge.sdk.wire import protocol as P

    db = Database(tmp_path / "f.db")
    reg = Registry(db)
    sent: list[tuple[str, bytes]] = []
    now = [1000.0]
    drv = RolloutDriver(db, reg, lambda t, p: sent.append((t, p)) or True, chunk_size=4096, clock=lambda: now[0])
    ref = P.ReleaseRef(model="test-det", version="2", release=2, target="linux-x86_64", bundle_sha256="b" * 64,
                       bundle_size=10, chunk_size=4096)
    mirror = P.DesiredState(device_id="d1", rollout_id="ro-b", release=ref, issued_at=999.0).model_dump_json().encode()
    for dev in ("d1", "d2"):
        reg.on_presence(P.Presence(type="birth", device_id=dev, ts=1.0), 1.0)
    with db.tx() as c:
        c.executemany("INSERT INTO desired(device_id, payload, rollout_id, updated_at) VALUES (?,?,?,?)",
                      [("d1", mirror, "ro-b", 999.0), ("d2", b"", "ro-x", 999.0)])
    inst = P.InstalledRelease(model="test-mlp", version="1", release=1, bundle_sha256="a" * 64, target="linux-x86_64")
    for dev in ("d1", "d2"):  # both now list their models; d1 is still fetching test-det 2
        reg.on_state(P.ReportedState(device_id=dev, ts=2.0, installed=inst, health="ok", models=[
            P.ModelState(name="test-mlp", installed=inst, health="ok")]), 2.0)
    assert drv.clear_legacy() == 0 and sent == []  # d2's mirror was empty already: forgotten, nothing sent
    assert [r["device_id"] for r in db.query("SELECT device_id FROM desired")] == ["d1"]
    # until cleared, the mirror follows the latest desired state of the model it names (a reconnect
    # must never hand the agent an older one), and only of that model
    newer = mirror.replace(b'"issued_at":999.0', b'"issued_at":999.5')
    with db.tx() as c:
        assert not RolloutDriver._mirror(c, "d1", "test-mlp", mirror, "ro-a", 999.5, legacy=False)
        assert RolloutDriver._mirror(c, "d1", "test-det", newer, "ro-b", 999.5, legacy=False)
        assert RolloutDriver._mirror(c, "d1", "test-det", mirror, "ro-b", 999.6, legacy=False)
    assert bytes(db.one("SELECT payload FROM desired WHERE device_id='d1'")["payload"]) == mirror
    failed = P.Outcome(rollout_id="ro-b", bundle_sha256="b" * 64, result="rolled_back", reason="health_failed",
                       message="x", ts=3.0)
    reg.on_state(P.ReportedState(device_id="d1", ts=3.0, installed=inst, health="ok", last_outcome=failed, models=[
        P.ModelState(name="test-mlp", installed=inst, health="ok"),
        P.ModelState(name="test-det", installed=None, health="unknown", last_outcome=failed)]), 3.0)
    assert drv.clear_legacy() == 1 and sent == [(P.device_topic("d1", "desired"), b"")]
    # and one the device never finishes with is cleared after _LEGACY_CLEAR_AFTER seconds
    with db.tx() as c:
        c.execute("INSERT INTO desired(device_id, payload, rollout_id, updated_at) VALUES ('d2', ?, 'ro-b', ?)",
                  (mirror.replace(b'"d1"', b'"d2"'), now[0]))
    assert drv.clear_legacy() == 0
    now[0] += 3601
    assert drv.clear_legacy() == 1
    db.close()
