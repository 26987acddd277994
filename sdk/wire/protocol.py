"""The device <-> fleet protocol over MQTT, version 1 (docs/protocol.md).

Control messages are JSON, validated by these pydantic models on both sides (agent and fleet
service).  Bundle chunks are binary (:func:`pack_chunk` / :func:`unpack_chunk`).  Every topic is
under ``bne/v1/``; one device's topics are under ``bne/v1/devices/{device_id}/``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError

from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import MODEL_NAME  # a model's name on the wire and on the device (one topic level)
from bitnet_edge.sdk.schemas import Strict, parse_model

__all__ = [
    "PROTOCOL_VERSION", "PREFIX", "MAX_CONTROL_BYTES", "MAX_CHUNK_BYTES", "DEFAULT_CHUNK_BYTES",
    "ReasonCode", "Capabilities", "InstalledRelease", "Presence", "Outcome", "ReportedState",
    "DeltaRef", "ReleaseRef", "DesiredState", "ChunkRequest", "Progress", "DeviceMetrics",
    "device_topic", "parse_device_topic", "pack_chunk", "unpack_chunk", "ChunkHeader", "parse_message",
    "DEVICE_ID", "MODEL_NAME", "ModelState", "desired_topic", "desired_model",
    "TufRequest", "TufPartHeader", "pack_tuf_part", "unpack_tuf_part", "MAX_TUF_PART_BYTES", "TUF_FILE",
]

PROTOCOL_VERSION = 1
PREFIX = "bne/v1"
MAX_CONTROL_BYTES = 64 * 1024  # bytes: larger JSON messages are dropped unread
DEFAULT_CHUNK_BYTES = 256 * 1024  # bytes
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # bytes
MAX_CHUNKS_PER_REQUEST = 64
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SHA256 = r"^[0-9a-f]{64}$"

#: Why an install ended as it did (``ok`` when it worked).
ReasonCode = Literal[
    "ok", "bad_signature", "untrusted_key", "downgrade", "wrong_target", "corrupt", "too_large",
    "no_space", "load_failed", "health_failed", "transfer_failed", "timeout", "superseded", "internal",
    "not_recipient",  # an encrypted bundle (ADR 0011) not sealed to this device's key, or no device key
    "tuf_rejected",  # TUF: not in the signed targets metadata, or the metadata failed to verify (docs/security.md)
    "tuf_expired",  # TUF: the newest metadata the fleet serves has expired (freeze / offline policy)
    "forbidden",  # a local install of a file outside the allowed directories, or not a regular file
]

LEAVES = ("presence", "state", "desired", "chunk/req", "chunk/data", "events", "tuf/req", "tuf/data")


def device_topic(device_id: str, leaf: str) -> str:
    if leaf not in LEAVES:
        raise ValueError(f"unknown topic leaf {leaf!r}")
    if not re.match(DEVICE_ID, device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    return f"{PREFIX}/devices/{device_id}/{leaf}"


def desired_topic(device_id: str, model: str) -> str:
    """``.../desired/{model}``: the retained desired state of one model on one device (a device
    serves several models; each has its own desired state, ADR 0021)."""
    if not re.match(MODEL_NAME, model):
        raise ValueError(f"invalid model name {model!r}")
    return f"{device_topic(device_id, 'desired')}/{model}"


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, leaf) of a device topic, or None for anything else.  ``.../desired/{model}``
    is leaf ``desired`` (:func:`desired_model` gives the model)."""
    m = re.fullmatch(rf"{re.escape(PREFIX)}/devices/([^/]+)/(.+)", topic)
    if not m or not re.match(DEVICE_ID, m.group(1)):
        return None
    leaf = m.group(2)
    if leaf.startswith("desired/") and re.match(MODEL_NAME, leaf[len("desired/"):]):
        return m.group(1), "desired"
    if leaf not in LEAVES:
        return None
    return m.group(1), leaf


def desired_model(topic: str) -> str | None:
    """The model of a ``.../desired/{model}`` topic; None for the single-model ``.../desired``
    (agents and fleets before ADR 0021) or any other topic."""
    m = re.fullmatch(rf"{re.escape(PREFIX)}/devices/[^/]+/desired/([^/]+)", topic)
    return m.group(1) if m and re.match(MODEL_NAME, m.group(1)) else None


