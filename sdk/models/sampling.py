"""Next-token choice: greedy, or seeded temperature / top-k / top-p sampling; optionally with
OpenAI's logit adjustments (``logit_bias``, ``presence_penalty``, ``frequency_penalty``) and the
log-probabilities of each chosen token (``logprobs``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bitnet_edge.sdk.errors import RangeError

__all__ = ["Sampler", "TokenLogprob"]


class TokenLogprob(NamedTuple):
    """A chosen token, its log-probability, and the ``logprobs`` likeliest (id, log-probability), best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, *, logit_bias: dict[int, float] | None = None,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logprobs: int | None = None):
        """``logit_bias`` (token id -> value added to its logit), ``presence_penalty`` (subtracted once
        from the logit of every token already generated) and ``frequency_penalty`` (subtracted per
        time it was generated) change the logits before the choice, as OpenAI's API defines them.
        ``logprobs`` (None: off; k >= 0) records, for each chosen token, its log-probability and the
        k likeliest tokens' under the model's own distribution (before temperature and the
        adjustments) in :attr:`records`."""
        if not np.isfinite(temperature) or temperature < 0:
            raise RangeError("temperature", f"must be >= 0, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise RangeError("top_k", f"must be >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise RangeError("top_p", f"must be in (0, 1], got {top_p!r}")
        for name, v in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if not np.isfinite(v):
                raise RangeError(name, f"must be finite, got {v!r}")
        if logprobs is not None and logprobs < 0:
            raise RangeError("logprobs", f"must be >= 0, got {logprobs!r}")
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.rng = np.random.default_rng(seed)
        self.logit_bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
        self.presence_penalty, self.frequency_penalty = float(presence_penalty), float(frequency_penalty)
        self.logprobs = logprobs
        self.counts: dict[int, int] = {}
        self.records: list[TokenLogprob] = []

    @property
    def plain(self) -> bool:
        """True when the choice depends on the raw logits only (no adjustments, nothing recorded), so
        a backend may pick a greedy token on its device."""
        return not (self.logit_bias or self.presence_penalty or self.frequency_penalty or self.logprobs is not None)

    def __call__(self, logits: np.ndarray) -> int:
        """logits (vocab,) float32 -> token id."""
        if self.plain:
            return self._choose(logits)
        raw = logits
        if self.logit_bias or self.counts:
            logits = logits.astype(np.float64)  # a copy: the caller's logits stay as they are
            for t, b in self.logit_bias.items():
                if 0 <= t < logits.shape[-1]:
                    logits[t] += b
            for t, c in self.counts.items():
                logits[t] -= c * self.frequency_penalty + self.presence_penalty
        tok = self._choose(logits)
        self.counts[tok] = self.counts.get(tok, 0) + 1
        if self.logprobs is not None:
            z = raw.astype(np.float64)
            lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
            top = np.argsort(-lp, kind="stable")[: self.logprobs]
            self.records.append(TokenLogprob(tok, float(lp[tok]), [(int(i), float(lp[i])) for i in top]))
        return tok

    def _choose(self, logits: np.ndarray) -> int:
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
