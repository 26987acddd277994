"""Fleet service settings (``bitnet-edge fleet serve`` options, or a TOML file with the same keys)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from bitnet_edge.sdk.schemas import Strict
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

#: the fleet data directory the CLI uses when --data is not given
DEFAULT_DATA = os.environ.get("BNE_FLEET_DATA", "fleet-data")

__all__ = ["FleetConfig", "is_loopback", "embedded_broker_exposure"]


class FleetConfig(Strict):
    data_dir: str = Field(description="database, bundle store, service.json and control.token live here")
    database: str | None = Field(default=None, pattern=r"^postgres(ql)?://",
                                 description="postgresql://user:password@host:port/dbname of the registry's "
                                             "PostgreSQL database (replicas on several hosts); None: SQLite "
                                             "in data_dir/fleet.db")
    broker: BrokerConnection = Field(default_factory=BrokerConnection,
                                     description="the broker the service connects to; url None: start the "
                                                 "embedded broker")
    embedded_host: str = Field(default="127.0.0.1", description="listen address of the embedded broker")
    embedded_port: int = Field(default=1883, ge=0, le=65535, description="TCP port of the embedded broker (0: any)")
    embedded_tls_cert: str | None = Field(default=None, description="server certificate of the embedded broker "
                                                                    "(PEM); with embedded_tls_key: MQTT over TLS")
    embedded_tls_key: str | None = Field(default=None, description="private key of embedded_tls_cert (PEM)")
    embedded_auth: Literal["anonymous", "per-device"] = Field(
        default="anonymous", description="who may connect to the embedded broker: anonymous (loopback only) or "
                                         "per-device credentials from enrollment with per-device topic ACLs")
    api_host: str = Field(default="127.0.0.1", description="listen address of the control API and /metrics")
    api_port: int = Field(default=8780, ge=0, le=65535, description="TCP port of the control API (0: any)")
    replica_id: str = Field(default="fleet-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                            description="this service's name; its MQTT client id is bne-fleet-<replica_id> "
                                        "unless broker.client_id is set")
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                    description="MQTT 5 shared-subscription group: replicas in one group split "
                                                "the device messages; None: a single service (MQTT 3.1.1)")
    trust: list[str] = Field(default_factory=list, description="Ed25519 public key files; when set, published "
                                                               "bundles must carry a signature by one of them")
    chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=1024, le=MAX_CHUNK_BYTES,
                             description="chunk size announced in new desired states, bytes")
    max_bundle_mb: int = Field(default=4096, gt=0, description="largest bundle accepted by publish, MiB")
    chunk_workers: int = Field(default=2, ge=1, le=32, description="threads reading and sending chunks")
    request_queue: int = Field(default=16384, ge=1, description="chunk requests waiting at most; more are "
                                                                "dropped (counted) and the device asks again")
    max_pending_mb: int = Field(default=64, ge=1, description="chunk bytes published but not yet acknowledged "
                                                              "by the broker, MiB; senders wait above it")
    tick: float = Field(default=1.0, gt=0, description="seconds between rollout driver passes")
    lease_seconds: float = Field(default=10.0, gt=0, description="replicas: the rollout driver's lease, seconds")

    @property
    def data(self) -> Path:
        return Path(self.data_dir)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); a wildcard or any other name is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def embedded_broker_exposure(cfg: FleetConfig) -> str | None:
    """Why the embedded broker may not listen where ``cfg`` says (None: it may).

    Beyond loopback the broker carries every device's traffic over a network: it must speak TLS
    and admit each device with its own credentials, restricted to its own topics.
    """
    if cfg.broker.url is not None or is_loopback(cfg.embedded_host):
        return None
    missing = [what for what, ok in (
        ("TLS (--mqtt-tls-cert and --mqtt-tls-key)", cfg.embedded_tls_cert and cfg.embedded_tls_key),
        ("per-device credentials (--mqtt-auth per-device)", cfg.embedded_auth == "per-device")) if not ok]
    if not missing:
        return None
    return (f"the embedded MQTT broker binds {cfg.embedded_host} beyond loopback only with "
            f"{' and '.join(missing)}; or use --broker with an external broker (docs/scaling.md)")
