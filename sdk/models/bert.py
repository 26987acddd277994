"""A BERT/MiniLM-layout sentence encoder: word + position + token-type embeddings, post-LayerNorm
blocks with GELU, attention mask, mean pooling and L2 normalisation (sentence-transformers style)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.manifest import EncoderConfig
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.models.linear import Linear

__all__ = ["BertModel", "bert_linear_names"]

_F = np.float32


def bert_linear_names(num_layers: int) -> list[str]:
    names = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        names += [p + f"attention.self.{x}.weight" for x in ("query", "key", "value")]
        names += [p + "attention.output.dense.weight", p + "intermediate.dense.weight", p + "output.dense.weight"]
    return names


class _Block:
    def __init__(self, md: ModelDir, i: int):
        p = f"encoder.layer.{i}."
        lin = lambda n: Linear(md, p + n + ".weight", p + n + ".bias")  # noqa: E731
        f32 = lambda n: np.asarray(md.array(p + n), dtype=_F)  # noqa: E731
        self.q, self.k, self.v = lin("attention.self.query"), lin("attention.self.key"), lin("attention.self.value")
        self.ao = lin("attention.output.dense")
        self.ln1 = (f32("attention.output.LayerNorm.weight"), f32("attention.output.LayerNorm.bias"))
        self.inter, self.out = lin("intermediate.dense"), lin("output.dense")
        self.ln2 = (f32("output.LayerNorm.weight"), f32("output.LayerNorm.bias"))


class BertModel:
    architecture = "bert"

    def __init__(self, md: ModelDir, tokenizer=None):
        cfg = md.manifest.config
        assert isinstance(cfg, EncoderConfig)
        self.cfg, self.manifest, self.tokenizer = cfg, md.manifest, tokenizer
        f32 = lambda n: np.asarray(md.array(n), dtype=_F)  # noqa: E731
        self.word = md.array("embeddings.word_embeddings.weight")
        self.pos = f32("embeddings.position_embeddings.weight")
        self.typ = f32("embeddings.token_type_embeddings.weight")
        self.ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self.blocks = [_Block(md, i) for i in range(cfg.num_hidden_layers)]
        self.act = {"gelu": ops.gelu, "gelu_new": ops.gelu_tanh, "relu": lambda x: np.maximum(x, _F(0))}[cfg.hidden_act]

    def _batch(self, inputs) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(inputs, str) or (len(inputs) and isinstance(inputs[0], str)):
            if self.tokenizer is None:
                raise InputError("texts", "this model has no tokenizer: pass token id lists")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            seqs = [e.ids for e in self.tokenizer.encode_batch(texts)]
        else:
            seqs = [list(map(int, s)) for s in inputs]
        if not seqs or any(len(s) == 0 for s in seqs):
            raise InputError("inputs", "need at least one non-empty sequence")
        longest = max(len(s) for s in seqs)
        if longest > self.cfg.max_position_embeddings:
            raise InputError("inputs", f"a sequence of {longest} tokens exceeds {self.cfg.max_position_embeddings}")
        ids = np.zeros((len(seqs), longest), np.int64)
        mask = np.zeros((len(seqs), longest), bool)
        for r, s in enumerate(seqs):
            if min(s) < 0 or max(s) >= self.cfg.vocab_size:
                raise InputError("inputs", f"token ids must be in [0, {self.cfg.vocab_size})")
            ids[r, : len(s)], mask[r, : len(s)] = s, True
        return ids, mask

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask (b, t) -> last hidden states (b, t, hidden) float32."""
        cfg = self.cfg
        b, t = ids.shape
        x = np.asarray(self.word[ids], dtype=_F) + self.pos[None, :t] + self.typ[0][None, None]
        x = ops.layer_norm(x, *self.ln, cfg.layer_norm_eps).reshape(b * t, -1)
        heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        bias = np.where(mask, _F(0), np.finfo(_F).min)[:, None, None, :]  # (b, 1, 1, t)
        for blk in self.blocks:
            split = lambda y: y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
            q, k, v = split(blk.q(x)), split(blk.k(x)), split(blk.v(x))
            p = ops.softmax((q @ k.transpose(0, 1, 3, 2)) * _F(hd ** -0.5) + bias)
            ctx = (p @ v).transpose(0, 2, 1, 3).reshape(b * t, -1)
            x = ops.layer_norm(blk.ao(ctx) + x, *blk.ln1, cfg.layer_norm_eps)
            x = ops.layer_norm(blk.out(self.act(blk.inter(x))) + x, *blk.ln2, cfg.layer_norm_eps)
        return x.reshape(b, t, -1)

    def embed(self, inputs: str | Sequence[str] | Sequence[Sequence[int]]) -> np.ndarray:
        """Texts (needs the tokenizer) or token id lists -> float32 (n, hidden)."""
        ids, mask = self._batch(inputs)
        with ops.single_threaded_blas():  # see ops.single_threaded_blas
            h = self.hidden_states(ids, mask)
        if self.cfg.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = mask[..., None].astype(_F)
            pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), _F(1e-9))
        if self.cfg.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), _F(1e-12))
        return pooled.astype(_F)
