"""``--precision auto``: choose each linear layer's precision from calibration data.

Quality is the mean cosine similarity between the quantized and the float model's outputs on
the calibration set (mlp: logits; bert: sentence embeddings; decoder: logits of every position;
graph: every output, with a final softmax's input in place of its probabilities, which stay
near 1 in cosine whatever the logits do).
1. measure every layer alone at ternary (the rest float): its sensitivity;
2. walk the layers from least to most sensitive, make each ternary if the whole model stays within
   the budget, else int8 if that does, else keep it float16.
Layers that arrive already ternary (BitNet checkpoints) stay ternary: that is lossless.  The data
decides the rest, first and last layers included; the plan and its cosine go into the manifest.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.convert.imported import ImportedModel
from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.manifest import DecoderConfig, EncoderConfig, GraphConfig

__all__ = ["auto_plan", "evaluate"]


def evaluate(model, calibration) -> np.ndarray:
    """The rows whose cosine is measured."""
    cfg = model.cfg
    if isinstance(cfg, DecoderConfig):
        return np.concatenate([model.logits(seq) for seq in calibration])
    if isinstance(cfg, EncoderConfig):
        return model.embed(calibration)
    if isinstance(cfg, GraphConfig):  # every output flattened per sample; a final softmax's logits
        made_by = {node.output: node for node in cfg.nodes}
        names = [made_by[v.name].inputs[0] if v.name in made_by and made_by[v.name].op == "softmax" else v.name
                 for v in cfg.outputs]
        outs = model.run([calibration], outputs=names).values()
        return np.concatenate([o.reshape(len(calibration), -1) for o in outs], axis=1)
    return model.predict(calibration)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def auto_plan(m: ImportedModel, calibration, budget: float = 0.99) -> tuple[dict[str, str], dict[str, float]]:
    from bitnet_edge.sdk.convert.convert import build_tensors, linear_layers
    from bitnet_edge.sdk.manifest import ModelManifest
    from bitnet_edge.sdk.modeldir import write_model_dir
    from bitnet_edge.sdk.models import load_model

    if calibration is None or len(calibration) == 0:
        raise InputError("calibration", "--precision auto needs calibration data (--calibration FILE)")
    if not 0 < budget <= 1:
        raise InputError("budget", f"must be in (0, 1], got {budget}")
    names = linear_layers(m)
    fixed = {n for n in names if n in m.tensors and m.tensors[n].kind == "ternary"}
    with tempfile.TemporaryDirectory(prefix="bne-plan-") as tmp:
        counter = iter(range(10**9))

        def run(plan: dict[str, str]) -> np.ndarray:
            entries, arrays = build_tensors(m, plan)
            man = ModelManifest(name=m.name, config=m.config, precision=plan, tensors=entries, source=m.source)
            path = write_model_dir(Path(tmp) / str(next(counter)), man, arrays)
            return evaluate(load_model(path), calibration)

        base = {n: ("ternary" if n in fixed else "f32") for n in names}
        ref = run(base)
        sensitivity = {}
        for n in names:
            if n not in fixed:
                sensitivity[n] = _cosine(run({**base, n: "ternary"}), ref)
        plan = dict(base)
        for n in sorted(sensitivity, key=lambda k: -sensitivity[k]):
            for precision in ("ternary", "int8"):
                trial = {**plan, n: precision}
                if _cosine(run(trial), ref) >= budget:
                    plan = trial
                    break
            else:
                plan[n] = "f16"
        final = _cosine(run(plan), ref)
    counts = {p: sum(v == p for v in plan.values()) for p in ("ternary", "int8", "f16")}
    metrics = {"cosine": final, "budget": budget, "calibration_rows": float(len(calibration)),
               **{f"layers_{p}": float(c) for p, c in counts.items()}}
    return plan, metrics
