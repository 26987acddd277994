"""The registry of committed JSON schemas: every manifest, config and protocol message, of every role.

It lives in the CLI root (``bitnet-edge schemas``) because it names models of the runtime, the
bundle and wire contracts and the fleet; :mod:`bitnet_edge.sdk.schemas` holds the base they share.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from pydantic import BaseModel

__all__ = ["SCHEMAS", "SCHEMA_DIR", "schema_documents", "write_schemas"]

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"  # sdk/_root -> repo root

#: schema file name -> "module:Class"
SCHEMAS: dict[str, str] = {
    "model-manifest": "bitnet_edge.sdk.manifest:ModelManifest",
    "protocol-presence": "bitnet_edge.sdk.wire.protocol:Presence",
    "protocol-reported-state": "bitnet_edge.sdk.wire.protocol:ReportedState",
    "protocol-desired-state": "bitnet_edge.sdk.wire.protocol:DesiredState",
    "protocol-chunk-request": "bitnet_edge.sdk.wire.protocol:ChunkRequest",
    "protocol-chunk-header": "bitnet_edge.sdk.wire.protocol:ChunkHeader",
    "protocol-progress": "bitnet_edge.sdk.wire.protocol:Progress",
    "protocol-tuf-request": "bitnet_edge.sdk.wire.protocol:TufRequest",
    "protocol-tuf-part-header": "bitnet_edge.sdk.wire.protocol:TufPartHeader",
    "tuf-bundle-target": "bitnet_edge.sdk.wire.tuf_meta:BundleTarget",
    "broker-connection": "bitnet_edge.sdk.wire.broker:BrokerConnection",
    "device-profile": "bitnet_edge.sdk.bundle.devices:DeviceProfile",
    "bundle-manifest": "bitnet_edge.sdk.bundle.manifest:BundleManifest",
    "fleet-config": "bitnet_edge.fleet.config:FleetConfig",
    "fleet-rollout-spec": "bitnet_edge.fleet.rollout:RolloutSpec",
}


def _resolve(ref: str) -> type[BaseModel]:
    mod, cls = ref.split(":")
    return getattr(importlib.import_module(mod), cls)


def schema_documents() -> dict[str, str]:
    """file name -> JSON text of the schema, as it should be committed."""
    return {
        name: json.dumps(_resolve(ref).model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, ref in sorted(SCHEMAS.items())
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in schema_documents().items():
        p = directory / f"{name}.json"
        p.write_text(text)
        out.append(p)
    return out
