"""The agent CLI's bad inputs (issue 18): one line ``error: ... [reason]``, exit 2, no traceback, and
nothing left running."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from bitnet_edge.cli import main
from tests.support.agent_fixtures import write_config
from tests.support.cli_errors import one_line_error


def _pub(tmp_path):
    from bitnet_edge.packagers.keys import generate_keypair

    return generate_keypair(tmp_path / "keys", "release").public_path


def test_the_api_port_already_in_use_is_named(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [_pub(tmp_path)], port=port)
        res = CliRunner().invoke(main, ["agent", "run", "--config", str(cfg)])
    line = one_line_error(res, "agent API", f"127.0.0.1:{port}", f"port {port} is already in use",
                          reason="port-in-use")
    assert "[api] port" in line  # says where to choose another


def test_a_missing_or_corrupt_trust_key_is_named(tmp_path):
    bundle = tmp_path / "any.bundle"
    bundle.write_bytes(b"\0" * 64)
    missing = tmp_path / "keys" / "gone.pub"
    cfg = write_config(tmp_path / "a.toml", tmp_path / "data", [missing])
    for cmd in (["agent", "install", str(bundle)], ["agent", "run"]):
        res = CliRunner().invoke(main, [*cmd, "--config", str(cfg)])
        one_line_error(res, "trust", str(missing), "no such key file", reason="missing")
    corrupt = tmp_path / "corrupt.pub"
    corrupt.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    cfg = write_config(tmp_path / "b.toml", tmp_path / "data", [corrupt])
    res = CliRunner().invoke(main, ["agent", "install", str(bundle), "--config", str(cfg)])
    one_line_error(res, "trust", str(corrupt), "not a key file", reason="bad-format")


def test_a_typo_in_the_profile_is_refused_not_dropped(tmp_path):
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [_pub(tmp_path)], extra='profile = "raspbery-pi-5"')
    res = CliRunner().invoke(main, ["agent", "status", "--config", str(cfg)])
    one_line_error(res, "profile", "'raspbery-pi-5'", "raspberry-pi-5", reason="unknown-profile")
    res = CliRunner().invoke(main, ["agent", "status", "--config", str(cfg), "--json"])
    assert res.exit_code == 2 and '"reason": "unknown-profile"' in res.stdout


def test_a_bad_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "dev-1"\ndata_dir = "d"\ntrust = ["k.pub"]\n[limits]\nmax_bundle_mb = -1\n')
    one_line_error(CliRunner().invoke(main, ["agent", "status", "--config", str(cfg)]), str(cfg), "max_bundle_mb",
                   reason="bad-config")


def test_an_unusable_admin_socket_is_named_and_the_api_port_released(tmp_path):
    """The TCP API listens first; when the admin socket then cannot (a path past the 107 bytes of
    sun_path), the error names the socket and the listener already made is closed, not leaked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / ("d" * 60) / ("e" * 60)
    cfg = write_config(tmp_path / "agent.toml", data, [_pub(tmp_path)], port=port)
    res = CliRunner().invoke(main, ["agent", "run", "--config", str(cfg)])
    one_line_error(res, "admin socket", reason="socket-unusable")
    with socket.socket() as again:  # the API's listener was closed with the failure
        again.bind(("127.0.0.1", port))
