"""Several models on one agent (ADR 0021): each with its own slots, release counter, rollback and
worker; the device-wide memory budget; load on demand; per-model routing; the migration from the
single-model layout; kill -9 during one model's install; FleetSync with a desired state per model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_fixtures import HOST_DEVICE, Daemon, bundles, cli, free_port, write_config  # noqa: F401
from tests.support.bundle_models import make_mlp_dir
from tests.support.fleet_helpers import Mosquitto, wait_for
from tests.support.tools import require_tool
from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.agent.sync import SyncLimits
from bitnet_edge.packagers.builder import package_model
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.bundle.verify import verify_bundle
from bitnet_edge.sdk.wire import protocol as P

SENSOR = "sensor-mlp"
DETECTOR = "detector"


class Detector:
    """A second model, ``detector``, at releases 1 and 2: the same release counters as sensor-mlp's."""

    def __init__(self, root: Path, b):
        m1 = make_mlp_dir(root / "m1", sizes=(32, 40, 3), seed=7, name=DETECTOR)
        m2 = make_mlp_dir(root / "m2", sizes=(32, 40, 3), seed=7, change=0.1, name=DETECTOR)
        self.v1 = package_model(m1, [HOST_DEVICE], "1.0.0", [b.key], root / "d1", release=1, options=b.opts)[0].path
        self.v2 = package_model(m2, [HOST_DEVICE], "2.0.0", [b.key], root / "d2", release=2, options=b.opts)[0].path


@pytest.fixture(scope="module")
def detector(tmp_path_factory, bundles):
    return Detector(tmp_path_factory.mktemp("detector"), bundles)


def _agent(tmp_path, b, extra: str = "", data: Path | None = None) -> Agent:
    return Agent(load_config(write_config(tmp_path / "agent.toml", data or tmp_path / "data", [b.pub], extra=extra)))


def _versions(ag: Agent) -> dict[str, str]:
    return {m.name: m.installed.version for m in ag.reported_state().models if m.installed}


def _pid(ag: Agent, name: str) -> int:
    w = ag.acquire_worker(name)
    ag.release_worker(w)
    return w.proc.pid


# ---- two models, independent ----------------------------------------------------------------------

def test_two_models_install_update_and_roll_back_independently(tmp_path, bundles, detector):
    ag = _agent(tmp_path, bundles)
    try:
        assert ag.install_file(bundles.v1).result == "installed"
        out = ag.install_file(detector.v1)  # release 1 of another model: not a 'downgrade'
        assert out.result == "installed", out
        assert _versions(ag) == {SENSOR: "1.0.0", DETECTOR: "1.0.0"}
        assert sorted(os.listdir(tmp_path / "data" / "models")) == [DETECTOR, SENSOR]
        det_pid, sen_pid = _pid(ag, DETECTOR), _pid(ag, SENSOR)
        assert det_pid != sen_pid

        assert ag.install_file(bundles.v2).result == "installed"  # update one: the other's worker is untouched
        assert _versions(ag) == {SENSOR: "2.0.0", DETECTOR: "1.0.0"} and _pid(ag, DETECTOR) == det_pid
        again = ag.install_file(detector.v1)
        assert again.result == "rejected" and again.reason == "downgrade"  # its own counter
        assert ag.models.get(DETECTOR).load().last_outcome.reason == "downgrade"
        assert ag.models.get(SENSOR).load().last_outcome.result == "installed"

        assert ag.install_file(detector.v2).result == "installed"
        det_pid = _pid(ag, DETECTOR)
        both = ag.rollback()  # two installed: which one?
        assert both.result == "failed" and "name the one" in both.message
        back = ag.rollback(SENSOR)
        assert back.result == "rolled_back", back
        assert _versions(ag) == {SENSOR: "1.0.0", DETECTOR: "2.0.0"} and _pid(ag, DETECTOR) == det_pid
        rs = ag.reported_state()
        assert rs.health == "ok" and {m.name: m.previous.version for m in rs.models} == {SENSOR: "2.0.0",
                                                                                      DETECTOR: "1.0.0"}
        assert rs.installed.model == SENSOR  # no default_model: the single-model fields show the last one changed
    finally:
        ag.shutdown()
    assert all(w is None for w in (ag._rt[SENSOR].worker, ag._rt[DETECTOR].worker))


