"""A small BitNet b1.58 decoder in numpy: forward, hand-written backward, quantization-aware.

The architecture is transformers' BitNetForCausalLM, the one our runtime
(:mod:`bitnet_edge.sdk.models.decoder`) serves: per layer
``x += o(attn_sub_norm(attn(input_layernorm(x))))`` and
``x += down(ffn_sub_norm(relu(gate(h))^2 * up(h)))`` with ``h = post_attention_layernorm(x)``,
RoPE (rotate_half), grouped-query attention, RMSNorm before every quantized linear, tied
embeddings.  Parameters are named as in the Hugging Face checkpoint.

``mode="ternary"`` runs the deployed numerics (the BitNet b1.58 recipe):

- every projection: absmean ternary weights (one scale per matrix, :func:`quant.absmean_ternary`,
  held at the value the packed checkpoint carries: :func:`deployed_scale`) times per-token absmax
  int8 activations (:func:`quant.absmax_int8`);
- the LM head and the token embeddings: one matrix, per-row absmax int8 (W8A8 for the head), as
  the converter stores them with ``embeddings="int8"``;
- the straight-through estimator for every quantizer: forward through the quantized value,
  gradient to the float "master" value as if the quantizer were the identity.

``mode="float"`` is the same model in plain float32: the baseline.  All glue (norms, RoPE,
softmax) is float32 as the runtime computes it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from bitnet_edge.sdk import quant
from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.schemas import Strict

__all__ = ["LmConfig", "MODES", "EMBED", "inverse_scale", "deployed_scale", "init_params", "param_names",
           "quantized_weights", "forward", "loss_and_grads", "sequence_logits", "greedy"]

_F = np.float32
MODES = ("ternary", "float")
EMBED = "model.embed_tokens.weight"


class LmConfig(Strict):
    """The decoder's shape (exported as the Hugging Face config)."""

    vocab_size: int = Field(default=2048, ge=16, le=1 << 20, description="BPE vocabulary, special tokens included")
    hidden_size: int = Field(default=128, ge=8, le=8192)
    intermediate_size: int = Field(default=256, ge=8, le=32768)
    num_layers: int = Field(default=2, ge=1, le=128)
    num_heads: int = Field(default=4, ge=1, le=256)
    num_kv_heads: int = Field(default=2, ge=1, le=256, description="grouped-query attention: K/V heads")
    max_position: int = Field(default=256, ge=8, le=1 << 20, description="tokens of context the exported model accepts")
    rope_theta: float = Field(default=10000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-5, gt=0, lt=1)

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"{self.num_heads} heads must split hidden_size {self.hidden_size} into an even head size")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm")


def param_names(cfg: LmConfig) -> list[str]:
    names = [EMBED, "model.norm.weight"]
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.{n}.weight" for n in _NORMS + _LINEARS]
    return names


