"""GGUF importer: ``read_gguf(path) -> ImportedModel`` for llama.cpp's ``bitnet`` and ``llama`` decoders.

Reads through the ``gguf`` package's ``GGUFReader`` (the file is memory-mapped; F32/F16 tensors
come out as views into the mapping).  Tensor types and what they become:

    F32, F16        float (views, no copy)          BF16     float32 (exact)
    Q8_0            float32 (exact: fp16 d x int8 fits float32), or ``int8`` with a per-row scale
                    when every block of a row has the same d (then the int8 form is exact too)
    TQ1_0, TQ2_0    ``ternary``: int8 in {-1, 0, 1} plus one per-tensor scale g (see below)

Ternary tensors.  TQ1_0/TQ2_0 store a float16 scale d per 256-weight block.  llama.cpp's
converter writes a BitNet tensor as ``Wq * g`` and quantizes it, so every block holds d = fp16(g),
except all-zero blocks, which hold d = 0.  The importer takes g from the blocks that hold a
nonzero weight; blocks with d = 0 are zero weights whatever their codes; a negative d flips the
block's signs.  When those |d| differ, the tensor is not per-tensor ternary and ``read_gguf``
raises FormatError (or, with ``nonuniform_ternary="float"``, returns the exact dequantized float
weights for the precision plan to handle).  An optional ``blk.N.<linear>.scale`` F32 tensor (which
llama.cpp's bitnet graph multiplies into the layer's output) is multiplied into g, so a file
written with unit blocks plus an F32 scale tensor gives g exactly in float32.

Names.  llama.cpp names map to our canonical Hugging Face names::

    token_embd            model.embed_tokens.weight      output_norm  model.norm.weight
    output                lm_head.weight (absent: tied embeddings)
    blk.N.attn_norm       model.layers.N.input_layernorm.weight
    blk.N.ffn_norm        model.layers.N.post_attention_layernorm.weight
    blk.N.attn_sub_norm   model.layers.N.self_attn.attn_sub_norm.weight
    blk.N.ffn_sub_norm    model.layers.N.mlp.ffn_sub_norm.weight
    blk.N.attn_{q,k,v}    model.layers.N.self_attn.{q,k,v}_proj.weight
    blk.N.attn_output     model.layers.N.self_attn.o_proj.weight
    blk.N.ffn_{gate,up,down}  model.layers.N.mlp.{gate,up,down}_proj.weight

q/k row permutation (checked in ggml-org/llama.cpp, ``convert_hf_to_gguf.py`` /
``conversion/llama.py``, ``conversion/bitnet.py`` and ``src/llama-model.cpp``):

- ``llama``: ``LlamaModel.modify_tensors`` permutes the rows of q_proj (with n_head) and k_proj
  (with n_head_kv) by ``w.reshape(n, 2, rows // n // 2, k).swapaxes(1, 2).reshape(rows, k)``,
  because llama.cpp runs LLM_ARCH_LLAMA with LLAMA_ROPE_TYPE_NORM (rotation of adjacent pairs)
  while Hugging Face rotates the two halves of each head (``rotate_half``).  We undo it with the
  inverse, ``w.reshape(n, rows // n // 2, 2, k).swapaxes(1, 2).reshape(rows, k)``.
- ``bitnet``: ``BitnetModel`` derives from ``TextModel``, not ``LlamaModel``: no permutation, and
  ``llama_model_rope_type`` returns LLAMA_ROPE_TYPE_NEOX for LLM_ARCH_BITNET (halves, like
  Hugging Face).  Weights are read as stored.

Architecture.  ``bitnet`` has sub norms; its FFN activation is taken from
``bitnet.hidden_activation`` when present, else relu2 (BitNet b1.58 2B-4T).  Beware that
llama.cpp's own bitnet graph runs a SiLU-gated FFN for files without that key (the 1bitLLM
models are SiLU: pass ``hidden_act="silu"`` for them).  ``llama`` is SiLU without sub norms.
llama.cpp's bitnet graph has no ``output`` tensor (the head is ``token_embd``); we accept one.

Tokenizer.  The ``tokenizer.ggml.*`` vocabulary becomes a ``tokenizer.json`` (``gpt2`` byte-level
BPE and ``llama`` SentencePiece-style vocabularies; :mod:`.gguf_tokenizer`), carried in
``ImportedModel.tokenizer_json``, and ``tokenizer.chat_template`` the data-only chat template
(:mod:`.chat_template`).  A vocabulary that cannot be converted leaves the model without a
tokenizer (token ids only) and says why in ``ImportedModel.notes``.  Every other failure is a
FormatError whose message names the file and, where there is one, the tensor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.extras import require
from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo
from bitnet_edge.sdk.quant import EPS
from bitnet_edge.sdk.safetensors_io import bf16_to_f32

__all__ = [
    "read_gguf",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TYPES",
    "gguf_to_canonical",
    "canonical_to_gguf",
    "permute_rope_rows",
    "unpermute_rope_rows",
]

SUPPORTED_ARCHITECTURES = ("bitnet", "llama")
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "TQ1_0", "TQ2_0")
_TERNARY_TYPES = ("TQ1_0", "TQ2_0")
_QK_K = 256  # weights per TQ1_0/TQ2_0 block

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_INV = {v: k for k, v in _LAYER.items()}
_GLOBAL_INV = {v: k for k, v in _GLOBAL.items()}
_LINEAR_KEYS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_ACTS = {"relu2": "relu2", "relu_squared": "relu2", "relu_sqr": "relu2", "squared_relu": "relu2",
         "silu": "silu", "swish": "silu", "swiglu": "silu"}


def gguf_to_canonical(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (None when unknown)."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{int(m.group(1))}.{_LAYER[m.group(2)]}.weight"
    m = re.fullmatch(r"(\w+)\.weight", name)
    if m and m.group(1) in _GLOBAL:
        return _GLOBAL[m.group(1)] + ".weight"
    return None


def canonical_to_gguf(name: str) -> str | None:
    """The inverse of :func:`gguf_to_canonical`."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in _LAYER_INV:
        return f"blk.{int(m.group(1))}.{_LAYER_INV[m.group(2)]}.weight"
    m = re.fullmatch(r"(.+)\.weight", name)
    if m and m.group(1) in _GLOBAL_INV:
        return _GLOBAL_INV[m.group(1)] + ".weight"
    return None


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k rows (halves rotated) -> llama.cpp ``llama`` rows (adjacent pairs), as its converter does."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rope_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- reading the file

