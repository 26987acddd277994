"""Scale-out with real servers and real processes (docs/scaling.md, "What is tested here").

- Two `fleet serve` replicas on one PostgreSQL database (a throwaway `initdb` cluster) and one
  Mosquitto, with real agents: exactly one replica holds the driver lease; the leader is SIGKILLed
  right after a staged rollout starts, the other takes the lease over and drives the rollout's
  second stage to completion.
- A bridged broker topology: agents connect to a site Mosquitto bridged to a core Mosquitto where
  the fleet connects; the rollout crosses the bridge, and the site broker restarting in the middle of
  the transfer loses nothing (the downloads resume, the rollout completes).
"""

from __future__ import annotations

import time

import pytest
from tests.support.bundle_models import built_library, make_mlp_dir
from tests.support.fleet_helpers import Mosquitto, wait_for
from tests.support.postgres import postgres_server  # noqa: F401 - fixture
from tests.support.procs import HOST_DEVICE, AgentProc, FleetProc, held
from tests.support.tools import require_tool

from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.native.targets import host_target

VERSION = "1.0.0"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A signed ~1 MB bundle of a ternary MLP for this machine (about 550 chunks of 2 KiB)."""
    root = tmp_path_factory.mktemp("scale-release")
    generate_keypair(root / "keys", "release")
    key = load_private_key(root / "keys" / "release.key")
    model = make_mlp_dir(root / "model", sizes=(512, 2048, 2048, 16), seed=5, name="scale-mlp")
    opts = PackageOptions(libraries={host_target(): built_library(host_target())}, zstd_level=3)
    bundle = package_model(model, [HOST_DEVICE], VERSION, [key], root / "dist", release=1, options=opts)[0]
    return {"pub": root / "keys" / "release.pub", "bundle": bundle}


@pytest.fixture
def procs():
    """Every process a test starts, stopped at the end whatever happened."""
    started: list = []
    yield started
    for p in started:  # all at once, then wait for each
        if p.proc is not None and p.proc.poll() is None:
            p.proc.terminate()
    for p in reversed(started):
        p.stop()


def _mosquitto():
    return require_tool("mosquitto", "mosquitto")


def _status(fleet: FleetProc, rollout_id: str) -> dict:
    return fleet.get(f"/v1/rollouts/{rollout_id}")


def test_two_replicas_on_postgresql_hand_the_driver_lease_over(postgres_server, release, procs, tmp_path):
    broker = Mosquitto(_mosquitto(), tmp_path).start()
    procs.append(broker)
    db_url = postgres_server.new_database()
    data = tmp_path / "fleet"  # the shared bundle store (a shared filesystem between hosts)
    lease = 4.0  # renewed every second (tick): a loaded machine may stall a pass for a while
    args = ("--broker", broker.url, "--share-group", "bne-fleet", "--lease-seconds", lease, "--chunk-kib", 16,
            "--trust", release["pub"])
    env = {"BNE_FLEET_DB": db_url}  # the password stays off the command line
    a = FleetProc(tmp_path, data, *args, replica="a", env=env)
    procs.append(a)
    agents = [AgentProc(tmp_path / "agents", f"pg-{i}", release["pub"], broker.url, wait=False) for i in range(2)]
    procs.extend(agents)
    a.wait_ready()
    wait_for(lambda: (a.health() or {}).get("leader"), 30, what="replica a leads")
    b = FleetProc(tmp_path, data, *args, replica="b", env=env)
    procs.append(b)
    b.wait_ready()
    for x in agents:
        x.wait_ready()
    assert a.health()["database"] == b.health()["database"] == "postgresql"
    for replica in (a, b):  # both read one registry
        wait_for(lambda r=replica: sum(d["online"] for d in r.get("/v1/devices")) == 2, 30, what="two devices online")

    # exactly one replica holds the driver lease: a (the row in the database says so too)
    wait_for(lambda: "replica b does not hold the driver lease" in b.logs[-1].read_text(), 15,
             what="b asked for the lease")
    assert [a.health()["leader"], b.health()["leader"]] == [True, False]
    with postgres_server.connect(db_url.rsplit("/", 1)[1]) as c:
        holder, expires, now = c.execute("SELECT holder, expires, EXTRACT(EPOCH FROM clock_timestamp()) "
                                         "FROM leases WHERE name='driver'").fetchone()
    assert holder == "a" and float(expires) > float(now)

    # operator commands go to the follower; the leader dies right after the rollout starts (milliseconds:
    # the first stage's device cannot have finished, so only a driver pass after the kill starts stage 2)
    b.cli("publish", release["bundle"].path)
    st = b.client().post("/v1/rollouts", {"model": "scale-mlp", "version": VERSION, "stages": [50, 100],
                                          "device_timeout": 120})
    a.kill()
    killed_at = time.monotonic()
    st = _status(b, st["id"])
    assert st["state"] == "running" and sorted(m["status"] for m in st["members"]) == ["assigned", "pending"], st

    # b takes the lease over once a's has expired, and drives the second stage
    wait_for(lambda: (b.health() or {}).get("leader"), lease + 20, what="b takes the lease over")
    assert "replica b holds the driver lease" in b.logs[-1].read_text()
    with postgres_server.connect(db_url.rsplit("/", 1)[1]) as c:
        assert c.execute("SELECT holder FROM leases WHERE name='driver'").fetchone()[0] == "b"
    wait_for(lambda: _status(b, st["id"])["state"] == "completed", 120, interval=0.5, what="rollout completed")
    st = _status(b, st["id"])
    assert st["done"] == 2 and all(m["status"] == "succeeded" for m in st["members"]), st
    waves = sorted(m["wave"] for m in st["members"])
    assert waves == [0, 1], st  # the second stage was assigned after the kill: by b
    wait_for(lambda: all(x.serving() == VERSION for x in agents), 60, interval=0.5, what="agents serving")
    assert time.monotonic() - killed_at < 150


def test_a_rollout_crosses_a_bridge_and_survives_the_site_broker_restarting(release, procs, tmp_path):
    exe = _mosquitto()
    for d in ("core", "site"):
        (tmp_path / d).mkdir()
    core = Mosquitto(exe, tmp_path / "core").start()
    procs.append(core)
    # the site broker opens the bridge: device topics both ways, QoS 1, a persistent session on the
    # core (what the fleet sends while the site is down waits there)
    site = Mosquitto(exe, tmp_path / "site", "\n".join([
        "connection site-to-core", f"address 127.0.0.1:{core.port}", "topic bne/v1/devices/# both 1",
        "remote_clientid bne-site-1", "cleansession false", "restart_timeout 1", "notifications false", ""]))
    site.start()
    procs.append(site)
    fleet = FleetProc(tmp_path, tmp_path / "fleet", "--broker", core.url, "--chunk-kib", 2,
                      "--trust", release["pub"])  # the fleet knows only the core broker
    procs.append(fleet)
    agents = [AgentProc(tmp_path / "agents", f"site-{i}", release["pub"], site.url, wait=False) for i in range(2)]
    procs.extend(agents)
    fleet.wait_ready()
    for x in agents:
        x.wait_ready()
    wait_for(lambda: sum(d["online"] for d in fleet.get("/v1/devices")) == 2, 30, what="births across the bridge")
    fleet.cli("publish", release["bundle"].path)
    st = fleet.cli("rollout", "create", "scale-mlp", VERSION, "--stages", "100", "--timeout", "300")
    n_chunks = -(-release["bundle"].size // 2048)
    assert n_chunks > 500

    # the site broker goes down in the middle of the transfer and comes back on the same port
    wait_for(lambda: 0.3 * 2 * n_chunks < sum(held(x.data)[0] for x in agents) < 0.7 * 2 * n_chunks, 60,
             interval=0.005, what="agents mid-transfer")
    site.stop()
    before = [held(x.data)[0] for x in agents]
    assert sum(before) > 0.3 * 2 * n_chunks and any(h < n_chunks for h in before), (before, n_chunks)
    time.sleep(1.0)
    site.start()
    wait_for(lambda: all(x.serving() == VERSION for x in agents), 120, interval=0.5, what="agents serving")
    wait_for(lambda: _status(fleet, st["id"])["state"] == "completed", 60, interval=0.5, what="rollout completed")
    st = _status(fleet, st["id"])
    assert st["done"] == 2, st
    # nothing lost: the fleet sent each chunk about once (the requests in flight at the restart, a window
    # of 64 per agent, may have gone twice); downloads that started over would add what they held
    # (over 30% of all chunks, more than that slack)
    sent = fleet.metrics()["bne_fleet_chunks_sent_total"]
    assert 2 * n_chunks <= sent <= 2 * n_chunks + 2 * 2 * 64, (sent, n_chunks, before)
    devices = {d["id"]: d for d in fleet.cli("devices")}  # what the operator sees
    assert all(devices[x.dev]["online"] and devices[x.dev]["installed"]["version"] == VERSION for x in agents)