def test_a_crashed_worker_takes_only_its_model_down(tmp_path, bundles, detector):
    ag = _agent(tmp_path, bundles)
    try:
        ag.install_file(bundles.v1)
        ag.install_file(detector.v1)
        sen = ag._rt[SENSOR].worker
        os.kill(_pid(ag, DETECTOR), signal.SIGKILL)
        wait_for(lambda: not ag._rt[DETECTOR].worker.alive, what="the worker to die")
        st = {m.name: m.health for m in ag.reported_state().models}
        assert st == {SENSOR: "ok", DETECTOR: "failed"} and ag.reported_state().health == "failed"
        assert ag._rt[SENSOR].worker is sen and sen.alive
        w = ag.acquire_worker(DETECTOR)  # the next request starts it again
        ag.release_worker(w)
        assert w.alive and {m.name: m.health for m in ag.reported_state().models} == {SENSOR: "ok", DETECTOR: "ok"}
        if ag.zygote is not None:  # the zygote dies: the workers it forked keep serving, the next fork restarts it
            zpid = ag.zygote.pid
            os.kill(zpid, signal.SIGKILL)
            wait_for(lambda: ag.zygote.proc.poll() is not None, what="the zygote to die")
            time.sleep(1.0)
            assert sen.alive and w.alive
            assert ag.install_file(bundles.v2).result == "installed"
            assert ag.zygote.pid not in (None, zpid) and w.alive
    finally:
        ag.shutdown()


# ---- the device's memory budget -------------------------------------------------------------------

def test_an_install_over_the_memory_budget_is_refused_before_unpacking(tmp_path, bundles):
    big = {}
    for name in ("big-a", "big-b"):
        d = make_mlp_dir(tmp_path / name, sizes=(2048, 2048, 16), seed=3, name=name)  # weights >> the kernel library
        big[name] = package_model(d, [HOST_DEVICE], "1.0.0", [bundles.key], tmp_path / f"out-{name}", release=1,
                                  options=bundles.opts)[0].path
    m = verify_bundle(big["big-a"], [load_public_key(bundles.pub)], deep=False).manifest
    need = sum(s.size for s in m.sections) * 1.25
    budget = math.ceil(need / 2**20)  # one fits, two do not
    ag = _agent(tmp_path, bundles, extra=f"[limits]\nmemory_budget_mb = {budget}")
    try:
        assert ag.install_file(big["big-a"]).result == "installed"
        assert need + ag.memory_use()["big-a"] > budget * 2**20  # the test's premise
        before = sorted(os.listdir(tmp_path / "data" / "models"))
        out = ag.install_file(big["big-b"])
        assert out.result == "rejected" and out.reason == "too_large", out
        assert "big-a" in out.message and "big-b" in out.message and "memory_budget_mb" in out.message
        assert "MiB" in out.message and f"{budget}.0 MiB" in out.message
        slots = tmp_path / "data" / "models" / "big-b" / "slots"
        assert not slots.exists() or not any(slots.iterdir())  # nothing unpacked
        assert _versions(ag) == {"big-a": "1.0.0"} and sorted(os.listdir(tmp_path / "data" / "models")) in (
            before, sorted(before + ["big-b"]))
        assert ag.install_file(bundles.v1).result == "installed"  # a small one still fits
    finally:
        ag.shutdown()


# ---- load on demand ------------------------------------------------------------------------------