def _open(path: Path):
    gguf = require("gguf", "the GGUF importer")

    class _Reader(gguf.GGUFReader):
        """GGUFReader that checks each tensor's extent against the file before mapping it, so a
        truncated file is reported with the tensor that runs past its end."""

        def _build_tensors(self, start_offs, fields):  # noqa: ANN001 - gguf's private hook
            size = len(self.data)
            for field in fields:
                try:
                    _nl, name_data, _nd, dims, raw_dtype, offset_tensor = field.parts
                    tname = bytes(name_data).decode("utf-8", "replace")
                except (TypeError, ValueError):  # a future gguf with another layout: skip the check
                    break
                try:
                    qtype = gguf.GGMLQuantizationType(int(raw_dtype[0]))
                except ValueError:
                    raise FormatError(f"{path}: tensor {tname!r} has unknown ggml type {int(raw_dtype[0])}") from None
                block, tsize = gguf.GGML_QUANT_SIZES[qtype]
                n = int(np.prod(dims.astype(np.uint64)))
                if n % block or (len(dims) and int(dims[0]) % block):
                    raise FormatError(f"{path}: tensor {tname!r} of type {qtype.name} has shape "
                                      f"{dims.tolist()}, not whole {block}-weight blocks")
                end = int(start_offs) + int(offset_tensor[0]) + n // block * tsize
                if end > size:
                    raise FormatError(f"{path}: truncated: tensor {tname!r} needs bytes up to {end}, "
                                      f"the file has {size}")
            return super()._build_tensors(start_offs, fields)

    try:
        return _Reader(path, "r")
    except FormatError:
        raise
    except FileNotFoundError:
        raise FormatError(f"{path}: missing") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


