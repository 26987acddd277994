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
from bitnet_edge.sdk import protocol as P  # noqa: E402


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
        forged = P.DesiredState(device_id="dev-a", rollout_id=None, release=P.ReleaseRef(
            model="test-mlp", version="0.1", release=0, target="linux-x86_64", bundle_sha256="0" * 64,
            bundle_size=10, chunk_size=4096), allow_downgrade=True, issued_at=time.time())
        evil.c.publish(P.device_topic("dev-a", "desired"), forged.model_dump_json(), qos=1, retain=True)
        evil.c.publish(P.device_topic("dev-b", "desired"), forged.model_copy(update={"device_id": "dev-b"})
                       .model_dump_json(), qos=1, retain=True)  # a device may not write its own desired state
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