def test_an_on_demand_model_starts_on_its_first_request_and_stops_when_idle(tmp_path, bundles, detector):
    extra = f'[models.{DETECTOR}]\non_demand = true\nidle_stop_s = 1.0'
    ag = _agent(tmp_path, bundles, extra=extra)
    try:
        ag.install_file(bundles.v1)
        assert ag.install_file(detector.v1).result == "installed"  # the health gate ran its worker
        wait_for(lambda: ag._rt[DETECTOR].worker is None, timeout=10, what="the idle worker to stop")
        m = {x.name: x for x in ag.reported_state().models}
        assert m[DETECTOR].on_demand and not m[DETECTOR].loaded and m[DETECTOR].health == "ok"
        assert m[SENSOR].loaded and not m[SENSOR].on_demand
        w = ag.acquire_worker(DETECTOR)  # the first request starts it
        assert w is not None and w.alive
        time.sleep(1.5)
        assert ag._rt[DETECTOR].worker is w  # a request in flight keeps it
        ag.release_worker(w)
        wait_for(lambda: ag._rt[DETECTOR].worker is None, timeout=10, what="the idle worker to stop again")
        wait_for(lambda: not w.alive, what="its process to end")
        assert ag._rt[SENSOR].worker.alive
    finally:
        ag.shutdown()
    ag2 = _agent(tmp_path, bundles, extra=extra)  # a restart starts only the always-on model
    try:
        ag2.start_serving()
        assert ag2._rt[SENSOR].worker is not None and ag2._rt[DETECTOR].worker is None
        assert {m.name: m.health for m in ag2.reported_state().models} == {SENSOR: "ok", DETECTOR: "ok"}
    finally:
        ag2.shutdown()


# ---- migration from the single-model layout --------------------------------------------------------

def _single_model_layout(tmp_path, b) -> Path:
    """A data dir as a single-model agent left it: DATA/state.json + DATA/slots/{a,b} (v2 serving, v1 previous)."""
    (tmp_path / "make").mkdir()
    ag = _agent(tmp_path / "make", b)
    try:
        assert ag.install_file(b.v1).result == "installed" and ag.install_file(b.v2).result == "installed"
    finally:
        ag.shutdown()
    data = tmp_path / "make" / "data"
    os.rename(data / "models" / SENSOR / "state.json", data / "state.json")
    os.rename(data / "models" / SENSOR / "slots", data / "slots")
    shutil.rmtree(data / "models")
    return data


@pytest.mark.parametrize("crash", [None, "after-rename", "after-copy"])
def test_the_single_model_layout_migrates_on_first_start(tmp_path, bundles, detector, crash):
    data = _single_model_layout(tmp_path, bundles)
    old_state = (data / "state.json").read_bytes()
    if crash is not None:  # a crash during an earlier migration: the next start finishes it
        (data / "models" / SENSOR).mkdir(parents=True)
        os.rename(data / "slots", data / "models" / SENSOR / "slots")
        if crash == "after-copy":
            (data / "models" / SENSOR / "state.json").write_bytes(old_state)
    ag = _agent(tmp_path, bundles, data=data)
    try:
        assert not (data / "state.json").exists() and not (data / "slots").exists()
        assert (data / "models" / SENSOR / "state.json").read_bytes() == old_state
        ag.start_serving()
        assert _versions(ag) == {SENSOR: "2.0.0"} and ag.reported_state().installed.version == "2.0.0"
        assert ag.install_file(detector.v1).result == "installed"
        assert ag.rollback(SENSOR).result == "rolled_back"  # the migrated previous slot is usable
        assert _versions(ag) == {SENSOR: "1.0.0", DETECTOR: "1.0.0"}
    finally:
        ag.shutdown()


def test_migration_keeps_the_device_off_a_corrupt_single_model_state(tmp_path, bundles):
    data = _single_model_layout(tmp_path, bundles)
    (data / "state.json").write_text("{not json")
    from bitnet_edge.agent.errors import StoreError

    with pytest.raises(StoreError) as e:
        _agent(tmp_path, bundles, data=data)
    assert e.value.reason == "bad-state" and (data / "slots").exists()  # nothing moved


# ---- real processes: routing, status, metrics, crashes ------------------------------------------------

