"""Agent configuration (``agent.toml``), one pydantic model per section."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field

from bitnet_edge.agent.errors import ConfigError
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.schemas import Strict, parse_model
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import DEVICE_ID

__all__ = ["AgentConfig", "ApiConfig", "LimitsConfig", "HealthConfig", "load_config"]


class ApiConfig(Strict):
    host: str = Field(default="127.0.0.1", description="listen address of the local inference API")
    port: int = Field(default=8700, ge=0, le=65535, description="TCP port (0: any free port)")
    unix_socket: str | None = Field(default=None, description="also (or only, with port 0) listen on this Unix socket")
    enabled: bool = Field(default=True, description="serve the local API")


class LimitsConfig(Strict):
    disk_budget_mb: int = Field(default=8192, gt=0, description="space the agent may use for slots and downloads, MiB")
    max_bundle_mb: int = Field(default=4096, gt=0, description="largest bundle accepted, MiB")
    memory_budget_mb: int | None = Field(default=None, description="largest model loaded, MiB (default: 80% of RAM)")


class HealthConfig(Strict):
    max_latency_ms: float = Field(default=5000.0, gt=0, description="golden-vector inference must finish within, ms")
    max_rss_mb: float | None = Field(default=None, description="process RSS after loading must stay below, MiB")
    verify_on_start: bool = Field(default=True, description="hash the active slot's files when the agent starts")


class AgentConfig(Strict):
    device_id: str = Field(pattern=DEVICE_ID, description="this device's id on the fleet")
    data_dir: str = Field(description="slots, downloads and state live here")
    trust: list[str] = Field(min_length=1, description="trusted Ed25519 public key files (release signers)")
    tuf_root: str | None = Field(default=None, description="the fleet's TUF root metadata installed at provisioning "
                                                           "(1.root.json from `fleet tuf init`); set: every fleet "
                                                           "update must be in the signed TUF targets (ADR 0010)")
    device_key: str | None = Field(default=None, description="this device's X25519 private key file (mode 0600) "
                                                             "for encrypted bundles (ADR 0011), or "
                                                             "python:module:factory for a TPM / secure-element hook")
    profile: str | None = Field(default=None, description="device profile name; default: matched by the probe")
    tags: list[str] = Field(default_factory=list, description="operator labels reported to the fleet")
    api: ApiConfig = Field(default_factory=ApiConfig, description="local inference API")
    mqtt: BrokerConnection = Field(default_factory=BrokerConnection, description="fleet connection")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="resource limits")
    health: HealthConfig = Field(default_factory=HealthConfig, description="health gate")


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc})") from None
    try:
        cfg = parse_model(AgentConfig, raw, source=str(path))
    except FormatError as exc:
        raise ConfigError(str(path), str(exc).split(": ", 1)[-1]) from None
    base = path.parent
    fix = lambda p: str((base / p).resolve()) if p and not Path(p).is_absolute() else p  # noqa: E731
    dk = cfg.device_key
    return cfg.model_copy(update={"data_dir": fix(cfg.data_dir), "trust": [fix(t) for t in cfg.trust],
                                  "tuf_root": fix(cfg.tuf_root),
                                  "device_key": dk if dk is None or dk.startswith("python:") else fix(dk)})
