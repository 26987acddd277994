"""The tokenizer inside a GGUF becomes a tokenizer.json at convert time (sdk/convert/gguf_tokenizer.py).

GGUF files are written with the gguf package, their vocabulary metadata the way llama.cpp's
``convert_hf_to_gguf.py`` writes it from a Hugging Face tokenizer: token texts by id, token types
(CONTROL for special tokens, USER_DEFINED for other added tokens), merges as "left right" strings,
``tokenizer.ggml.pre``.  The imported tokenizer must give the same ids as the original Hugging Face
tokenizer (transformers), and for SentencePiece-style vocabularies the same ids as llama.cpp's
score-ordered merging (re-implemented below as the reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
from click.testing import CliRunner  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers import trainers  # noqa: E402

from tests.sdk.test_gguf import _arrays, _cfg, _model  # noqa: E402
from bitnet_edge.cli import main  # noqa: E402
from bitnet_edge.sdk.convert.convert import convert  # noqa: E402
from bitnet_edge.sdk.convert.gguf import read_gguf  # noqa: E402
from bitnet_edge.sdk.convert.gguf_tokenizer import PRE_TOKENIZERS, GgufVocab, VocabError, build_tokenizer_json  # noqa: E402
from bitnet_edge.sdk.modeldir import open_model_dir  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2026; we'll see what they've done.",
    "def add(a, b):\n    return a + b\n\n# numbers: 123456 7 89, 3.14159\n",
    "Naïve café owners don't like crème brûlée — ça va? Ünïcödé 東京 ещё 😀",
    "  leading spaces, trailing spaces   \n\n\ttabs\tand\r\nnewlines  ",
] * 20
SAMPLES = [
    "Hello world", "It's a dog's life; they'll say they're done", "1234567 + 89 = 1234656",
    "naïve café 東京 😀 ещё", "  two  spaces\n\nand newlines\r\n\ttab", "", " ", "don't\n",
    "<|begin_of_text|>after a special token<|eot_id|>", "unseen: zqxj ẞ ☃",
]
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _write(path: Path, vocab_size: int, meta) -> Path:
    """A bitnet GGUF with tiny random weights and the vocabulary ``meta(writer)`` writes."""
    cfg = _cfg(vocab_size=vocab_size)
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    meta(w)
    for name, (data, qt) in _arrays(_model(cfg)).items():
        w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------ byte-level BPE (gpt2 / llama3)

def _hf_llama3_style():
    """A small Llama-3-style tokenizer (byte-level BPE, llama3 split regex, ignore_merges, BOS added)
    trained with `tokenizers`, wrapped as a transformers tokenizer."""
    transformers = pytest.importorskip("transformers")
    regex = PRE_TOKENIZERS["llama-bpe"][0][0]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("<user_word>", normalized=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|eot_id|>"), tok


def _bpe_meta(tok: Tokenizer, hf, pre: str = "llama-bpe", chat: str | None = LLAMA3_CHAT):
    """The vocabulary metadata as llama.cpp's converter writes it (get_vocab_base / SpecialVocab)."""
    n = tok.get_vocab_size()
    rev = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_tokens_decoder()
    types = [int(gguf.TokenType.CONTROL if (i in added and added[i].special) else
                 gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL) for i in range(n)]
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]

    def meta(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list([rev[i] for i in range(n)])
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(hf.bos_token_id)
        w.add_eos_token_id(hf.eos_token_id)
        w.add_add_bos_token(True)
        if chat:
            w.add_chat_template(chat)
    return n, meta


def test_byte_level_bpe_gives_the_hf_tokenizers_ids(tmp_path):
    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf)
    m = read_gguf(_write(tmp_path / "m.gguf", n, meta))
    assert m.tokenizer_json is not None, m.notes
    ours = m.load_tokenizer()
    for s in SAMPLES + CORPUS[:4] + ["<user_word> in text"]:
        want = hf(s)["input_ids"]
        assert ours.encode(s).ids == want, s
        assert ours.decode(want, skip_special_tokens=False) == hf.decode(want), s
    assert ours.encode("x").ids[0] == hf.bos_token_id  # add_bos_token
    assert m.source.details["tokenizer"] == "gpt2 (llama-bpe)"


