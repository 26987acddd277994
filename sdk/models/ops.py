"""numpy glue shared by the architectures: norms, activations, RoPE, attention.

All float32.  These are the references for any of them later moved into C.
"""

from __future__ import annotations

import numpy as np

__all__ = ["single_threaded_blas", "rms_norm", "layer_norm", "relu2", "silu", "gelu", "softmax", "rope_tables", "apply_rope",
           "erf"]

_F = np.float32


def single_threaded_blas():
    """A context in which numpy's BLAS runs on one thread.

    The glue's matmuls (attention scores, small float layers) are tiny; a multi-threaded BLAS only
    leaves its threads spinning on the cores our kernel pool needs (seen: 2-thread prefill 30%
    slower on 2 cores).  threadpoolctl is optional: without it this is a no-op."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover
            import contextlib

            return contextlib.nullcontext()
        _CONTROLLER = ThreadpoolController()  # finds the BLAS libraries once (~0.2 ms a scan)
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * w, as transformers' LlamaRMSNorm/BitNetRMSNorm (float32)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=_F)
    return (x * (_F(1.0) / np.sqrt(var + _F(eps)))) * w


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = np.mean(x, axis=-1, keepdims=True, dtype=_F)
    d = x - mu
    var = np.mean(np.square(d), axis=-1, keepdims=True, dtype=_F)
    return d / np.sqrt(var + _F(eps)) * w + b


def relu2(x: np.ndarray) -> np.ndarray:
    r = np.maximum(x, _F(0))
    return r * r


def silu(x: np.ndarray) -> np.ndarray:
    return x / (_F(1) + np.exp(-x))


def erf(x: np.ndarray) -> np.ndarray:
    """erf with |error| < 1.2e-7 (the Chebyshev fit of erfc from Numerical Recipes), computed in
    float64 and returned as float32; numpy has no erf and scipy is not a dependency."""
    x64 = np.asarray(x, dtype=np.float64)
    s = np.sign(x64)
    a = np.abs(x64)
    t = 1.0 / (1.0 + 0.5 * a)
    y = t * np.exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return (s * (1.0 - y)).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return (_F(0.5) * x * (_F(1) + erf(x * _F(0.7071067811865476)))).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return _F(0.5) * x * (_F(1) + np.tanh(_F(0.7978845608028654) * (x + _F(0.044715) * x * x * x)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True, dtype=_F)


def rope_tables(head_dim: int, theta: float, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (len, head_dim) float32 as transformers' default RoPE computes them."""
    inv_freq = (_F(1.0) / (_F(theta) ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(_F) / _F(head_dim))))
    freqs = positions.astype(_F)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(_F), np.sin(emb).astype(_F)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (heads, len, head_dim): x*cos + rotate_half(x)*sin (rotate_half: [-x2, x1])."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin
