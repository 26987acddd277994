"""`agent run --log-format json` against a real Mosquitto and a scripted fleet (a paho client that
answers only some chunk requests): `agent status` shows the MQTT link and the transfer in
progress; the log has one JSON line per MQTT connect / disconnect (with its reason), transfer
start / resume / finish and install outcome; the agent reports DeviceMetrics on `events`."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.support.agent_fixtures import bundles, cli, free_port  # noqa: F401
from tests.support.fleet_helpers import Mosquitto, wait_for
from tests.support.tools import require_tool

from bitnet_edge.sdk.bundle.verify import read_unverified
from bitnet_edge.sdk.wire import protocol as P

DEV = "link-1"
CHUNK = 2048


class ScriptedFleet:
    """Publishes one desired state (again after every reconnect, as the fleet does) and answers
    chunk requests for indices below ``limit`` only."""

    def __init__(self, url_port: int, bundle: Path):
        self.data = bundle.read_bytes()
        self.sha = hashlib.sha256(self.data).hexdigest()
        self.n = -(-len(self.data) // CHUNK)
        self.limit = self.n // 2
        _, m = read_unverified(bundle)
        self.desired = P.DesiredState(
            device_id=DEV, rollout_id="ro-script", issued_at=1.0, release=P.ReleaseRef(
                model=m.name, version=m.version, release=m.release, target=m.target, bundle_sha256=self.sha,
                bundle_size=len(self.data), chunk_size=CHUNK)).model_dump_json()
        self.events: list = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scripted-fleet")
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect, self.c.on_message = self._on_connect, self._on_message
        self.c.connect_async("127.0.0.1", url_port)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe([(P.device_topic(DEV, "chunk/req"), 1), (P.device_topic(DEV, "events"), 0)])
        client.publish(P.device_topic(DEV, "desired"), self.desired, qos=1, retain=True)

    def _on_message(self, client, userdata, msg):
        leaf = msg.topic.rsplit(f"{DEV}/", 1)[1]
        if leaf == "events":
            self.events.append(P.parse_message("events", msg.payload))
            return
        req = P.parse_message("chunk/req", msg.payload)
        for i in req.chunks:
            if i < self.limit:
                client.publish(P.device_topic(DEV, "chunk/data"),
                               P.pack_chunk(self.sha, i * CHUNK, self.data[i * CHUNK:(i + 1) * CHUNK]), qos=1)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


class AgentRun:
    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge", "agent", "run", "--config", str(config),
                                      "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=open(log, "a"))

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def events(self, name: str) -> list[dict]:
        return [x for x in self.lines() if x.get("event") == name and "level" in x]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _status(config: Path) -> dict:
    out = cli("agent", "status", "--config", config, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_agent_reports_link_and_transfer_and_logs_them(tmp_path, bundles):  # noqa: F811
    broker = Mosquitto(require_tool("mosquitto", "mosquitto"), tmp_path).start()
    data = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text("\n".join([
        f'device_id = "{DEV}"', f'data_dir = "{data}"', f'trust = ["{bundles.pub}"]', "metrics_interval = 1", "[api]",
        f"port = {free_port()}", f'unix_socket = "{data}/api.sock"', "[health]", "max_latency_ms = 20000",
        "[mqtt]", f'url = "{broker.url}"', "reconnect_max = 0.5", "keepalive = 5"]) + "\n")
    log = tmp_path / "agent.jsonl"
    fleet = ScriptedFleet(broker.port, bundles.v1)
    agent = AgentRun(config, log)
    try:
        wait_for(lambda: agent.events("mqtt.connected"), 60, what="agent connected")
        # the transfer stalls at half: the fleet answers only the first half of the chunks
        st = wait_for(lambda: (s := _status(config))["sync"]["download"] and
                      s["sync"]["download"]["chunks_done"] == fleet.limit and s, 60, interval=0.3,
                      what="half the chunks held")
        link, dl = st["sync"]["link"], st["sync"]["download"]
        assert st["sync"]["connected"] and link["state"] == "connected" and st["sync"]["broker"] == broker.url
        assert (dl["file_sha256"], dl["total_bytes"], dl["chunks"]) == (fleet.sha, len(fleet.data), fleet.n)
        assert dl["rollout_id"] == "ro-script" and dl["resumed_from_bytes"] == 0
        text = cli("agent", "status", "--config", config).stdout
        assert "connected" in text and f"{100 * dl['received_bytes'] // dl['total_bytes']}%" in text, text
        # metrics reach the fleet as DeviceMetrics events
        wait_for(lambda: any(isinstance(e, P.DeviceMetrics) for e in fleet.events), 20, what="a metrics report")
        m = next(e for e in fleet.events if isinstance(e, P.DeviceMetrics))
        assert m.device_id == DEV and m.agent_rss_mb and m.agent_rss_mb > 10 and m.disk_free_mb > 0
        # the broker goes away: the log says why, status shows the link down and the transfer kept
        broker.stop()
        wait_for(lambda: agent.events("mqtt.disconnected"), 30, what="disconnect logged")
        down = agent.events("mqtt.disconnected")[0]
        assert down["level"] == "warning" and "connection lost" in down["reason"] and down["broker"] == broker.url
        st = wait_for(lambda: (s := _status(config))["sync"]["link"]["state"] in ("disconnected", "unreachable")
                      and s, 20, interval=0.3, what="status shows the link down")
        assert not st["sync"]["connected"] and st["sync"]["download"]["chunks_done"] == fleet.limit
        assert "connection" in (st["sync"]["link"]["reason"] or "")
        text = cli("agent", "status", "--config", config).stdout
        assert "disconnected" in text or "unreachable" in text, text
        # restart the agent and the broker: the transfer resumes from its bitmap and completes
        agent.stop()
        fleet.limit = fleet.n
        broker.start()
        agent = AgentRun(config, log)
        wait_for(lambda: any(x["result"] == "installed" for x in agent.events("install")), 90, what="installed")
    finally:
        agent.stop()
        fleet.stop()
        broker.stop()
    ev = {name: agent.events(name) for name in ("transfer.start", "transfer.resume", "transfer.finish", "install",
                                               "mqtt.connected", "mqtt.disconnected")}
    (start,) = ev["transfer.start"]
    assert start["chunks_held"] == 0 and start["file_sha256"] == fleet.sha and start["rollout"] == "ro-script"
    (resume,) = ev["transfer.resume"]
    assert resume["chunks_held"] == fleet.n // 2 and resume["chunks"] == fleet.n
    assert f"{fleet.n // 2} of {fleet.n} chunks held" in resume["msg"]
    (finish,) = ev["transfer.finish"]
    assert finish["bytes"] == len(fleet.data) and finish["fetched_bytes"] < len(fleet.data)
    (installed,) = ev["install"]
    assert (installed["result"], installed["reason"], installed["rollout"]) == ("installed", "ok", "ro-script")
    assert len(ev["mqtt.connected"]) >= 2
    assert ev["mqtt.disconnected"][-1]["reason"] == "agent stopping"
    # every line of the log is one JSON object (the agent's own lines and its startup events)
    assert all(isinstance(x, dict) for x in agent.lines())
