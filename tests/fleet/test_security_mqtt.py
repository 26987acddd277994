"""MQTT security against a real Mosquitto configured by ``bitnet-edge fleet broker-config``: mutual
TLS with the fleet CA, identities from client certificates, per-device ACLs, revocation by CRL.

Device A cannot read B's desired state or chunks, cannot publish as the fleet, cannot impersonate B
(by topic, by client id, or with a certificate the fleet CA did not issue); a revoked certificate
cannot connect; an agent enrolled with ``fleet enroll`` installs a rollout through that broker."""

from __future__ import annotations

import datetime
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tests.support.fleet_helpers import FakeAgent, bundles, free_port, wait_for
from click.testing import CliRunner
from tests.support.tools import require_tool
from paho.mqtt.enums import CallbackAPIVersion

from bitnet_edge.agent.config import load_config
from bitnet_edge.cli import main
from bitnet_edge.fleet.audit import AuditLog
from bitnet_edge.fleet.brokerconf import DEVICE_READS, DEVICE_WRITES, acl_text, write_broker_config
from bitnet_edge.fleet.config import FleetConfig
from bitnet_edge.fleet.errors import PkiError
from bitnet_edge.fleet.pki import CertAuthority
from bitnet_edge.fleet.rollout import RolloutSpec
from bitnet_edge.fleet.service import FleetService
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import LEAVES, desired_topic, device_topic

SETTLE = 0.6  # seconds to let the broker deliver (or not) what was published


