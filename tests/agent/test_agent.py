"""The agent: install pipeline with real signed bundles, refusals, rollback, local API, hot swap."""

import json
import threading

import numpy as np
import pytest

from tests.support.agent_fixtures import FOREIGN_DEVICE, Daemon, bundles, cli, free_port, write_config  # noqa: F401
from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.packagers.builder import package_model
from tests.support.bundle_models import make_mlp_dir


@pytest.fixture
def agent(tmp_path, bundles):
    ag = Agent(load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub])))
    yield ag
    ag.shutdown()


def test_install_then_upgrade_then_rollback(agent, bundles):
    o1 = agent.install_file(bundles.v1)
    assert o1.result == "installed", o1
    st = agent.reported_state()
    assert st.installed.release == 1 and st.health == "ok"
    o2 = agent.install_file(bundles.v2)
    assert o2.result == "installed", o2
    assert agent.reported_state().installed.version == "2.0.0"
    assert agent.reported_state().previous.version == "1.0.0"
    back = agent.rollback()
    assert back.result == "rolled_back" and agent.reported_state().installed.version == "1.0.0"


@pytest.mark.parametrize("case", ["downgrade", "same", "untrusted", "corrupt", "truncated", "missing"])
def test_bad_bundles_are_refused_and_the_old_model_keeps_serving(agent, bundles, case, tmp_path):
    first = bundles.v2 if case == "downgrade" else bundles.v1
    assert agent.install_file(first).result == "installed"
    before = agent.reported_state().installed
    worker = agent.acquire_worker()
    agent.release_worker(worker)
    path, want = {
        "downgrade": (bundles.v1, "downgrade"), "same": (bundles.v1, "downgrade"),
        "untrusted": (bundles.unsigned_by_us, "untrusted_key"),
    }.get(case, (None, "corrupt"))
    if case in ("corrupt", "truncated"):
        data = bytearray(bundles.v2.read_bytes())
        if case == "corrupt":
            data[len(data) // 2] ^= 0x40
        else:
            data = data[: len(data) // 3]
        path = tmp_path / "bad.bundle"
        path.write_bytes(bytes(data))
    if case == "missing":
        path = tmp_path / "nope.bundle"
    out = agent.install_file(path)
    assert out.result == "rejected" and out.reason == want, out
    assert agent.reported_state().installed == before
    assert agent.acquire_worker() is worker  # the same worker process still serves
    agent.release_worker(worker)
    assert agent.store.load().last_outcome.reason == want


def test_explicit_downgrade_is_allowed(agent, bundles):
    agent.install_file(bundles.v2)
    out = agent.install_file(bundles.v1, allow_downgrade=True)
    assert out.result == "installed" and agent.reported_state().installed.release == 1


def test_wrong_target_is_refused(agent, bundles, tmp_path):
    from tests.support.bundle_models import tools_missing

    if tools_missing("linux-aarch64"):
        pytest.skip("needs the zig toolchain (the ziglang wheel)")
    m = make_mlp_dir(tmp_path / "m", sizes=(32, 48, 4), seed=1, name="sensor-mlp")
    foreign = package_model(m, [FOREIGN_DEVICE], "9.0.0", [bundles.key], tmp_path / "out", release=9)[0].path
    out = agent.install_file(foreign)
    assert out.result == "rejected" and out.reason == "wrong_target", out


def test_health_gate_failure_keeps_the_old_model(agent, bundles, tmp_path):
    """A bundle whose golden vectors do not match what its model computes (a broken build)."""
    from bitnet_edge.packagers import golden_vectors as golden

    agent.install_file(bundles.v1)
    m = make_mlp_dir(tmp_path / "m", sizes=(32, 48, 4), seed=1, name="sensor-mlp")
    real = golden.compute_golden

    def broken(model_dir, model):
        gs, data = real(model_dir, model)
        arr = bytearray(data)
        out = next(a for a in gs.arrays if a.role == "output")
        for i in range(out.offset, out.offset + 4 * 8, 4):  # scribble over the expected outputs
            arr[i: i + 4] = np.float32(1e3).tobytes()
        return gs, bytes(arr)

    golden.compute_golden = broken
    try:
        import bitnet_edge.packagers.builder as b

        saved = getattr(b, "compute_golden", None)
        if saved is not None:
            b.compute_golden = broken
        bad = package_model(m, ["x86-64-v3" if agent.caps.arch == "x86_64" else "raspberry-pi-5"], "3.0.0",
                            [bundles.key], tmp_path / "out", release=3, options=bundles.opts)[0].path
    finally:
        golden.compute_golden = real
        if saved is not None:
            b.compute_golden = saved
    out = agent.install_file(bad)
    assert out.result == "failed" and out.reason == "health_failed", out
    assert agent.reported_state().installed.version == "1.0.0"


def test_local_api_and_hot_swap(tmp_path, bundles):
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port)
    try:
        code, body = d.request("GET", "/v1/health")
        assert code == 503 and body["status"] == "no_model"
        code, body = d.request("POST", "/v1/infer", {"inputs": [[0.0] * 32]})
        assert code == 503 and body["error"]["type"] == "no_model"
        res = cli("agent", "install", bundles.v1, "--config", cfg, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        code, body = d.request("GET", "/v1/health")
        assert code == 200 and body["model"]["version"] == "1.0.0" and body["golden"]["ok"]
        x = np.random.default_rng(0).standard_normal((5, 32)).tolist()
        code, r1 = d.request("POST", "/v1/infer", {"inputs": x})
        assert code == 200 and len(r1["classes"]) == 5, r1
        # requests keep being answered while release 2 is installed and swapped in
        errors, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                c, b = d.request("POST", "/v1/infer", {"inputs": x})
                if c != 200:
                    errors.append((c, b))

        t = threading.Thread(target=hammer)
        t.start()
        res = cli("agent", "install", bundles.v2, "--config", cfg, "--json")
        stop.set()
        t.join()
        assert res.returncode == 0 and not errors, (res.stdout, errors[:3])
        code, body = d.request("GET", "/v1/models")
        assert code == 200 and body["data"][0]["architecture"] == "mlp"
        # bad requests are 4xx JSON errors
        assert d.request("POST", "/v1/infer", b"{not json")[0] == 400
        assert d.request("POST", "/v1/infer", {"inputs": [[1.0] * 31]})[0] == 400
        assert d.request("POST", "/v1/infer", {"inputs": [[1.0] * 32], "bogus": 1})[0] == 400
        assert d.request("POST", "/v1/embeddings", {"input": "hi"})[0] == 400
        assert d.request("GET", "/v1/nope")[0] == 404
        code, metrics = d.request("GET", "/metrics")
        assert code == 200 and 'bne_model_info{model="sensor-mlp"' in metrics
        assert 'bne_installs_total{model="sensor-mlp",result="installed",reason="ok"} 2' in metrics
        assert 'bne_request_seconds_bucket{route="/v1/infer"' in metrics
        st = json.loads(cli("agent", "status", "--config", cfg, "--json").stdout)
        assert st["daemon"] and st["state"]["installed"]["version"] == "2.0.0"
        rb = cli("agent", "rollback", "--config", cfg, "--json")
        assert rb.returncode == 0 and d.request("GET", "/v1/health")[1]["model"]["version"] == "1.0.0"
    finally:
        d.stop()


def test_example_config_and_systemd_unit_are_valid():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "agent" / "agent.example.toml")
    assert cfg.api.port == 8700 and cfg.mqtt.url.startswith("mqtts://") and cfg.fleet_keys
    unit = (repo / "agent" / "systemd" / "bitnet-edge-agent.service").read_text()
    assert "ExecStart=/usr/bin/env bitnet-edge agent run --config" in unit and "Restart=always" in unit


def test_config_errors_name_the_field(tmp_path):
    from bitnet_edge.agent.errors import ConfigError

    p = tmp_path / "a.toml"
    p.write_text('device_id = "bad id!"\ndata_dir = "x"\ntrust = ["k.pub"]\n')
    with pytest.raises(ConfigError, match="device_id"):
        load_config(p)
    p.write_text('device_id = "ok"\ndata_dir = "x"\ntrust = ["k.pub"]\nportt = 3\n')
    with pytest.raises(ConfigError, match="portt"):
        load_config(p)


def test_tampered_active_slot_is_not_served(tmp_path, bundles):
    cfg = load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub]))
    ag = Agent(cfg)
    assert ag.install_file(bundles.v1).result == "installed"
    assert ag.install_file(bundles.v2).result == "installed"
    ag.shutdown()
    active = ag.store.load().active
    w = ag.store.slot_dir(active) / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 1
    w.write_bytes(bytes(data))
    ag2 = Agent(cfg)
    try:
        ag2.start_serving()  # v2's slot fails its hashes: the agent falls back to v1's slot
        assert ag2.reported_state().installed.version == "1.0.0"
        assert ag2.acquire_worker() is not None
    finally:
        ag2.shutdown()
