"""Quantization-aware training of small MLP classifiers, in numpy.

The forward pass uses exactly the deployed numerics - absmean ternary weights (one scale per
layer) and per-row absmax int8 activations - with straight-through estimators for both, so the
trained float "master" weights convert to a ternary model that scores what training measured.
Plain float training (``ternary=False``) gives the baseline.  Adam, softmax cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bitnet_edge.sdk.quant import EPS

__all__ = ["MlpParams", "train_mlp", "accuracy", "save_npz"]


@dataclass
class MlpParams:
    weights: list[np.ndarray]  # (out, in) float32
    biases: list[np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    history: list[float] = field(default_factory=list)  # validation accuracy per epoch


def _ternary(w: np.ndarray) -> np.ndarray:
    g = np.float32(max(np.float32(np.abs(w, dtype=np.float64).mean()), EPS))
    return np.clip(np.rint(w / g), -1, 1).astype(np.float32) * g


def _act_quant(x: np.ndarray) -> np.ndarray:
    s = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1, keepdims=True), EPS)
    return np.clip(np.rint(x * s), -128, 127) / s


def _forward(p: MlpParams, x: np.ndarray, ternary: bool):
    h = (x - p.mean) / p.std
    cache = []
    for i, (w, b) in enumerate(zip(p.weights, p.biases)):
        hin = _act_quant(h) if ternary else h
        wq = _ternary(w) if ternary else w
        z = hin @ wq.T + b
        cache.append((hin, wq, z))
        h = np.maximum(z, 0) if i < len(p.weights) - 1 else z
    return h, cache


def predict(p: MlpParams, x: np.ndarray, ternary: bool) -> np.ndarray:
    return _forward(p, x.astype(np.float32), ternary)[0]


def accuracy(p: MlpParams, x: np.ndarray, y: np.ndarray, ternary: bool) -> float:
    return float((predict(p, x, ternary).argmax(1) == y).mean())


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: Sequence[int] = (128,), *, ternary: bool = True,
              epochs: int = 40, batch: int = 64, lr: float = 3e-3, seed: int = 0,
              x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
              init: MlpParams | None = None) -> MlpParams:
    """Train from scratch, or fine-tune ``init`` (its weights are copied, not changed)."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float32)
    classes = int(y.max()) + 1
    sizes = [x.shape[1], *hidden, classes]
    if init is not None:
        p = MlpParams([w.copy() for w in init.weights], [b.copy() for b in init.biases], init.mean.copy(),
                      init.std.copy())
    else:
        p = MlpParams(
            weights=[(rng.standard_normal((b, a)) * np.sqrt(2.0 / a)).astype(np.float32)
                     for a, b in zip(sizes, sizes[1:])],
            biases=[np.zeros(b, np.float32) for b in sizes[1:]],
            mean=x.mean(axis=0).astype(np.float32), std=(x.std(axis=0) + 1e-3).astype(np.float32))
    params = p.weights + p.biases
    m1 = [np.zeros_like(a) for a in params]
    m2 = [np.zeros_like(a) for a in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            out, cache = _forward(p, x[idx], ternary)
            prob = np.exp(out - out.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            grad = prob
            grad[np.arange(len(idx)), y[idx]] -= 1
            grad /= len(idx)
            gw, gb = [None] * len(p.weights), [None] * len(p.weights)
            for i in reversed(range(len(p.weights))):
                hin, wq, z = cache[i]
                if i < len(p.weights) - 1:
                    grad = grad * (z > 0)
                gw[i] = grad.T @ hin  # straight-through: d/dw of the quantized weight
                gb[i] = grad.sum(0)
                grad = grad @ wq  # straight-through the activation quantizer
            step += 1
            for j, (a, g) in enumerate(zip(params, gw + gb)):
                m1[j] = 0.9 * m1[j] + 0.1 * g
                m2[j] = 0.999 * m2[j] + 0.001 * g * g
                a -= lr * (m1[j] / (1 - 0.9**step)) / (np.sqrt(m2[j] / (1 - 0.999**step)) + 1e-8)
        if x_val is not None:
            p.history.append(accuracy(p, x_val, y_val, ternary))
    return p


def save_npz(p: MlpParams, path, class_names: Sequence[str] | None = None) -> None:
    """The npz layout that ``bitnet-edge convert`` reads (layers.{i}.weight/bias, input_mean/std)."""
    arrays = {}
    for i, (w, b) in enumerate(zip(p.weights, p.biases)):
        arrays[f"layers.{i}.weight"], arrays[f"layers.{i}.bias"] = w, b
    arrays["input_mean"], arrays["input_std"] = p.mean, p.std
    arrays["activation"] = np.array("relu")
    if class_names is not None:
        arrays["class_names"] = np.array(list(class_names))
    np.savez(path, **arrays)