class SecureBroker:
    """Mosquitto with the generated config on a free loopback port; ``enroll`` issues client certificates."""

    def __init__(self, exe: str, root: Path):
        self.exe, self.data = exe, root / "fleet"
        self.port = free_port()
        self.files = write_broker_config(self.data, root / "broker", port=self.port, bind="127.0.0.1",
                                         hosts=["127.0.0.1"], replicas=["fleet-1", "fleet-2"])
        # as root, mosquitto would switch to the mosquitto user, which cannot read pytest's tmp dirs
        self.files.conf.write_text(self.files.conf.read_text() + "user root\npersistence false\n")
        self.ca = CertAuthority(self.data)
        self.root, self.proc = root, None

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def start(self) -> SecureBroker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.files.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_for(lambda: self._listening(), timeout=10, what="mosquitto to listen")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, the CRL included."""
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def enroll(self, name: str) -> tuple[Path, Path]:
        got = self.ca.issue(name)
        cert, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        cert.write_bytes(got.cert_pem)
        key.write_bytes(got.key_pem)
        return cert, key

    @property
    def fleet(self) -> tuple[Path, Path]:
        return self.files.fleet["fleet-1"]


class Peer:
    """A raw paho client with a certificate; records what it receives."""

    def __init__(self, broker: SecureBroker, cert: Path, key: Path, client_id: str, ca: Path | None = None,
                 mqtt5: bool = False):
        self.got: list[tuple[str, bytes]] = []
        self.connack = threading.Event()
        self.refused: str | None = None
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
        self.c.tls_set(ca_certs=str(ca or broker.files.ca), certfile=str(cert), keyfile=str(key),
                       cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.broker = broker

    def _on_connect(self, c, u, flags, rc, props):
        if rc.is_failure:
            self.refused = str(rc)
        self.connack.set()

    def _on_disconnect(self, c, u, flags, rc, props):
        if not self.connack.is_set():  # dropped before CONNACK: the TLS handshake was refused
            self.refused = f"disconnected ({rc})"
            self.connack.set()

    def connect(self) -> bool:
        """True when the broker accepted the connection; False when TLS or CONNACK refused it."""
        try:
            self.c.connect("127.0.0.1", self.broker.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.c.loop_start()
        if not self.connack.wait(5):
            return False
        time.sleep(0.1)
        return self.refused is None and self.c.is_connected()

    def sub(self, *topics: str) -> Peer:
        for t in topics:
            self.c.subscribe(t, 1)
        time.sleep(0.2)
        return self

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = SecureBroker(require_tool("mosquitto", "mosquitto"), tmp_path).start()
    peers: list[Peer] = []
    b.peer = lambda cert, key, cid, **kw: peers.append(Peer(b, cert, key, cid, **kw)) or peers[-1]
    yield b
    for p in peers:
        p.close()
    b.stop()


def _device(broker, name: str) -> Peer:
    p = broker.peer(*broker.enroll(name), name)
    assert p.connect(), f"{name} could not connect: {p.refused}"
    return p


def test_every_protocol_leaf_has_one_direction_in_the_acl(tmp_path):
    assert sorted(DEVICE_WRITES + DEVICE_READS) == sorted(LEAVES)
    assert not set(DEVICE_WRITES) & set(DEVICE_READS)
    text = acl_text(["fleet-1", "fleet-2"])
    assert "pattern read bne/v1/devices/%u/desired" in text and "pattern write bne/v1/devices/%u/state" in text
    assert "pattern read bne/v1/devices/%u/desired/+\n" in text and "topic write bne/v1/devices/+/desired/+\n" in text
    assert text.count("user bne-fleet@") == 2 and "topic write bne/v1/devices/+/chunk/data" in text
    conf = write_broker_config(tmp_path, port=1).conf.read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 "allow_anonymous false", "crlfile "):
        assert line in conf


def test_device_reads_only_its_own_desired_state_and_chunks(broker):
    fleet = broker.peer(*broker.fleet, "bne-fleet-fleet-1")
    assert fleet.connect()
    a = _device(broker, "dev-a").sub("bne/v1/devices/dev-b/desired", "bne/v1/devices/+/desired", "#",
                                     "bne/v1/devices/dev-b/chunk/data", "bne/v1/devices/+/chunk/data",
                                     device_topic("dev-a", "desired"), device_topic("dev-a", "chunk/data"))
    b = _device(broker, "dev-b").sub(device_topic("dev-b", "desired"), device_topic("dev-b", "chunk/data"))
    for dev in ("dev-a", "dev-b"):
        fleet.pub(device_topic(dev, "desired"), f"desired-{dev}".encode(), retain=True)
        fleet.pub(device_topic(dev, "chunk/data"), f"chunk-{dev}".encode())
    wait_for(lambda: len(b.got) == 2, what="B's own messages")
    time.sleep(SETTLE)
    assert sorted(b.got) == [(device_topic("dev-b", "chunk/data"), b"chunk-dev-b"),
                             (device_topic("dev-b", "desired"), b"desired-dev-b")]
    assert {t for t, _ in a.got} == {device_topic("dev-a", "desired"), device_topic("dev-a", "chunk/data")}
    assert not any(p.endswith(b"dev-b") for _, p in a.got)
    late = _device(broker, "dev-c").sub("bne/v1/devices/+/desired", "#")  # retained messages: not B's either
    time.sleep(SETTLE)
    assert late.got == []


def test_device_reads_the_desired_state_of_each_of_its_models_only(broker):
    """ADR 0021: one retained desired state per model on .../desired/{model}; a device subscribes
    to .../desired/+ of its own id and gets nothing of another device's models."""
    assert "pattern read bne/v1/devices/%u/desired/+" in broker.files.acl.read_text()
    fleet = broker.peer(*broker.fleet, "bne-fleet-fleet-1")
    assert fleet.connect()
    for dev in ("dev-a", "dev-b"):  # retained before anyone subscribes
        for model in ("detector", "llm"):
            fleet.pub(desired_topic(dev, model), f"{dev}/{model}".encode(), retain=True)
    time.sleep(SETTLE)
    a = _device(broker, "dev-a").sub("bne/v1/devices/dev-a/desired/+", "bne/v1/devices/dev-b/desired/+",
                                     "bne/v1/devices/+/desired/+", desired_topic("dev-b", "llm"),
                                     "bne/v1/devices/dev-b/desired/#", "bne/v1/devices/+/+/+")
    wait_for(lambda: len(a.got) >= 2, what="A's retained desired states")
    fleet.pub(desired_topic("dev-a", "llm"), b"dev-a/llm 2", retain=True)
    fleet.pub(desired_topic("dev-b", "llm"), b"dev-b/llm 2", retain=True)
    wait_for(lambda: len(a.got) >= 3, what="A's new desired state")
    time.sleep(SETTLE)
    # (the wildcard filters that match A's own topics too deliver them once more each: only A's arrive)
    assert sorted(set(a.got)) == [(desired_topic("dev-a", "detector"), b"dev-a/detector"),
                             (desired_topic("dev-a", "llm"), b"dev-a/llm"),
                             (desired_topic("dev-a", "llm"), b"dev-a/llm 2")]
    # a device cannot write any model's desired state, its own or another's
    b = _device(broker, "dev-b").sub("bne/v1/devices/dev-b/desired/+")
    wait_for(lambda: len(b.got) == 2, what="B's retained desired states")
    a.pub(desired_topic("dev-b", "llm"), b"forged", retain=True)
    b.pub(desired_topic("dev-b", "llm"), b"self-made", retain=True)
    time.sleep(SETTLE)
    assert sorted(b.got) == [(desired_topic("dev-b", "detector"), b"dev-b/detector"),
                             (desired_topic("dev-b", "llm"), b"dev-b/llm 2")]


