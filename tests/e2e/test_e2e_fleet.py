"""End to end with real processes: Mosquitto, `bitnet-edge fleet serve`, `bitnet-edge agent run`.

A rollout of a multi-megabyte bundle in 4 KiB chunks to two agents; one agent is SIGKILLed in the
middle of its download and restarted (it resumes from its persisted chunk bitmap), the broker is
restarted in the middle of the other's; both end up serving the release, verified.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from tests.support.bundle_models import built_library, make_mlp_dir
from tests.support.fleet_helpers import Mosquitto, free_port, wait_for
from tests.support.procs import HOST_DEVICE, AgentProc
from tests.support.procs import bne as _bne
from tests.support.procs import cli_json as _cli_json
from tests.support.procs import held as _held
from tests.support.tools import require_tool

from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.native.targets import host_target


@pytest.fixture
def stack(tmp_path):
    exe = require_tool("mosquitto", "mosquitto") or "/usr/sbin/mosquitto"
    broker = Mosquitto(exe, tmp_path).start()
    generate_keypair(tmp_path / "keys", "release")
    key = load_private_key(tmp_path / "keys" / "release.key")
    pub = tmp_path / "keys" / "release.pub"
    model = make_mlp_dir(tmp_path / "model", sizes=(1024, 4096, 4096, 16), seed=3, name="e2e-mlp")
    opts = PackageOptions(libraries={host_target(): built_library(host_target())}, zstd_level=3)
    bundle = package_model(model, [HOST_DEVICE], "1.0.0", [key], tmp_path / "dist", release=1, options=opts)[0]
    api = free_port()
    fleet_data = tmp_path / "fleet"
    fleet_log = tmp_path / "fleet.log"
    fleet = _bne("fleet", "serve", "--data", fleet_data, "--broker", broker.url, "--api-port", api, "--chunk-kib", "4",
                 "--trust", pub, stdout=subprocess.DEVNULL, stderr=open(fleet_log, "w"))
    wait_for(lambda: (fleet_data / "service.json").exists(), 30, what="fleet service")
    agents = []
    try:
        yield {"tmp": tmp_path, "broker": broker, "pub": pub, "bundle": bundle, "fleet_data": fleet_data,
               "agents": agents, "fleet_log": fleet_log}
    finally:
        for a in agents:
            a.stop()
        fleet.terminate()
        fleet.wait(15)
        broker.stop()


def test_rollout_survives_agent_kill_and_broker_restart_mid_transfer(stack):
    tmp, broker = stack["tmp"], stack["broker"]
    a = AgentProc(tmp / "agents", "e2e-a", stack["pub"], broker.url)
    b = AgentProc(tmp / "agents", "e2e-b", stack["pub"], broker.url)
    stack["agents"] += [a, b]
    data = stack["fleet_data"]
    wait_for(lambda: sum(d["online"] for d in _cli_json("fleet", "devices", "--data", data, "--json")) == 2, 30,
             what="two devices online")
    _cli_json("fleet", "publish", stack["bundle"].path, "--data", data, "--json")
    st = _cli_json("fleet", "rollout", "create", "e2e-mlp", "1.0.0", "--stages", "100", "--timeout", "300",
                   "--data", data, "--json")
    n_chunks = -(-stack["bundle"].size // 4096)
    assert n_chunks > 500
    # agent a: SIGKILL with part of the bundle on disk, then restart
    wait_for(lambda: 0.05 * n_chunks < _held(a.data)[0] < 0.8 * n_chunks, 60, interval=0.005, what="a mid-transfer")
    a.kill()
    held_at_kill = _held(a.data)[0]
    assert 0 < held_at_kill < n_chunks
    # broker: restart while b is (or was) downloading
    broker.stop()
    time.sleep(0.5)
    broker.start()
    a.start()
    wait_for(lambda: a.serving() == "1.0.0" and b.serving() == "1.0.0", 180, interval=0.5,
             what="both agents serving 1.0.0")
    # a resumed from its bitmap: its second run fetched only what it lacked
    text = a.logs[-1].read_text()
    m = re.search(r"fetching \w+ \((\d+) bytes, full, (\d+) of (\d+) chunks held\)", text)
    assert m, text[-2000:]
    assert int(m.group(2)) >= held_at_kill and int(m.group(3)) == n_chunks
    st = _cli_json("fleet", "rollout", "status", st["id"], "--data", data, "--json")
    assert st["state"] == "completed" and st["done"] == 2, st
