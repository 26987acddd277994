"""Golden vectors: fixed inputs and the outputs the build host computed, for the agent's health check.

The packager (:mod:`bitnet_edge.packagers.golden_vectors`) loads the converted model with
``bitnet_edge.sdk.load_model`` and runs
``predict`` (mlp, graph), ``embed`` (bert, token id lists) or ``logits`` (bitnet) on inputs drawn
from a fixed seed, so the same model always gives the same golden section.  After installing, the agent
runs the same call and :func:`check_outputs` compares.  Tolerances are loose enough for float
glue (exp, erf) that differs between numpy builds and the int8 activation rounding it can flip,
tight enough to catch a wrong weight layout or a broken kernel (which give cosine ~0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitnet_edge.sdk.bundle.errors import BundleFormatError
from bitnet_edge.sdk.bundle.manifest import GoldenSet, Tolerance
from bitnet_edge.sdk.manifest import DecoderConfig, EncoderConfig, GraphConfig, MlpConfig, ModelManifest

#: an installed slot keeps the golden section's content under this name
GOLDEN_FILE = "golden.bin"

__all__ = ["GOLDEN_FILE", "SECTION", "SEED", "TOLERANCE", "METHOD", "GoldenCheck", "golden_inputs", "read_golden",
           "run_model", "check_outputs"]

SECTION = "golden"
SEED = 20261126
TOLERANCE = Tolerance(atol=2e-2, rtol=2e-2, min_cosine=0.999)
METHOD = {"mlp": "predict", "bert": "embed", "bitnet": "logits", "graph": "predict"}


def golden_inputs(model: ModelManifest) -> list[np.ndarray]:
    """The inputs for ``model``'s architecture, from a fixed seed."""
    rng = np.random.default_rng(SEED)
    cfg = model.config
    if isinstance(cfg, MlpConfig):
        x = rng.standard_normal((4, cfg.layer_sizes[0])).astype(np.float32)
        if cfg.input_std is not None:
            x = x * np.asarray(cfg.input_std, np.float32)
        if cfg.input_mean is not None:
            x = x + np.asarray(cfg.input_mean, np.float32)
        return [x.astype(np.float32)]
    if isinstance(cfg, GraphConfig):  # two samples of the (single) input, free dimensions as 1
        shape = [d if d > 0 else 1 for d in cfg.inputs[0].shape[1:]]
        return [rng.standard_normal((2, *shape)).astype(np.float32)]
    if isinstance(cfg, EncoderConfig):
        lengths = [min(n, cfg.max_position_embeddings) for n in (8, 5)]
        return [rng.integers(0, cfg.vocab_size, n).astype(np.int64) for n in lengths]
    assert isinstance(cfg, DecoderConfig)
    n = min(4, cfg.max_position_embeddings)
    return [rng.integers(0, cfg.vocab_size, n).astype(np.int64)]


def run_model(model, method: str, inputs: list[np.ndarray]) -> np.ndarray:
    """Call the runtime the way the golden set says; float32 output."""
    if method == "predict":
        out = model.predict(inputs[0])
    elif method == "embed":
        out = model.embed([x.tolist() for x in inputs])
    else:
        out = model.logits(inputs[0].tolist())
    return np.asarray(out, dtype=np.float32)


def read_golden(golden: GoldenSet, content: bytes) -> dict[str, np.ndarray]:
    """Section content -> arrays by name."""
    out = {}
    for a in golden.arrays:
        dtype = np.dtype("<f4" if a.dtype == "float32" else "<i8")
        count = int(np.prod(a.shape, dtype=np.int64))
        end = a.offset + count * dtype.itemsize
        if end > len(content):
            raise BundleFormatError(f"section:{golden.section}", "bad-layout", f"array {a.name!r} runs past the end")
        out[a.name] = np.frombuffer(content, dtype, count, a.offset).reshape(a.shape).astype(dtype.newbyteorder("="))
    return out


@dataclass(frozen=True)
class GoldenCheck:
    ok: bool
    max_abs_error: float
    cosine: float
    problem: str  # empty when ok


def check_outputs(got: np.ndarray, want: np.ndarray, tol: Tolerance) -> GoldenCheck:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return GoldenCheck(False, float("inf"), 0.0, f"shape {got.shape}, expected {want.shape}")
    if not np.isfinite(got).all():
        return GoldenCheck(False, float("inf"), 0.0, "non-finite output")
    err = np.abs(got - want)
    denom = float(np.linalg.norm(got) * np.linalg.norm(want))
    cos = float(np.dot(got.ravel(), want.ravel()) / denom) if denom > 0 else float(np.array_equal(got, want))
    close = bool(np.all(err <= tol.atol + tol.rtol * np.abs(want)))
    problems = ([] if close else [f"max |got - want| = {err.max():.3g} outside atol {tol.atol} + rtol {tol.rtol}"])
    problems += [] if cos >= tol.min_cosine else [f"cosine {cos:.6f} < {tol.min_cosine}"]
    return GoldenCheck(not problems, float(err.max()) if err.size else 0.0, cos, "; ".join(problems))
