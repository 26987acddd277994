"""Chat templates a device can render without a template engine.

Hugging Face models carry their chat format as a Jinja program (``tokenizer_config.json``'s
``chat_template``); a device has no Jinja, and running a program that came with a model is more
than a device should do.  A converted model carries the format as data instead: a text before
the conversation, a prefix and suffix per role, the text that opens the assistant's reply, and the
texts that end it.  :mod:`bitnet_edge.sdk.convert.chat_template` derives it from the Jinja
template at conversion time and checks that both render the same conversations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field

from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.schemas import Strict

__all__ = ["Role", "ChatTurn", "ChatTemplate", "render_chat"]

Role = Literal["system", "user", "assistant"]


class ChatTurn(Strict):
    prefix: str = Field(default="", max_length=4096, description="text before the message content")
    suffix: str = Field(default="", max_length=4096, description="text after the message content")


class ChatTemplate(Strict):
    """A conversation renders as ``bos + (prefix[role] + content + suffix[role])* + generation_prompt``."""

    bos: str = Field(default="", max_length=4096, description="text once before the first message")
    turns: dict[Role, ChatTurn] = Field(description="per role; a role missing here is refused")
    generation_prompt: str = Field(default="", max_length=4096, description="opens the assistant's reply")
    stop: list[str] = Field(default_factory=list, max_length=16,
                            description="texts (special tokens) that end the assistant's reply")


def _field(m, key: str):
    return m.get(key) if isinstance(m, Mapping) else getattr(m, key, None)


def render_chat(template: ChatTemplate, messages: Sequence, add_generation_prompt: bool = True) -> str:
    """``messages``: mappings or objects with ``role`` and ``content`` (text)."""
    if not messages:
        raise InputError("messages", "at least one message is needed")
    parts = [template.bos]
    for i, m in enumerate(messages):
        role, content = _field(m, "role"), _field(m, "content")
        if role not in template.turns:
            raise InputError(f"messages[{i}].role", f"{role!r} is not one of this model's roles "
                                                    f"({', '.join(sorted(template.turns))})")
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content", "must be text")
        turn = template.turns[role]
        parts += [turn.prefix, content, turn.suffix]
    if add_generation_prompt:
        parts.append(template.generation_prompt)
    return "".join(parts)