def test_gguf_chat_template_and_prompt_through_the_cli(tmp_path):
    """convert a GGUF, then `run --prompt` tokenizes with the imported tokenizer; the GGUF's chat
    template is recorded in the manifest."""
    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf)
    src = _write(tmp_path / "m.gguf", n, meta)
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["chat_template"] is True
    md = open_model_dir(tmp_path / "out")
    assert md.manifest.tokenizer == "tokenizer.json" and (tmp_path / "out" / "tokenizer.json").is_file()
    chat = md.manifest.chat_template
    assert chat.bos == "<|begin_of_text|>" and chat.turns["user"].prefix == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert chat.generation_prompt == "<|start_header_id|>assistant<|end_header_id|>\n\n" and "<|eot_id|>" in chat.stop
    r = CliRunner().invoke(main, ["run", str(tmp_path / "out"), "--prompt", "It's a dog's life", "--max-new-tokens", "3",
                                  "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["prompt_ids"] == hf("It's a dog's life")["input_ids"] and len(out["ids"]) == 3


@pytest.mark.parametrize("pre", ["gpt-2", "default", "qwen2"])
def test_other_pre_tokenizers_split_like_llama_cpp(tmp_path, pre):
    """A GPT-2-style tokenizer (its HF pre-tokenizer is ByteLevel's own regex, no BOS) gives the HF ids
    under ``gpt-2``; ``default`` and ``qwen2`` split digits as llama.cpp's regexes do."""
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                              eos_token="<|endoftext|>")
    n, meta = _bpe_meta(tok, hf, pre=pre, chat=None)
    m = read_gguf(_write(tmp_path / "m.gguf", n, meta))
    ours = m.load_tokenizer()
    if pre == "gpt-2":
        for s in SAMPLES:
            assert ours.encode(s).ids == [hf.bos_token_id] + hf(s)["input_ids"], s  # the file says add_bos
    else:
        digits = [ours.decode([i]) for i in ours.encode("1234567", add_special_tokens=False).ids]
        assert "".join(digits) == "1234567"
        assert all(len(d) == 1 for d in digits) if pre == "qwen2" else all(len(d) <= 3 for d in digits)


# ------------------------------------------------------------- SentencePiece-style BPE (llama)

def _spm_vocab():
    """An SPM-style vocabulary: <unk> <s> </s>, the 256 <0xNN> byte tokens, then pieces learned by BPE
    over U+2581-marked text, scored like SentencePiece BPE (earlier merge = higher score)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, limit_alphabet=60))
    learned = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for piece, i in learned:
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
            scores.append(-float(i))
    tokens.append("<user>")
    types.append(4)
    scores.append(0.0)
    return tokens, scores, types


def _llama_cpp_spm(text: str, tokens: list[str], scores: list[float], types: list[int]) -> list[int]:
    """llama.cpp's SPM tokenizer (llm_tokenizer_spm): BOS, a space prefix, spaces as U+2581, then
    repeatedly merge the adjacent pair whose merged piece has the highest score (ties: leftmost);
    pieces not in the vocabulary fall back to <0xNN> byte tokens.  (No special tokens in ``text``.)"""
    if not text:  # no text fragment at all: BOS only
        return [1]
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    syms = list((" " + text).replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            j = vocab.get(syms[i] + syms[i + 1])
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    ids = [1]
    for s in syms:
        ids += [vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()]
    return ids


def test_sentencepiece_vocab_tokenizes_like_llama_cpp(tmp_path):
    tokens, scores, types = _spm_vocab()

    def meta(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    m = read_gguf(_write(tmp_path / "spm.gguf", len(tokens), meta))
    ours = m.load_tokenizer()
    for s in [x for x in SAMPLES if "<|" not in x] + CORPUS[:4]:
        want = _llama_cpp_spm(s, tokens, scores, types)
        assert ours.encode(s).ids == want, s
        assert ours.decode(want[1:]) == s, s
    assert ours.encode("a <user> b").ids[2:4] != []  # a user-defined token is matched whole
    assert tokens.index("<user>") in ours.encode("a <user> b").ids


# ------------------------------------------------------------------------- what is not converted

def test_unconvertible_vocabularies_leave_a_note_not_a_crash(tmp_path):
    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf, pre="some-future-pre", chat=None)
    m = read_gguf(_write(tmp_path / "a.gguf", n, meta))
    assert m.tokenizer_json is None and any("some-future-pre" in x for x in m.notes)
    out = convert(m, tmp_path / "a")
    assert open_model_dir(out).manifest.tokenizer is None

    def t5(w):
        w.add_tokenizer_model("t5")
        w.add_token_list([f"t{i}" for i in range(10)])
    m = read_gguf(_write(tmp_path / "b.gguf", 10, t5))
    assert m.tokenizer_json is None and any("'t5'" in x for x in m.notes)
    with pytest.raises(VocabError, match="token_type has 2 entries"):
        build_tokenizer_json(GgufVocab(model="gpt2", tokens=["a", "b", "ab"], merges=["a b"], token_types=[1, 1]))
    with pytest.raises(VocabError, match="bos_token_id 7"):
        build_tokenizer_json(GgufVocab(model="llama", tokens=["a"], bos_id=7))


def test_a_chat_template_that_does_more_than_wrap_messages_is_noted_not_carried(tmp_path):
    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf, chat="{{ bos_token }}Today is {{ strftime_now('%d') }}{% for m in messages %}"
                                      "{{ m['content'] }}{% endfor %}")
    m = read_gguf(_write(tmp_path / "m.gguf", n, meta))
    assert m.tokenizer_json is not None and m.chat_template is None
    assert any(x.startswith("chat template not carried") for x in m.notes)


def test_token_bytes_of_byte_level_and_byte_fallback_pieces(tmp_path):
    from bitnet_edge.sdk.tokenizer import token_bytes

    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf, chat=None)
    ours = read_gguf(_write(tmp_path / "m.gguf", n, meta)).load_tokenizer()
    ids = ours.encode("naïve 東京 😀", add_special_tokens=False).ids
    assert b"".join(token_bytes(ours, i) for i in ids) == "naïve 東京 😀".encode()
    tokens, scores, types = _spm_vocab()

    def spm(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
    ours = read_gguf(_write(tmp_path / "s.gguf", len(tokens), spm)).load_tokenizer()
    ids = ours.encode("the 東京", add_special_tokens=False).ids
    assert b"".join(token_bytes(ours, i) for i in ids) == " the 東京".encode()  # with SPM's space prefix


# ------------------------------------------------------------- the way back: our GGUF writer

def test_writer_carries_the_tokenizer_and_the_importer_reads_it_back(tmp_path):
    """convert(GGUF) -> write_gguf -> read_gguf: the same ids (byte-level BPE and SPM); a model
    without a tokenizer gets the placeholder vocabulary, which the importer does not take for one."""
    from bitnet_edge.sdk.convert.gguf_write import write_gguf

    hf, tok = _hf_llama3_style()
    n, meta = _bpe_meta(tok, hf)
    model_dir = convert(read_gguf(_write(tmp_path / "a.gguf", n, meta)), tmp_path / "a")
    back = read_gguf(write_gguf(model_dir, tmp_path / "a2.gguf", head_type="F16"))
    assert back.source.details["tokenizer"] == "gpt2 (llama-bpe)", back.notes
    ours = back.load_tokenizer()
    for s in SAMPLES:
        assert ours.encode(s).ids == hf(s)["input_ids"], s

    tokens, scores, types = _spm_vocab()

    def spm(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    m = read_gguf(_write(tmp_path / "s.gguf", len(tokens), spm))
    back = read_gguf(write_gguf(m, tmp_path / "s2.gguf", head_type="F16"))
    ours = back.load_tokenizer()
    for s in [x for x in SAMPLES if "<|" not in x]:
        assert ours.encode(s).ids == _llama_cpp_spm(s, tokens, scores, types), s

    m.tokenizer_json = None
    back = read_gguf(write_gguf(m, tmp_path / "p.gguf", head_type="F16"))
    assert back.tokenizer_json is None and any("placeholder" in x for x in back.notes)


def test_writer_carries_a_gpt2_style_tokenizer_file(tmp_path):
    """The tokenizer `train-lm` writes (GPT-2 ByteLevel regex, no BOS) goes out as pre 'gpt-2'."""
    from bitnet_edge.sdk.convert.gguf_write import write_gguf
    from bitnet_edge.sdk.train import tokenizer as tk

    tok = tk.train_tokenizer(CORPUS, 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    m = _model(_cfg(vocab_size=320, bos_token_id=0, eos_token_ids=[1]))
    m.tokenizer_file = str(tmp_path / "tokenizer.json")
    back = read_gguf(write_gguf(m, tmp_path / "t.gguf", head_type="F16"))
    assert back.source.details["tokenizer"] == "gpt2 (gpt-2)", back.notes
    ours = back.load_tokenizer()
    for s in SAMPLES:
        assert ours.encode(s).ids == tok.encode(s).ids, s
