"""Hugging Face directory importer: config.json + *.safetensors (+ tokenizer.json).

- ``model_type: bitnet`` (transformers' BitNetForCausalLM): relu^2, sub norms.  Weights are
  either float (bf16/fp16/fp32 master weights, ternarized by the precision plan) or the packed
  layout of microsoft/bitnet-b1.58-2B-4T: uint8 ``weight`` of shape (out/4, in) holding 4 codes
  (w+1) per byte along the output axis (byte row r, bits 2i: output row i*out/4 + r) and a
  ``weight_scale`` stored inverted (1 / mean|W|).
- ``model_type: llama``: LLaMA-layout decoders with float weights that the plan ternarizes on
  load (the 1bitLLM style): silu, no sub norms.
- ``model_type: bert``: BERT/MiniLM encoders (a ``bert.`` prefix is accepted).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bitnet_edge.sdk.convert.chat_template import read_hf_chat_template
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import DecoderConfig, EncoderConfig, SourceInfo
from bitnet_edge.sdk.safetensors_io import SafetensorsFile

__all__ = ["read_hf", "unpack_hf_packed"]


def unpack_hf_packed(packed: np.ndarray, out_features: int) -> np.ndarray:
    """transformers' BitNet packing (uint8 (ceil(out/4), in)) -> int8 (out, in) in {-1,0,1}."""
    r = packed.shape[0]
    codes = np.concatenate([(packed >> (2 * i)) & 3 for i in range(4)], axis=0)[:out_features]
    if (codes == 3).any():
        raise FormatError("packed BitNet weight holds code 3, which is not a ternary value")
    if out_features > 4 * r:
        raise FormatError(f"packed weight of {r} rows cannot hold {out_features} outputs")
    return codes.astype(np.int8) - 1


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FormatError(f"{path / 'config.json'}: missing (not a Hugging Face model directory?)") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path / 'config.json'}: not JSON ({exc})") from None


def _get(cfg: dict, key: str, path: Path, default=None):
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is not None:
        return default
    raise FormatError(f"{path / 'config.json'}: missing {key!r}")


def _decoder_config(c: dict, path: Path, kind: str) -> DecoderConfig:
    heads = _get(c, "num_attention_heads", path)
    hidden = _get(c, "hidden_size", path)
    rope = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    eos = c.get("eos_token_id")
    act = c.get("hidden_act", "relu2" if kind == "bitnet" else "silu")
    if act not in ("relu2", "silu"):
        raise FormatError(f"{path / 'config.json'}: hidden_act {act!r} is not supported (relu2 or silu)")
    return DecoderConfig(
        vocab_size=_get(c, "vocab_size", path), hidden_size=hidden,
        intermediate_size=_get(c, "intermediate_size", path),
        num_hidden_layers=_get(c, "num_hidden_layers", path), num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or hidden // heads,
        max_position_embeddings=_get(c, "max_position_embeddings", path, 2048),
        rms_norm_eps=_get(c, "rms_norm_eps", path, 1e-6), rope_theta=float(rope), hidden_act=act,
        sub_norms=kind == "bitnet", tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        bos_token_id=c.get("bos_token_id"),
        eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
    )


def _encoder_config(c: dict, path: Path) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=_get(c, "vocab_size", path), hidden_size=_get(c, "hidden_size", path),
        intermediate_size=_get(c, "intermediate_size", path),
        num_hidden_layers=_get(c, "num_hidden_layers", path),
        num_attention_heads=_get(c, "num_attention_heads", path),
        max_position_embeddings=_get(c, "max_position_embeddings", path),
        type_vocab_size=_get(c, "type_vocab_size", path, 2), layer_norm_eps=_get(c, "layer_norm_eps", path, 1e-12),
        hidden_act=_get(c, "hidden_act", path, "gelu"),
    )


def _open_weights(path: Path) -> dict[str, SafetensorsFile]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FormatError(f"{path}: no *.safetensors files")
    where: dict[str, SafetensorsFile] = {}
    for f in files:
        st = SafetensorsFile(f)
        for k in st.keys():
            where[k] = st
    return where


