"""The tokenizer inside a GGUF (``tokenizer.ggml.*``) -> a Hugging Face ``tokenizer.json``.

A GGUF carries its vocabulary as metadata, read by llama.cpp's own tokenizers.  This module builds
the ``tokenizers`` pipeline that gives the same token ids, so a GGUF model converts with a
``tokenizer.json`` and ``run --prompt`` / ``/v1/completions`` work on it:

``gpt2`` (byte-level BPE: GPT-2, Llama 3, BitNet b1.58 2B-4T, Qwen2 ...)
    ``tokens`` and ``merges`` ("left right", split at the first space after the first character, as
    llama.cpp does) make a BPE model; ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer, whose
    regular expressions become ``Split`` pre-tokenizers (applied in order, like llama.cpp's
    ``regex_exprs``) before a byte-level mapping; the Llama 3 family also ignores merges for words
    that are whole tokens (llama.cpp's ``ignore_merges``).  A pre-tokenizer name this table does not
    know is refused (its text would tokenize differently), with the reason in the import notes.
``llama`` (SentencePiece-style BPE with byte fallback: Llama 1/2, Mistral, TinyLlama ...)
    llama.cpp merges adjacent pieces by the ``scores`` of the merged piece; the equivalent BPE merge
    list is every split of every piece into two pieces of the vocabulary, ranked by the merged
    piece's score (ties: by the ids of the parts).  Spaces become U+2581, a space is prefixed to the
    text (``add_space_prefix``, default true) and after each special token, unknown characters fall
    back to the ``<0xNN>`` byte tokens.

Token types: CONTROL tokens become special added tokens (matched in text, like llama.cpp's parse of
special tokens), USER_DEFINED tokens plain added tokens.  ``add_bos_token`` / ``add_eos_token``
(llama.cpp's defaults when absent: SPM and the Llama 3 pre-tokenizers add BOS) become the post
processor.  Other tokenizer models (``bert``, ``t5``, ``rwkv``, ``no_vocab``) are not converted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["GgufVocab", "build_tokenizer_json", "PRE_TOKENIZERS"]

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")

#: llama.cpp's ``tokenizer.ggml.pre`` names -> (regular expressions in order, ignore_merges, add_bos default)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "default": (_DEFAULT, False, False),
    **{n: ((_LLAMA3,), True, True) for n in ("llama3", "llama-v3", "llama-bpe")},
    **{n: ((_LLAMA3,), False, False) for n in ("dbrx", "smaug-bpe", "chatglm-bpe")},
    **{n: ((_GPT2,), False, False) for n in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de",
                                            "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code")},
    **{n: ((_QWEN2,), False, False) for n in ("qwen2", "stablelm2")},
    **{n: ((r"\p{N}", _GPT2), False, False) for n in ("starcoder", "refact", "command-r", "smollm", "codeshell",
                                                      "exaone")},
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"), False, False),
}

# gguf.TokenType values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


@dataclass
class GgufVocab:
    """The ``tokenizer.ggml.*`` metadata of a GGUF."""

    model: str
    tokens: list[str]
    pre: str | None = None
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    token_types: list[int] | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None


class VocabError(ValueError):
    """The vocabulary cannot be expressed as a tokenizer.json (the reason is the message)."""


def _split_merge(m: str) -> tuple[str, str]:
    pos = m.find(" ", 1)  # llama.cpp: the first space after the first character
    if pos < 0:
        raise VocabError(f"merge {m[:40]!r} has no space between its two parts")
    return m[:pos], m[pos + 1:]


def _vocab_dict(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicate token text keeps its first id (llama.cpp's lookup does too)
    return vocab


def _spm_merges(tokens: list[str], scores: list[float] | None, types: list[int], vocab: dict[str, int]):
    """BPE merges equivalent to SentencePiece's score-ordered merging (see the module docstring)."""
    ranked = []
    for i, piece in enumerate(tokens):
        if types[i] not in (NORMAL, USER_DEFINED, UNUSED) or len(piece) < 2 or vocab.get(piece) != i:
            continue
        prio = -scores[i] if scores is not None else float(i)
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                ranked.append((prio, vocab[left], vocab[right], left, right))
    ranked.sort(key=lambda r: r[:3])
    return [(r[3], r[4]) for r in ranked]


def build_tokenizer_json(v: GgufVocab) -> str:
    """The tokenizer.json text; VocabError when the vocabulary is not one this module converts."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    n = len(v.tokens)
    if n == 0:
        raise VocabError("tokenizer.ggml.tokens is empty")
    types = list(v.token_types) if v.token_types is not None else [NORMAL] * n
    if len(types) != n:
        raise VocabError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    if v.scores is not None and len(v.scores) != n:
        raise VocabError(f"tokenizer.ggml.scores has {len(v.scores)} entries for {n} tokens")
    for key, tid in (("bos", v.bos_id), ("eos", v.eos_id), ("unknown", v.unk_id)):
        if tid is not None and not 0 <= tid < n:
            raise VocabError(f"tokenizer.ggml.{key}_token_id {tid} is outside the {n} tokens")
    vocab = _vocab_dict(v.tokens)
    if v.model == "gpt2":
        pre = v.pre or "default"
        if pre not in PRE_TOKENIZERS:
            raise VocabError(f"pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one this importer knows "
                             f"({', '.join(sorted(PRE_TOKENIZERS))})")
        regexes, ignore_merges, bos_default = PRE_TOKENIZERS[pre]
        if not v.merges:
            raise VocabError("a gpt2 (BPE) vocabulary needs tokenizer.ggml.merges")
        merges = [_split_merge(m) for m in v.merges]
        merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        add_bos_default, prefix = bos_default, False
    elif v.model == "llama":
        unk = v.unk_id if v.unk_id is not None else next((i for i, t in enumerate(types) if t == UNKNOWN), None)
        merges = _spm_merges(v.tokens, v.scores, types, vocab)
        has_bytes = any(t == BYTE for t in types)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=v.tokens[unk] if unk is not None else None,
                                   byte_fallback=has_bytes, fuse_unk=True))
        prefix = True if v.add_space_prefix is None else bool(v.add_space_prefix)
        steps = [normalizers.Prepend(_SPACE)] if prefix else []
        tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", _SPACE)])
        dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        add_bos_default = True
    else:
        raise VocabError(f"tokenizer model {v.model!r} is not converted (gpt2 and llama are)")

    added = [AddedToken(t, special=types[i] == CONTROL, normalized=False)
             for i, t in enumerate(v.tokens) if types[i] in (CONTROL, USER_DEFINED) and vocab.get(t) == i and t]
    tok.add_tokens([a for a in added if not a.special])
    tok.add_special_tokens([a for a in added if a.special])

    add_bos = add_bos_default if v.add_bos is None else bool(v.add_bos)
    add_eos = bool(v.add_eos)
    single, special = ["$A"], []
    if add_bos and v.bos_id is not None:
        single, special = [v.tokens[v.bos_id]] + single, [(v.tokens[v.bos_id], v.bos_id)]
    if add_eos and v.eos_id is not None:
        single = single + [v.tokens[v.eos_id]]
        special = list(dict.fromkeys(special + [(v.tokens[v.eos_id], v.eos_id)]))
    if special:
        tok.post_processor = processors.TemplateProcessing(single=single, pair=single + ["$B:1"],
                                                           special_tokens=special)
    text = tok.to_str()
    json.loads(text)  # a tokenizer the library wrote: parses
    return text
