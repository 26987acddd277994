"""A Hugging Face Jinja ``chat_template`` -> the data-only :class:`~bitnet_edge.sdk.chat.ChatTemplate`.

At conversion time (build host) the Jinja program is run in Jinja's immutable sandbox on
conversations whose contents are marker strings; the text around the markers gives each role's
prefix and suffix.  The result is then checked: for several conversations (with and without a
system message, several turns, with and without the generation prompt) both must render exactly
the same text.  A template that does more than wrap messages (injects dates or default system
prompts, changes earlier turns) fails the check and is not carried: the reason is returned.
Jinja is imported only here; without it no template is carried and the reason says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from bitnet_edge.sdk.chat import ChatTemplate, ChatTurn, render_chat

__all__ = ["derive_chat_template", "read_hf_chat_template"]

MAX_TEMPLATE_CHARS = 256 * 1024
_MARK = {"system": "QqSYSMARKqQ", "user": "QqUSRMARKqQ", "assistant": "QqASTMARKqQ"}


def _token_text(v) -> str:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else ""


def _checks(roles: tuple[str, ...]) -> list[list[tuple[str, str]]]:
    convs = [[("user", "a")], [("user", "a"), ("assistant", "b")],
             [("user", "a"), ("assistant", "b"), ("user", "c")],
             [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]]
    if "system" in roles:
        convs += [[("system", "s")] + c for c in convs[:3]]
    return convs


def derive_chat_template(source: str, bos_token: str = "", eos_token: str = "") -> tuple[ChatTemplate | None, str]:
    """(template, "") or (None, why not)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return None, f"chat template longer than {MAX_TEMPLATE_CHARS} characters"
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None, "jinja2 is not installed, so the chat template could not be read"

    def raise_exception(msg):
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    try:
        program = env.from_string(source)
    except TemplateError as exc:
        return None, f"chat template does not parse: {exc}"

    def jinja(conv, gen: bool) -> str:
        msgs = [{"role": r, "content": c} for r, c in conv]
        return program.render(messages=msgs, add_generation_prompt=gen, bos_token=bos_token, eos_token=eos_token)

    try:
        ru = jinja([("user", _MARK["user"])], False)
        rua = jinja([("user", _MARK["user"]), ("assistant", _MARK["assistant"])], False)
        rug = jinja([("user", _MARK["user"])], True)
    except Exception as exc:  # noqa: BLE001 - whatever a model's template raises, it is not carried
        return None, f"chat template fails on a user/assistant exchange: {exc}"
    bos = bos_token if bos_token and ru.startswith(bos_token) else ""
    if ru.count(_MARK["user"]) != 1 or not rua.startswith(ru) or not rug.startswith(ru):
        return None, "chat template does not render each message once, in order"
    i = ru.index(_MARK["user"])
    user = ChatTurn(prefix=ru[len(bos):i], suffix=ru[i + len(_MARK["user"]):])
    rest = rua[len(ru):]
    if rest.count(_MARK["assistant"]) != 1:
        return None, "chat template does not render the assistant's message once"
    j = rest.index(_MARK["assistant"])
    assistant = ChatTurn(prefix=rest[:j], suffix=rest[j + len(_MARK["assistant"]):])
    turns = {"user": user, "assistant": assistant}
    try:
        rs = jinja([("system", _MARK["system"])], False)
        if rs.count(_MARK["system"]) == 1 and rs.startswith(bos):
            k = rs.index(_MARK["system"])
            turns["system"] = ChatTurn(prefix=rs[len(bos):k], suffix=rs[k + len(_MARK["system"]):])
    except Exception:  # noqa: BLE001 - a template that refuses system messages: the role is left out
        pass
    stop = [s for s in (assistant.suffix.strip(), eos_token) if s]
    tpl = ChatTemplate(bos=bos, turns=turns, generation_prompt=rug[len(ru):], stop=list(dict.fromkeys(stop)))
    for conv in _checks(tuple(turns)):
        for gen in (False, True):
            try:
                want = jinja(conv, gen)
            except Exception:  # noqa: BLE001
                if conv[0][0] == "system":  # system only with a user message after it, say: drop the role
                    return derive_without_system(tpl), ""
                return None, "chat template fails on a multi-turn conversation"
            if render_chat(tpl, [{"role": r, "content": c} for r, c in conv], gen) != want:
                if conv[0][0] == "system":
                    return derive_without_system(tpl), ""
                return None, "chat template does more than wrap each message (e.g. inserts a default system prompt)"
    return tpl, ""


def derive_without_system(tpl: ChatTemplate) -> ChatTemplate:
    return tpl.model_copy(update={"turns": {r: t for r, t in tpl.turns.items() if r != "system"}})


def read_hf_chat_template(path: Path) -> tuple[ChatTemplate | None, str]:
    """The chat template of a Hugging Face directory: chat_template.jinja, else tokenizer_config.json's
    ``chat_template`` (a string, or named templates of which ``default`` is used).  (None, "") when
    the model has none."""
    cfg: dict = {}
    tc = path / "tokenizer_config.json"
    if tc.is_file():
        try:
            cfg = json.loads(tc.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, f"{tc}: not JSON ({exc})"
        if not isinstance(cfg, dict):
            return None, f"{tc}: not a JSON object"
    source = None
    jf = path / "chat_template.jinja"
    if jf.is_file():
        source = jf.read_text()
    else:
        src = cfg.get("chat_template")
        if isinstance(src, list):
            src = next((t.get("template") for t in src if isinstance(t, dict) and t.get("name") == "default"), None)
        source = src if isinstance(src, str) else None
    if source is None:
        return None, ""
    return derive_chat_template(source, _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token")))