def test_device_cannot_publish_as_the_fleet(broker):
    b = _device(broker, "dev-b").sub(device_topic("dev-b", "desired"), device_topic("dev-b", "chunk/data"))
    a = _device(broker, "dev-a").sub(device_topic("dev-a", "desired"))
    a.pub(device_topic("dev-b", "desired"), b'{"forged": true}', retain=True)
    a.pub(device_topic("dev-b", "chunk/data"), b"forged chunk")
    a.pub(device_topic("dev-a", "desired"), b"its own desired state is the fleet's to set")
    time.sleep(SETTLE)
    assert b.got == [] and a.got == []
    fleet = broker.peer(*broker.fleet, "bne-fleet-fleet-1")
    assert fleet.connect()
    fleet.pub(device_topic("dev-b", "desired"), b"real")
    wait_for(lambda: b.got == [(device_topic("dev-b", "desired"), b"real")], what="the fleet's publish")


def test_device_cannot_impersonate_another(broker, tmp_path):
    fleet = broker.peer(*broker.fleet, "bne-fleet-fleet-1")
    assert fleet.connect()
    fleet.sub(*(f"bne/v1/devices/+/{leaf}" for leaf in DEVICE_WRITES))
    b = _device(broker, "dev-b")
    a = _device(broker, "dev-a")
    for leaf in DEVICE_WRITES:  # B's upstream topics: presence, state, events, chunk requests
        a.pub(device_topic("dev-b", leaf), b"from A")
    a.pub(device_topic("dev-a", "state"), b"A's own state")
    wait_for(lambda: fleet.got, what="A's own state")
    time.sleep(SETTLE)
    assert fleet.got == [(device_topic("dev-a", "state"), b"A's own state")]

    # A connecting with B's client id is still A (the broker sets the client id from the certificate):
    # B's session is not taken over, and what it publishes is A's
    a2 = broker.peer(*broker.enroll("dev-a2"), "dev-b")
    assert a2.connect()
    time.sleep(SETTLE)
    assert b.c.is_connected()
    a2.pub(device_topic("dev-b", "state"), b"as client id dev-b")
    time.sleep(SETTLE)
    assert all(t.split("/")[3] != "dev-b" for t, _ in fleet.got[1:])

    # a certificate with B's name from any other CA is refused at the TLS handshake
    from tests.support.fleet_helpers import make_certs

    rogue = make_certs(tmp_path / "rogue")
    r = broker.peer(rogue["client"], rogue["client_key"], "dev-b")
    assert not r.connect()
    # and without a client certificate there is no connection at all
    bare = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-b")
    bare.tls_set(ca_certs=str(broker.files.ca), cert_reqs=ssl.CERT_REQUIRED)
    try:
        bare.connect("127.0.0.1", broker.port, keepalive=5)
        bare.loop_start()
        time.sleep(SETTLE)
        bare_ok = bare.is_connected()
    except (ssl.SSLError, OSError):
        bare_ok = False
    finally:
        bare.loop_stop()
    assert not bare_ok and b.c.is_connected()


