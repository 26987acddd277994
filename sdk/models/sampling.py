"""Next-token choice: greedy, or seeded temperature / top-k / top-p sampling."""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.errors import RangeError

__all__ = ["Sampler"]


class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None):
        if not np.isfinite(temperature) or temperature < 0:
            raise RangeError("temperature", f"must be >= 0, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise RangeError("top_k", f"must be >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise RangeError("top_p", f"must be in (0, 1], got {top_p!r}")
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits (vocab,) float32 -> token id."""
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        order = np.argsort(-z, kind="stable")
        if self.top_k is not None:
            order = order[: self.top_k]
        z = z[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        if self.top_p is not None:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
            p = p[:keep] / p[:keep].sum()
            order = order[:keep]
        return int(order[self.rng.choice(len(p), p=p)])
