"""Device profiles: one TOML file per device in ``devices/``, validated by :class:`DeviceProfile`.

A profile says what a device is (OS, CPU, ISA features, accelerator, memory, disk) and which
build target (``sdk/native/targets.py``) serves it.  ``bitnet-edge devices`` lists them; the
packager builds one bundle per distinct target of the devices it is given.  Schema:
``docs/schemas/device-profile.json``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bitnet_edge.sdk.bundle.errors import DeviceProfileError, UnknownDevice
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.native.targets import TARGETS
from bitnet_edge.sdk.schemas import Strict, parse_model

__all__ = ["ISA", "Accelerator", "DeviceProfile", "DEVICES_DIR", "devices_dir", "load_devices", "get_devices"]

#: Where the profiles live in a source checkout; ``$BITNET_EDGE_DEVICES`` overrides it.
DEVICES_DIR = Path(__file__).resolve().parents[2] / "devices"  # a source checkout (sdk/bundle -> repo root)
if not DEVICES_DIR.is_dir():  # an installed wheel: the profiles ship as package bitnet_edge.devices
    import bitnet_edge.devices as _devices_pkg

    DEVICES_DIR = Path(_devices_pkg.__file__).resolve().parent

#: CPU features a profile may name (Linux /proc/cpuinfo spelling, lower case).
ISA = Literal[
    # x86-64
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "avx-vnni",
    "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vnni",
    # aarch64
    "neon", "dotprod", "fp16", "i8mm", "bf16", "sve", "sve2",
]


class Accelerator(Strict):
    kind: Literal["none", "cuda", "apple-gpu"] = Field(description="none, an NVIDIA CUDA GPU or an Apple GPU")
    cuda_arch: str | None = Field(default=None, pattern=r"^sm_[0-9]{2,3}$",
                                  description="CUDA only: the GPU architecture, e.g. sm_87")

    @model_validator(mode="after")
    def _cuda_arch_iff_cuda(self):
        if (self.kind == "cuda") != (self.cuda_arch is not None):
            raise ValueError("cuda_arch is required for kind = 'cuda' and not allowed otherwise")
        return self


class DeviceProfile(Strict):
    """One device kind the packager can target."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="identifier, also the file name (NAME.toml)")
    title: str = Field(min_length=1, description="human-readable name")
    os: Literal["linux", "macos"] = Field(description="operating system")
    arch: Literal["x86_64", "aarch64"] = Field(description="CPU architecture (Apple's arm64 is aarch64)")
    cpu: str = Field(min_length=1, description="CPU model and cores")
    target: str = Field(description="build target in sdk/native/targets.py that serves this device")
    isa_required: list[ISA] = Field(description="CPU features every device of this kind has")
    isa_optional: list[ISA] = Field(default_factory=list, description="CPU features some devices of this kind have")
    accelerator: Accelerator = Field(description="GPU / accelerator the runtime may use")
    memory_mib: int = Field(gt=0, description="RAM of the smallest common configuration, MiB")
    disk_mib: int = Field(gt=0, description="storage of the smallest common configuration, MiB")
    notes: str = Field(default="", description="anything an operator should know")

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str) -> str:
        if v not in TARGETS:
            raise ValueError(f"unknown target {v!r}; known: {', '.join(sorted(TARGETS))}")
        return v

    @model_validator(mode="after")
    def _target_fits(self):
        t = TARGETS[self.target]
        arch = {"arm64": "aarch64"}.get(t.arch, t.arch)
        if (t.os, arch) != (self.os, self.arch):
            raise ValueError(f"target {self.target!r} builds for {t.os}/{t.arch}, the device is {self.os}/{self.arch}")
        if t.cuda_archs and self.accelerator.kind == "cuda" and self.accelerator.cuda_arch not in t.cuda_archs:
            raise ValueError(f"target {self.target!r} builds CUDA for {', '.join(t.cuda_archs)}, "
                             f"not {self.accelerator.cuda_arch}")
        overlap = set(self.isa_required) & set(self.isa_optional)
        if overlap:
            raise ValueError(f"features both required and optional: {', '.join(sorted(overlap))}")
        return self


def devices_dir() -> Path:
    env = os.environ.get("BITNET_EDGE_DEVICES")
    return Path(env) if env else DEVICES_DIR


def _load_one(path: Path) -> DeviceProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceProfileError(str(path), f"unreadable TOML ({exc})") from None
    try:
        profile = parse_model(DeviceProfile, raw, source=str(path))
    except FormatError as exc:
        raise DeviceProfileError(str(path), str(exc).removeprefix(f"{path}: ")) from None
    if profile.name != path.stem:
        raise DeviceProfileError(str(path), f"name {profile.name!r} differs from the file name {path.stem!r}")
    return profile


def load_devices(directory: Path | None = None) -> dict[str, DeviceProfile]:
    """Every ``*.toml`` profile in ``directory`` (default: :func:`devices_dir`), by name, sorted."""
    directory = Path(directory) if directory is not None else devices_dir()
    if not directory.is_dir():
        raise DeviceProfileError(str(directory), "no device profile directory (set $BITNET_EDGE_DEVICES)")
    return {p.stem: _load_one(p) for p in sorted(directory.glob("*.toml"))}


def get_devices(names: list[str], directory: Path | None = None) -> list[DeviceProfile]:
    """The profiles of ``names``, in order, without duplicates."""
    known = load_devices(directory)
    out: list[DeviceProfile] = []
    for n in names:
        if n not in known:
            raise UnknownDevice(n, sorted(known))
        if known[n] not in out:
            out.append(known[n])
    return out
