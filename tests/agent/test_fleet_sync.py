"""The agent's MQTT sync client: the resumable chunk store, flow control, and FleetSync against
Mosquitto with a scripted fleet peer (byte-level protocol round trip, corrupted chunks)."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from tests.support.fleet_helpers import FakeAgent, Mosquitto, bundles, capabilities, wait_for
from tests.support.tools import require_tool
from paho.mqtt.enums import CallbackAPIVersion

from bitnet_edge.agent.chunks import PartialFile, finished_path
from bitnet_edge.agent.errors import TransferError
from bitnet_edge.agent.transfer import Window
from bitnet_edge.sdk.wire import protocol as P


@pytest.fixture
def mosquitto(tmp_path):
    m = Mosquitto(require_tool("mosquitto", "mosquitto"), tmp_path).start()
    yield m
    m.stop()


def _client(broker: Mosquitto, cid: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


# ---- the chunk store and the window (no broker) ----------------------------------------------

def test_partial_file_resumes_from_its_bitmap_and_checks_the_whole_file(tmp_path):
    data = bytes(range(256)) * 40  # 10240 bytes, 10 chunks of 1024 + 0
    sha = hashlib.sha256(data).hexdigest()
    p = PartialFile(tmp_path, sha, len(data), 1024)
    assert p.n_chunks == 10 and p.missing() == list(range(10))
    for i in (0, 3, 9):
        assert p.write(i, data[i * 1024:(i + 1) * 1024])
    assert not p.write(3, data[3072:4096])  # held already
    with pytest.raises(TransferError) as e:
        p.write(4, b"short")
    assert e.value.reason == "corrupt"
    p.close()
    q = PartialFile(tmp_path, sha, len(data), 1024)  # a restart: the bitmap says what is held
    assert q.missing() == [1, 2, 4, 5, 6, 7, 8] and q.received_bytes == 3 * 1024
    for i in q.missing():
        q.write(i, data[i * 1024:(i + 1) * 1024])
    assert q.complete
    path = q.finish()
    assert path == finished_path(tmp_path, sha) and path.read_bytes() == data
    assert not (tmp_path / f"{sha}.bitmap").exists()


def test_partial_file_restarts_when_the_bitmap_does_not_match_and_rejects_a_bad_whole_file(tmp_path):
    data = b"x" * 5000
    sha = hashlib.sha256(data).hexdigest()
    p = PartialFile(tmp_path, sha, len(data), 1024)
    p.write(0, data[:1024])
    p.close()
    assert PartialFile(tmp_path, sha, len(data), 2048).missing() == [0, 1, 2]  # other chunk size: start over
    wrong = hashlib.sha256(b"other").hexdigest()
    w = PartialFile(tmp_path, wrong, len(data), 1024)
    for i in range(w.n_chunks):
        w.write(i, data[i * 1024:(i + 1) * 1024])
    with pytest.raises(TransferError) as e:
        w.finish()
    assert e.value.reason == "corrupt" and not (tmp_path / f"{wrong}.part").exists()


def test_window_batches_times_out_and_recovers_after_a_reconnect():
    w = Window(range(100), window=8, timeout=5.0)
    (first,) = w.next_requests(0.0)
    assert first == list(range(8)) and w.in_flight == 8
    assert w.next_requests(1.0) == []  # window full
    for i in range(3):
        assert w.received(i)
    assert w.next_requests(1.0) == [[8, 9, 10]]  # 3 free >= 8 // 4
    assert not w.received(0)  # duplicate
    # 3..10 time out at 5.0 / 6.0 and are asked for again first
    again = w.next_requests(6.1)
    assert again == [[3, 4, 5, 6, 7, 8, 9, 10]] and w.timeouts == 8
    w.lost_connection()
    assert w.in_flight == 0 and w.next_requests(6.2) == [[3, 4, 5, 6, 7, 8, 9, 10]]
    big = Window(range(200), window=150)
    assert [len(b) for b in big.next_requests(0.0)] == [64, 64, 22]  # at most 64 per request


# ---- against Mosquitto -----------------------------------------------------------------------

def test_protocol_round_trip_through_a_real_broker(mosquitto):
    caps = capabilities()
    inst = P.InstalledRelease(model="m", version="1", release=1, bundle_sha256="a" * 64, target="linux-x86_64")
    rel = P.ReleaseRef(model="m", version="2", release=2, target="linux-x86_64", bundle_sha256="b" * 64,
                       bundle_size=5000, chunk_size=1024,
                       delta=P.DeltaRef(base_sha256="a" * 64, sha256="c" * 64, size=700))
    msgs = {
        "presence": P.Presence(type="birth", device_id="dev-1", ts=1.5, capabilities=caps, installed=inst, tags=["x"]),
        "state": P.ReportedState(device_id="dev-1", ts=2.0, installed=inst, health="ok", last_outcome=P.Outcome(
            rollout_id="ro-1", bundle_sha256="b" * 64, result="failed", reason="health_failed", message="m", ts=3.0)),
        "desired": P.DesiredState(device_id="dev-1", rollout_id="ro-1", release=rel, allow_downgrade=True, issued_at=4),
        "chunk/req": P.ChunkRequest(device_id="dev-1", file_sha256="b" * 64, chunk_size=1024, chunks=[0, 4]),
        "events": P.Progress(device_id="dev-1", file_sha256="b" * 64, stage="downloading", received_bytes=1,
                             total_bytes=2, ts=5.0),
    }
    data = bytes(range(256)) * 7
    got, done = {}, threading.Event()

    def on_message(c, u, m):
        got[m.topic] = bytes(m.payload)
        if len(got) == len(msgs) + 1:
            done.set()

    sub = _client(mosquitto, "sub")
    sub.on_message = on_message
    sub.subscribe("bne/v1/devices/dev-1/#", 1)
    time.sleep(0.2)
    pub = _client(mosquitto, "pub")
    for leaf, m in msgs.items():
        pub.publish(P.device_topic("dev-1", leaf), m.model_dump_json(), qos=1)
    pub.publish(P.device_topic("dev-1", "chunk/data"), P.pack_chunk("b" * 64, 2048, data), qos=1)
    assert done.wait(10)
    for leaf, m in msgs.items():
        assert P.parse_message(leaf, got[P.device_topic("dev-1", leaf)]) == m
    head, body = P.unpack_chunk(got[P.device_topic("dev-1", "chunk/data")])
    assert body == data and head.offset == 2048 and head.sha256 == hashlib.sha256(data).hexdigest()
    assert P.parse_device_topic("bne/v1/devices/dev-1/chunk/req") == ("dev-1", "chunk/req")
    assert P.parse_device_topic("bne/v1/devices/../state") is None
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()


class ScriptedFleet:
    """A fleet peer written against the raw protocol: sets desired, answers chunk requests, and
    corrupts the data of chunks listed in ``corrupt`` the first time they are sent."""

    def __init__(self, broker: Mosquitto, device_id: str, file_bytes: bytes, chunk: int, corrupt=()):
        self.device_id, self.data, self.chunk = device_id, file_bytes, chunk
        self.sha = hashlib.sha256(file_bytes).hexdigest()
        self.corrupt, self.requests, self.states = set(corrupt), [], []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scripted-fleet")
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe([(P.device_topic(device_id, "chunk/req"), 1), (P.device_topic(device_id, "state"), 1)])
        self.c.loop_start()

    def _on_message(self, c, u, m):
        if m.topic.endswith("/state"):
            self.states.append(P.parse_message("state", m.payload))
            return
        req = P.parse_message("chunk/req", m.payload)
        self.requests.append(req.chunks)
        for i in req.chunks:
            off = i * req.chunk_size
            piece = self.data[off:off + req.chunk_size]
            payload = P.pack_chunk(self.sha, off, piece)
            if i in self.corrupt:
                self.corrupt.discard(i)
                payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])  # header hash no longer matches
            c.publish(P.device_topic(self.device_id, "chunk/data"), payload, qos=1)

    def desire(self, release: int = 1, allow_downgrade: bool = False) -> P.DesiredState:
        ref = P.ReleaseRef(model="test-mlp", version="1.0.0", release=release, target="linux-x86_64",
                           bundle_sha256=self.sha, bundle_size=len(self.data), chunk_size=self.chunk)
        d = P.DesiredState(device_id=self.device_id, rollout_id="ro-s", release=ref, allow_downgrade=allow_downgrade,
                           issued_at=time.time())
        self.c.publish(P.device_topic(self.device_id, "desired"), d.model_dump_json(), qos=1, retain=True)
        return d

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_a_corrupted_chunk_is_rejected_and_fetched_again(mosquitto, tmp_path):
    data = bundles().r1.read_bytes()
    fleet = ScriptedFleet(mosquitto, "dev-c", data, 4096, corrupt={0, 5})
    agent = FakeAgent("dev-c", tmp_path / "dev", mosquitto.url).start()
    try:
        wait_for(lambda: agent.sync.connected, what="connect")
        fleet.desire()
        wait_for(lambda: agent.installed is not None, timeout=20, what="install")
        st = agent.sync.stats
        assert st["corrupt_chunks"] == 2 and st["chunks_received"] == -(-len(data) // 4096)
        assert agent.installs == [(fleet.sha, False)] and agent.outcome.result == "installed"
        asked = [i for r in fleet.requests for i in r]
        assert asked.count(0) == 2 and asked.count(5) == 2  # asked again after the timeout
        assert sorted(set(asked)) == list(range(-(-len(data) // 4096)))
        wait_for(lambda: any(s.installed and s.installed.bundle_sha256 == fleet.sha for s in fleet.states),
                 what="state report")
        assert not list((tmp_path / "dev" / "downloads").glob("*"))  # nothing left behind
    finally:
        agent.stop()
        fleet.close()


def test_a_downgrade_is_refused_before_downloading_and_not_retried(mosquitto, tmp_path):
    b = bundles()
    fleet = ScriptedFleet(mosquitto, "dev-d", b.r1.read_bytes(), 4096)
    agent = FakeAgent("dev-d", tmp_path / "dev", mosquitto.url, installed=b.r3).start()
    try:
        wait_for(lambda: agent.sync.connected, what="connect")
        fleet.desire(release=1)
        wait_for(lambda: any(s.last_outcome and s.last_outcome.reason == "downgrade" for s in fleet.states),
                 what="rejection")
        assert fleet.requests == [] and agent.installs == []
        agent.stop()  # the retained desired comes back on reconnect: not tried again
        agent = FakeAgent("dev-d", tmp_path / "dev", mosquitto.url, installed=b.r3).start()
        wait_for(lambda: agent.sync.connected, what="reconnect")
        time.sleep(0.5)
        assert fleet.requests == [] and agent.sync.status()["last_outcome"]["reason"] == "downgrade"
    finally:
        agent.stop()
        fleet.close()


def test_without_a_broker_url_the_sync_stays_offline(tmp_path):
    agent = FakeAgent("dev-o", tmp_path / "dev", None)
    agent.start()
    assert not agent.sync.connected and agent.sync.status()["broker"] is None
    agent.sync.publish_state()  # no-op, no error
    agent.stop()


def test_a_broker_that_is_down_at_start_is_retried(tmp_path):
    exe = require_tool("mosquitto", "mosquitto")
    broker = Mosquitto(exe, tmp_path)
    agent = FakeAgent("dev-r", tmp_path / "dev", broker.url).start()
    try:
        time.sleep(0.5)
        assert not agent.sync.connected
        broker.start()
        wait_for(lambda: agent.sync.connected, timeout=10, what="connect after the broker came up")
        got = []
        sub = _client(broker, "watch")
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.subscribe(P.device_topic("dev-r", "presence"), 1)
        wait_for(lambda: got and got[-1]["type"] == "birth", what="retained birth")
        agent.stop()
        wait_for(lambda: got[-1]["type"] == "death", what="death on stop")
        sub.loop_stop()
        sub.disconnect()
    finally:
        agent.stop()
        broker.stop()
