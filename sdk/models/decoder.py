"""The BitNet b1.58 decoder (transformers' BitNetForCausalLM) and LLaMA-layout ternary decoders.

Per layer: x += o_proj(attn_sub_norm(attn(input_layernorm(x)))); x += down_proj(ffn_sub_norm(
act(gate_proj(h)) * up_proj(h))) with h = post_attention_layernorm(x); act = relu^2 (BitNet) or
silu (LLaMA, no sub norms).  RoPE (rotate_half), GQA, causal softmax attention, float32 glue.
Prefill runs every linear as a GEMM over the prompt; decode runs GEMVs with a KV cache.

Two runtimes compute this: the forward pass in C (:mod:`.decoder_native`, the default on the CPU:
one native call per step, KV cache in float32, float16 or int8) and the numpy code below, the
reference (``runtime="numpy"``, the ``numpy`` kernel backend, or weights the C decoder cannot take).
A cache belongs to one runtime: :meth:`DecoderModel.new_cache` picks it, :meth:`forward` follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bitnet_edge.sdk.errors import InputError, NativeLibraryError, ShapeError
from bitnet_edge.sdk.manifest import DecoderConfig
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.models.errors import ContextLengthError
from bitnet_edge.sdk.models.linear import Linear, project
from bitnet_edge.sdk.models.sampling import Sampler

__all__ = ["DecoderModel", "KVCache"]

_F = np.float32


class KVCache:
    """Keys and values per layer, (kv_heads, capacity, head_dim) float32, filled up to ``length``."""

    def __init__(self, cfg: DecoderConfig, capacity: int):
        shape = (cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = [np.zeros(shape, _F) for _ in range(cfg.num_hidden_layers)]
        self.v = [np.zeros(shape, _F) for _ in range(cfg.num_hidden_layers)]
        self.capacity, self.length = capacity, 0


class _Layer:
    def __init__(self, md: ModelDir, cfg: DecoderConfig, i: int):
        p = f"model.layers.{i}."
        f32 = lambda n: np.asarray(md.array(p + n), dtype=_F)  # noqa: E731
        self.in_norm, self.post_norm = f32("input_layernorm.weight"), f32("post_attention_layernorm.weight")
        self.q, self.k, self.v, self.o = (Linear(md, p + f"self_attn.{x}_proj.weight") for x in "qkvo")
        self.gate, self.up, self.down = (Linear(md, p + f"mlp.{x}_proj.weight") for x in ("gate", "up", "down"))
        self.attn_sub = f32("self_attn.attn_sub_norm.weight") if cfg.sub_norms else None
        self.ffn_sub = f32("mlp.ffn_sub_norm.weight") if cfg.sub_norms else None


class DecoderModel:
    architecture = "bitnet"

    def __init__(self, md: ModelDir, tokenizer=None, kv_cache: str | None = None, runtime: str | None = None):
        """``kv_cache``: ``f32`` | ``f16`` | ``int8`` keys and values in the native runtime's cache
        (default ``$BITNET_EDGE_KV_CACHE``, else f32).  ``runtime``: ``native`` | ``numpy`` | None
        (native when the weights allow it; ``$BITNET_EDGE_DECODER`` can say numpy)."""
        cfg = md.manifest.config
        assert isinstance(cfg, DecoderConfig)
        self.cfg, self.manifest, self.tokenizer = cfg, md.manifest, tokenizer
        embed = md.manifest.tensor("model.embed_tokens.weight")
        self.embed_tokens = md.array(embed.name)  # mmap view; rows converted on lookup
        self.embed_scale = md.array(embed.scale_tensor) if embed.format == "int8" else None
        if self.embed_tokens.shape != (cfg.vocab_size, cfg.hidden_size):
            raise ShapeError("model.embed_tokens.weight", f"shape {self.embed_tokens.shape} does not match the config")
        self.norm = np.asarray(md.array("model.norm.weight"), dtype=_F)
        self.layers = [_Layer(md, cfg, i) for i in range(cfg.num_hidden_layers)]
        has_head = any(t.name == "lm_head.weight" for t in md.manifest.tensors)
        self.lm_head = Linear(md, "lm_head.weight" if has_head else "model.embed_tokens.weight")
        self.act = ops.relu2 if cfg.hidden_act == "relu2" else ops.silu
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.scaling = _F(cfg.head_dim ** -0.5)
        self.native, self.native_reason = self._build_native(kv_cache, runtime)

    def all_linears(self) -> list[Linear]:
        return [lin for layer in self.layers for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up,
                                                         layer.down)] + [self.lm_head]

    def _build_native(self, kv_cache: str | None, runtime: str | None):
        import os

        from bitnet_edge.sdk.models.decoder_native import KV_TYPES, NativeDecoder, native_unavailable_reason

        kv = (kv_cache or os.environ.get("BITNET_EDGE_KV_CACHE") or "f32").strip().lower()
        if kv not in KV_TYPES:
            raise InputError("kv_cache", f"{kv!r} is not one of {', '.join(KV_TYPES)}")
        rt = (runtime or os.environ.get("BITNET_EDGE_DECODER") or "native").strip().lower()
        if rt not in ("native", "numpy"):
            raise InputError("runtime", f"{rt!r} is not one of native, numpy")
        why = "runtime numpy requested" if rt == "numpy" else native_unavailable_reason(self)
        if why is None:
            try:
                return NativeDecoder(self, kv), None
            except NativeLibraryError as exc:
                why = f"no kernel library ({exc})"
        if kv_cache is not None and kv != "f32":
            raise InputError("kv_cache", f"{kv} needs the native runtime, which this model cannot use: {why}")
        return None, why
    # ---- forward -------------------------------------------------------------------------------

    def new_cache(self, capacity: int | None = None, runtime: str | None = None):
        """A KV cache for ``capacity`` positions: the native runtime's when the model has it and the
        kernel backend is native (``runtime`` can insist: ``native`` | ``numpy``)."""
        from bitnet_edge.sdk.kernels import resolve_backend

        capacity = capacity or self.cfg.max_position_embeddings
        if runtime not in (None, "native", "numpy"):
            raise InputError("runtime", f"{runtime!r} is not one of native, numpy")
        if runtime == "native" and self.native is None:
            raise InputError("runtime", f"this model has no native runtime: {self.native_reason}")
        if self.native is not None and runtime != "numpy" and (runtime == "native" or resolve_backend() != "numpy"):
            return self.native.new_cache(capacity)
        return KVCache(self.cfg, capacity)

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise InputError("token_ids", f"must be a non-empty 1-D sequence of ints, got {ids.dtype} {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise InputError("token_ids", f"ids must be in [0, {self.cfg.vocab_size})")
        return ids.astype(np.int64)

    def _attention(self, layer: _Layer, h: np.ndarray, li: int, cache: KVCache, pos0: int,
                   cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        cfg, n = self.cfg, h.shape[0]
        hd = cfg.head_dim
        q, k, v = project(h, layer.q, layer.k, layer.v)
        q = q.reshape(n, cfg.num_attention_heads, hd).transpose(1, 0, 2)
        k = k.reshape(n, cfg.num_key_value_heads, hd).transpose(1, 0, 2)
        v = v.reshape(n, cfg.num_key_value_heads, hd).transpose(1, 0, 2)
        q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        end = pos0 + n
        cache.k[li][:, pos0:end] = k
        cache.v[li][:, pos0:end] = v
        keys, vals = cache.k[li][:, :end], cache.v[li][:, :end]
        qg = q.reshape(cfg.num_key_value_heads, self.groups * n, hd)  # heads of a group share K/V
        scores = (qg @ keys.transpose(0, 2, 1)) * self.scaling  # (kv, groups*n, end)
        scores = scores.reshape(cfg.num_key_value_heads, self.groups, n, end)
        if n > 1:  # causal mask within the new block
            mask = np.triu(np.ones((n, end), dtype=bool), k=pos0 + 1)
            scores = np.where(mask, _F(-np.inf), scores)
        p = ops.softmax(scores).reshape(cfg.num_key_value_heads, self.groups * n, end)
        out = (p @ vals).reshape(cfg.num_attention_heads, n, hd).transpose(1, 0, 2).reshape(n, -1)
        if layer.attn_sub is not None:
            out = ops.rms_norm(out, layer.attn_sub, cfg.rms_norm_eps)
        return layer.o(out)

    def _mlp(self, layer: _Layer, h: np.ndarray) -> np.ndarray:
        gate, up = project(h, layer.gate, layer.up)
        g = self.act(gate) * up
        if layer.ffn_sub is not None:
            g = ops.rms_norm(g, layer.ffn_sub, self.cfg.rms_norm_eps)
        return layer.down(g)

    def token_embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the embedding matrix for ids, float32 (int8 rows times their scale)."""
        x = np.asarray(self.embed_tokens[ids], dtype=_F)
        if self.embed_scale is not None:  # int8 rows with their absmax scale
            x *= self.embed_scale[ids][:, None]
        return x

    def forward(self, ids: np.ndarray, cache, all_logits: bool = False, hidden: bool = False):
        """Run ``ids`` after what ``cache`` holds; logits of every new position or only the last
        [and, with ``hidden``, the residual stream after the last layer, (len(ids), hidden_size)]."""
        n, pos0 = len(ids), cache.length
        if pos0 + n > cache.capacity:
            raise ContextLengthError(pos0 + n, cache.capacity)
        if not isinstance(cache, KVCache):  # the native runtime's cache
            if self.native is None or getattr(cache, "decoder", None) is not self.native:
                raise InputError("cache", "was made by another model (or is not a KV cache)")
            return self.native.forward(self.token_embeddings(ids), cache, all_logits, hidden)
        with ops.single_threaded_blas():
            return self._forward(ids, cache, all_logits, hidden)

    def _forward(self, ids: np.ndarray, cache: KVCache, all_logits: bool, hidden: bool = False):
        cfg, n, pos0 = self.cfg, len(ids), cache.length
        x = self.token_embeddings(ids)
        cos, sin = ops.rope_tables(cfg.head_dim, cfg.rope_theta, np.arange(pos0, pos0 + n))
        for li, layer in enumerate(self.layers):
            x = x + self._attention(layer, ops.rms_norm(x, layer.in_norm, cfg.rms_norm_eps), li, cache, pos0, cos, sin)
            x = x + self._mlp(layer, ops.rms_norm(x, layer.post_norm, cfg.rms_norm_eps))
        cache.length = pos0 + n
        h = ops.rms_norm(x if all_logits else x[-1:], self.norm, cfg.rms_norm_eps)
        logits = self.lm_head(h)
        return (logits, x) if hidden else logits

    # ---- public API -----------------------------------------------------------------------------

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Full-sequence forward: float32 (len, vocab)."""
        ids = self._check_ids(token_ids)
        return self.forward(ids, self.new_cache(len(ids)), all_logits=True)

    def generate(self, token_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Sequence[int] | None = None, on_token: Callable[[int], object] | None = None,
                 max_context: int | None = None, sampler: Sampler | None = None) -> list[int]:
        """The new tokens (prompt excluded).  Temperature 0 is greedy; generation ends at a stop token
        (the config's EOS ids plus ``stop``; the stop token is included) or after max_new_tokens.
        ``sampler`` (a :class:`Sampler`: logit bias, penalties, logprobs) replaces temperature,
        top_k, top_p and seed."""
        ids = self._check_ids(token_ids)
        if max_new_tokens < 0:
            raise InputError("max_new_tokens", f"must be >= 0, got {max_new_tokens}")
        limit = min(max_context or self.cfg.max_position_embeddings, self.cfg.max_position_embeddings)
        if len(ids) + max_new_tokens > limit:
            raise ContextLengthError(len(ids) + max_new_tokens, limit)
        if sampler is None:
            sampler = Sampler(temperature, top_k, top_p, seed)
        stops = set(self.cfg.eos_token_ids) | set(stop or ())
        out: list[int] = []
        if max_new_tokens == 0:
            return out
        cache = self.new_cache(len(ids) + max_new_tokens)
        tok = sampler(self.forward(ids, cache)[-1])  # prefill: GEMMs over the prompt
        while True:
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if tok in stops or len(out) >= max_new_tokens:
                return out
            tok = self._decode_next(tok, cache, sampler)

    def _decode_next(self, tok: int, cache: KVCache, sampler: Sampler) -> int:
        """One decode step after ``tok`` (GEMVs): the next token.  A backend may pick it on its
        device (the CUDA decoder does for greedy steps), with the same result."""
        return sampler(self.forward(np.array([tok]), cache)[-1])
