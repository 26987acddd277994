"""What a bitnet-edge TUF targets entry says about a bundle (shared by the fleet and the agent).

Every bundle file (full or delta) is one target, ``bundles/<sha256 of the file>.bundle``, with its
length, sha256 and sha512, and a ``custom`` object ``{"bne": BundleTarget}`` -- the Uptane pattern:
the offline targets keys sign not only the bytes but what they are for (model, release counter,
native target, device profiles), so a device refuses a validly signed bundle meant for others.
ADR 0010, docs/security.md.
"""

from __future__ import annotations

import re

from pydantic import Field

from bitnet_edge.sdk.schemas import Strict
from bitnet_edge.sdk.wire.protocol import SHA256

__all__ = ["BundleTarget", "target_path", "sha_of_target_path", "CUSTOM_KEY", "METADATA_URL"]

CUSTOM_KEY = "bne"
#: base URL the agent's Updater uses; the MQTT fetcher keeps only the file name
METADATA_URL = "mqtt-tuf://fleet/metadata/"
_PATH = re.compile(r"^bundles/([0-9a-f]{64})\.bundle$")


def target_path(file_sha256: str) -> str:
    if not re.fullmatch(SHA256, file_sha256):
        raise ValueError(f"not a sha256: {file_sha256!r}")
    return f"bundles/{file_sha256}.bundle"


def sha_of_target_path(path: str) -> str | None:
    m = _PATH.match(path)
    return m.group(1) if m else None


class BundleTarget(Strict):
    """``custom.bne`` of a targets entry: signed with the offline targets keys."""

    model: str = Field(min_length=1, description="model name (bundle manifest name)")
    version: str = Field(min_length=1, description="model version")
    release: int = Field(ge=1, description="release counter")
    target: str = Field(min_length=1, description="native build target, e.g. linux-aarch64; a device with "
                                                  "another target refuses the bundle")
    profiles: list[str] = Field(default_factory=list, description="device profiles the bundle is for; a device "
                                                                  "whose config pins a profile refuses the bundle "
                                                                  "unless its profile is listed")
    delta: bool = Field(default=False, description="a delta bundle (applies to an installed base)")
    base_release_sha256: str | None = Field(default=None, pattern=SHA256,
                                            description="delta only: release digest of the base")