def _bert_expected(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
              "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
              "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for x in ("query", "key", "value"):
            shapes[p + f"attention.self.{x}.weight"], shapes[p + f"attention.self.{x}.bias"] = (h, h), (h,)
        shapes[p + "attention.output.dense.weight"], shapes[p + "attention.output.dense.bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (i, h), (i,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, i), (h,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + ln + ".weight"], shapes[p + ln + ".bias"] = (h,), (h,)
    return shapes


def _decoder_expected(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
           "self_attn.attn_sub_norm.weight": (q,), "mlp.ffn_sub_norm.weight": (i,),
           "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
           "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
           "mlp.down_proj.weight": (h, i)}
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,),
              "lm_head.weight": (cfg.vocab_size, h)}
    for n in range(cfg.num_hidden_layers):
        shapes.update({f"model.layers.{n}.{k}": v for k, v in per.items()})
    return {k: shapes[k] for k in decoder_tensor_names(cfg)}


def read_hf(path: str | Path) -> ImportedModel:
    path = Path(path)
    c = _config(path)
    kind = c.get("model_type")
    if kind in ("bitnet", "llama"):
        cfg = _decoder_config(c, path, kind)
        expected, prefix = _decoder_expected(cfg), ""
    elif kind == "bert":
        cfg = _encoder_config(c, path)
        expected, prefix = _bert_expected(cfg), "bert."
    else:
        raise FormatError(f"{path / 'config.json'}: unknown architecture model_type={kind!r} "
                          "(supported: bitnet, llama, bert)")
    where = _open_weights(path)
    tensors: dict[str, ImportedTensor] = {}
    packed_layers = 0
    for name, shape in expected.items():
        src = name if name in where else (prefix + name if prefix + name in where else None)
        if src is None:
            raise FormatError(f"{path}: tensor {name!r} is missing from the safetensors files")
        st = where[src]
        scale_name = src[: -len("weight")] + "weight_scale"
        if st.dtype_name(src) == "U8" and scale_name in where:
            packed = st.get(src)
            if packed.ndim != 2 or packed.shape[1] != shape[1] or 4 * packed.shape[0] < shape[0]:
                raise FormatError(f"{st.path}: packed tensor {src!r} has shape {list(packed.shape)}; "
                                  f"expected ({-(-shape[0] // 4)}, {shape[1]}) for {list(shape)}")
            ws = where[scale_name].get_f32(scale_name).reshape(-1)
            if ws.size != 1 or not np.isfinite(ws[0]) or ws[0] <= 0:
                raise FormatError(f"{st.path}: {scale_name!r} must be one positive scale, got {ws[:4]}")
            tensors[name] = ImportedTensor("ternary", unpack_hf_packed(packed, shape[0]),
                                           scale=float(np.float32(1.0) / ws[0]))
            packed_layers += 1
            continue
        if st.shape(src) != tuple(shape):
            raise FormatError(f"{st.path}: tensor {src!r} has shape {list(st.shape(src))}, expected {list(shape)}")
        try:
            data = st.get_f32(src)
        except FormatError:
            raise FormatError(f"{st.path}: tensor {src!r} has dtype {st.dtype_name(src)}; expected a float tensor") from None
        if name.endswith("embed_tokens.weight") and st.dtype_name(src) in ("BF16", "F16"):
            data = data.astype(np.float16)
        tensors[name] = ImportedTensor("float", data)
    tok = path / "tokenizer.json"
    details = {"model_type": kind, "packed_ternary_layers": str(packed_layers)}
    chat, why_not = read_hf_chat_template(path) if kind != "bert" else (None, "")
    return ImportedModel(name=c.get("_name_or_path") or path.name, config=cfg, tensors=tensors,
                         source=SourceInfo(kind="hf", path=str(path), details=details),
                         tokenizer_file=str(tok) if tok.is_file() else None, chat_template=chat,
                         notes=[why_not] if why_not else [])
