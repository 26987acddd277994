"""Several models per device, the fleet side (ADR 0021), with real brokers (the embedded amqtt one
and Mosquitto) and the real FleetSync (tests.support.fleet_helpers.MultiFakeAgent): two models
rolled out independently to the same devices, each on its own ``.../desired/{model}``; a rollout,
its failure threshold and its rollback touch only its own model; the registry, ``fleet devices``
and the metrics show every model of every device; an older agent (no ``models``) is still served
on ``.../desired``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.support.fleet_helpers import FakeAgent, Mosquitto, MultiFakeAgent, bundles, enroll, model_b_bundles, wait_for
from tests.support.postgres import postgres_server  # noqa: F401 - fixture
from tests.support.tools import require_tool

from bitnet_edge.cli import main
from bitnet_edge.fleet.config import FleetConfig
from bitnet_edge.fleet.rollout import RolloutSpec
from bitnet_edge.fleet.service import FleetService
from bitnet_edge.sdk.wire import protocol as P
from bitnet_edge.sdk.wire.broker import BrokerConnection

A, B = "test-mlp", "test-det"


@pytest.fixture(params=["embedded", "mosquitto", "embedded-postgresql"])
def fleet(request, tmp_path):
    """A started service on the embedded broker (per-device logins) or on Mosquitto; its registry
    SQLite, or a real PostgreSQL server."""
    m = database = None
    if request.param == "mosquitto":
        m = Mosquitto(require_tool("mosquitto", "mosquitto"), tmp_path).start()
    if request.param.endswith("postgresql"):
        database = request.getfixturevalue("postgres_server").new_database()
    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), broker=BrokerConnection(url=m and m.url),
                                   database=database, embedded_port=0, api_port=0, chunk_bytes=4096,
                                   tick=0.2)).start()
    agents: list = []
    svc.test_agents = agents
    yield svc
    for a in agents:
        a.stop()
    svc.stop()
    if m is not None:
        m.stop()


def _agent(svc, tmp_path, device_id, cls=MultiFakeAgent, **kw):
    a = cls(device_id, tmp_path / device_id, svc.broker_url, **{**enroll(svc, device_id), **kw}).start()
    svc.test_agents.append(a)
    return a


def _publish(svc, *paths):
    return svc.publish([svc.store.add_file(p)[0] for p in paths])


def _desired(svc, device_id):
    """(model -> (rollout id, payload)) of the fleet's desired states of one device."""
    return {r["model"]: (r["rollout_id"], bytes(r["payload"])) for r in svc.db.query(
        "SELECT model, rollout_id, payload FROM desired_models WHERE device_id=?", (device_id,))}


def _wait_done(svc, rid, state="completed", timeout=30):
    wait_for(lambda: svc.rollout(rid)["state"] == state, timeout=timeout, what=f"rollout {rid} {state}")
    return svc.rollout(rid)