def test_the_local_api_routes_by_model(tmp_path, bundles, detector):
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port)
    try:
        for b in (bundles.v1, detector.v1):
            res = cli("agent", "install", b, "--config", cfg, "--json")
            assert res.returncode == 0, res.stdout + res.stderr
        code, models = d.request("GET", "/v1/models")
        assert code == 200 and [(m["id"], m["architecture"]) for m in models["data"]] == [
            (DETECTOR, "mlp"), (SENSOR, "mlp")]
        x = {"inputs": [[0.25] * 32]}
        code, a = d.request("POST", "/v1/infer", {**x, "model": SENSOR})
        code2, b = d.request("POST", "/v1/infer", {**x, "model": DETECTOR})
        assert code == code2 == 200 and a["model"] == SENSOR and b["model"] == DETECTOR
        assert len(a["outputs"][0]) == 4 and len(b["outputs"][0]) == 3
        code, err = d.request("POST", "/v1/infer", {**x, "model": "nope"})
        assert code == 404 and err["error"]["type"] == "model_not_found"
        assert err["error"]["installed"] == [DETECTOR, SENSOR] and "nope" in err["error"]["message"]
        code, err = d.request("POST", "/v1/infer", x)
        assert code == 400 and err["error"]["type"] == "model_required"
        code, err = d.request("POST", "/v1/completions", {"prompt": [1, 2], "model": SENSOR})
        assert code == 400 and err["error"]["type"] == "wrong_model"  # routed, then refused by the mlp worker
        code, health = d.request("GET", "/v1/health")
        assert code == 200 and set(health["models"]) == {SENSOR, DETECTOR}
        assert all(m["status"] == "ok" and m["worker_pid"] for m in health["models"].values())
        code, metrics = d.request("GET", "/metrics")
        assert f'bne_model_info{{model="{DETECTOR}",release="1"' in metrics
        assert f'route="/v1/infer",model="{DETECTOR}",code="200"' in metrics
        assert 'route="/v1/infer",model="nope"' not in metrics
        st = json.loads(cli("agent", "status", "--config", cfg, "--json").stdout)
        assert set(st["models"]) == {SENSOR, DETECTOR} and st["models"][SENSOR]["worker"]["memory_mb"]["private"] > 0
        assert {m["name"] for m in st["state"]["models"]} == {SENSOR, DETECTOR}
        text = cli("agent", "status", "--config", cfg).stdout
        assert DETECTOR in text and SENSOR in text
        res = cli("agent", "rollback", "--config", cfg, "--json")
        assert res.returncode != 0 and json.loads(res.stdout)["error"]["reason"] == "model_required"
        res = cli("agent", "install", detector.v2, "--config", cfg, "--model", SENSOR, "--json")
        out = json.loads(res.stdout)  # the running agent's outcome, as `agent install` without a daemon gives it
        assert res.returncode != 0 and out["result"] == "rejected" and "holds model 'detector'" in out["message"]
        assert cli("agent", "install", detector.v2, "--config", cfg, "--model", DETECTOR).returncode == 0
        res = cli("agent", "rollback", "--config", cfg, "--model", DETECTOR, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        code, b = d.request("POST", "/v1/infer", {**x, "model": DETECTOR})
        assert code == 200 and d.request("GET", "/v1/health")[1]["models"][DETECTOR]["model"]["version"] == "1.0.0"
    finally:
        d.stop()
    st = json.loads(cli("agent", "status", "--config", cfg, "--json").stdout)  # no agent running: read from disk
    assert not st["daemon"] and st["models"][DETECTOR]["state"]["installed"]["version"] == "1.0.0"
    assert st["models"][SENSOR]["active_slot"] == "a"
    assert st["models"][DETECTOR]["state"]["previous"]["version"] == "2.0.0"
    res = cli("agent", "rollback", "--config", cfg, "--json")
    assert res.returncode != 0 and json.loads(res.stdout)["error"]["reason"] == "model_required"
    # a default model in the config: requests without `model` go there
    port = free_port()
    cfg = write_config(tmp_path / "agent2.toml", tmp_path / "data", [bundles.pub], port=port,
                       extra=f'default_model = "{DETECTOR}"')
    d = Daemon(cfg, port)
    try:
        code, out = d.request("POST", "/v1/infer", {"inputs": [[0.25] * 32]})
        assert code == 200 and out["model"] == DETECTOR
    finally:
        d.stop()


@pytest.mark.parametrize("point", ["prepared", "unpacked", "loaded", "switched"])
def test_kill_during_one_models_install_leaves_the_other_serving(point, tmp_path, bundles, detector):
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    assert cli("agent", "install", bundles.v1, "--config", cfg).returncode == 0
    assert cli("agent", "install", detector.v1, "--config", cfg).returncode == 0
    res = cli("agent", "install", detector.v2, "--config", cfg, env={"BITNET_EDGE_FAULT": point})
    assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-500:])
    d = Daemon(cfg, port)
    try:
        code, health = d.request("GET", "/v1/health")
        assert code == 200, health
        assert health["models"][SENSOR]["model"]["version"] == "1.0.0"
        want = "2.0.0" if point == "switched" else "1.0.0"
        assert health["models"][DETECTOR]["model"]["version"] == want, (point, health)
        for name, n in ((SENSOR, 4), (DETECTOR, 3)):
            code, out = d.request("POST", "/v1/infer", {"inputs": [[0.5] * 32], "model": name})
            assert code == 200 and len(out["outputs"][0]) == n
    finally:
        d.stop()


