"""Computing golden vectors on the build host: run the converted model on the fixed inputs.

What the inputs, the call and the tolerances are, and how a device checks them, is the bundle
contract's (:mod:`bitnet_edge.sdk.bundle.golden`).
"""

from __future__ import annotations

import os

import numpy as np

from bitnet_edge.sdk.bundle.golden import METHOD, SECTION, TOLERANCE, golden_inputs, run_model
from bitnet_edge.sdk.bundle.manifest import GoldenArray, GoldenSet
from bitnet_edge.sdk.manifest import ModelManifest

__all__ = ["compute_golden"]


def compute_golden(model_dir: str | os.PathLike, model: ModelManifest) -> tuple[GoldenSet, bytes]:
    """Run the model on the build host: the golden set's manifest entry and the section content."""
    from bitnet_edge.sdk import kernels, load_model

    method = METHOD[model.architecture]
    inputs = golden_inputs(model)
    output = run_model(load_model(model_dir), method, inputs)
    names = ["input"] if len(inputs) == 1 else [f"input.{i}" for i in range(len(inputs))]
    arrays, parts, pos = [], [], 0
    for name, role, arr in [*((n, "input", a) for n, a in zip(names, inputs)), ("output", "output", output)]:
        data = np.ascontiguousarray(arr, dtype="<f4" if arr.dtype == np.float32 else "<i8").tobytes()
        arrays.append(GoldenArray(name=name, role=role, dtype=arr.dtype.name, shape=list(arr.shape), offset=pos))
        parts.append(data)
        pos += len(data)
    golden = GoldenSet(method=method, section=SECTION, arrays=arrays, tolerance=TOLERANCE,
                       backend=kernels.resolve_backend())
    return golden, b"".join(parts)