def test_fleet_replicas_share_device_requests_under_the_acl(broker):
    replicas = []
    for r in ("fleet-1", "fleet-2"):
        p = broker.peer(*broker.files.fleet[r], f"bne-fleet-{r}", mqtt5=True)
        assert p.connect()
        replicas.append(p.sub("$share/bne-fleet/bne/v1/devices/+/chunk/req"))
    a = _device(broker, "dev-a")
    for i in range(10):
        a.pub(device_topic("dev-a", "chunk/req"), b"%d" % i)
    wait_for(lambda: sum(len(p.got) for p in replicas) == 10, what="the shared chunk requests")
    assert all(p.got for p in replicas)  # split between the replicas, each message to one


def test_a_revoked_certificate_cannot_connect(broker):
    cert, key = broker.enroll("dev-r")
    first = broker.peer(cert, key, "dev-r")
    assert first.connect()
    first.close()
    res = CliRunner().invoke(main, ["fleet", "revoke", "dev-r", "--data", str(broker.data), "--json"])
    assert res.exit_code == 0, res.output
    broker.reload()
    again = broker.peer(cert, key, "dev-r")
    assert not again.connect()
    assert _device(broker, "dev-ok")  # the others still connect
    assert CliRunner().invoke(main, ["fleet", "revoke", "dev-r", "--data", str(broker.data)]).exit_code == 2
    actions = [(e.action, e.target) for e in AuditLog(broker.data / "audit.jsonl").entries()]
    assert ("revoke", "dev-r") in actions


def test_an_enrolled_agent_installs_a_rollout_through_the_secured_broker(broker, tmp_path):
    b = bundles()
    res = CliRunner().invoke(main, ["fleet", "enroll", "dev-e", "--data", str(broker.data), "--broker", broker.url,
                                    "--trust", str(b.pub_path), "--agent-data", str(tmp_path / "agent"), "--json"])
    assert res.exit_code == 0, res.output
    cfg = load_config(Path(broker.data / "enroll" / "dev-e" / "agent.toml"))
    assert cfg.mqtt.url == broker.url and Path(cfg.mqtt.tls_key).stat().st_mode & 0o777 == 0o600
    cert, key = broker.fleet
    conn = BrokerConnection(url=broker.url, tls_ca=str(broker.files.ca), tls_cert=str(cert), tls_key=str(key))
    svc = FleetService(FleetConfig(data_dir=str(broker.data), broker=conn, api_port=0, chunk_bytes=4096, tick=0.2))
    svc.start()
    agent = FakeAgent("dev-e", tmp_path / "agent", None, mqtt=cfg.mqtt.model_copy(update={"reconnect_max": 1.0}))
    try:
        svc.publish([svc.store.add_file(b.r1)[0]])
        agent.start()
        wait_for(lambda: svc.devices(), what="the enrolled device's birth")
        rid = svc.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100]))["id"]
        wait_for(lambda: svc.rollout(rid)["state"] == "completed", timeout=30, what="the rollout")
        assert agent.installed is not None and agent.installed.release == 1
    finally:
        agent.stop()
        svc.stop()
    log = AuditLog(broker.data / "audit.jsonl")
    assert [e.action for e in log.entries()] == ["enroll", "publish", "rollout-create"]
    assert log.verify().ok