# ---- FleetSync: a desired state per model, on a real broker -----------------------------------------

class TwoModelFleet:
    """A fleet peer on the raw protocol: desired states on .../desired/{model}, chunks for any file
    it holds; chunks of the files in ``hold`` are not answered until ``release()``."""

    def __init__(self, broker: Mosquitto, device_id: str, target: str):
        self.device_id, self.target, self.files, self.hold, self.held = device_id, target, {}, set(), []
        self.states: list[P.ReportedState] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="two-model-fleet")
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe([(P.device_topic(device_id, "chunk/req"), 1), (P.device_topic(device_id, "state"), 1)])
        self.c.loop_start()

    def _on_message(self, c, u, m):
        if m.topic.endswith("/state"):
            self.states.append(P.parse_message("state", m.payload))
            return
        req = P.parse_message("chunk/req", m.payload)
        if req.file_sha256 in self.hold:
            self.held.append(req)
            return
        self._answer(req)

    def _answer(self, req):
        data = self.files[req.file_sha256]
        for i in req.chunks:
            off = i * req.chunk_size
            self.c.publish(P.device_topic(self.device_id, "chunk/data"),
                           P.pack_chunk(req.file_sha256, off, data[off:off + req.chunk_size]), qos=1)

    def release(self, sha: str):
        self.hold.discard(sha)
        for req in [r for r in self.held if r.file_sha256 == sha]:
            self._answer(req)

    def desire(self, bundle: Path, model: str, version: str, release: int, topic_model: str | None = None,
               hold: bool = False, mirror: bool = False) -> str:
        """Set a desired state on .../desired/{topic_model or model} (``mirror``: the same one on the
        single-model .../desired too, as the fleet does for agents that have not reported models)."""
        data = bundle.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.files[sha] = data
        if hold:
            self.hold.add(sha)
        ref = P.ReleaseRef(model=model, version=version, release=release, target=self.target, bundle_sha256=sha,
                           bundle_size=len(data), chunk_size=4096)
        d = P.DesiredState(device_id=self.device_id, rollout_id=f"ro-{model}-{release}", release=ref,
                           issued_at=time.time())
        self.c.publish(P.desired_topic(self.device_id, topic_model or model), d.model_dump_json(), qos=1, retain=True)
        if mirror:
            self.c.publish(P.device_topic(self.device_id, "desired"), d.model_dump_json(), qos=1, retain=True)
        return sha

    def clear_mirror(self):
        self.c.publish(P.device_topic(self.device_id, "desired"), b"", qos=1, retain=True)

    def clear(self, model: str):
        self.c.publish(P.desired_topic(self.device_id, model), b"", qos=1, retain=True)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_fleet_sync_with_a_desired_state_per_model(tmp_path, bundles, detector):
    broker = Mosquitto(require_tool("mosquitto", "mosquitto"), tmp_path).start()
    cfg = load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], mqtt=broker.url,
                                   device_id="dev-mm"))
    ag = Agent(cfg)
    target = verify_bundle(bundles.v1, [load_public_key(bundles.pub)], deep=False).manifest.target
    fleet = TwoModelFleet(broker, "dev-mm", target)
    try:
        assert ag.install_file(bundles.v1).result == "installed"
        ag.start_sync(SyncLimits(chunk_timeout=1.0, tick=0.05, reconnect_min=0.1))
        wait_for(lambda: ag.sync.connected, what="connect")
        # sensor-mlp v2 is held mid-download while detector v1 is desired, fetched and installed
        sen_sha = fleet.desire(bundles.v2, SENSOR, "2.0.0", 2, hold=True)
        wait_for(lambda: SENSOR in ag.sync._jobs and fleet.held, what="sensor download started")
        fleet.desire(detector.v1, DETECTOR, "1.0.0", 1)
        wait_for(lambda: _versions(ag).get(DETECTOR) == "1.0.0", timeout=30, what="detector installed")
        assert SENSOR in ag.sync._jobs and ag.sync._jobs[SENSOR].sha256 == sen_sha  # not cancelled
        assert _versions(ag)[SENSOR] == "1.0.0"
        # a desired state on one model's topic naming another model is dropped
        dropped = ag.sync.stats["dropped_messages"]
        fleet.desire(detector.v2, DETECTOR, "2.0.0", 2, topic_model="other-model")
        wait_for(lambda: ag.sync.stats["dropped_messages"] > dropped, what="mismatch dropped")
        fleet.clear("other-model")
        # clearing detector's desired state does not touch sensor's download
        fleet.clear(DETECTOR)
        time.sleep(0.3)
        assert SENSOR in ag.sync._jobs
        fleet.release(sen_sha)
        wait_for(lambda: _versions(ag).get(SENSOR) == "2.0.0", timeout=30, what="sensor installed")
        assert _versions(ag) == {SENSOR: "2.0.0", DETECTOR: "1.0.0"}

        def reported():
            s = fleet.states[-1] if fleet.states else None
            return s if s and {m.name: (m.installed.version if m.installed else None) for m in s.models} == {
                SENSOR: "2.0.0", DETECTOR: "1.0.0"} else None

        st = wait_for(reported, what="both models reported")
        outs = {m.name: m.last_outcome for m in st.models}
        assert outs[SENSOR].result == "installed" and outs[SENSOR].rollout_id == f"ro-{SENSOR}-2"
        assert outs[DETECTOR].rollout_id == f"ro-{DETECTOR}-1" and st.health == "ok"
        # the fleet's single-model mirror of a per-model desired state: clearing it never stops that model's download
        det_sha = fleet.desire(detector.v2, DETECTOR, "2.0.0", 2, hold=True, mirror=True)
        wait_for(lambda: DETECTOR in ag.sync._jobs and ag.sync._jobs[DETECTOR].sha256 == det_sha,
                 what="detector download started")
        wait_for(lambda: ag.sync.stats["mirrored_desired"] >= 1, what="the mirror seen")
        fleet.clear_mirror()
        time.sleep(0.5)
        assert DETECTOR in ag.sync._jobs and ag.sync._jobs[DETECTOR].sha256 == det_sha
        fleet.release(det_sha)
        wait_for(lambda: _versions(ag).get(DETECTOR) == "2.0.0", timeout=30, what="detector v2 installed")
        # a downgrade of one model is refused for that model only, and persisted per model
        fleet.desire(detector.v1, SENSOR, "1.0.0", 1)  # sensor-mlp at release 1 (the bytes do not matter)
        wait_for(lambda: (o := ag.sync._outcomes.get(SENSOR)) is not None and o.reason == "downgrade",
                 what="downgrade refused")
        saved = json.loads((tmp_path / "data" / "sync.json").read_text())
        assert saved["models"][SENSOR]["outcome"]["reason"] == "downgrade"
        assert saved["models"][DETECTOR]["outcome"]["result"] == "installed"
        assert _versions(ag) == {SENSOR: "2.0.0", DETECTOR: "2.0.0"}
    finally:
        ag.shutdown()
        fleet.close()
        broker.stop()


def test_a_broken_zygote_falls_back_to_fresh_worker_processes(tmp_path, bundles, monkeypatch):
    from bitnet_edge.agent import workers

    ag = _agent(tmp_path, bundles)
    if ag.zygote is None:
        pytest.skip("no zygote on this platform (pidfds)")
    monkeypatch.setattr(workers.Zygote, "_start", lambda self: (_ for _ in ()).throw(
        workers.WorkerFailed("zygote", "the worker zygote did not start")))
    try:
        out = ag.install_file(bundles.v1)
        assert out.result == "installed", out
        w = ag._rt[SENSOR].worker
        assert ag.zygote is None and not isinstance(w.proc, workers.ForkedProc) and w.alive
    finally:
        ag.shutdown()
