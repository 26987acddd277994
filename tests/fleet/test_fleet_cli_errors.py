"""The fleet CLI's bad inputs (issue 18): one line ``error: ... [reason]``, exit 2, no traceback, nothing
left running."""

from __future__ import annotations

import json
import socket
import threading

from click.testing import CliRunner

from bitnet_edge.cli import main
from tests.support.cli_errors import one_line_error
from tests.support.fleet_helpers import bundles, capabilities


def _held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_a_port_in_use_is_named_for_the_control_api_and_the_embedded_broker(tmp_path):
    threads = threading.active_count()
    for flag, what in (("--api-port", "fleet control API"), ("--mqtt-port", "embedded MQTT broker")):
        held, port = _held_port()
        with held:
            free = {"--api-port": "0", "--mqtt-port": "0", flag: str(port)}
            res = CliRunner().invoke(main, ["fleet", "serve", "--data", str(tmp_path / flag), "--log-format", "json",
                                            *[x for kv in free.items() for x in kv]])
        one_line_error(res, what, f"127.0.0.1:{port}", f"port {port} is already in use", flag, reason="port-in-use",
                       logs=True)
    assert threading.active_count() <= threads + 1  # what had started (broker, MQTT link) was stopped again


def test_a_rollout_that_matches_no_device_is_refused(tmp_path):
    from bitnet_edge.fleet.config import FleetConfig
    from bitnet_edge.fleet.service import FleetService
    from bitnet_edge.sdk.wire.protocol import Presence

    data = tmp_path / "fleet"
    svc = FleetService(FleetConfig(data_dir=str(data), embedded_port=0, api_port=0, tick=0.2)).start()
    try:
        run = CliRunner().invoke
        assert run(main, ["fleet", "publish", str(bundles().r1), "--data", str(data)]).exit_code == 0
        svc.registry.on_presence(Presence(type="birth", device_id="dev-a", ts=1.0, capabilities=capabilities(),
                                          tags=["eu"]), 1.0)
        res = run(main, ["fleet", "rollout", "create", "test-mlp", "1.0.0", "--tag", "us-east", "--data", str(data)])
        one_line_error(res, "no device", "tags us-east", "1 device(s) known", reason="no-devices")
        res = run(main, ["fleet", "rollout", "create", "test-mlp", "1.0.0", "--tag", "us-east", "--data", str(data),
                         "--json"])
        assert res.exit_code == 2 and json.loads(res.stdout)["error"]["reason"] == "no-devices"
        res = run(main, ["fleet", "rollout", "status", "--data", str(data), "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout) == []  # nothing was created
        res = run(main, ["fleet", "rollout", "create", "test-mlp", "1.0.0", "--tag", "eu", "--data", str(data),
                         "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout)["devices"] == 1, res.output
    finally:
        svc.stop()


def test_devices_wait_for_a_device_to_come_online_or_name_it(tmp_path):
    from bitnet_edge.fleet.config import FleetConfig
    from bitnet_edge.fleet.service import FleetService
    from bitnet_edge.sdk.wire.protocol import Presence

    data = tmp_path / "fleet"
    svc = FleetService(FleetConfig(data_dir=str(data), embedded_port=0, api_port=0, tick=0.2)).start()
    try:
        run = CliRunner().invoke
        res = run(main, ["fleet", "devices", "--data", str(data), "--wait", "dev-a", "--timeout", "0.5"])
        one_line_error(res, "dev-a not online after 0.5 s", "0 of 0 known device(s) online", reason="device-offline")
        birth = threading.Timer(0.7, lambda: svc.registry.on_presence(
            Presence(type="birth", device_id="dev-a", ts=1.0, capabilities=capabilities(), tags=[]), 1.0))
        birth.start()
        res = run(main, ["fleet", "devices", "--data", str(data), "--wait", "dev-a", "--timeout", "30", "--json"])
        birth.join()
        assert res.exit_code == 0, res.output
        assert [(d["id"], d["online"]) for d in json.loads(res.stdout)] == [("dev-a", True)]
    finally:
        svc.stop()
