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

:func:`vocab_from_tokenizer_json` is the way back, for the GGUF writer: a byte-level BPE whose
pre-tokenizer is one of the table's (or GPT-2's own ByteLevel regex) and a SentencePiece-style BPE
(byte fallback, U+2581 for spaces; scores from the merge ranks) become ``tokenizer.ggml.*``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["GgufVocab", "VocabError", "build_tokenizer_json", "vocab_from_tokenizer_json", "PRE_TOKENIZERS"]

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")

#: llama.cpp's ``tokenizer.ggml.pre`` names -> (regular expressions in order, ignore_merges, add_bos default)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "default": (_DEFAULT, False, False),
    **{n: ((_LLAMA3,), True, True) for n in ("llama-bpe", "llama3", "llama-v3")},
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


_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA_CPP_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


def _pre_name(pre: dict | None, ignore_merges: bool) -> str | None:
    """llama.cpp's pre-tokenizer name for a byte-level tokenizer.json pre_tokenizer (None: unknown)."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel":
        return "gpt-2" if pre.get("use_regex", True) and not pre.get("add_prefix_space") and not ignore_merges else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("use_regex", True) \
            or steps[-1].get("add_prefix_space"):
        return None
    regexes = []
    for st in steps[:-1]:
        pattern = st.get("pattern") or {}
        if st.get("type") != "Split" or "Regex" not in pattern or st.get("invert") \
                or str(st.get("behavior", "")).lower() != "isolated":
            return None
        regexes.append(pattern["Regex"].replace(_HF_CONTRACTIONS, _LLAMA_CPP_CONTRACTIONS))
    for name, (table, ignore, _bos) in PRE_TOKENIZERS.items():
        if tuple(regexes) == table and ignore == ignore_merges:
            return name
    return None


def _template_adds(post: dict | None, token_id: int | None) -> bool:
    """Whether a TemplateProcessing post processor (alone or in a Sequence) puts ``token_id`` in single."""
    if not isinstance(post, dict) or token_id is None:
        return False
    if post.get("type") == "Sequence":
        return any(_template_adds(p, token_id) for p in post.get("processors", []))
    if post.get("type") != "TemplateProcessing":
        return False
    special = post.get("special_tokens") or {}
    for piece in post.get("single", []):
        sid = (piece.get("SpecialToken") or {}).get("id") if isinstance(piece, dict) else None
        if sid is not None and token_id in (special.get(sid) or {}).get("ids", []):
            return True
    return False


def vocab_from_tokenizer_json(text: str, vocab_size: int, bos_id: int | None = None,
                              eos_id: int | None = None) -> tuple[GgufVocab | None, str]:
    """(the ``tokenizer.ggml.*`` vocabulary of a tokenizer.json, "") or (None, why not).  Tokens past
    the tokenizer's up to ``vocab_size`` (padded embedding rows) are written as UNUSED placeholders."""
    try:
        j = json.loads(text)
    except ValueError as exc:
        return None, f"tokenizer.json is not JSON ({exc})"
    model = j.get("model") or {}
    if model.get("type") != "BPE":
        return None, f"a {model.get('type')} tokenizer has no GGUF vocabulary this writer makes (BPE only)"
    by_id: dict[int, str] = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in j.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    n = max(by_id, default=-1) + 1
    if n == 0 or n > vocab_size:
        return None, f"the tokenizer has {n} tokens for a model of {vocab_size}"
    tokens = [by_id.get(i, f"<|unused_{i}|>") for i in range(vocab_size)]
    types = [NORMAL if i in by_id else UNUSED for i in range(vocab_size)]
    for i, a in added.items():
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    merges = []
    for m in model.get("merges") or []:
        left, right = (m.split(" ", 1) if isinstance(m, str) else m)
        if " " in left or " " in right:
            return None, "a merge holds a space, which GGUF's 'left right' merges cannot"
        merges.append((left, right))
    post = j.get("post_processor")
    add_bos, add_eos = _template_adds(post, bos_id), _template_adds(post, eos_id)
    normalizer = j.get("normalizer")
    if model.get("byte_fallback"):
        steps = (normalizer or {}).get("normalizers", [normalizer]) if normalizer else []
        kinds = [(st or {}).get("type") for st in steps]
        replaces = any(k == "Replace" and st.get("content") == _SPACE for k, st in zip(kinds, steps))
        if not replaces or j.get("pre_tokenizer") is not None:
            return None, "a byte-fallback BPE without SentencePiece's U+2581 spaces has no GGUF vocabulary"
        prefix = any(k == "Prepend" and st.get("prepend") == _SPACE for k, st in zip(kinds, steps))
        rank = {}
        for r, (left, right) in enumerate(merges):
            rank.setdefault(left + right, r)
        scores = [-float(rank[t]) if t in rank else (0.0 if len(t) <= 1 else -1e9) for t in tokens]
        unk = model.get("unk_token")
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
            elif unk is not None and t == unk:
                types[i] = UNKNOWN
        unk_id = next((i for i, t in enumerate(tokens) if unk is not None and t == unk), None)
        return GgufVocab(model="llama", tokens=tokens, scores=scores, token_types=types, bos_id=bos_id,
                         eos_id=eos_id, unk_id=unk_id, add_bos=add_bos, add_eos=add_eos,
                         add_space_prefix=prefix), ""
    if normalizer is not None or (j.get("decoder") or {}).get("type") != "ByteLevel":
        return None, "a BPE that is neither byte-level nor SentencePiece-style has no GGUF vocabulary"
    pre = _pre_name(j.get("pre_tokenizer"), bool(model.get("ignore_merges")))
    if pre is None:
        return None, "its pre-tokenizer is none of llama.cpp's (tokenizer.ggml.pre)"
    return GgufVocab(model="gpt2", tokens=tokens, pre=pre, merges=[f"{a} {b}" for a, b in merges],
                     token_types=types, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos, add_eos=add_eos), ""