def _shapes(cfg: LmConfig) -> dict[str, tuple[int, ...]]:
    d, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per = {"input_layernorm": (d,), "post_attention_layernorm": (d,), "self_attn.attn_sub_norm": (q,),
           "mlp.ffn_sub_norm": (f,), "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d),
           "self_attn.v_proj": (kv, d), "self_attn.o_proj": (d, q), "mlp.gate_proj": (f, d),
           "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)}
    shapes = {EMBED: (cfg.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(cfg.num_layers):
        shapes.update({f"model.layers.{i}.{k}.weight": v for k, v in per.items()})
    return shapes


def init_params(cfg: LmConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 style: N(0, 0.02), residual outputs scaled by 1/sqrt(2 layers), norms at 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in _shapes(cfg).items():
        if len(shape) == 1:
            out[name] = np.ones(shape, _F)
            continue
        std = 0.02 / np.sqrt(2 * cfg.num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        out[name] = (rng.standard_normal(shape) * std).astype(_F)
    return out


# ---- quantizers (forward value; the backward is the identity: straight-through) --------------------

def _act_q(x: np.ndarray) -> np.ndarray:
    """Per-row absmax int8, dequantized: the values the int8 kernels multiply (as quant.absmax_int8)."""
    s = _F(127.0) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), quant.EPS)
    y = x * s
    np.rint(y, out=y)
    np.clip(y, -128, 127, out=y)
    y /= s
    return y


def inverse_scale(g: float) -> np.float32:
    """The ``weight_scale`` a packed Hugging Face BitNet checkpoint stores for absmean scale g: the
    float32 s nearest 1/g with float32(1)/s == g where one exists (about 88% of scales)."""
    g32 = _F(g)
    s = _F(1.0) / g32
    for direction in (_F(np.inf), _F(-np.inf)):
        cand = s
        for _ in range(4):
            if _F(1.0) / cand == g32:
                return cand
            cand = np.nextafter(cand, direction)
    return s


def deployed_scale(g: float) -> np.float32:
    """The scale the converted model uses: what 1/weight_scale gives back (g, or within one ulp)."""
    return _F(1.0) / inverse_scale(g)


def _ternary_w(w: np.ndarray) -> np.ndarray:
    q, g = quant.absmean_ternary(w)
    return q.astype(_F) * deployed_scale(g)


def _int8_w(w: np.ndarray) -> np.ndarray:
    q, ws = quant.absmax_int8_weights(w)
    return q.astype(_F) * ws[:, None]


def quantized_weights(params: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """The matrices the forward multiplies: ternary projections and an int8 embedding/head, or the floats."""
    if mode not in MODES:
        raise InputError("mode", f"{mode!r} is not one of {MODES}")
    if mode == "float":
        return params
    out = dict(params)
    for name, w in params.items():
        if name == EMBED:
            out[name] = _int8_w(w)
        elif w.ndim == 2:
            out[name] = _ternary_w(w)
    return out


# ---- glue with its backward ----------------------------------------------------------------------------

def _rms(x: np.ndarray, w: np.ndarray, eps: float):
    var = np.mean(np.square(x), axis=-1, keepdims=True)  # float32 for float32 x, as ops.rms_norm
    r = _F(1.0) / np.sqrt(var + _F(eps))
    xhat = x * r
    return xhat * w, (xhat, r)


def _rms_back(dy: np.ndarray, w: np.ndarray, saved) -> tuple[np.ndarray, np.ndarray]:
    xhat, r = saved
    g = dy * w
    dw = np.sum((dy * xhat).reshape(-1, w.shape[0]), axis=0)
    dx = r * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    return dx, dw


def _rope_back(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Adjoint of ops.apply_rope: dx = dy*cos + rot^T(dy*sin), rot^T(z) = [z2, -z1]."""
    z = dy * sin
    half = z.shape[-1] // 2
    return dy * cos + np.concatenate([z[..., half:], -z[..., :half]], axis=-1)


# ---- forward / backward -----------------------------------------------------------------------------

def forward(params: dict[str, np.ndarray], cfg: LmConfig, ids: np.ndarray, mode: str,
            keep: bool = False, weights: dict[str, np.ndarray] | None = None):
    """ids (B, T) int -> logits (B*T, vocab) float32, and what the backward needs when ``keep``."""
    w = weights if weights is not None else quantized_weights(params, mode)
    aq = _act_q if mode == "ternary" else (lambda x: x)
    b, t = ids.shape
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    groups, eps = nh // nkv, cfg.rms_norm_eps
    cos, sin = ops.rope_tables(hd, cfg.rope_theta, np.arange(t))
    mask = np.triu(np.ones((t, t), dtype=bool), k=1)
    scale = _F(hd ** -0.5)
    x = w[EMBED][ids.reshape(-1)]  # (B*T, d)
    nq, nk = nh * hd, nkv * hd
    saved = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        # q/k/v and gate/up as one product each (each part keeps its own ternary scale)
        wqkv = np.concatenate([w[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        wgu = np.concatenate([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
        h, s_n1 = _rms(x, params[p + "input_layernorm.weight"], eps)
        hq = aq(h)
        qkv = hq @ wqkv.T
        q = qkv[:, :nq].reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
        k = qkv[:, nq:nq + nk].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        v = qkv[:, nq + nk:].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        kr, vr = (np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)) if groups > 1 else (k, v)
        scores = q @ kr.transpose(0, 1, 3, 2)
        scores *= scale
        scores[..., mask] = _F(-np.inf)
        e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
        prob = e / np.sum(e, axis=-1, keepdims=True)  # (B, H, T, T), as ops.softmax
        att = (prob @ vr).transpose(0, 2, 1, 3).reshape(b * t, nq)
        a, s_sa = _rms(att, params[p + "self_attn.attn_sub_norm.weight"], eps)
        aqd = aq(a)
        x_mid = x + aqd @ w[p + "self_attn.o_proj.weight"].T
        h2, s_n2 = _rms(x_mid, params[p + "post_attention_layernorm.weight"], eps)
        h2q = aq(h2)
        gu = h2q @ wgu.T
        gate, up = gu[:, :cfg.intermediate_size], gu[:, cfg.intermediate_size:]
        relu = np.maximum(gate, _F(0))
        act = relu * relu
        m, s_sf = _rms(act * up, params[p + "mlp.ffn_sub_norm.weight"], eps)
        mq = aq(m)
        x_out = x_mid + mq @ w[p + "mlp.down_proj.weight"].T
        if keep:
            saved.append((wqkv, wgu, s_n1, hq, q, kr, vr, prob, s_sa, aqd, s_n2, h2q, relu, act, up, s_sf, mq))
        x = x_out
    hf, s_nf = _rms(x, params["model.norm.weight"], eps)
    hfq = aq(hf)
    logits = hfq @ w[EMBED].T
    return logits, ((w, cos, sin, scale, saved, s_nf, hfq) if keep else None)


def loss_and_grads(params: dict[str, np.ndarray], cfg: LmConfig, ids: np.ndarray, targets: np.ndarray,
                   mode: str) -> tuple[float, dict[str, np.ndarray]]:
    """Mean next-token cross-entropy of ``targets`` (B, T) and its gradient for every parameter."""
    b, t = ids.shape
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    groups = nh // nkv
    logits, (w, cos, sin, scale, saved, s_nf, hfq) = forward(params, cfg, ids, mode, keep=True)
    y = targets.reshape(-1)
    n = y.size
    z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    se = ez.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(se[:, 0]) - z[np.arange(n), y]))
    dlog = ez / se
    dlog[np.arange(n), y] -= 1
    dlog *= _F(1.0 / n)
    grads: dict[str, np.ndarray] = {}
    grads[EMBED] = dlog.T @ hfq  # head (tied): straight-through the int8 weight quantizer
    dx, grads["model.norm.weight"] = _rms_back(dlog @ w[EMBED], params["model.norm.weight"], s_nf)
    nq, nk, f = nh * hd, nkv * hd, cfg.intermediate_size
    for i in reversed(range(cfg.num_layers)):
        p = f"model.layers.{i}."
        (wqkv, wgu, s_n1, hq, q, kr, vr, prob, s_sa, aqd, s_n2, h2q, relu, act, up, s_sf, mq) = saved[i]
        # MLP: x_out = x_mid + down(q(sub_norm(relu(gate)^2 * up)))
        grads[p + "mlp.down_proj.weight"] = dx.T @ mq
        dm, grads[p + "mlp.ffn_sub_norm.weight"] = _rms_back(dx @ w[p + "mlp.down_proj.weight"],
                                                             params[p + "mlp.ffn_sub_norm.weight"], s_sf)
        dgu = np.concatenate([dm * up * (_F(2) * relu), dm * act], axis=1)  # d gate, d up
        dwgu = dgu.T @ h2q
        grads[p + "mlp.gate_proj.weight"], grads[p + "mlp.up_proj.weight"] = dwgu[:f], dwgu[f:]
        dxm, grads[p + "post_attention_layernorm.weight"] = _rms_back(
            dgu @ wgu, params[p + "post_attention_layernorm.weight"], s_n2)
        dx = dx + dxm
        # attention: x_mid = x + o(q(sub_norm(attn)))
        grads[p + "self_attn.o_proj.weight"] = dx.T @ aqd
        datt, grads[p + "self_attn.attn_sub_norm.weight"] = _rms_back(
            dx @ w[p + "self_attn.o_proj.weight"], params[p + "self_attn.attn_sub_norm.weight"], s_sa)
        dout = datt.reshape(b, t, nh, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        dprob = dout @ vr.transpose(0, 1, 3, 2)
        dvr = prob.transpose(0, 1, 3, 2) @ dout
        dprob -= np.sum(dprob * prob, axis=-1, keepdims=True)
        dprob *= prob
        dprob *= scale  # d scores
        dq = dprob @ kr
        dkr = dprob.transpose(0, 1, 3, 2) @ q
        if groups > 1:
            dkr = dkr.reshape(b, nkv, groups, t, hd).sum(axis=2)
            dvr = dvr.reshape(b, nkv, groups, t, hd).sum(axis=2)
        dq, dk = _rope_back(dq, cos, sin), _rope_back(dkr, cos, sin)
        dqkv = np.concatenate([dq.transpose(0, 2, 1, 3).reshape(b * t, nq), dk.transpose(0, 2, 1, 3).reshape(b * t, nk),
                               dvr.transpose(0, 2, 1, 3).reshape(b * t, nk)], axis=1)
        dwqkv = dqkv.T @ hq
        grads[p + "self_attn.q_proj.weight"] = dwqkv[:nq]
        grads[p + "self_attn.k_proj.weight"] = dwqkv[nq:nq + nk]
        grads[p + "self_attn.v_proj.weight"] = dwqkv[nq + nk:]
        dxa, grads[p + "input_layernorm.weight"] = _rms_back(dqkv @ wqkv, params[p + "input_layernorm.weight"], s_n1)
        dx = dx + dxa
    # the lookup (straight-through the int8 rows): sum the rows of each id, then add once per id
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    uniq, starts = np.unique(flat[order], return_index=True)
    grads[EMBED][uniq] += np.add.reduceat(dx[order], starts, axis=0)
    return loss, grads


# ---- inference helpers (the trainer's own view of the model, for evaluation and parity checks) -----------

def sequence_logits(params: dict[str, np.ndarray], cfg: LmConfig, ids, mode: str,
                    weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """ids (T,) -> logits (T, vocab) of one sequence."""
    ids = np.asarray(ids, dtype=np.int64)[None, :]
    return forward(params, cfg, ids, mode, weights=weights)[0]


def greedy(params: dict[str, np.ndarray], cfg: LmConfig, prompt, max_new_tokens: int, mode: str,
           stop=()) -> list[int]:
    """Greedy continuation of ``prompt`` (the stop token included), recomputing the whole sequence each step."""
    w = quantized_weights(params, mode)
    ids, out = list(prompt), []
    for _ in range(max_new_tokens):
        tok = int(np.argmax(sequence_logits(params, cfg, ids, mode, weights=w)[-1]))
        out.append(tok)
        ids.append(tok)
        if tok in stop:
            break
    return out
