"""Tiny Hugging Face checkpoints built with transformers itself (the reference implementation)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet layers use torch.compile

import numpy as np  # noqa: E402

torch = __import__("pytest").importorskip("torch")
transformers = __import__("pytest").importorskip("transformers")

BITNET_ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
BITNET_PACKED = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}


def tiny_bitnet_config(**kw):
    base = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return transformers.BitNetConfig(**base)


def save_bitnet_float(path: Path, seed: int = 0, **kw) -> Path:
    """Float (fp32 master weights) checkpoint with the online ternary quantization config."""
    torch.manual_seed(seed)
    model = transformers.BitNetForCausalLM(tiny_bitnet_config(**kw))
    model.save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = BITNET_ONLINE
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def save_bitnet_packed(float_dir: Path, path: Path) -> Path:
    """The packed layout of microsoft/bitnet-b1.58-2B-4T made from a float checkpoint:
    uint8 weights packed by transformers' own pack_weights, weight_scale = 1 / mean|W| (bf16)."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.bitnet import pack_weights

    shutil.copytree(float_dir, path)
    sd = load_file(str(path / "model.safetensors"))
    out = {}
    for name, w in sd.items():
        if name.endswith("_proj.weight"):
            w = w.float()
            s = 1.0 / w.abs().mean().clamp(min=1e-5)
            q = (w * s).round().clamp(-1, 1)
            out[name] = pack_weights(q.clone())
            # stored inverted, 1 / mean|W|, in bf16 as the 2B-4T checkpoint: BitLinear divides by it
            out[name[: -len("weight")] + "weight_scale"] = s.reshape(1).to(torch.bfloat16)
        else:
            out[name] = w
    (path / "model.safetensors").unlink()
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = BITNET_PACKED
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def load_reference(path: Path):
    model = transformers.BitNetForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def reference_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()
