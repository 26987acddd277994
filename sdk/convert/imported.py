"""What every importer returns: a config and named tensors in our canonical names.

Canonical tensor names follow Hugging Face transformers (``model.layers.{i}.self_attn.q_proj.weight``
for decoders, ``encoder.layer.{i}.attention.self.query.weight`` for BERT, ``layers.{i}.weight`` for
mlp).  A linear weight is either float (to be quantized by the precision plan) or already ternary
(int8 in {-1,0,1} with its absmean scale g, from a packed checkpoint or a TQ1_0/TQ2_0 GGUF).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bitnet_edge.sdk.chat import ChatTemplate
from bitnet_edge.sdk.manifest import (DecoderConfig, EncoderConfig, GraphConfig, MlpConfig, SourceInfo,
                                     default_model_name)

__all__ = ["ImportedTensor", "ImportedModel", "decoder_linear_names", "decoder_tensor_names"]


@dataclass
class ImportedTensor:
    kind: str  # "float" | "ternary" | "int8"
    data: np.ndarray  # float32/float16 for float; int8 for ternary (values -1,0,1) and int8
    scale: float | None = None  # ternary: g;
    scales: np.ndarray | None = None  # int8: per-row float32 scales


@dataclass
class ImportedModel:
    name: str
    config: DecoderConfig | EncoderConfig | MlpConfig | GraphConfig
    tensors: dict[str, ImportedTensor]
    source: SourceInfo
    tokenizer_file: str | None = None
    tokenizer_json: str | None = None  # a tokenizer.json built in memory (GGUF vocabularies), else None
    chat_template: ChatTemplate | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        # the source's own name (an HF id with a '/', a GGUF general.name with spaces, a file stem)
        # made into a valid model name; ``convert --name`` overrides it
        self.name = default_model_name(self.name)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_file is not None or self.tokenizer_json is not None

    def load_tokenizer(self):
        """The model's :class:`tokenizers.Tokenizer` (FormatError ``bad-tokenizer`` when it does not load)."""
        from bitnet_edge.sdk.tokenizer import load_tokenizer, tokenizer_from_json

        if self.tokenizer_json is not None:
            return tokenizer_from_json(self.tokenizer_json, f"{self.source.path} (tokenizer.ggml.*)")
        if self.tokenizer_file is None:
            return None
        return load_tokenizer(self.tokenizer_file)


def decoder_linear_names(num_layers: int) -> list[str]:
    names = []
    for i in range(num_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    return names


def decoder_tensor_names(cfg: DecoderConfig) -> list[str]:
    """Every tensor a decoder needs (lm_head.weight only when embeddings are untied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        if cfg.sub_norms:
            names += [p + "self_attn.attn_sub_norm.weight", p + "mlp.ffn_sub_norm.weight"]
    names += decoder_linear_names(cfg.num_hidden_layers)
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names