class Capabilities(Strict):
    arch: str = Field(description="machine, e.g. aarch64, x86_64, arm64")
    os: str = Field(description="linux, macos, ...")
    cpu_features: list[str] = Field(description="e.g. neon, dotprod, avx2, avx512vnni")
    backends: list[str] = Field(description="kernel backends the device runs, fastest first")
    memory_mb: int = Field(ge=0, description="physical memory, MiB")
    disk_free_mb: int = Field(ge=0, description="free space in the agent's data directory, MiB")
    cuda_sm: str | None = Field(default=None, description="CUDA compute capability, e.g. sm_87, when a GPU is present")
    apple_gpu: bool = Field(default=False, description="Apple Silicon GPU present")
    runtimes: list[str] = Field(default_factory=list,
                                description="devices load_model can run models on here (cpu, mlx, cuda), the "
                                            "one device=auto picks first; empty from agents older than this field")
    profile: str | None = Field(default=None, description="the device profile the probe matched")
    target: str = Field(description="native build target the device needs, e.g. linux-aarch64")
    agent_version: str = Field(description="bitnet-edge version of the agent")


class InstalledRelease(Strict):
    model: str = Field(description="model name")
    version: str = Field(description="model version")
    release: int = Field(ge=0, description="monotonic release counter")
    bundle_sha256: str = Field(pattern=SHA256, description="sha256 of the bundle file it came from")
    target: str = Field(description="native build target of the bundle")


class Presence(Strict):
    """Retained on .../presence: birth when connecting, death as the MQTT Last Will."""

    type: Literal["birth", "death"] = Field(description="online or offline")
    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    ts: float = Field(description="unix time the message was made")
    capabilities: Capabilities | None = Field(default=None, description="birth only")
    installed: InstalledRelease | None = Field(default=None, description="what the device serves (birth only)")
    tags: list[str] = Field(default_factory=list, description="operator labels from the agent config")


class Outcome(Strict):
    rollout_id: str | None = Field(default=None, description="rollout the install belonged to")
    bundle_sha256: str = Field(pattern=SHA256, description="bundle that was tried")
    result: Literal["installed", "rejected", "failed", "rolled_back"] = Field(description="what happened")
    reason: ReasonCode = Field(description="machine-readable cause")
    message: str = Field(max_length=2000, description="for people")
    ts: float = Field(description="unix time")


class ModelState(Strict):
    """One model on a device: its own A/B slots, release counter, health and worker (ADR 0021)."""

    name: str = Field(pattern=MODEL_NAME, description="the model's name (bundle manifest name)")
    installed: InstalledRelease | None = Field(description="serving now (None: nothing installed yet)")
    previous: InstalledRelease | None = Field(default=None, description="in the model's other slot, for rollback")
    health: Literal["ok", "degraded", "failed", "unknown"] = Field(description="health of this model")
    last_outcome: Outcome | None = Field(default=None, description="result of the latest install of this model")
    on_demand: bool = Field(default=False, description="load-on-demand: the worker starts on the first request "
                                                       "and stops after idle time")
    loaded: bool = Field(default=True, description="a worker is running for it now")


class ReportedState(Strict):
    """Device -> fleet on .../state (retained).  ``models`` lists every model on the device; the
    single-model fields (``installed``, ``previous``, ``health``) describe the default model, for
    fleets before ADR 0021."""

    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    ts: float = Field(description="unix time")
    installed: InstalledRelease | None = Field(description="the default model, serving now (None: no model)")
    previous: InstalledRelease | None = Field(default=None, description="in the default model's other slot")
    health: Literal["ok", "degraded", "failed", "unknown"] = Field(description="health of the device's models "
                                                                            "(the worst of them)")
    last_outcome: Outcome | None = Field(default=None, description="result of the latest install attempt")
    models: list[ModelState] = Field(default_factory=list, max_length=64,
                                     description="every model on the device (empty from single-model agents)")


class DeltaRef(Strict):
    base_sha256: str = Field(pattern=SHA256, description="bundle the delta applies to")
    sha256: str = Field(pattern=SHA256, description="sha256 of the delta bundle file")
    size: int = Field(gt=0, description="bytes of the delta bundle")


class ReleaseRef(Strict):
    model: str = Field(description="model name")
    version: str = Field(description="model version")
    release: int = Field(ge=0, description="monotonic release counter")
    target: str = Field(description="native build target of this bundle")
    bundle_sha256: str = Field(pattern=SHA256, description="sha256 of the full bundle")
    bundle_size: int = Field(gt=0, description="bytes of the full bundle")
    chunk_size: int = Field(gt=0, le=MAX_CHUNK_BYTES, description="bytes per chunk (the last may be shorter)")
    delta: DeltaRef | None = Field(default=None, description="a delta the device may fetch instead, if it holds the base")


