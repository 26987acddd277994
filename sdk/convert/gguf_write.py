"""GGUF writer: a decoder (ImportedModel or converted model directory) -> a llama.cpp-loadable GGUF.

    write_gguf(imported_or_model_dir, path, ternary_type="TQ2_0" | "TQ1_0", head_type="Q8_0" | "F16")

Written in llama.cpp's own conventions (those of ``convert_hf_to_gguf.py``), so that llama.cpp
runs the file and :func:`bitnet_edge.sdk.convert.gguf.read_gguf` inverts it exactly:

- architecture ``bitnet`` when the model has sub norms, else ``llama``; the ``llama`` q/k rows
  are permuted for llama.cpp's adjacent-pair RoPE (``permute_rope_rows``), ``bitnet`` rows are not;
- linear weights as TQ2_0/TQ1_0 of ``Wq * g`` (float weights are ternarized first with our absmean
  rule), so every block holds d = fp16(g) (all-zero blocks hold 0).  With ``scale_tensors=True``
  (``bitnet`` only) the blocks hold d = 1 and g goes, exact, into an F32 ``blk.N.<name>.scale``
  tensor, which llama.cpp's bitnet graph multiplies into the layer output;
- int8 (W8A8) linear weights as Q8_0 of ``Wq * wscale``; norms as F32;
- ``token_embd`` (and an untied ``output``) as ``head_type``.  llama.cpp's bitnet graph has no
  ``output`` tensor (its head is ``token_embd``), so a ``bitnet`` model must tie its embeddings;
- ``{arch}.hidden_activation`` records relu2/silu.  The llama.cpp in llama-cpp-python 0.3.36 runs
  every bitnet file with a SiLU-gated FFN whatever this key says: speed is unaffected, logits of a
  relu2 model differ.

The vocabulary is the model's own tokenizer when it has one llama.cpp can run (byte-level BPE
with one of llama.cpp's pre-tokenizers, or SentencePiece-style BPE:
:func:`~bitnet_edge.sdk.convert.gguf_tokenizer.vocab_from_tokenizer_json`), so llama.cpp and
:func:`~bitnet_edge.sdk.convert.gguf.read_gguf` tokenize text as our runtime does.  Otherwise it is
a minimal byte-level ``gpt2`` one that llama.cpp accepts: the 256 byte symbols, then placeholder
tokens up to ``vocab_size``, one placeholder merge; bos/eos marked as control tokens, and
``bitnet_edge.placeholder_vocab = true`` so that the importer does not take it for a tokenizer.
It is enough to load the model and feed it token ids, not to tokenize text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bitnet_edge.sdk import packing, quant
from bitnet_edge.sdk.convert.gguf import canonical_to_gguf, permute_rope_rows
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_tensor_names
from bitnet_edge.sdk.errors import FormatError, InputError
from bitnet_edge.sdk.extras import require
from bitnet_edge.sdk.manifest import DecoderConfig, SourceInfo

__all__ = ["write_gguf", "imported_from_model_dir", "byte_level_vocab"]

_TERNARY = ("TQ2_0", "TQ1_0")
PLACEHOLDER_KEY = "bitnet_edge.placeholder_vocab"  # llama.cpp ignores keys it does not know
_HEAD = ("Q8_0", "F16")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte value (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def byte_level_vocab(cfg: DecoderConfig) -> tuple[list[str], list[int]]:
    """(tokens, token types) of the placeholder vocabulary described in the module docstring."""
    gguf = require("gguf", "writing GGUF")

    tokens = _bytes_to_unicode()[: cfg.vocab_size]
    tokens += [f"<|tok_{i}|>" for i in range(len(tokens), cfg.vocab_size)]
    types = [int(gguf.TokenType.NORMAL)] * cfg.vocab_size
    for tid, text in ((cfg.bos_token_id, "<|bos|>"), *((e, f"<|eos_{e}|>") for e in cfg.eos_token_ids)):
        if tid is not None and 0 <= tid < cfg.vocab_size:
            tokens[tid], types[tid] = text, int(gguf.TokenType.CONTROL)
    return tokens, types


def imported_from_model_dir(path: str | os.PathLike) -> ImportedModel:
    """A converted model directory back as an ImportedModel (ternary2 unpacked to int8 codes)."""
    from bitnet_edge.sdk.modeldir import open_model_dir

    md = open_model_dir(path)
    cfg = md.manifest.config
    if not isinstance(cfg, DecoderConfig):
        raise InputError("imported_or_model_dir", f"{path}: a {cfg.architecture} model, not a decoder")
    tensors: dict[str, ImportedTensor] = {}
    for name in decoder_tensor_names(cfg):
        try:
            entry = md.manifest.tensor(name)
        except KeyError:
            raise FormatError(f"{Path(path) / 'manifest.json'}: tensor {name!r} is missing") from None
        arr = md.array(name)
        if entry.format in ("ternary2", "ternary_b3"):
            unpack = packing.unpack_ternary_2bit if entry.format == "ternary2" else packing.unpack_ternary_b3
            tensors[name] = ImportedTensor("ternary", unpack(arr, entry.shape[-1]), scale=entry.scale)
        elif entry.format == "int8":
            if entry.scale_tensor is None:
                raise FormatError(f"{Path(path) / 'manifest.json'}: int8 tensor {name!r} has no scale_tensor")
            tensors[name] = ImportedTensor("int8", arr, scales=md.array(entry.scale_tensor))
        else:
            tensors[name] = ImportedTensor("float", arr)
    tok = str(Path(path) / md.manifest.tokenizer) if md.manifest.tokenizer else None
    return ImportedModel(name=md.manifest.name, config=cfg, tensors=tensors,
                         source=SourceInfo(kind=md.manifest.source.kind, path=str(path)), tokenizer_file=tok)


def _add_model_vocab(w, im: ImportedModel, cfg: DecoderConfig) -> bool:
    """Write the model's own tokenizer as ``tokenizer.ggml.*``; False when it has none llama.cpp runs."""
    from bitnet_edge.sdk.convert.gguf_tokenizer import vocab_from_tokenizer_json

    if im.tokenizer_json is not None:
        text = im.tokenizer_json
    elif im.tokenizer_file is not None:
        text = Path(im.tokenizer_file).read_text(encoding="utf-8")
    else:
        return False
    v, _why = vocab_from_tokenizer_json(text, cfg.vocab_size, cfg.bos_token_id,
                                        cfg.eos_token_ids[0] if cfg.eos_token_ids else None)
    if v is None:
        return False
    w.add_tokenizer_model(v.model)
    if v.pre is not None:
        w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.token_types)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    if v.merges:
        w.add_token_merges(v.merges)
    for tid, add in ((v.bos_id, w.add_bos_token_id), (v.eos_id, w.add_eos_token_id), (v.unk_id, w.add_unk_token_id)):
        if tid is not None:
            add(tid)
    w.add_add_bos_token(bool(v.add_bos))
    w.add_add_eos_token(bool(v.add_eos))
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    return True


