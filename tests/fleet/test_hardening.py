"""[hardening] (issue 18, security): the fleet's private files, the embedded broker's per-device
credentials and ACLs, signed desired states, and who may fetch which bundle."""

from __future__ import annotations

import os
import stat

from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.fleet.db import Database


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_the_fleet_data_dir_is_private_and_the_registry_0600(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "fleet"
        data.mkdir(mode=0o755)
        db = Database(data / "fleet.db")  # the SQLite registry, WAL mode
        with db.tx() as c:
            c.execute("SELECT 1")
        for name in ("fleet.db", "fleet.db-wal", "fleet.db-shm"):
            if (data / name).exists():
                assert _mode(data / name) == 0o600, name
        r = CliRunner().invoke(main, ["fleet", "certs", "--data", str(data), "--json"])
        assert r.exit_code == 0, r.output
        assert _mode(data) == 0o700  # a loose directory made by someone else is tightened
        fresh = tmp_path / "fresh"
        r = CliRunner().invoke(main, ["fleet", "certs", "--data", str(fresh), "--json"])
        assert r.exit_code == 0, r.output
        assert _mode(fresh) == 0o700 and _mode(fresh / "pki") == 0o700
    finally:
        os.umask(old)


# ---- 1. the embedded broker: per-device credentials and ACLs ---------------------------------------

import threading  # noqa: E402
import time  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
import pytest  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from tests.support.fleet_helpers import FakeAgent, bundles, enroll, wait_for  # noqa: E402

from bitnet_edge.fleet.config import FleetConfig  # noqa: E402
from bitnet_edge.fleet.mqtt_auth import DeviceCredentials  # noqa: E402
from bitnet_edge.fleet.rollout import RolloutSpec  # noqa: E402
from bitnet_edge.fleet.service import FleetService  # noqa: E402
from bitnet_edge.sdk.wire import protocol as P  # noqa: E402


class Peer:
    """A raw paho client: what another local process can do with the embedded broker."""

    def __init__(self, port: int, client_id: str, user: str | None = None, password: str | None = None,
                 will: str | None = None):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        if will is not None:
            self.c.will_set(will, b"forged", qos=1, retain=True)
        self.got: list[tuple[str, bytes]] = []
        self.granted: dict[int, list] = {}
        self.result = threading.Event()
        self.refused: object = None
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.granted.__setitem__(mid, codes)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        self.result.wait(10)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.refused = reason_code if reason_code.is_failure else None
        self.result.set()

    @property
    def connected(self) -> bool:
        return self.result.is_set() and self.refused is None

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription."""
        _, mid = self.c.subscribe(topic, qos=1)
        codes = wait_for(lambda: self.granted.get(mid), timeout=5, what=f"SUBACK for {topic}")
        return not codes[0].is_failure

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def fleet(tmp_path):
    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), embedded_port=0, api_port=0,
                                   chunk_bytes=4096, tick=0.2)).start()
    yield svc
    svc.stop()


def test_the_embedded_broker_admits_enrolled_devices_to_their_own_topics_only(fleet, tmp_path):
    port = int(fleet.broker_url.rsplit(":", 1)[1])
    creds = DeviceCredentials(fleet.data)
    pw_b = creds.issue("dev-b")
    b = bundles()
    fleet.publish([fleet.store.add_file(b.r1)[0]])
    a = FakeAgent("dev-a", tmp_path / "dev-a", fleet.broker_url, **enroll(fleet, "dev-a")).start()
    peers = []
    try:
        wait_for(lambda: fleet.devices(), what="dev-a's birth")
        # refused at CONNECT: anonymous, a wrong password, another identity's client id, a will on another's topic
        for kw in (dict(client_id="anon"), dict(client_id="dev-b", user="dev-b", password="guess"),
                   dict(client_id="dev-a", user="dev-b", password=pw_b),
                   dict(client_id="bne-fleet-fleet-1", user="bne-fleet@fleet-1", password=pw_b),
                   dict(client_id="dev-b", user="dev-b", password=pw_b, will=P.device_topic("dev-a", "presence"))):
            p = Peer(port, **kw)
            peers.append(p)
            assert p.result.is_set() and not p.connected, kw
        assert a.sync.connected  # a refused client with dev-a's client id did not take its session over
        # admitted: dev-b, only its own topics
        evil = Peer(port, "dev-b", "dev-b", pw_b)
        peers.append(evil)
        assert evil.connected
        time.sleep(0.3)
        assert evil.got == []  # no retained message of another device on connect (amqtt 0.12 would send them)
        for topic in ("#", "bne/v1/devices/+/chunk/data", P.device_topic("dev-a", "desired"),
                      P.device_topic("dev-a", "chunk/data"), P.device_topic("dev-a", "state"),
                      "$SYS/#", P.device_topic("dev-b", "state")):
            assert not evil.subscribe(topic), topic
        assert evil.subscribe(P.device_topic("dev-b", "desired"))
        # several models (ADR 0021): .../desired/+ of its own id only, nothing of another device's models
        for topic in (P.desired_topic("dev-a", "test-mlp"), P.device_topic("dev-a", "desired") + "/+",
                      "bne/v1/devices/+/desired/+", "bne/v1/devices/dev-b/+/+", "bne/v1/devices/dev-b/desired/#",
                      "bne/v1/devices/dev-b/desired/+/x"):
            assert not evil.subscribe(topic), topic
        assert evil.subscribe(P.device_topic("dev-b", "desired") + "/+")
        assert evil.subscribe(P.desired_topic("dev-b", "test-mlp"))
        forged = P.DesiredState(device_id="dev-a", rollout_id=None, release=P.ReleaseRef(
            model="test-mlp", version="0.1", release=0, target="linux-x86_64", bundle_sha256="0" * 64,
            bundle_size=10, chunk_size=4096), allow_downgrade=True, issued_at=time.time())
        evil.c.publish(P.device_topic("dev-a", "desired"), forged.model_dump_json(), qos=1, retain=True)
        evil.c.publish(P.device_topic("dev-b", "desired"), forged.model_copy(update={"device_id": "dev-b"})
                       .model_dump_json(), qos=1, retain=True)  # a device may not write its own desired state
        evil.c.publish(P.desired_topic("dev-a", "test-mlp"), forged.model_dump_json(), qos=1, retain=True)
        evil.c.publish(P.desired_topic("dev-b", "test-mlp"), forged.model_copy(update={"device_id": "dev-b"})
                       .model_dump_json(), qos=1, retain=True)
        ghost = P.Presence(type="birth", device_id="ghost", ts=time.time(), capabilities=None)
        evil.c.publish(P.device_topic("ghost", "presence"), ghost.model_dump_json(), qos=1)
        state = a.get_state().model_copy(update={"installed": None})
        evil.c.publish(P.device_topic("dev-a", "state"), state.model_dump_json(), qos=1)
        # the real device still gets its rollout, and nothing forged arrived anywhere
        rid = fleet.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100]))["id"]
        wait_for(lambda: fleet.rollout(rid)["state"] == "completed", timeout=20, what="the rollout")
        assert a.installed is not None and a.installed.release == 1
        assert sorted(d["id"] for d in fleet.devices()) == ["dev-a"]  # no ghost registered
        assert a.sync.stats["dropped_messages"] == 0 and evil.got == []
        # revoked: the next connection is refused
        assert creds.revoke("dev-b")
        late = Peer(port, "dev-b", "dev-b", pw_b)
        peers.append(late)
        assert not late.connected
    finally:
        a.stop()
        for p in peers:
            p.close()


def _desired_for(device_id: str, bundle, *, issued_at: float, allow_downgrade: bool = True) -> P.DesiredState:
    import hashlib

    from bitnet_edge.sdk.bundle.verify import read_unverified

    _, m = read_unverified(bundle)
    ref = P.ReleaseRef(model=m.name, version=m.version, release=m.release, target=m.target,
                       bundle_sha256=hashlib.sha256(bundle.read_bytes()).hexdigest(),
                       bundle_size=bundle.stat().st_size, chunk_size=4096)
    return P.DesiredState(device_id=device_id, rollout_id="r-x", release=ref, allow_downgrade=allow_downgrade,
                          issued_at=issued_at)


def test_a_downgrade_flag_from_the_network_counts_only_when_the_fleet_signed_it(tmp_path):
    from bitnet_edge.fleet.desired_key import desired_key, desired_public_path
    from bitnet_edge.sdk.wire.desired_sig import sign_desired

    b = bundles()
    key = desired_key(tmp_path / "fleet")
    evil = desired_key(tmp_path / "evil")
    forged = _desired_for("d1", b.r1, issued_at=100.0)  # back to release 1, 'allow_downgrade': true

    # no fleet keys configured: the flag is not honoured
    plain = FakeAgent("d1", tmp_path / "plain", None, installed=b.r1, slot_rollback=True)
    plain._adopt(b.r2)
    plain.sync._on_desired(forged.model_dump_json().encode())
    out = plain.sync._last_outcome
    assert (out.result, out.reason) == ("rejected", "downgrade") and "signed by the fleet" in out.message
    assert plain.installed.release == 2 and plain.slot_switches == 0

    # fleet keys configured: unsigned, or signed by another key: dropped; signed: honoured; replayed: dropped
    dev = FakeAgent("d1", tmp_path / "dev", None, installed=b.r1, slot_rollback=True,
                    fleet_keys=[desired_public_path(tmp_path / "fleet")])
    dev._adopt(b.r2)
    for payload in (forged, sign_desired(forged, evil),
                    sign_desired(forged, key).model_copy(update={"issued_at": 101.0})):  # tampered after signing
        dev.sync._on_desired(payload.model_dump_json().encode())
    assert dev.sync.stats["unsigned_desired"] == 3 and dev.sync._last_outcome is None
    assert dev.installed.release == 2
    dev.sync._on_desired(sign_desired(forged, key).model_dump_json().encode())
    assert dev.installed.release == 1 and dev.slot_switches == 1  # the fleet's own rollback
    older = sign_desired(_desired_for("d1", b.r2, issued_at=50.0, allow_downgrade=False), key)
    dev.sync._on_desired(older.model_dump_json().encode())  # an old signed message replayed
    assert dev.sync.stats["replayed_desired"] == 1 and dev.installed.release == 1


# ---- 7. chunk/req serves only what the device was told to install ------------------------------------

def test_chunks_are_served_only_for_the_files_a_devices_desired_state_names(fleet, tmp_path):
    import hashlib

    from bitnet_edge.fleet.rollout import Selector

    b = bundles()
    fleet.publish([fleet.store.add_file(b.r1)[0]])
    port = int(fleet.broker_url.rsplit(":", 1)[1])
    a = FakeAgent("dev-a", tmp_path / "dev-a", fleet.broker_url, **enroll(fleet, "dev-a")).start()
    login = enroll(fleet, "dev-b")["login"]
    other = Peer(port, "dev-b", *login)
    try:
        caps = a.sync.capabilities
        other.c.publish(P.device_topic("dev-b", "presence"), P.Presence(
            type="birth", device_id="dev-b", ts=time.time(), capabilities=caps).model_dump_json(), qos=1)
        assert other.subscribe(P.device_topic("dev-b", "chunk/data"))
        wait_for(lambda: len(fleet.devices()) == 2, what="both births")
        rid = fleet.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100],
                                               selector=Selector(devices=["dev-a"])))["id"]
        wait_for(lambda: fleet.rollout(rid)["state"] == "completed", timeout=20, what="the rollout to dev-a")
        sha = hashlib.sha256(b.r1.read_bytes()).hexdigest()
        req = P.ChunkRequest(device_id="dev-b", file_sha256=sha, chunk_size=4096, chunks=[0, 1, 2])
        other.c.publish(P.device_topic("dev-b", "chunk/req"), req.model_dump_json(), qos=1)
        wait_for(lambda: fleet.counters["dropped:not-desired"] == 1, what="the request dropped")
        time.sleep(0.5)
        assert other.got == [] and a.installed.release == 1  # dev-a got it; dev-b, never told to, gets nothing
    finally:
        a.stop()
        other.close()
