"""The training loop: random windows of the token streams, AdamW, warmup + cosine schedule.

Batches mix the two streams: source code (every module a document) and chats (the docstring
exchanges, see :mod:`.corpus`), ``chat_fraction`` of the rows from the latter.  Evaluation runs
fixed, evenly spaced windows of the held-out streams, so the float and the ternary model are
measured on the same tokens.

Reproducible: the weights depend on the seed, not on the machine's core count or ``jobs``.  Every
step is seeded (initialization, batch windows) and the BLAS runs on one thread: OpenBLAS splits a
matmul's sums differently with another thread count, and after a few hundred steps those last-bit
differences were a different model (held-out perplexity moved by several points).  What remains
is the BLAS build itself: another OpenBLAS kernel (CPU generation) may round differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.schemas import Strict
from bitnet_edge.sdk.train import lm

__all__ = ["TrainConfig", "TrainResult", "train", "eval_windows", "windows_nll"]


class TrainConfig(Strict):
    steps: int = Field(default=800, ge=1, le=10**7, description="optimizer steps")
    batch_size: int = Field(default=8, ge=1, le=4096, description="windows per step")
    seq_len: int = Field(default=64, ge=2, le=1 << 16, description="tokens per window")
    lr: float = Field(default=5e-3, gt=0, le=1, description="peak learning rate")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="the cosine ends at lr * this")
    warmup_steps: int = Field(default=40, ge=0, description="linear warmup")
    weight_decay: float = Field(default=0.01, ge=0, lt=1, description="decoupled (AdamW), on matrices only")
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0, description="global gradient norm")
    chat_fraction: float = Field(default=0.25, ge=0, le=1, description="rows of a batch drawn from the chat stream")
    seed: int = Field(default=0, ge=0, description="initialization and batch sampling")


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    losses: list[float] = field(default_factory=list)  # training loss per step
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # this process, all threads
    tokens: int = 0


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _sample(rng: np.random.Generator, stream: np.ndarray, rows: int, width: int) -> np.ndarray:
    if len(stream) < width:
        raise InputError("corpus", f"a token stream of {len(stream)} tokens is shorter than one window ({width})")
    starts = rng.integers(0, len(stream) - width + 1, size=rows)
    return stream[starts[:, None] + np.arange(width)[None, :]]


def train(model_cfg: lm.LmConfig, cfg: TrainConfig, code: np.ndarray, chats: np.ndarray, mode: str,
          on_step: Callable[[int, float], object] | None = None) -> TrainResult:
    """Train from ``lm.init_params(model_cfg, cfg.seed)``; ``code`` and ``chats`` are token streams.
    The same arguments give the same weights, bit for bit (BLAS on one thread: see the module doc)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _train(model_cfg, cfg, code, chats, mode, on_step)


def _train(model_cfg: lm.LmConfig, cfg: TrainConfig, code: np.ndarray, chats: np.ndarray, mode: str,
           on_step: Callable[[int, float], object] | None) -> TrainResult:
    import time

    if cfg.seq_len > model_cfg.max_position:
        raise InputError("seq_len", f"{cfg.seq_len} exceeds the model's {model_cfg.max_position} positions")
    rng = np.random.default_rng(cfg.seed)
    params = lm.init_params(model_cfg, cfg.seed)
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    n_chat = int(round(cfg.batch_size * cfg.chat_fraction)) if len(chats) > cfg.seq_len else 0
    out = TrainResult(params)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        win = np.concatenate([_sample(rng, code, cfg.batch_size - n_chat, cfg.seq_len + 1),
                              _sample(rng, chats, n_chat, cfg.seq_len + 1)] if n_chat else
                             [_sample(rng, code, cfg.batch_size, cfg.seq_len + 1)])
        loss, grads = lm.loss_and_grads(params, model_cfg, win[:, :-1], win[:, 1:], mode)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss})")
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
        clip = np.float32(min(1.0, cfg.grad_clip / (norm + 1e-6)))
        lr = _lr(cfg, step)
        b1, b2 = cfg.beta1, cfg.beta2
        c1, c2 = 1 - b1 ** (step + 1), 1 - b2 ** (step + 1)
        for k, p in params.items():
            g = grads[k] * clip
            m1[k] *= np.float32(b1)
            m1[k] += np.float32(1 - b1) * g
            m2[k] *= np.float32(b2)
            m2[k] += np.float32(1 - b2) * (g * g)
            if p.ndim == 2 and cfg.weight_decay:
                p *= np.float32(1 - lr * cfg.weight_decay)
            p -= np.float32(lr / c1) * m1[k] / (np.sqrt(m2[k] / np.float32(c2)) + np.float32(1e-8))
        out.losses.append(loss)
        out.tokens += win.shape[0] * cfg.seq_len
        if on_step is not None:
            on_step(step, loss)
    out.seconds, out.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return out


def eval_windows(stream: np.ndarray, count: int, seq_len: int) -> np.ndarray:
    """``count`` evenly spaced, non-overlapping windows of seq_len + 1 tokens (fewer if the stream is short)."""
    width = seq_len + 1
    n = min(count, len(stream) // width)
    if n == 0:
        raise InputError("heldout", f"the held-out stream ({len(stream)} tokens) is shorter than one window")
    starts = np.linspace(0, len(stream) - width, n).astype(np.int64)
    return stream[starts[:, None] + np.arange(width)[None, :]]


def windows_nll(logits_of: Callable[[np.ndarray], np.ndarray], windows: np.ndarray) -> float:
    """Mean next-token negative log-likelihood (nats) of every window under ``logits_of(ids) -> (T, vocab)``."""
    total, count = 0.0, 0
    for w in windows:
        z = np.asarray(logits_of(w[:-1]), dtype=np.float64)
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        total += float(np.sum(lse - z[np.arange(len(z)), w[1:]]))
        count += len(z)
    return total / count
