"""[hardening] (issue 18, security): the agent's secrets, admin routes, HTTP server robustness and
request bounds."""

from __future__ import annotations

import os

import pytest

from bitnet_edge.agent.config import AgentConfig, MqttConfig
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.agent.errors import ConfigError
from bitnet_edge.packagers.signing import generate_keypair


def test_an_mtls_key_other_users_can_read_is_refused(tmp_path):
    kp = generate_keypair(tmp_path / "keys")
    key = tmp_path / "device.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    os.chmod(key, 0o644)
    cfg = AgentConfig(device_id="d1", data_dir=str(tmp_path / "data"), trust=[str(kp.public_path)],
                      mqtt=MqttConfig(url="mqtts://127.0.0.1:8883", tls_cert=str(key), tls_key=str(key)))
    with pytest.raises(ConfigError, match="mqtt.tls_key: mode 0644"):
        Agent(cfg)
    os.chmod(key, 0o600)
    Agent(cfg).shutdown()  # the same file, owner-only: accepted
