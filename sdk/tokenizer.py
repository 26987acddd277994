"""Reading a ``tokenizer.json`` (Hugging Face tokenizers): one place, one typed error."""

from __future__ import annotations

import os

from bitnet_edge.sdk.errors import FormatError

__all__ = ["load_tokenizer", "tokenizer_from_json", "token_bytes"]


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


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


_BYTE_LEVEL = _byte_level_decoder()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes one token stands for (a byte-level BPE token may be part of a UTF-8 character, so
    decoding it alone would not give them): byte-level pieces through GPT-2's alphabet, ``<0xNN>``
    byte-fallback pieces as that byte, U+2581 as a space, anything else as its decoded text."""
    import re

    piece = tokenizer.id_to_token(int(token_id))
    if piece is None:
        return b""
    m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if m:
        return bytes([int(m.group(1), 16)])
    if type(tokenizer.decoder).__name__ == "ByteLevel" and all(c in _BYTE_LEVEL for c in piece):
        return bytes(_BYTE_LEVEL[c] for c in piece)
    if "\u2581" in piece:
        return piece.replace("\u2581", " ").encode("utf-8")
    return tokenizer.decode([int(token_id)], skip_special_tokens=False).encode("utf-8")
