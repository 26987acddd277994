"""The strict pydantic base and the registry of committed JSON schemas.

Every manifest, config and protocol message is a pydantic model derived from
:class:`Strict` (``extra="forbid"``, frozen).  Its JSON schema is generated into
``docs/schemas/<name>.json`` by ``bitnet-edge schemas --write`` (``make schemas``);
a test fails when a committed schema is stale.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from bitnet_edge.sdk.errors import FormatError

__all__ = ["Strict", "SCHEMAS", "schema_documents", "write_schemas", "parse_model", "SCHEMA_DIR"]

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: schema file name -> "module:Class"; other packages add theirs here.
SCHEMAS: dict[str, str] = {
    "model-manifest": "bitnet_edge.sdk.manifest:ModelManifest",
    "protocol-presence": "bitnet_edge.sdk.protocol:Presence",
    "protocol-reported-state": "bitnet_edge.sdk.protocol:ReportedState",
    "protocol-desired-state": "bitnet_edge.sdk.protocol:DesiredState",
    "protocol-chunk-request": "bitnet_edge.sdk.protocol:ChunkRequest",
    "protocol-chunk-header": "bitnet_edge.sdk.protocol:ChunkHeader",
    "protocol-progress": "bitnet_edge.sdk.protocol:Progress",
    "protocol-tuf-request": "bitnet_edge.sdk.protocol:TufRequest",
    "protocol-tuf-part-header": "bitnet_edge.sdk.protocol:TufPartHeader",
    "tuf-bundle-target": "bitnet_edge.sdk.tuf_meta:BundleTarget",
    "device-profile": "bitnet_edge.packagers.devices:DeviceProfile",
    "bundle-manifest": "bitnet_edge.packagers.manifest:BundleManifest",
    "fleet-config": "bitnet_edge.fleet.config:FleetConfig",
    "fleet-rollout-spec": "bitnet_edge.fleet.rollout:RolloutSpec",
    "lm-training-report": "bitnet_edge.sdk.train.report:LmTrainingReport",
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


def parse_model(cls: type[BaseModel], data, *, source: str):
    """Validate ``data`` (dict or JSON text/bytes) as ``cls``; errors name ``source`` and dotted fields."""
    try:
        if isinstance(data, (str, bytes, bytearray)):
            return cls.model_validate_json(data)
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise FormatError(f"{source}: invalid {cls.__name__}: {problems}") from None
