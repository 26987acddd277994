"""A byte-level BPE tokenizer trained with Hugging Face ``tokenizers``, and its chat format.

Special tokens come first (ids 0..5): ``<|bos|>`` starts every document and conversation,
``<|eos|>`` ends a document, ``<|system|>``/``<|user|>``/``<|assistant|>`` open a turn and
``<|end|>`` closes it.  A conversation is rendered as::

    <|bos|><|user|>What does json.dumps do?<|end|><|assistant|>Serialize obj ...<|end|>

The same format is written three ways: the :class:`~bitnet_edge.sdk.chat.ChatTemplate` our runtime
renders, the Jinja ``chat_template`` of ``tokenizer_config.json`` that Hugging Face tools use, and
the token sequences the trainer builds (:func:`encode_chat`).  A test keeps them equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bitnet_edge.sdk.chat import ChatTemplate, ChatTurn

__all__ = ["SPECIAL_TOKENS", "BOS", "EOS", "END", "CHAT_TEMPLATE", "JINJA_CHAT_TEMPLATE", "train_tokenizer",
           "encode_document", "encode_chat", "write_tokenizer_config"]

BOS, EOS, SYSTEM, USER, ASSISTANT, END = ("<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = [BOS, EOS, SYSTEM, USER, ASSISTANT, END]

CHAT_TEMPLATE = ChatTemplate(
    bos=BOS,
    turns={"system": ChatTurn(prefix=SYSTEM, suffix=END), "user": ChatTurn(prefix=USER, suffix=END),
           "assistant": ChatTurn(prefix=ASSISTANT, suffix=END)},
    generation_prompt=ASSISTANT, stop=[END, EOS])

JINJA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE over ``texts`` (no prefix space, so code round-trips exactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def encode_document(tok, text: str) -> list[int]:
    return [tok.token_to_id(BOS), *_ids(tok, text), tok.token_to_id(EOS)]


def encode_chat(tok, question: str, answer: str) -> list[int]:
    """One user question and the assistant's answer, as the chat template renders it."""
    sid = tok.token_to_id
    return [sid(BOS), sid(USER), *_ids(tok, question), sid(END), sid(ASSISTANT), *_ids(tok, answer), sid(END)]


def write_tokenizer_config(path: Path, max_length: int) -> None:
    """tokenizer_config.json + special_tokens_map.json as transformers writes them (chat template included)."""
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
           "unk_token": None, "model_max_length": max_length, "clean_up_tokenization_spaces": False,
           "add_bos_token": True, "chat_template": JINJA_CHAT_TEMPLATE,
           "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END]}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
               "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END]}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
