"""Agent configuration (``agent.toml``), one pydantic model per section."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from typing import Annotated

from pydantic import Field, StringConstraints

from bitnet_edge.agent.errors import ConfigError
from bitnet_edge.sdk._compat import tomllib
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.schemas import Strict, parse_model
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import DEVICE_ID, MODEL_NAME

__all__ = ["AgentConfig", "ModelConfig", "ApiConfig", "LimitsConfig", "HealthConfig", "load_config",
           "check_secret_file",
           "admin_socket"]


class ApiConfig(Strict):
    host: str = Field(default="127.0.0.1", description="listen address of the local inference API")
    port: int = Field(default=8700, ge=0, le=65535, description="TCP port (0: any free port)")
    unix_socket: str | None = Field(default=None, description="the admin socket (mode 0600): the only place the "
                                                               "admin routes (install, rollback, status) answer; "
                                                               "default data_dir/admin.sock")
    enabled: bool = Field(default=True, description="serve the local API")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header values the TCP API accepts "
                                                                       "besides localhost, 127.0.0.1, ::1 and host "
                                                                       "(anything else is refused: DNS rebinding)")
    allowed_origins: list[str] = Field(default_factory=list, description="web origins (scheme://host[:port]) whose "
                                                                         "pages may call the TCP API; default none "
                                                                         "(a request with any other Origin is "
                                                                         "refused)")
    install_dirs: list[str] = Field(default_factory=list, description="directories the admin install route takes "
                                                                      "bundle files from, besides data_dir/incoming "
                                                                      "(e.g. a USB mount point)")
    threads: int = Field(default=8, ge=1, le=64, description="requests the TCP API handles at once")
    max_connections: int = Field(default=64, ge=4, le=4096, description="open TCP connections at most")
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="an idle or half-sent connection is "
                                                                           "closed after this many seconds")


class LimitsConfig(Strict):
    disk_budget_mb: int = Field(default=8192, gt=0, description="space the agent may use for slots and downloads, MiB")
    max_bundle_mb: int = Field(default=4096, gt=0, description="largest bundle accepted, MiB")
    memory_budget_mb: int | None = Field(default=None, gt=0, description="memory all installed models may take "
                                                                      "together (weights and activations), MiB "
                                                                      "(default: 80% of RAM); an install that would "
                                                                      "pass it is refused before it is unpacked")
    max_concurrent_requests: int = Field(default=4, ge=1, le=256, description="inference requests a model worker "
                                                                               "takes at once; more get 429")
    max_inflight_prompt_mb: float | None = Field(default=None, gt=0, description="request bytes (prompts, inputs) "
                                                                                  "in flight in the worker at once, "
                                                                                  "MiB; more get 503 (default: "
                                                                                  "memory budget / 64, at least 1)")


class HealthConfig(Strict):
    max_latency_ms: float = Field(default=5000.0, gt=0, description="golden-vector inference must finish within, ms")
    max_rss_mb: float | None = Field(default=None, description="process RSS after loading must stay below, MiB")
    verify_on_start: bool = Field(default=True, description="hash the active slot's files when the agent starts")


ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME)]


class ModelConfig(Strict):
    """``[models.NAME]``: how the agent runs one model (by its bundle manifest name)."""

    on_demand: bool = Field(default=False, description="load on demand: the model's worker starts on its first "
                                                       "request and stops after idle_stop_s without one (weights "
                                                       "are mmap'd, so a stopped model costs no memory)")
    idle_stop_s: float = Field(default=300.0, gt=0, le=7 * 86400, description="seconds without a request after "
                                                                              "which an on-demand worker stops")


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
    fleet_keys: list[str] = Field(default_factory=list, description="the fleet's desired-state public keys "
                                                                    "(desired.pub from `fleet enroll`): set, only "
                                                                    "desired states signed by one are accepted; "
                                                                    "unset, allow_downgrade from the network is "
                                                                    "never honoured")
    profile: str | None = Field(default=None, description="device profile name; default: matched by the probe")
    tags: list[str] = Field(default_factory=list, description="operator labels reported to the fleet")
    metrics_interval: float = Field(default=60.0, ge=0, description="seconds between the metrics reports sent to the "
                                                                    "fleet on events (DeviceMetrics; 0: none)")
    api: ApiConfig = Field(default_factory=ApiConfig, description="local inference API")
    mqtt: BrokerConnection = Field(default_factory=BrokerConnection, description="fleet connection")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="resource limits")
    health: HealthConfig = Field(default_factory=HealthConfig, description="health gate")
    default_model: str | None = Field(default=None, pattern=MODEL_NAME,
                                      description="the model a request without `model` goes to when several are "
                                                  "installed (one installed: that one)")
    models: dict[ModelName, ModelConfig] = Field(default_factory=dict,
                                                 description="per-model settings by model name ([models.NAME])")


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
    mqtt = cfg.mqtt.model_copy(update={k: fix(getattr(cfg.mqtt, k)) for k in ("password_file", "tls_ca", "tls_cert",
                                                                             "tls_key")})
    return cfg.model_copy(update={"data_dir": fix(cfg.data_dir), "trust": [fix(t) for t in cfg.trust],
                                  "fleet_keys": [fix(k) for k in cfg.fleet_keys], "mqtt": mqtt,
                                  "tuf_root": fix(cfg.tuf_root),
                                  "device_key": dk if dk is None or dk.startswith("python:") else fix(dk)})


def admin_socket(cfg: AgentConfig) -> str:
    """The admin Unix socket: ``api.unix_socket``, or ``data_dir/admin.sock``."""
    return cfg.api.unix_socket or str(Path(cfg.data_dir) / "admin.sock")


def check_secret_file(path: str | None, what: str) -> None:
    """A secret the agent reads (mTLS client key, MQTT password file) must exist and be readable by
    its owner only (0600 or stricter), like ``device_key``; ConfigError naming ``what`` otherwise."""
    if path is None:
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(path, f"{what}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(path, f"{what}: mode {mode:04o} lets other users read this secret; it must be 0600 "
                                f"or stricter (chmod 600 {path})")