def _f32(value) -> float:
    """A float32 metadata value as the shortest decimal that gives it back (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _meta(reader, path: Path, key: str, kind, default=None, required: bool = True):
    field = reader.get_field(key)
    if field is None:
        if required and default is None:
            raise FormatError(f"{path}: metadata key {key!r} is missing")
        return default
    try:
        value = field.contents()
        return kind(value) if kind is not list else list(value)
    except (TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: metadata key {key!r} is unreadable ({exc})") from None


def _config(reader, path: Path, arch: str, tensors: dict[str, list[int]], hidden_act: str | None) -> tuple[DecoderConfig, list[str]]:
    notes: list[str] = []
    a = arch
    hidden = _meta(reader, path, f"{a}.embedding_length", int)
    heads = _meta(reader, path, f"{a}.attention.head_count", int)
    kv_heads = _meta(reader, path, f"{a}.attention.head_count_kv", int, default=heads)
    head_dim = _meta(reader, path, f"{a}.attention.key_length", int, default=hidden // max(heads, 1))
    rope_dim = _meta(reader, path, f"{a}.rope.dimension_count", int, default=head_dim)
    if rope_dim != head_dim:
        raise FormatError(f"{path}: {a}.rope.dimension_count = {rope_dim} (partial rotary) is not supported; "
                          f"head_dim is {head_dim}")
    scaling = _meta(reader, path, f"{a}.rope.scaling.type", str, required=False)
    factor = _meta(reader, path, f"{a}.rope.scaling.factor", float, required=False)
    if scaling not in (None, "none") and not (scaling == "linear" and factor in (None, 1.0)):
        raise FormatError(f"{path}: RoPE scaling {scaling!r} (factor {factor}) is not supported")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else None
    embd = tensors.get("token_embd.weight")
    vocab = _meta(reader, path, f"{a}.vocab_size", int, required=False) or n_tokens or (
        int(embd[1]) if embd is not None and len(embd) == 2 else None)
    if vocab is None:
        raise FormatError(f"{path}: no vocabulary size ({a}.vocab_size, tokenizer.ggml.tokens or token_embd)")
    if hidden_act is None:
        raw = _meta(reader, path, f"{a}.hidden_activation", str, required=False)
        if raw is not None:
            if raw.lower() not in _ACTS:
                raise FormatError(f"{path}: {a}.hidden_activation {raw!r} is not supported (relu2 or silu)")
            hidden_act = _ACTS[raw.lower()]
        else:
            hidden_act = "relu2" if arch == "bitnet" else "silu"
            if arch == "bitnet":
                notes.append("no bitnet.hidden_activation in the file: assumed relu2 (BitNet b1.58 2B-4T); "
                             "llama.cpp itself runs such files with SiLU (1bitLLM models are SiLU)")
    eos = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        v = _meta(reader, path, key, int, required=False)
        if v is not None and v not in eos:
            eos.append(v)
    try:
        cfg = DecoderConfig(
            vocab_size=vocab, hidden_size=hidden,
            intermediate_size=_meta(reader, path, f"{a}.feed_forward_length", int),
            num_hidden_layers=_meta(reader, path, f"{a}.block_count", int),
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            max_position_embeddings=_meta(reader, path, f"{a}.context_length", int),
            rms_norm_eps=_meta(reader, path, f"{a}.attention.layer_norm_rms_epsilon", _f32),
            rope_theta=_meta(reader, path, f"{a}.rope.freq_base", _f32, default=10000.0),
            hidden_act=hidden_act, sub_norms=arch == "bitnet",
            tie_word_embeddings="output.weight" not in tensors,
            bos_token_id=_meta(reader, path, "tokenizer.ggml.bos_token_id", int, required=False),
            eos_token_ids=eos,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise FormatError(f"{path}: metadata does not describe a valid decoder: {exc}") from None
    if heads * head_dim <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise FormatError(f"{path}: {heads} attention heads cannot share {kv_heads} key/value heads")
    return cfg, notes


def _expected_shape(cfg: DecoderConfig, canonical: str) -> tuple[int, ...]:
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    tail = canonical.split(".", 3)[-1] if canonical.startswith("model.layers.") else canonical
    return {
        "model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,),
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.attn_sub_norm.weight": (h,), "mlp.ffn_sub_norm.weight": (i,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }[tail]


# ----------------------------------------------------------------------------- decoding tensors

def _ternary(path: Path, t, nonuniform: str) -> ImportedTensor:
    """TQ1_0/TQ2_0 -> (int8 codes, per-tensor g); see the module docstring."""
    gguf = require("gguf", "the GGUF importer")
    GGML_QUANT_SIZES, quants = gguf.GGML_QUANT_SIZES, gguf.quants

    _, tsize = GGML_QUANT_SIZES[t.tensor_type]
    raw = np.ascontiguousarray(t.data)
    rows = int(np.prod(raw.shape[:-1]))
    blocks = raw.reshape(-1, tsize)
    d = blocks[:, tsize - 2:].copy().view(np.float16).astype(np.float32)[:, 0]
    unit = blocks.copy()
    unit[:, tsize - 2:] = np.array([1.0], dtype=np.float16).view(np.uint8)
    vals = quants.dequantize(unit, t.tensor_type).reshape(rows, -1)
    if not np.isin(vals, (-1.0, 0.0, 1.0)).all():
        raise FormatError(f"{path}: tensor {t.name!r} ({t.tensor_type.name}) holds a code that is not -1, 0 or 1")
    if not np.isfinite(d).all():
        raise FormatError(f"{path}: tensor {t.name!r} has a NaN or infinite block scale")
    q = vals.astype(np.int8)
    qb = q.reshape(-1, _QK_K)
    qb[d == 0] = 0  # d = 0: the block's weights are zero, whatever its codes
    qb[d < 0] *= -1  # a negative d flips the block
    live = qb.any(axis=1)
    mags = np.unique(np.abs(d[live]))
    if mags.size > 1:
        if nonuniform == "float":
            return ImportedTensor("float", (q.astype(np.float32) * np.repeat(np.abs(d), _QK_K).reshape(q.shape)))
        raise FormatError(f"{path}: tensor {t.name!r} ({t.tensor_type.name}) is not per-tensor ternary: its "
                          f"256-weight blocks have {mags.size} different scales ({mags.min():g} .. {mags.max():g})")
    g = float(mags[0]) if mags.size else float(EPS)
    return ImportedTensor("ternary", q, scale=g)


def _q8_0(t, linear: bool) -> ImportedTensor:
    raw = np.ascontiguousarray(t.data)
    rows = int(np.prod(raw.shape[:-1]))
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0].reshape(rows, -1)
    qs = blocks[:, 2:].copy().view(np.int8).reshape(rows, -1)
    if linear and raw.ndim == 2 and (d == d[:, :1]).all() and qs.min() > -128 and (d[:, 0] > 0).all():
        return ImportedTensor("int8", qs, scales=np.ascontiguousarray(d[:, 0]))
    return ImportedTensor("float", (qs.reshape(-1, 32).astype(np.float32) * d.reshape(-1, 1)).reshape(qs.shape))


def _decode(path: Path, t, linear: bool, nonuniform: str) -> ImportedTensor:
    kind = t.tensor_type.name
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    if kind == "F32":
        return ImportedTensor("float", np.asarray(t.data).reshape(shape))
    if kind == "F16":
        return ImportedTensor("float", np.asarray(t.data).reshape(shape))
    if kind == "BF16":
        return ImportedTensor("float", bf16_to_f32(np.asarray(t.data).view(np.uint16)).reshape(shape))
    if kind == "Q8_0":
        out = _q8_0(t, linear)
        out.data = out.data.reshape(shape)
        return out
    if kind in _TERNARY_TYPES:
        if not linear:
            quants = require("gguf", "the GGUF importer").quants
            return ImportedTensor("float", quants.dequantize(np.ascontiguousarray(t.data), t.tensor_type).reshape(shape))
        out = _ternary(path, t, nonuniform)
        out.data = out.data.reshape(shape)
        return out
    raise FormatError(f"{path}: tensor {t.name!r} has type {kind}; supported: {', '.join(SUPPORTED_TYPES)}")


def _scale_value(path: Path, t) -> np.float32:
    if t.tensor_type.name != "F32" or int(np.prod(t.shape)) != 1:
        raise FormatError(f"{path}: scale tensor {t.name!r} must be one F32 value, got "
                          f"{t.tensor_type.name} {t.shape.tolist()}")
    s = np.float32(np.asarray(t.data).reshape(-1)[0])
    if not np.isfinite(s) or s == 0:
        raise FormatError(f"{path}: scale tensor {t.name!r} is {s}")
    return s


def read_gguf(path: str | os.PathLike, *, hidden_act: Literal["relu2", "silu"] | None = None,
              nonuniform_ternary: Literal["error", "float"] = "error") -> ImportedModel:
    """Import a llama.cpp ``bitnet`` or ``llama`` GGUF as canonical HF-layout tensors.

    ``hidden_act`` overrides the FFN activation (see the module docstring for the default);
    ``nonuniform_ternary="float"`` turns a TQ tensor whose block scales differ into exact float
    weights instead of raising FormatError.
    """
    path = Path(path)
    if nonuniform_ternary not in ("error", "float"):
        raise ValueError(f"nonuniform_ternary must be 'error' or 'float', got {nonuniform_ternary!r}")
    if not path.is_file():
        raise FormatError(f"{path}: missing (expected a GGUF file)")
    reader = _open(path)
    arch = _meta(reader, path, "general.architecture", str)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise FormatError(f"{path}: architecture {arch!r} is not supported (supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    by_name = {t.name: t for t in reader.tensors}
    cfg, notes = _config(reader, path, arch, {n: t.shape.tolist() for n, t in by_name.items()}, hidden_act)

    scales: dict[str, np.float32] = {}
    canon: dict[str, str] = {}
    for name, t in by_name.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.scale", name)
        if m and m.group(2) in _LINEAR_KEYS:
            scales[f"blk.{m.group(1)}.{m.group(2)}.weight"] = _scale_value(path, t)
            continue
        c = gguf_to_canonical(name)
        if c is None or (c.startswith("model.layers.") and int(c.split(".")[2]) >= cfg.num_hidden_layers):
            raise FormatError(f"{path}: tensor {name!r} is not part of a {arch} decoder this importer reads")
        canon[name] = c
    expected = decoder_tensor_names(cfg)
    have = set(canon.values())
    for c in expected:
        if c not in have:
            raise FormatError(f"{path}: tensor {canonical_to_gguf(c)!r} ({c}) is missing")
    extra = sorted(have - set(expected))
    if extra:  # e.g. sub norms in a llama file
        raise FormatError(f"{path}: tensor {canonical_to_gguf(extra[0])!r} is not part of a {arch} decoder")
    for wname in scales:
        if wname not in canon:
            raise FormatError(f"{path}: scale tensor for {wname!r}, which is not in the file")

    tensors: dict[str, ImportedTensor] = {}
    types: dict[str, int] = {}
    for name, c in canon.items():
        t = by_name[name]
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        want = _expected_shape(cfg, c)
        if shape != want:
            raise FormatError(f"{path}: tensor {name!r} ({c}) has shape {list(shape)}, the metadata needs {list(want)}")
        linear = c.endswith("_proj.weight") or c == "lm_head.weight"
        try:
            it = _decode(path, t, linear, nonuniform_ternary)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{path}: tensor {name!r} cannot be decoded ({exc})") from None
        if it.kind == "float" and not np.isfinite(it.data).all():
            raise FormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
        if name in scales:
            s = scales[name]
            if it.kind == "ternary":
                prod = np.float32(it.scale) * s
                if prod < 0:
                    it.data = -it.data
                it.scale = float(abs(prod))
            elif it.kind == "int8":
                if s < 0:
                    it.data = -it.data  # int8 weights are in [-127, 127]: negation is exact
                it.scales = (it.scales * abs(s)).astype(np.float32)
            else:
                it.data = (it.data.astype(np.float32) * s).astype(np.float32)
        if arch == "llama" and c.endswith(("q_proj.weight", "k_proj.weight")):
            n = cfg.num_attention_heads if "q_proj" in c else cfg.num_key_value_heads
            it.data = np.ascontiguousarray(unpermute_rope_rows(it.data, n))
            if it.scales is not None:
                it.scales = np.ascontiguousarray(unpermute_rope_rows(it.scales, n))
        tensors[c] = it
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    tok_json, chat = _tokenizer(reader, path, cfg, notes)
    details = {"architecture": arch, "tensor_types": ", ".join(f"{k}: {v}" for k, v in sorted(types.items()))}
    for key in ("general.name", "general.file_type"):
        v = _meta(reader, path, key, str, required=False)
        if v is not None:
            details[key] = v
    name = details.get("general.name") or path.stem
    if tok_json is not None:
        details["tokenizer"] = f"{_meta(reader, path, 'tokenizer.ggml.model', str)} " \
                               f"({_meta(reader, path, 'tokenizer.ggml.pre', str, default='-')})"
    return ImportedModel(name=name, config=cfg, tensors=tensors,
                         source=SourceInfo(kind="gguf", path=str(path), details=details), notes=notes,
                         tokenizer_json=tok_json, chat_template=chat)


MAX_VOCAB = 1 << 20  # tokens; llama.cpp's largest vocabularies are ~256k


def _tokenizer(reader, path: Path, cfg: DecoderConfig, notes: list[str]):
    """(tokenizer.json text or None, ChatTemplate or None); what is not converted goes to ``notes``."""
    from bitnet_edge.sdk.convert.gguf_tokenizer import GgufVocab, VocabError, build_tokenizer_json

    if _meta(reader, path, "bitnet_edge.placeholder_vocab", bool, required=False):
        notes.append("the file's vocabulary is a placeholder (written without a tokenizer): prompts must be "
                     "token ids")
        return None, None
    model = _meta(reader, path, "tokenizer.ggml.model", str, required=False)
    if model is None:
        notes.append("no tokenizer in the file (tokenizer.ggml.model is missing): prompts must be token ids")
        return None, None
    field = reader.get_field("tokenizer.ggml.tokens")
    if field is None:
        notes.append("no tokenizer in the file (tokenizer.ggml.tokens is missing): prompts must be token ids")
        return None, None
    if len(field.data) > min(MAX_VOCAB, cfg.vocab_size):
        notes.append(f"tokenizer not converted: {len(field.data)} tokens for a model of {cfg.vocab_size}")
        return None, None

    def opt(key: str, kind):
        return _meta(reader, path, f"tokenizer.ggml.{key}", kind, required=False)

    v = GgufVocab(model=model, tokens=_meta(reader, path, "tokenizer.ggml.tokens", list),
                  pre=opt("pre", str), merges=opt("merges", list) or [], scores=opt("scores", list),
                  token_types=opt("token_type", list), bos_id=opt("bos_token_id", int),
                  eos_id=opt("eos_token_id", int), unk_id=opt("unknown_token_id", int),
                  add_bos=opt("add_bos_token", bool), add_eos=opt("add_eos_token", bool),
                  add_space_prefix=opt("add_space_prefix", bool))
    try:
        text = build_tokenizer_json(v)
    except VocabError as exc:
        notes.append(f"tokenizer not converted: {exc}; prompts must be token ids")
        return None, None
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        notes.append(f"tokenizer not converted: the tokenizers library refused it ({exc}); prompts must be token ids")
        return None, None
    source = _meta(reader, path, "tokenizer.chat_template", str, required=False)
    if source is None:
        return text, None
    from bitnet_edge.sdk.convert.chat_template import derive_chat_template

    def token_text(tid):
        return v.tokens[tid] if tid is not None and 0 <= tid < len(v.tokens) else ""

    chat, why_not = derive_chat_template(source, token_text(v.bos_id), token_text(v.eos_id))
    if why_not:
        notes.append(f"chat template not carried: {why_not}")
    return text, chat
