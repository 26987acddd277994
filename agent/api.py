"""Request bodies of the local inference API (OpenAI-compatible where OpenAI has the endpoint).

Every field of OpenAI's request bodies (as the official ``openai`` Python client sends them, checked
by tests/agent/test_openai_client.py) is accepted; a field the spec has is never a 400.  A field is:

- implemented (``temperature``, ``top_p``, ``seed``, ``stop``, ``max_tokens``, ``stream``,
  ``stream_options``, ``logit_bias``, ``presence_penalty``, ``frequency_penalty``, ``logprobs``,
  ``top_logprobs``, ``echo``, ``encoding_format``...);
- accepted and ignored, listed in :data:`IGNORED` with the reason (request metadata, caching and
  routing hints, settings of features this device does not have but whose absence does not change
  the answer);
- or refused with a clear 400 for a *value* we cannot honour (``n`` > 1, tools, audio, JSON
  response formats, moderation, web search...).

Unknown fields are still refused (``extra="forbid"``) so a typo is a 400, not a silent default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bitnet_edge.sdk.schemas import Strict

__all__ = ["InferRequest", "EmbeddingsRequest", "CompletionRequest", "ChatMessage", "ChatCompletionRequest",
           "StreamOptions", "IGNORED", "MAX_STOP"]

#: OpenAI's `model` field: the agent routes by it (ADR 0021)
_MODEL_DOC = "the model to use (default: the only installed model, or the configured default_model)"

#: Fields accepted and ignored, with why ignoring them is what the OpenAI spec allows.
IGNORED = {
    "user": "an end-user id for abuse monitoring; no monitoring here",
    "safety_identifier": "as user",
    "metadata": "tags for stored completions; nothing is stored",
    "store": "nothing is stored, whatever the value",
    "service_tier": "one tier; responses say 'default'",
    "parallel_tool_calls": "only meaningful with tools, which are refused",
    "prompt_cache_key": "a caching hint; answers are the same without it",
    "prompt_cache_options": "as prompt_cache_key",
    "prompt_cache_retention": "as prompt_cache_key",
    "prediction": "predicted output only speeds a response up; the answer is the same",
    "reasoning_effort": "for reasoning models; this model does not reason separately",
    "verbosity": "a hint for models tuned for it",
    "stream_options.include_obfuscation": "no obfuscation padding is sent",
    "messages[].name": "participant names are not part of the chat template",
    "messages[].refusal": "text of an earlier refusal, not rendered",
    "content[].prompt_cache_breakpoint": "as prompt_cache_key",
}
MAX_STOP = 16  # stop sequences (OpenAI: 4)
MAX_MESSAGE_CHARS = 1 << 20  # characters per message; the context length bounds the rest


def _only_one(v: int | None, field: str) -> int | None:
    if v is not None and v != 1:
        raise ValueError(f"only {field}=1 is supported (one choice per request), got {v}")
    return v


def _check_bias(v: dict[str, int] | None) -> dict[str, int] | None:
    for k, b in (v or {}).items():
        if not k.isdigit() or len(k) > 9:
            raise ValueError(f"keys are token ids (decimal text), got {k[:20]!r}")
        if not -100 <= b <= 100:
            raise ValueError(f"values must be in [-100, 100], got {b} for token {k}")
    return v


class InferRequest(Strict):
    """POST /v1/infer (mlp, graph): a batch of feature vectors, sequences or NHWC images."""

    inputs: list[list[float]] | list[list[list[float]]] | list[list[list[list[float]]]] = Field(
        min_length=1, max_length=4096, description="(n, features); graph models: (n, ...) of their input shape")
    model: str | None = Field(default=None, description=_MODEL_DOC)


class EmbeddingsRequest(Strict):
    """POST /v1/embeddings (bert)."""

    input: str | list[str] | list[int] | list[list[int]] = Field(description="texts or token id lists")
    model: str | None = Field(default=None, description=_MODEL_DOC)
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float: JSON numbers; base64: the float32 little-endian bytes, base64 "
                                     "(the openai client's default)")
    dimensions: int | None = Field(default=None, ge=1, description="must be the model's width (no truncation)")
    user: str | None = Field(default=None, description="ignored")

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and (not v or len(v) > 2048):
            raise ValueError(f"1 to 2048 inputs per request, got {len(v)}")
        return v


class StreamOptions(Strict):
    include_usage: bool | None = Field(
        default=None, description="true: a last chunk with empty choices carries the usage (OpenAI); unset: "
                                  "the finishing chunk carries it (extension)")
    include_obfuscation: bool | None = Field(default=None, description="ignored: no obfuscation padding")


class _Sampling(Strict):
    """What completions and chat completions share."""

    temperature: float | None = Field(default=None, ge=0.0, le=10.0, description="0 (default): greedy")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling")
    top_k: int | None = Field(default=None, ge=1, description="top-k sampling (extension)")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1,
                             description="sampling seed, a signed 64-bit integer as OpenAI's")
    stop: str | list[str] | None = Field(default=None, description=f"texts that end the output (up to {MAX_STOP})")
    stream: bool | None = Field(default=False, description="server-sent events, one per token")
    stream_options: StreamOptions | None = Field(default=None, description="include_usage")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0,
                                           description="subtracted from the logit of each token already generated")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0,
                                            description="subtracted per time a token was already generated")
    logit_bias: dict[str, int] | None = Field(default=None, max_length=4096,
                                              description="token id -> bias in [-100, 100] added to its logit")
    model: str | None = Field(default=None, description=_MODEL_DOC)
    user: str | None = Field(default=None, description="ignored")

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        return _check_bias(v)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(v)}")
        return v


class CompletionRequest(_Sampling):
    """POST /v1/completions (bitnet)."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text (needs the tokenizer) or token ids; a list holds one prompt")
    max_tokens: int | None = Field(default=16, ge=0, le=32768, description="new tokens at most (default 16)")
    n: int | None = Field(default=None, description="only 1")
    best_of: int | None = Field(default=None, description="only 1")
    echo: bool | None = Field(default=False, description="prepend the prompt to the text")
    logprobs: int | None = Field(default=None, ge=0, le=20, description="log-probabilities of each token and "
                                                                        "the k likeliest")
    suffix: str | None = Field(default=None, description="insertion is not supported: only empty")

    @field_validator("n", "best_of")
    @classmethod
    def _one(cls, v, info):
        return _only_one(v, info.field_name)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError(f"one prompt per request is supported, got {len(v)}")
            v = v[0]
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported by this model")
        return v

    @model_validator(mode="after")
    def _echo_logprobs(self):
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs (the prompt's log-probabilities) is not supported")
        return self


class ContentPart(Strict):
    type: Literal["text"] = Field(description="only text parts")
    text: str = Field(max_length=MAX_MESSAGE_CHARS, description="text")
    prompt_cache_breakpoint: dict[str, Any] | None = Field(default=None, description="ignored")


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="who said it (developer is rendered as system)")
    content: str | list[ContentPart] | None = Field(default=None, max_length=MAX_MESSAGE_CHARS,
                                                    description="text, or text parts (joined)")
    name: str | None = Field(default=None, max_length=256, description="ignored")
    refusal: str | None = Field(default=None, description="ignored")
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="tools are not supported: only empty")
    function_call: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    audio: dict[str, Any] | None = Field(default=None, description="not supported: only null")

    @model_validator(mode="before")
    @classmethod
    def _clear_refusals(cls, data):
        if isinstance(data, dict):
            role = data.get("role")
            if role in ("tool", "function"):
                raise ValueError(f"{role} messages are not supported (this API has no tools)")
            parts = data.get("content")
            if isinstance(parts, list):
                for p in parts:
                    if isinstance(p, dict) and p.get("type") != "text":
                        raise ValueError(f"content parts of type {p.get('type')!r} are not supported (text only)")
        return data

    @model_validator(mode="after")
    def _no_calls(self):
        if self.tool_calls or self.function_call is not None or self.audio is not None:
            raise ValueError("tool calls, function calls and audio are not supported")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"] = Field(description="only text")
    json_schema: dict[str, Any] | None = Field(default=None, description="not supported")

    @field_validator("type")
    @classmethod
    def _text(cls, v):
        if v != "text":
            raise ValueError(f"response_format {v!r} is not supported (no constrained decoding): use 'text'")
        return v


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions (bitnet models whose manifest carries a chat template)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024, description="the conversation so far")
    max_tokens: int | None = Field(default=None, ge=0, le=32768,
                                   description="new tokens at most (default: 256, within the context)")
    max_completion_tokens: int | None = Field(default=None, ge=0, le=32768, description="OpenAI's newer name")
    n: int | None = Field(default=None, description="only 1")
    logprobs: bool | None = Field(default=False, description="log-probabilities of each token")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="with logprobs: the k likeliest")
    response_format: ResponseFormat | None = Field(default=None, description="only {'type': 'text'}")
    tools: list[dict[str, Any]] | None = Field(default=None, description="not supported: only empty")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description="only 'none' or 'auto' (no tools)")
    functions: list[dict[str, Any]] | None = Field(default=None, description="not supported: only empty")
    function_call: str | dict[str, Any] | None = Field(default=None, description="only 'none' or 'auto'")
    parallel_tool_calls: bool | None = Field(default=None, description="ignored (no tools)")
    modalities: list[str] | None = Field(default=None, description="only ['text']")
    audio: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    web_search_options: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    moderation: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    metadata: dict[str, str] | None = Field(default=None, max_length=16, description="ignored")
    store: bool | None = Field(default=None, description="ignored: nothing is stored")
    service_tier: str | None = Field(default=None, max_length=32, description="ignored")
    safety_identifier: str | None = Field(default=None, max_length=256, description="ignored")
    prompt_cache_key: str | None = Field(default=None, max_length=1024, description="ignored")
    prompt_cache_options: dict[str, Any] | None = Field(default=None, description="ignored")
    prompt_cache_retention: str | None = Field(default=None, max_length=32, description="ignored")
    prediction: dict[str, Any] | None = Field(default=None, description="ignored")
    reasoning_effort: str | None = Field(default=None, max_length=32, description="ignored")
    verbosity: str | None = Field(default=None, max_length=32, description="ignored")

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        return _only_one(v, "n")

    @model_validator(mode="after")
    def _unsupported(self):
        if self.tools or self.functions:
            raise ValueError("tools and functions are not supported by this API")
        for name in ("tool_choice", "function_call"):
            v = getattr(self, name)
            if v is not None and v not in ("none", "auto"):
                raise ValueError(f"{name} {v!r} needs tools, which are not supported ('none' or 'auto' only)")
        if self.modalities is not None and set(self.modalities) - {"text"}:
            raise ValueError(f"modalities {self.modalities}: only 'text' is supported")
        for name in ("audio", "web_search_options", "moderation"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is not supported by this API")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self
