"""Read and write a converted-model directory (manifest.json + weights.safetensors [+ tokenizer.json])."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_edge.sdk import packing
from bitnet_edge.sdk.durable import write_atomic
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import FORMAT, FORMAT_VERSION, ModelManifest
from bitnet_edge.sdk.safetensors_io import SafetensorsFile, write_safetensors
from bitnet_edge.sdk.schemas import parse_model

__all__ = ["ModelDir", "open_model_dir", "write_model_dir", "MANIFEST", "WEIGHTS"]

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


@dataclass(frozen=True)
class ModelDir:
    path: Path
    manifest: ModelManifest
    weights: SafetensorsFile

    def array(self, name: str) -> np.ndarray:
        """A stored tensor, checked against the manifest (a mmap view, not a copy)."""
        try:
            entry = self.manifest.tensor(name)
        except KeyError:
            raise FormatError(f"{self.path / MANIFEST}: no tensor {name!r} in the tensor table") from None
        arr = self.weights.get(name)
        n = entry.shape[0]
        expect = {
            "ternary2": ((n, packing.row_bytes(entry.shape[-1])), np.uint8),
            "ternary_b3": ((n, packing.row_bytes3(entry.shape[-1])), np.uint8),
            "int8": (tuple(entry.shape), np.int8),
            "f32": (tuple(entry.shape), np.float32),
            "f16": (tuple(entry.shape), np.float16),
        }[entry.format]
        if arr.shape != expect[0] or arr.dtype != expect[1]:
            raise FormatError(
                f"{self.path / WEIGHTS}: tensor {name!r} is {arr.dtype} {list(arr.shape)}, the manifest "
                f"says {entry.format} {entry.shape} (stored as {np.dtype(expect[1]).name} {list(expect[0])})")
        return arr


def _read_manifest(path: Path) -> ModelManifest:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FormatError(f"{path}: missing (not a converted model directory?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FormatError(f"{path}: not a bitnet-edge model manifest (format != {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: model format version {raw.get('format_version')!r} is not supported by this "
            f"bitnet-edge (reads version {FORMAT_VERSION}); re-run `bitnet-edge convert` on the source model")
    return parse_model(ModelManifest, raw, source=str(path))


def open_model_dir(path: str | os.PathLike) -> ModelDir:
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"{path}: not a directory (expected a converted model: manifest.json + {WEIGHTS})")
    manifest = _read_manifest(path / MANIFEST)
    weights = SafetensorsFile(path / WEIGHTS)
    missing = [t.name for t in manifest.tensors if t.name not in weights]
    if missing:
        raise FormatError(f"{path / WEIGHTS}: tensors in the manifest but not in the file: {', '.join(missing[:5])}")
    if manifest.tokenizer and not (path / manifest.tokenizer).is_file():
        raise FormatError(f"{path / manifest.tokenizer}: tokenizer named in the manifest is missing")
    md = ModelDir(path, manifest, weights)
    for t in manifest.tensors:
        md.array(t.name)  # shape/dtype check of every tensor, no data read
    return md


def write_model_dir(path: str | os.PathLike, manifest: ModelManifest, tensors: Mapping[str, np.ndarray],
                    tokenizer_file: str | os.PathLike | None = None, tokenizer_json: str | None = None) -> Path:
    """Write a model directory; the weights file is written atomically, the manifest last.
    The tokenizer comes from ``tokenizer_file`` (copied) or ``tokenizer_json`` (its text)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = {t.name for t in manifest.tensors}
    if names != set(tensors):
        raise FormatError(f"tensor table and tensors differ: {sorted(names ^ set(tensors))[:5]}")
    write_safetensors(path / WEIGHTS, tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, path / "tokenizer.json")
    elif tokenizer_json is not None:
        write_atomic(path / "tokenizer.json", tokenizer_json.encode())
    write_atomic(path / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
    return path