class DesiredState(Strict):
    """Fleet -> device on .../desired/{release.model} (retained, one per model): what the device
    should serve for that model.  (Single-model agents and fleets used .../desired.)"""

    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    rollout_id: str | None = Field(description="the rollout that set it (None: operator pin)")
    release: ReleaseRef = Field(description="the release to serve")
    allow_downgrade: bool = Field(default=False, description="a rollback: accept a lower release counter "
                                                             "(honoured only when signed by a fleet key)")
    issued_at: float = Field(description="unix time")
    signature: str | None = Field(default=None, pattern=r"^[A-Za-z0-9+/]{86}==$",
                                  description="base64 Ed25519 signature by the fleet's desired-state key over "
                                              "the canonical JSON of the other fields (sdk/wire/desired_sig.py); "
                                              "devices with fleet_keys accept only signed desired states")


class ChunkRequest(Strict):
    """Device -> fleet on .../chunk/req: chunks of a file, by index (offset = index * chunk_size)."""

    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    file_sha256: str = Field(pattern=SHA256, description="the bundle (or delta) file")
    chunk_size: int = Field(gt=0, le=MAX_CHUNK_BYTES, description="as announced in the release")
    chunks: list[int] = Field(min_length=1, max_length=MAX_CHUNKS_PER_REQUEST,
                              description="indices of missing chunks wanted now")


class Progress(Strict):
    """Device -> fleet on .../events."""

    type: Literal["progress"] = "progress"
    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    rollout_id: str | None = Field(default=None, description="rollout being applied")
    file_sha256: str = Field(pattern=SHA256, description="file being fetched or installed")
    stage: Literal["downloading", "verifying", "installing", "health_check", "switching", "done"] = Field(
        description="install pipeline stage")
    received_bytes: int = Field(ge=0, description="bytes held so far")
    total_bytes: int = Field(ge=0, description="bytes of the file")
    ts: float = Field(description="unix time")


class DeviceMetrics(Strict):
    """Device -> fleet on .../events, every ``metrics_interval`` seconds (agent config): how the device is doing."""

    type: Literal["metrics"] = "metrics"
    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    ts: float = Field(description="unix time")
    uptime_s: float = Field(ge=0, description="seconds since the agent started")
    interval_s: float = Field(ge=0, description="seconds covered by the request figures below")
    requests: int = Field(ge=0, description="local API requests answered in the interval")
    errors: int = Field(ge=0, description="of those, answered with a 5xx status")
    latency_ms_mean: float | None = Field(default=None, ge=0, description="mean request latency in the interval, "
                                                                           "ms (None: no requests)")
    agent_rss_mb: float | None = Field(default=None, ge=0, description="the agent process's resident memory, MiB")
    worker_rss_mb: float | None = Field(default=None, ge=0, description="older agents only: the model workers' "
                                        "resident memory summed, MiB (counts the pages they share once per "
                                        "worker, so it over-states; see models_pss_mb)")
    models_pss_mb: float | None = Field(default=None, ge=0, description="what serving the models takes: the "
                                        "proportional set size (a page shared by n processes counts 1/n) of "
                                        "every model worker and the worker zygote, summed, MiB")
    disk_free_mb: int | None = Field(default=None, ge=0, description="free space in the agent's data directory, MiB")
    load1: float | None = Field(default=None, ge=0, description="1-minute load average")


# ---- TUF metadata over MQTT (docs/protocol.md "TUF metadata", ADR 0010) ---------------------------

MAX_TUF_PART_BYTES = 64 * 1024  # bytes of metadata per tuf/data message
#: the files a device may ask for: top-level TUF roles, versioned (consistent snapshots) or not
TUF_FILE = r"^([1-9][0-9]{0,9}\.)?(root|timestamp|snapshot|targets)\.json$"


class TufRequest(Strict):
    """Device -> fleet on .../tuf/req: one TUF metadata file, answered in parts on .../tuf/data."""

    device_id: str = Field(pattern=DEVICE_ID, description="the device")
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="random; echoed in every part of the answer")
    file: str = Field(pattern=TUF_FILE, description="metadata file name, e.g. 2.root.json or timestamp.json")
    max_bytes: int = Field(gt=0, description="the device reads at most this many bytes of it (its limit)")


_MODELS = {"presence": Presence, "state": ReportedState, "desired": DesiredState, "chunk/req": ChunkRequest,
           "events": Progress, "tuf/req": TufRequest}
