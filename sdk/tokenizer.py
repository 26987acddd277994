"""Reading a ``tokenizer.json`` (Hugging Face tokenizers): one place, one typed error."""

from __future__ import annotations

import os

from bitnet_edge.sdk.errors import FormatError

__all__ = ["load_tokenizer", "tokenizer_from_json"]


def load_tokenizer(path: str | os.PathLike):
    """The :class:`tokenizers.Tokenizer` in ``path``; FormatError ``bad-tokenizer`` when the file is
    missing or not a tokenizer the library reads (checked at convert time, so a bad one never
    reaches a model directory or a bundle)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception for every failure
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"{path}: not a tokenizer.json the tokenizers library can read ({why})",
                          reason="bad-tokenizer") from None


def tokenizer_from_json(text: str, where: str):
    """The :class:`tokenizers.Tokenizer` of a tokenizer.json text (``where`` names it in the error)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception for every failure
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"{where}: not a tokenizer the tokenizers library can read ({why})",
                          reason="bad-tokenizer") from None
