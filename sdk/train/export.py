"""Write a trained model as a Hugging Face BitNet checkpoint (``bitnet-edge convert`` reads it as any other).

- ternary (QAT) model: the layout of microsoft/bitnet-b1.58-2B-4T - every projection as uint8
  codes ``w + 1``, four per byte along the output axis (byte row r, bits 2i: output row i*R + r,
  R = ceil(out/4)), and ``weight_scale`` ~ 1/g (:func:`lm.inverse_scale`: 1/weight_scale is the
  scale the trainer used); the tied embedding as the int8 values it was trained with (dequantized to float32);
  ``quantization_config`` says offline BitNet quantization.
- float model: plain float32 weights, no quantization config.

Both carry tokenizer.json and tokenizer_config.json (with the Jinja chat template).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bitnet_edge.sdk import quant
from bitnet_edge.sdk.safetensors_io import write_safetensors
from bitnet_edge.sdk.train import lm
from bitnet_edge.sdk.train.tokenizer import BOS, END, EOS, write_tokenizer_config

__all__ = ["pack_hf", "export_hf", "HF_WEIGHTS"]

HF_WEIGHTS = "model.safetensors"
BITNET_OFFLINE = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}


def pack_hf(q: np.ndarray) -> np.ndarray:
    """int8 (out, in) in {-1,0,1} -> uint8 (ceil(out/4), in), transformers' BitNet packing."""
    out_f, in_f = q.shape
    rows = -(-out_f // 4)
    codes = np.ones((4 * rows, in_f), np.uint8)  # padding rows: code 1, weight 0
    codes[:out_f] = (q + 1).astype(np.uint8)
    packed = np.zeros((rows, in_f), np.uint8)
    for i in range(4):
        packed |= codes[i * rows:(i + 1) * rows] << np.uint8(2 * i)
    return packed


def _config(cfg: lm.LmConfig, tok, ternary: bool) -> dict:
    c = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.num_kv_heads, "max_position_embeddings": cfg.max_position,
         "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "hidden_act": "relu2",
         "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
         "initializer_range": 0.02, "bos_token_id": tok.token_to_id(BOS),
         "eos_token_id": [tok.token_to_id(EOS), tok.token_to_id(END)], "pad_token_id": tok.token_to_id(EOS),
         "torch_dtype": "float32"}
    if ternary:
        c["quantization_config"] = BITNET_OFFLINE
    return c


def export_hf(path: str | Path, params: dict[str, np.ndarray], cfg: lm.LmConfig, tokenizer, *, ternary: bool,
              name: str) -> Path:
    """Write the checkpoint into ``path`` (replaced)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    tensors: dict[str, np.ndarray] = {}
    for k, w in params.items():
        w = np.asarray(w, np.float32)
        if ternary and k == lm.EMBED:
            q, ws = quant.absmax_int8_weights(w)
            tensors[k] = q.astype(np.float32) * ws[:, None]
        elif ternary and w.ndim == 2:
            q, g = quant.absmean_ternary(w)
            tensors[k] = pack_hf(q)
            tensors[k[: -len("weight")] + "weight_scale"] = np.array([lm.inverse_scale(g)], np.float32)
        else:
            tensors[k] = w
    write_safetensors(path / HF_WEIGHTS, tensors, metadata={"format": "pt"})
    cfg_json = _config(cfg, tokenizer, ternary)
    cfg_json["_name_or_path"] = name
    (path / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg_json["bos_token_id"], "eos_token_id": cfg_json["eos_token_id"],
         "pad_token_id": cfg_json["pad_token_id"], "do_sample": False}, indent=2) + "\n")
    tokenizer.save(str(path / "tokenizer.json"))
    write_tokenizer_config(path, cfg.max_position)
    return path
