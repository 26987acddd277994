"""``--precision auto``: choose each linear layer's precision from calibration data.

Quality is measured per output: the mean, over samples, of the cosine similarity between the
quantized and the float model's output (mlp: logits; bert: sentence embeddings; decoder: logits of
every position; graph: each output, with a final softmax's input in place of its probabilities,
which stay near 1 in cosine whatever the logits do).  The budget holds for every output: the plan's
score is the minimum over outputs, so a small output (a detector's class scores beside its boxes)
cannot hide behind a large one as it would in one concatenated cosine.

The calibration samples are split, deterministically (a permutation with a fixed seed), into a
calibration part that chooses the plan and a held-out part (``holdout``, 20% by default, at least
one sample) that only checks it:
1. measure every layer alone at ternary (the rest float): its sensitivity;
2. walk the layers from least to most sensitive, make each ternary if every output stays within
   the budget, else int8 if that does, else keep it float16;
3. measure the plan on both parts.  Both figures, per output, and the budget go into the manifest
   (:class:`~bitnet_edge.sdk.manifest.PlanQuality`).  When the held-out part misses the budget,
   :func:`~bitnet_edge.sdk.convert.convert.convert` refuses (:class:`BelowBudget`) unless told to
   write the model anyway, flagged ``below_budget``.
Layers that arrive already ternary (BitNet checkpoints) stay ternary: that is lossless.  The data
decides the rest, first and last layers included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.convert.imported import ImportedModel
from bitnet_edge.sdk.errors import BitnetEdgeError, InputError
from bitnet_edge.sdk.manifest import DecoderConfig, EncoderConfig, GraphConfig, OutputQuality, PlanQuality

__all__ = ["auto_plan", "evaluate", "split_calibration", "BelowBudget", "HOLDOUT", "SPLIT_SEED"]

HOLDOUT = 0.2  # share of the calibration samples kept aside to check the plan
SPLIT_SEED = 0  # the split is a permutation with this seed: the same data always splits the same way


class BelowBudget(BitnetEdgeError):
    """The plan met the budget on the calibration split but not on the held-out split."""

    fields = ("output", "held_out_cosine", "budget")

    def __init__(self, q: PlanQuality):
        worst = min(q.outputs, key=lambda o: o.held_out_cosine)
        self.output, self.held_out_cosine, self.budget = worst.name, worst.held_out_cosine, q.budget
        super().__init__("below-budget", (
            f"--precision auto: output {worst.name!r} keeps cosine {worst.held_out_cosine:.4f} on the "
            f"{q.held_out_samples} held-out calibration samples, below the budget {q.budget} "
            f"({worst.calibration_cosine:.4f} on the {q.calibration_samples} it was planned on); give more or more "
            f"varied calibration data or a higher --budget, or --allow-below-budget to write it flagged"))


def split_calibration(calibration, holdout: float = HOLDOUT):
    """(calibration part, held-out part): a fixed-seed permutation, ``max(1, round(n * holdout))``
    samples held out (at most n - 1), each part in its original order."""
    n = len(calibration)
    if not 0 < holdout < 1:
        raise InputError("holdout", f"must be in (0, 1), got {holdout}")
    if n < 2:
        raise InputError("calibration", f"--precision auto needs at least 2 calibration samples (part chooses the "
                                        f"plan, part is held out to check it), got {n}")
    k = min(n - 1, max(1, int(round(n * holdout))))
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    held, fit = np.sort(order[:k]), np.sort(order[k:])

    def take(idx):
        return calibration[idx] if isinstance(calibration, np.ndarray) else [calibration[int(i)] for i in idx]

    return take(fit), take(held)


def evaluate(model, calibration) -> dict[str, np.ndarray]:
    """Each measured output as rows (samples, or decoder positions) by values."""
    cfg = model.cfg
    if isinstance(cfg, DecoderConfig):
        return {"logits": np.concatenate([model.logits(seq) for seq in calibration])}
    if isinstance(cfg, EncoderConfig):
        return {"embedding": model.embed(calibration)}
    if isinstance(cfg, GraphConfig):  # every output flattened per sample; a final softmax's logits
        made_by = {node.output: node for node in cfg.nodes}
        names = [made_by[v.name].inputs[0] if v.name in made_by and made_by[v.name].op == "softmax" else v.name
                 for v in cfg.outputs]
        outs = model.run([calibration], outputs=names)
        return {n: outs[n].reshape(len(calibration), -1) for n in dict.fromkeys(names)}
    return {"logits": model.predict(calibration)}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def _score(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """The plan's quality: the minimum over outputs of the mean cosine."""
    return min(float(np.mean(_row_cosines(got[k], ref[k]))) for k in ref)


