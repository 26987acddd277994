"""TUF end to end with the real fleet service (embedded amqtt broker): the key ceremony and
`fleet publish --targets-key` through the CLI, the service's repository and MQTT responder, a
rollout, and a real Agent that installs only what the signed targets list (ADR 0010)."""

from __future__ import annotations

import json
import time

from tests.support.fleet_helpers import enroll, wait_for
from tests.support.tuf_helpers import Device
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.fleet.config import FleetConfig
from bitnet_edge.fleet.rollout import RolloutSpec
from bitnet_edge.fleet.service import FleetService, load_token
from tests.support.agent_fixtures import HOST_DEVICE, bundles  # noqa: F401


def test_ceremony_publish_and_rollout_to_a_tuf_agent(tmp_path, bundles):
    data = tmp_path / "fleet"
    svc = FleetService(FleetConfig(data_dir=str(data), embedded_port=0, api_port=0, chunk_bytes=16384, tick=0.2,
                                   trust=[str(bundles.pub)])).start()
    dev = None
    try:
        r = CliRunner()
        api = ["--api", svc.api.url, "--token", load_token(data)]

        def run(*args, code=0):
            res = r.invoke(main, [str(a) for a in args], catch_exceptions=False)
            assert res.exit_code == code, res.output
            return res.output

        pub = run("fleet", "tuf", "online-key", "--data", data).strip()
        assert pub == str(data / "tuf" / "online.pub")
        c = json.loads(run("fleet", "tuf", "init", tmp_path / "offline", "--online-key", pub))
        status = json.loads(run("fleet", "tuf", "push", c["root"], c["targets"], *api))
        assert status["enabled"] and status["root"]["version"] == 1 and status["timestamp"]["version"] == 1
        tkey = tmp_path / "offline" / "keys" / "targets-1.key"
        run("fleet", "publish", bundles.v1, "--targets-key", tkey, *api)
        # the device: provisioned with 1.root.json, serving nothing yet
        dev = Device(tmp_path, bundles, svc.broker_url, c["root"], profile=HOST_DEVICE, **enroll(svc, "dev-1")).start()
        wait_for(lambda: any(d["id"] == "dev-1" and d["online"] for d in svc.devices()), what="device registered")
        rid = svc.create_rollout(RolloutSpec(model="sensor-mlp", version="1.0.0", stages=[100]))["id"]
        wait_for(lambda: svc.rollout(rid)["state"] == "completed", 30, what="rollout of 1.0.0")
        assert dev.agent.reported_state().installed.release == 1
        # a release published without the targets key: the service serves it, the device refuses it
        run("fleet", "publish", bundles.v2, *api)
        t0 = time.time()
        rid2 = svc.create_rollout(RolloutSpec(model="sensor-mlp", version="2.0.0", stages=[100],
                                              failure_threshold=0.5))
        out = dev.outcome(t0)
        assert (out.result, out.reason) == ("rejected", "tuf_rejected"), out
        assert dev.agent.reported_state().installed.release == 1
        wait_for(lambda: svc.rollout(rid2["id"])["state"] in ("paused", "aborted"), 30, what="rollout paused")
        # signed into targets afterwards (offline: sign-targets), the re-issued desired state installs
        run("fleet", "tuf", "sign-targets", bundles.v2, "--key", tkey, *api)
        run("fleet", "rollout", "abort", rid2["id"], *api)
        rid3 = svc.create_rollout(RolloutSpec(model="sensor-mlp", version="2.0.0", stages=[100]))["id"]
        wait_for(lambda: svc.rollout(rid3)["state"] == "completed", 30, what="rollout of 2.0.0")
        assert dev.agent.reported_state().installed.release == 2
        st = json.loads(run("fleet", "tuf", "status", *api))
        assert st["targets"]["version"] == 3 and st["targets"]["targets"] == 2
        snap = svc.counters.snapshot()
        # three refreshes, each asking for root 2 (a 404: no newer root) and timestamp at least
        assert snap["rx:tuf/req"] - snap["tuf_files_sent"] >= 3 and snap["tuf_files_sent"] >= 6, snap
        tuf_audit = [e.target for e in svc.audit.entries() if e.action == "tuf-update"]
        assert tuf_audit == ["root 1, targets 1", "targets 2", "targets 3"], tuf_audit
    finally:
        if dev is not None:
            dev.stop()
        svc.stop()