#: .../events carries either message, told apart by its "type"
Event = Annotated[Union[Progress, DeviceMetrics], Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


def parse_message(leaf: str, payload: bytes):
    """Validate a control payload for ``leaf``; FormatError (never a crash) on anything malformed."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise FormatError(f"{leaf}: {len(payload)}-byte control message exceeds {MAX_CONTROL_BYTES}")
    model = _MODELS.get(leaf)
    if model is None:
        raise FormatError(f"{leaf}: not a JSON control topic")
    if leaf == "events":
        try:
            return _EVENT.validate_json(payload)
        except ValidationError as exc:
            raise FormatError(f"{leaf}: invalid event: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())) from None
    return parse_model(model, payload, source=leaf)


# ---- binary chunks ---------------------------------------------------------------------------

_CHUNK = struct.Struct("!4sB32sQI32s")  # magic, version, file sha256, offset, length, data sha256
CHUNK_MAGIC = b"BNEC"


class ChunkHeader(Strict):
    file_sha256: str = Field(pattern=SHA256, description="the file the chunk belongs to")
    offset: int = Field(ge=0, description="byte offset in the file")
    length: int = Field(ge=0, le=MAX_CHUNK_BYTES, description="bytes of data")
    sha256: str = Field(pattern=SHA256, description="sha256 of the data")


def pack_chunk(file_sha256: str, offset: int, data: bytes) -> bytes:
    if len(data) > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}")
    return _CHUNK.pack(CHUNK_MAGIC, PROTOCOL_VERSION, bytes.fromhex(file_sha256), offset, len(data),
                       hashlib.sha256(data).digest()) + data


def unpack_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Header and data of a chunk message, its hash checked."""
    if len(payload) < _CHUNK.size:
        raise FormatError(f"chunk message of {len(payload)} bytes is shorter than its {_CHUNK.size}-byte header")
    magic, version, fsha, offset, length, dsha = _CHUNK.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise FormatError("chunk message has a bad magic number")
    if version != PROTOCOL_VERSION:
        raise FormatError(f"chunk message version {version} is not {PROTOCOL_VERSION}")
    data = payload[_CHUNK.size:]
    if len(data) != length or length > MAX_CHUNK_BYTES:
        raise FormatError(f"chunk says {length} bytes, carries {len(data)}")
    if hashlib.sha256(data).digest() != dsha:
        raise FormatError(f"chunk at offset {offset} fails its sha256")
    return ChunkHeader(file_sha256=fsha.hex(), offset=offset, length=length, sha256=dsha.hex()), data


# ---- binary TUF metadata parts ------------------------------------------------------------------

_TUF_PART = struct.Struct("!4sB16sHIB")  # magic, version, request id, status, part index, last (0/1)
TUF_MAGIC = b"BNET"


class TufPartHeader(Strict):
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the TufRequest answered")
    status: int = Field(ge=100, le=599, description="HTTP-like: 200 found, 404 no such file, 503 not served")
    index: int = Field(ge=0, description="part number, from 0")
    last: bool = Field(description="no part follows")


def pack_tuf_part(request_id: str, status: int, index: int, last: bool, data: bytes = b"") -> bytes:
    if len(data) > MAX_TUF_PART_BYTES:
        raise ValueError(f"TUF part of {len(data)} bytes exceeds {MAX_TUF_PART_BYTES}")
    return _TUF_PART.pack(TUF_MAGIC, PROTOCOL_VERSION, bytes.fromhex(request_id), status, index, int(last)) + data


def unpack_tuf_part(payload: bytes) -> tuple[TufPartHeader, bytes]:
    """Header and data of a tuf/data message; FormatError on anything malformed."""
    if len(payload) < _TUF_PART.size:
        raise FormatError(f"TUF part of {len(payload)} bytes is shorter than its {_TUF_PART.size}-byte header")
    magic, version, rid, status, index, last = _TUF_PART.unpack_from(payload)
    if magic != TUF_MAGIC or version != PROTOCOL_VERSION or last > 1 or not 100 <= status <= 599:
        raise FormatError("TUF part has a bad magic number, version, status or last flag")
    data = payload[_TUF_PART.size:]
    if len(data) > MAX_TUF_PART_BYTES:
        raise FormatError(f"TUF part carries {len(data)} bytes, more than {MAX_TUF_PART_BYTES}")
    return TufPartHeader(request_id=rid.hex(), status=status, index=index, last=bool(last)), data
