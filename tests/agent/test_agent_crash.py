"""Crash safety: SIGKILL the agent at every step of an install; after a restart it serves a
verified model (the old one before the switch, the new one after), never a half-installed one."""

import shutil
import signal

import pytest

from tests.support.agent_fixtures import Daemon, bundles, cli, free_port, write_config  # noqa: F401
from bitnet_edge.agent.policy import FAULT_POINTS


@pytest.fixture(scope="module")
def installed_v1(tmp_path_factory, bundles):
    root = tmp_path_factory.mktemp("crash-template")
    cfg = write_config(root / "agent.toml", root / "data", [bundles.pub])
    res = cli("agent", "install", bundles.v1, "--config", cfg, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return root / "data"


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_at_each_step_then_restart(point, installed_v1, bundles, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(installed_v1, data, symlinks=True)
    (data / "api.sock").unlink(missing_ok=True)
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", data, [bundles.pub], port=port)
    res = cli("agent", "install", bundles.v2, "--config", cfg, env={"BITNET_EDGE_FAULT": point})
    assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-500:])
    d = Daemon(cfg, port)
    try:
        code, health = d.request("GET", "/v1/health")
        assert code == 200, health
        want = "2.0.0" if point == "switched" else "1.0.0"
        assert health["model"]["version"] == want, (point, health)
        code, out = d.request("POST", "/v1/infer", {"inputs": [[0.5] * 32]})
        assert code == 200 and len(out["outputs"][0]) == 4
    finally:
        d.stop()
    # and the store is not wedged: the update goes through afterwards
    again = cli("agent", "install", bundles.v2, "--config", cfg, "--json")
    assert again.returncode == (1 if point == "switched" else 0), again.stdout