def _dense(t: ImportedTensor) -> np.ndarray:
    """float32 values of any ImportedTensor."""
    if t.kind == "ternary":
        return t.data.astype(np.float32) * np.float32(t.scale)
    if t.kind == "int8":
        return t.data.astype(np.float32) * np.asarray(t.scales, dtype=np.float32).reshape(-1, 1)
    return np.asarray(t.data, dtype=np.float32)


def _check_row(name: str, k: int, block: int, qtype: str) -> None:
    if k % block:
        raise InputError("imported", f"tensor {name!r}: rows of {k} weights are not whole {qtype} blocks of {block}")


def write_gguf(imported_or_model_dir: ImportedModel | str | os.PathLike, path: str | os.PathLike,
               ternary_type: str = "TQ2_0", head_type: str = "Q8_0", *, scale_tensors: bool = False,
               name: str | None = None) -> Path:
    """Write a llama.cpp-loadable GGUF of a decoder; returns the path written."""
    gguf = require("gguf", "writing GGUF")
    QT, quantize = gguf.GGMLQuantizationType, gguf.quants.quantize

    if ternary_type not in _TERNARY:
        raise InputError("ternary_type", f"must be one of {', '.join(_TERNARY)}, got {ternary_type!r}")
    if head_type not in _HEAD:
        raise InputError("head_type", f"must be one of {', '.join(_HEAD)}, got {head_type!r}")
    im = imported_or_model_dir if isinstance(imported_or_model_dir, ImportedModel) \
        else imported_from_model_dir(imported_or_model_dir)
    cfg = im.config
    if not isinstance(cfg, DecoderConfig):
        raise InputError("imported_or_model_dir", f"a {cfg.architecture} model cannot be written as a GGUF decoder")
    arch = "bitnet" if cfg.sub_norms else "llama"
    if arch == "bitnet" and not cfg.tie_word_embeddings:
        raise InputError("imported_or_model_dir", "llama.cpp's bitnet architecture has no separate output "
                         "tensor (its head is token_embd): the model must tie its embeddings")
    if arch == "bitnet" and cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        raise InputError("imported_or_model_dir", "llama.cpp's bitnet architecture needs heads * head_dim == hidden")
    if arch == "llama" and cfg.hidden_act != "silu":
        raise InputError("imported_or_model_dir", "llama.cpp's llama architecture is SiLU-gated; "
                         f"a {cfg.hidden_act} model without sub norms has no GGUF architecture")
    if scale_tensors and arch != "bitnet":
        raise InputError("scale_tensors", "only llama.cpp's bitnet architecture reads per-layer scale tensors")
    names = decoder_tensor_names(cfg)
    missing = [n for n in names if n not in im.tensors]
    if missing:
        raise InputError("imported_or_model_dir", f"tensor {missing[0]!r} is missing")

    tq = QT[ternary_type]
    path = Path(path)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name or im.name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    if arch == "bitnet":  # as llama.cpp's BitnetModel.set_gguf_parameters
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0)
    w.add_vocab_size(cfg.vocab_size)
    w.add_string(f"{arch}.hidden_activation", cfg.hidden_act)
    w.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{ternary_type}"]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if not _add_model_vocab(w, im, cfg):
        tokens, types = byte_level_vocab(cfg)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(["Ġ Ġ"])
        w.add_bool(PLACEHOLDER_KEY, True)
        if cfg.bos_token_id is not None:
            w.add_bos_token_id(cfg.bos_token_id)
        if cfg.eos_token_ids:
            w.add_eos_token_id(cfg.eos_token_ids[0])

    for cname in names:
        t = im.tensors[cname]
        gname = canonical_to_gguf(cname)
        assert gname is not None, cname
        if cname in ("model.embed_tokens.weight", "lm_head.weight"):
            data = _dense(t)
            _check_row(gname, data.shape[-1], 32, head_type)
            w.add_tensor(gname, quantize(data, QT[head_type]) if head_type == "Q8_0" else data.astype(np.float16),
                         raw_dtype=QT[head_type] if head_type == "Q8_0" else None)
            continue
        if not cname.endswith("_proj.weight"):  # norms
            w.add_tensor(gname, np.ascontiguousarray(_dense(t)).reshape(-1))
            continue
        n_perm = None
        if arch == "llama" and cname.endswith("q_proj.weight"):
            n_perm = cfg.num_attention_heads
        elif arch == "llama" and cname.endswith("k_proj.weight"):
            n_perm = cfg.num_key_value_heads
        if t.kind == "int8":
            data = _dense(t)
            _check_row(gname, data.shape[-1], 32, "Q8_0")
            if n_perm:
                data = permute_rope_rows(data, n_perm)
            w.add_tensor(gname, quantize(np.ascontiguousarray(data), QT.Q8_0), raw_dtype=QT.Q8_0)
            continue
        if t.kind == "ternary":
            q, g = np.asarray(t.data, dtype=np.int8), float(t.scale)
        else:
            q, g = quant.absmean_ternary(np.asarray(t.data, dtype=np.float32))
        _check_row(gname, q.shape[-1], 256, ternary_type)
        if n_perm:
            q = permute_rope_rows(q, n_perm)
        vals = q.astype(np.float32)
        if not scale_tensors:
            vals *= np.float32(g)
        w.add_tensor(gname, quantize(np.ascontiguousarray(vals), tq), raw_dtype=tq)
        if scale_tensors:
            w.add_tensor(gname[: -len(".weight")] + ".scale", np.array([g], dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
