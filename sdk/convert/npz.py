"""numpy ``.npz`` importer for ``mlp`` classifiers.

Keys: ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias`` (out,) for i = 0, 1, ...; or an
``nn.Sequential`` state dict saved with numpy (``{j}.weight`` / ``{j}.bias``, taken in index
order).  Optional: ``input_mean``, ``input_std`` (features,), ``class_names`` (strings),
``activation`` (a 0-d string: relu | gelu | tanh).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import MlpConfig, SourceInfo
from bitnet_edge.sdk.npfiles import load_npz

__all__ = ["read_npz"]


def read_npz(path: str | Path, activation: str | None = None, name: str | None = None) -> ImportedModel:
    path = Path(path)
    z = load_npz(path)
    keys = set(z)
    idx = sorted({int(m.group(2)) for k in keys if (m := re.fullmatch(r"(layers\.)?(\d+)\.weight", k))})
    prefix = "layers." if any(k.startswith("layers.") for k in keys) else ""
    if not idx:
        raise FormatError(f"{path}: no layer weights (expected keys 'layers.0.weight', ...)")
    tensors: dict[str, ImportedTensor] = {}
    sizes: list[int] = []
    for n, j in enumerate(idx):
        w = z[f"{prefix}{j}.weight"]
        if w.ndim != 2 or w.dtype.kind != "f":
            raise FormatError(f"{path}: tensor '{prefix}{j}.weight' must be a 2-D float array, got {w.dtype} {w.shape}")
        if sizes and w.shape[1] != sizes[-1]:
            raise FormatError(f"{path}: tensor '{prefix}{j}.weight' takes {w.shape[1]} inputs, "
                              f"the previous layer gives {sizes[-1]}")
        b = z[f"{prefix}{j}.bias"] if f"{prefix}{j}.bias" in keys else np.zeros(w.shape[0], np.float32)
        if b.shape != (w.shape[0],):
            raise FormatError(f"{path}: tensor '{prefix}{j}.bias' has shape {b.shape}, expected ({w.shape[0]},)")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise FormatError(f"{path}: layer {j} holds NaN or infinity")
        sizes = sizes or [w.shape[1]]
        sizes.append(w.shape[0])
        tensors[f"layers.{n}.weight"] = ImportedTensor("float", w.astype(np.float32))
        tensors[f"layers.{n}.bias"] = ImportedTensor("float", b.astype(np.float32))
    act = activation or (str(z["activation"]) if "activation" in keys else "relu")
    mean = z["input_mean"].astype(float).tolist() if "input_mean" in keys else None
    std = z["input_std"].astype(float).tolist() if "input_std" in keys else None
    names = [str(s) for s in z["class_names"]] if "class_names" in keys else None
    for label, v in (("input_mean", mean), ("input_std", std)):
        if v is not None and len(v) != sizes[0]:
            raise FormatError(f"{path}: {label} has {len(v)} values for {sizes[0]} features")
    cfg = MlpConfig(layer_sizes=sizes, activation=act, input_mean=mean, input_std=std, class_names=names)
    return ImportedModel(name=name or path.stem, config=cfg, tensors=tensors,
                         source=SourceInfo(kind="npz", path=str(path)))
