"""Request bodies of the local inference API (OpenAI-compatible where OpenAI has the endpoint).

Unknown fields are refused (``extra="forbid"``) so a typo is a 400, not a silent default; the
OpenAI fields we accept but do not implement beyond their default are listed with their only
allowed value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bitnet_edge.sdk.schemas import Strict

__all__ = ["InferRequest", "EmbeddingsRequest", "CompletionRequest", "ChatMessage", "ChatCompletionRequest"]


class InferRequest(Strict):
    """POST /v1/infer (mlp, graph): a batch of feature vectors, sequences or NHWC images."""

    inputs: list[list[float]] | list[list[list[float]]] | list[list[list[list[float]]]] = Field(
        min_length=1, max_length=4096, description="(n, features); graph models: (n, ...) of their input shape")
    model: str | None = Field(default=None, description="the model to use (the agent routes by it; default: the only or the configured default model)")


class EmbeddingsRequest(Strict):
    """POST /v1/embeddings (bert)."""

    input: str | list[str] | list[int] | list[list[int]] = Field(description="texts or token id lists")
    model: str | None = Field(default=None, description="the model to use (the agent routes by it; default: the only or the configured default model)")
    encoding_format: Literal["float"] = Field(default="float", description="only float")
    user: str | None = Field(default=None, description="ignored")


class CompletionRequest(Strict):
    """POST /v1/completions (bitnet)."""

    prompt: str | list[int] = Field(description="text (needs the tokenizer) or token ids")
    max_tokens: int = Field(default=16, ge=0, le=32768, description="new tokens at most")
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, description="0: greedy")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling")
    top_k: int | None = Field(default=None, ge=1, description="top-k sampling (extension)")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="sampling seed (0 .. 2^63-1)")
    stop: str | list[str] | None = Field(default=None, description="text that ends the completion")
    stream: bool = Field(default=False, description="server-sent events, one per token")
    model: str | None = Field(default=None, description="the model to use (the agent routes by it; default: the only or the configured default model)")
    n: Literal[1] = Field(default=1, description="only 1")
    echo: Literal[False] = Field(default=False, description="not supported")
    user: str | None = Field(default=None, description="ignored")


MAX_MESSAGE_CHARS = 1 << 20  # characters per message; the context length bounds the rest


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"] = Field(description="who said it")
    content: str = Field(max_length=MAX_MESSAGE_CHARS, description="text")
    name: str | None = Field(default=None, max_length=256, description="ignored")


class StreamOptions(Strict):
    include_usage: bool = Field(default=True, description="usage is always sent with the last chunk")


class ChatCompletionRequest(Strict):
    """POST /v1/chat/completions (bitnet models whose manifest carries a chat template)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024, description="the conversation so far")
    max_tokens: int | None = Field(default=None, ge=0, le=32768,
                                   description="new tokens at most (default: 256, within the context)")
    max_completion_tokens: int | None = Field(default=None, ge=0, le=32768, description="OpenAI's newer name")
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, description="0: greedy")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling")
    top_k: int | None = Field(default=None, ge=1, description="top-k sampling (extension)")
    seed: int | None = Field(default=None, description="sampling seed")
    stop: str | list[str] | None = Field(default=None, description="text that ends the reply")
    stream: bool = Field(default=False, description="server-sent events, one per token")
    stream_options: StreamOptions | None = Field(default=None, description="accepted; usage is always sent")
    model: str | None = Field(default=None, description="the model to use (the agent routes by it; default: the only or the configured default model)")
    n: Literal[1] = Field(default=1, description="only 1")
    user: str | None = Field(default=None, description="ignored")