def test_two_models_are_rolled_out_and_rolled_back_independently_on_the_same_devices(fleet, tmp_path):
    b, mb = bundles(), model_b_bundles()
    _publish(fleet, b.r1, b.r2, b.r2_delta)
    _publish(fleet, mb.r1, mb.r2)
    devs = [_agent(fleet, tmp_path, d) for d in ("d1", "d2", "d3")]
    wait_for(lambda: len(fleet.devices()) == 3, what="three births")

    # model A everywhere, then model B everywhere: B's rollout leaves A's desired state untouched
    ra = _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=A, version="1.0.0", stages=[34, 100]))["id"])
    assert ra["done"] == 3 and all(a.installed(A).release == 1 and a.installed(B) is None for a in devs)
    a_desired = {a.device_id: _desired(fleet, a.device_id)[A] for a in devs}
    rb = _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=B, version="0.1.0", stages=[50, 100]))["id"])
    assert rb["done"] == 3 and rb["model"] == B
    for a in devs:
        assert a.installed(A).release == 1 and a.installed(B).version == "0.1.0"
        assert _desired(fleet, a.device_id)[A] == a_desired[a.device_id]  # byte for byte: not re-issued
        assert [m for m, _, _ in a.installs] == [A, B]  # B's rollout installed nothing of A

    # A's next release goes out as a delta against A's own installed bundle; B is not touched
    ra2 = _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=A, version="1.1.0", stages=[100]))["id"])
    assert ra2["done"] == 3
    for a in devs:
        assert a.installed(A).version == "1.1.0" and a.installs[-1][0] == A and a.installs[-1][2]  # a delta
        assert a.installed(B).version == "0.1.0"

    # B 0.2.0, then rolled back: B returns to 0.1.0 (a signed downgrade), A stays on 1.1.0
    rb2 = fleet.create_rollout(RolloutSpec(model=B, version="0.2.0", stages=[100]))["id"]
    _wait_done(fleet, rb2)
    assert all(a.installed(B).version == "0.2.0" for a in devs)
    a_desired = {a.device_id: _desired(fleet, a.device_id)[A] for a in devs}
    assert fleet.rollout_command(rb2, "rollback")["state"] == "rolled_back"
    wait_for(lambda: fleet.rollout(rb2)["counts"].get("reverted") == 3, timeout=30, what="B rolled back")
    for a in devs:
        assert a.installed(B).version == "0.1.0" and a.installed(A).version == "1.1.0"
        assert _desired(fleet, a.device_id)[A] == a_desired[a.device_id]
        rolled = json.loads(_desired(fleet, a.device_id)[B][1])
        assert rolled["allow_downgrade"] and rolled["release"]["version"] == "0.1.0"

    # the registry and `fleet devices` show every model of every device
    wait_for(lambda: all(len(d["models"]) == 2 for d in fleet.devices()), what="both models reported")
    for d in fleet.devices():
        got = {m["name"]: m["installed"]["version"] for m in d["models"]}
        assert got == {A: "1.1.0", B: "0.1.0"} and d["models_reported"]
    r = CliRunner().invoke(main, ["fleet", "devices", "--data", str(fleet.data), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    rows = rows.get("devices", rows) if isinstance(rows, dict) else rows
    assert {m["name"] for m in rows[0]["models"]} == {A, B}
    table = CliRunner().invoke(main, ["fleet", "devices", "--data", str(fleet.data)], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "test-mlp 1.1.0" in table.output and "test-det 0.1.0" in table.output, \
        table.output
    metrics = fleet.metrics_text()
    assert 'bne_fleet_device_models{model="test-det",version="0.1.0",release="1"} 3' in metrics
    assert 'bne_fleet_device_models{model="test-mlp",version="1.1.0",release="2"} 3' in metrics


def test_a_failing_model_pauses_its_own_rollout_only(fleet, tmp_path):
    b, mb = bundles(), model_b_bundles()
    _publish(fleet, b.r1, b.r3)
    _publish(fleet, mb.r1)
    devs = [_agent(fleet, tmp_path, d, fail=(B,)) for d in ("d1", "d2")]
    wait_for(lambda: len(fleet.devices()) == 2, what="births")
    _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=A, version="1.0.0", stages=[100]))["id"])
    rb = fleet.create_rollout(RolloutSpec(model=B, version="0.1.0", stages=[50, 100], failure_threshold=0.1))["id"]
    st = _wait_done(fleet, rb, "paused")
    assert "failure-threshold" in st["reason"] and st["counts"].get("failed") == 1
    assert [m["reason"] for m in st["members"] if m["status"] == "failed"] == ["health_failed"]
    # model A keeps going while B's rollout is paused: a new release of A reaches both devices
    ra = _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=A, version="1.2.0", stages=[100]))["id"])
    assert ra["done"] == 2 and all(a.installed(A).release == 3 and a.installed(B) is None for a in devs)
    assert fleet.rollout(rb)["state"] == "paused"  # A's rollout did not complete B's
    # B's rollback clears only B's desired state (nothing to go back to), A's stays
    fleet.rollout_command(rb, "rollback")
    wait_for(lambda: all(_desired(fleet, a.device_id).get(B, ("", b"x"))[1] == b"" for a in devs
                         if B in _desired(fleet, a.device_id)), what="B's desired cleared")
    for a in devs:
        assert json.loads(_desired(fleet, a.device_id)[A][1])["release"]["version"] == "1.2.0"


def test_an_older_agent_is_served_on_the_single_model_topic(fleet, tmp_path):
    """A device whose agent lists no models (before ADR 0021) reads only ``.../desired``: the fleet
    mirrors its desired state there, reads the rollout's outcome from the single-model fields, and
    clears the mirror once the device reports its models."""
    b = bundles()
    _publish(fleet, b.r1)
    old = _agent(fleet, tmp_path, "old", cls=FakeAgent)
    new = _agent(fleet, tmp_path, "new")
    wait_for(lambda: len(fleet.devices()) == 2, what="births")
    _wait_done(fleet, fleet.create_rollout(RolloutSpec(model=A, version="1.0.0", stages=[100]))["id"])
    assert old.installed.release == 1 and new.installed(A).release == 1
    legacy = {r["device_id"] for r in fleet.db.query("SELECT device_id FROM desired WHERE payload <> ?", (b"",))}
    assert legacy == {"old"}  # the new agent's mirror (it reported no models before its first install) is cleared
    models = {d["id"]: d["models"] for d in fleet.devices()}
    assert [m["name"] for m in models["old"]] == [A] and [m["name"] for m in models["new"]] == [A]


def test_a_devices_chunk_requests_are_served_for_the_files_of_any_of_its_models(tmp_path):
    from bitnet_edge.fleet.db import Database
    from bitnet_edge.fleet.driver import RolloutDriver
    from bitnet_edge.fleet.registry import Registry

    db = Database(tmp_path / "f.db")
    drv = RolloutDriver(db, Registry(db), lambda t, p: True, chunk_size=4096)

    def desired(dev, model, sha, delta=None):
        ref = P.ReleaseRef(model=model, version="1", release=1, target="linux-x86_64", bundle_sha256=sha,
                           bundle_size=10, chunk_size=4096,
                           delta=None if delta is None else P.DeltaRef(base_sha256="e" * 64, sha256=delta, size=5))
        return P.DesiredState(device_id=dev, rollout_id="r", release=ref, issued_at=1.0).model_dump_json().encode()

    with db.tx() as c:
        c.executemany("INSERT INTO desired_models(device_id, model, payload, rollout_id, updated_at) "
                      "VALUES (?,?,?,?,0)", [("d1", A, desired("d1", A, "a" * 64, "d" * 64), "r"),
                                             ("d1", B, desired("d1", B, "b" * 64), "r"),
                                             ("d1", "cleared", b"", "r"), ("d2", A, desired("d2", A, "c" * 64), "r")])
    assert drv.allowed_files("d1") == {"a" * 64, "b" * 64, "d" * 64}
    assert drv.allowed_files("d2") == {"c" * 64} and drv.allowed_files("d3") == set()
    assert drv.may_fetch("d1", "b" * 64) and not drv.may_fetch("d2", "b" * 64)
    db.close()