def test_two_models_roll_out_to_an_enrolled_agent_through_the_secured_broker(broker, tmp_path):
    """ADR 0021 under the generated ACL: the agent subscribes to .../desired/+ of its own id and
    installs two models from two rollouts, each desired state signed (fleet_keys from enroll)."""
    from tests.support.fleet_helpers import MultiFakeAgent, model_b_bundles

    b, mb = bundles(), model_b_bundles()
    res = CliRunner().invoke(main, ["fleet", "enroll", "dev-m", "--data", str(broker.data), "--broker", broker.url,
                                    "--trust", str(b.pub_path), "--agent-data", str(tmp_path / "agent"), "--json"])
    assert res.exit_code == 0, res.output
    cfg = load_config(Path(broker.data / "enroll" / "dev-m" / "agent.toml"))
    cert, key = broker.fleet
    conn = BrokerConnection(url=broker.url, tls_ca=str(broker.files.ca), tls_cert=str(cert), tls_key=str(key))
    svc = FleetService(FleetConfig(data_dir=str(broker.data), broker=conn, api_port=0, chunk_bytes=4096, tick=0.2))
    svc.start()
    agent = MultiFakeAgent("dev-m", tmp_path / "agent", None, fleet_keys=cfg.fleet_keys,
                           mqtt=cfg.mqtt.model_copy(update={"reconnect_max": 1.0}))
    try:
        svc.publish([svc.store.add_file(p)[0] for p in (b.r1, mb.r1)])
        agent.start()
        wait_for(lambda: svc.devices(), what="the enrolled device's birth")
        for model, version in (("test-mlp", "1.0.0"), ("test-det", "0.1.0")):
            rid = svc.create_rollout(RolloutSpec(model=model, version=version, stages=[100]))["id"]
            wait_for(lambda: svc.rollout(rid)["state"] == "completed", timeout=30, what=f"the {model} rollout")
        assert agent.installed("test-mlp").release == 1 and agent.installed("test-det").version == "0.1.0"
        assert agent.sync.stats["unsigned_desired"] == 0 and agent.sync.stats["replayed_desired"] == 0
    finally:
        agent.stop()
        svc.stop()


def test_the_ca_refuses_names_that_are_not_device_ids_and_forged_requests(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = CertAuthority(tmp_path)
    for bad in ("bne-fleet@fleet-1", "a/b", "+", "#", ""):
        with pytest.raises(PkiError) as e:
            ca.issue(bad, "device")
        assert e.value.reason == "bad-name"
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-x")])).sign(key, hashes.SHA256()))
    pem = csr.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PkiError) as e:
        ca.issue("dev-y", "device", csr_pem=pem)  # the request names another device
    assert e.value.reason == "bad-csr"
    got = ca.issue("dev-x", "device", csr_pem=pem)
    assert got.key_pem is None
    cert = x509.load_pem_x509_certificate(got.cert_pem)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc)
    assert (tmp_path / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600


def test_enroll_signs_a_request_made_on_the_device(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-csr")])).sign(key, hashes.SHA256()))
    (tmp_path / "dev.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    res = CliRunner().invoke(main, ["fleet", "enroll", "dev-csr", "--data", str(tmp_path / "fleet"), "--broker",
                                    "mqtts://broker.example:8883", "--trust", str(bundles().pub_path), "--csr",
                                    str(tmp_path / "dev.csr"), "--install-dir", "/etc/bitnet-edge", "--json"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "fleet" / "enroll" / "dev-csr"
    assert json.loads(res.output)["key_generated"] is False and not (out / "device.key").exists()
    cfg = load_config(out / "agent.toml")
    assert (cfg.mqtt.tls_key, cfg.mqtt.tls_cert) == ("/etc/bitnet-edge/device.key", "/etc/bitnet-edge/device.pem")
    cert = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    again = CliRunner().invoke(main, ["fleet", "enroll", "dev-csr", "--data", str(tmp_path / "fleet"), "--broker",
                                      "mqtts://broker.example:8883", "--trust", str(bundles().pub_path)])
    assert again.exit_code == 2 and "--force" in again.output