def auto_plan(m: ImportedModel, calibration, budget: float = 0.99,
              holdout: float = HOLDOUT) -> tuple[dict[str, str], dict[str, float], PlanQuality]:
    """(plan, summary figures, per-output quality on the calibration and held-out splits)."""
    from bitnet_edge.sdk.convert.convert import build_tensors, linear_layers
    from bitnet_edge.sdk.manifest import ModelManifest
    from bitnet_edge.sdk.modeldir import write_model_dir
    from bitnet_edge.sdk.models import load_model

    if calibration is None or len(calibration) == 0:
        raise InputError("calibration", "--precision auto needs calibration data (--calibration FILE)")
    if not 0 < budget <= 1:
        raise InputError("budget", f"must be in (0, 1], got {budget}")
    fit, held = split_calibration(calibration, holdout)
    names = linear_layers(m)
    fixed = {n for n in names if n in m.tensors and m.tensors[n].kind == "ternary"}
    with tempfile.TemporaryDirectory(prefix="bne-plan-") as tmp:
        counter = iter(range(10**9))

        def load(plan: dict[str, str]):
            entries, arrays = build_tensors(m, plan)
            man = ModelManifest(name=m.name, config=m.config, precision=plan, tensors=entries, source=m.source)
            return load_model(write_model_dir(Path(tmp) / str(next(counter)), man, arrays))

        base = {n: ("ternary" if n in fixed else "f32") for n in names}
        base_model = load(base)
        ref, ref_held = evaluate(base_model, fit), evaluate(base_model, held)
        del base_model
        sensitivity = {}
        for n in names:
            if n not in fixed:
                sensitivity[n] = _score(evaluate(load({**base, n: "ternary"}), fit), ref)
        plan = dict(base)
        for n in sorted(sensitivity, key=lambda k: -sensitivity[k]):
            for precision in ("ternary", "int8"):
                trial = {**plan, n: precision}
                if _score(evaluate(load(trial), fit), ref) >= budget:
                    plan = trial
                    break
            else:
                plan[n] = "f16"
        final = load(plan)
        got, got_held = evaluate(final, fit), evaluate(final, held)
        del final
    outputs = []
    for k in ref:
        c, h = _row_cosines(got[k], ref[k]), _row_cosines(got_held[k], ref_held[k])
        outputs.append(OutputQuality(name=k, size=int(ref[k].shape[1]), calibration_cosine=float(c.mean()),
                                     calibration_worst=float(c.min()), held_out_cosine=float(h.mean()),
                                     held_out_worst=float(h.min())))
    cal_min = min(o.calibration_cosine for o in outputs)
    held_min = min(o.held_out_cosine for o in outputs)
    quality = PlanQuality(budget=budget, calibration_samples=len(fit), held_out_samples=len(held),
                          calibration_min_cosine=cal_min, held_out_min_cosine=held_min,
                          below_budget=held_min < budget, outputs=outputs)
    counts = {p: sum(v == p for v in plan.values()) for p in ("ternary", "int8", "f16")}
    metrics = {"cosine": cal_min, "held_out_cosine": held_min, "budget": budget,
               "calibration_rows": float(len(fit)), "held_out_rows": float(len(held)),
               **{f"layers_{p}": float(c) for p, c in counts.items()}}
    return plan, metrics, quality
