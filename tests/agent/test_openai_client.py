"""OpenAI compatibility, checked with the official ``openai`` Python client against a real agent
serving real signed bundles: a decoder with a chat template (chat and text completions, plain and
streamed, the common optional fields) and a BERT encoder with a tokenizer (embeddings, base64 and
float).  Every answer is compared with the same model run in-process through the SDK."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tests.support.tools import IN_CI  # noqa: E402

if IN_CI:  # CI installs the test extra: a missing client is a failure there, never a skip
    import openai
else:
    openai = pytest.importorskip("openai")

from tests.agent.test_agent_chat import _chat_model  # noqa: E402
from tests.support.agent_fixtures import HOST_DEVICE, Daemon, bundles, cli, free_port, write_config  # noqa: E402,F401
from bitnet_edge.agent.api import IGNORED, ChatCompletionRequest, CompletionRequest, EmbeddingsRequest  # noqa: E402
from bitnet_edge.packagers.builder import package_model  # noqa: E402
from bitnet_edge.sdk import load_model  # noqa: E402
from bitnet_edge.sdk.chat import render_chat  # noqa: E402
from bitnet_edge.sdk.convert.convert import convert  # noqa: E402
from bitnet_edge.sdk.convert.hf import read_hf  # noqa: E402
from bitnet_edge.sdk.models.sampling import Sampler  # noqa: E402
from bitnet_edge.sdk.train import tokenizer as tk  # noqa: E402

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What does add do?"}]

# Every optional chat field the client has, with a value the spec allows and we accept.
CHAT_OPTIONAL = dict(
    frequency_penalty=0.0, presence_penalty=0.0, logit_bias={}, user="u-1", n=1, seed=7, stop=["\x00never"],
    response_format={"type": "text"}, service_tier="auto", metadata={"team": "edge"}, store=False,
    parallel_tool_calls=False, tool_choice="none", modalities=["text"], prompt_cache_key="k",
    prompt_cache_retention="in_memory", safety_identifier="s-1", reasoning_effort="low", verbosity="low",
    prediction={"type": "content", "content": "x"}, temperature=0.0, top_p=1.0, max_completion_tokens=10,
)


def _client(port: int):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_every_field_of_the_official_client_is_accepted():
    """No request body the client can build is refused for its field names (never a 400 for a field
    the spec has); the ignored ones are documented."""
    from openai.resources.chat.completions.completions import Completions as Chat
    from openai.resources.completions import Completions
    from openai.resources.embeddings import Embeddings

    skip = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
    for resource, model in ((Chat, ChatCompletionRequest), (Completions, CompletionRequest),
                            (Embeddings, EmbeddingsRequest)):
        sent = set(inspect.signature(resource.create).parameters) - skip
        assert sent <= set(model.model_fields), (model.__name__, sorted(sent - set(model.model_fields)))
    for name in IGNORED:
        top = name.split(".")[0].split("[")[0]
        assert top in ChatCompletionRequest.model_fields or top in ("messages", "content", "stream_options")


def test_sampler_penalties_bias_and_logprobs_follow_the_openai_formulas():
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal(12).astype(np.float32) for _ in range(6)]
    s = Sampler(logit_bias={3: 1.5, 11: -100}, presence_penalty=0.7, frequency_penalty=0.4, logprobs=3)
    counts = np.zeros(12)
    for lg in logits:
        adj = lg.astype(np.float64) + np.where(np.arange(12) == 3, 1.5, 0) + np.where(np.arange(12) == 11, -100, 0)
        adj -= counts * 0.4 + (counts > 0) * 0.7
        want = int(np.argmax(adj))
        assert s(lg) == want
        counts[want] += 1
        lp = lg.astype(np.float64) - np.log(np.exp(lg.astype(np.float64)).sum())
        rec = s.records[-1]
        assert rec.token == want and rec.logprob == pytest.approx(lp[want])
        assert [t for t, _ in rec.top] == list(np.argsort(-lp)[:3])
    assert Sampler().plain and not Sampler(logprobs=0).plain


@pytest.fixture(scope="module")
def served(tmp_path_factory, bundles):
    """An agent with the chat decoder installed; ``swap_to_bert()`` installs the encoder."""
    root = tmp_path_factory.mktemp("openai")
    model_dir = _chat_model(root)
    dec = package_model(model_dir, [HOST_DEVICE], "1.0.0", [bundles.key], root / "d1", release=40,
                        options=bundles.opts)[0].path
    port = free_port()
    cfg = write_config(root / "agent.toml", root / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port)
    try:
        assert cli("agent", "install", dec, "--config", cfg).returncode == 0
        yield {"root": root, "model_dir": model_dir, "port": port, "cfg": cfg, "daemon": d,
               "name": load_model(model_dir).manifest.name}
    finally:
        d.stop()


def _reference(model_dir, msgs, n, sampler=None):
    ref = load_model(model_dir)
    ids = ref.tokenizer.encode(render_chat(ref.manifest.chat_template, msgs), add_special_tokens=False).ids
    out = ref.generate(ids, n, stop=[ref.tokenizer.token_to_id(tk.END)], sampler=sampler)
    return ref, ids, out


def test_chat_completions_plain_streamed_and_optional_fields(served):
    mn = served["name"]  # the installed model: requests name it
    client = _client(served["port"])
    ref, ids, want = _reference(served["model_dir"], MSGS, 10)
    want_text = ref.tokenizer.decode(want)

    models = client.models.list().data
    assert [m.id for m in models] == [ref.manifest.name] and models[0].created > 0
    with pytest.raises(openai.NotFoundError, match="not installed"):  # the agent routes by `model` (ADR 0021)
        client.chat.completions.create(model="whatever", messages=MSGS, max_tokens=10)
    r = client.chat.completions.create(model=mn, messages=MSGS, max_tokens=10)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want_text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want)

    chunks = list(client.chat.completions.create(model=mn, messages=MSGS, max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason

    chunks = list(client.chat.completions.create(model=mn, messages=MSGS, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want)
    assert all(c.usage is None for c in chunks[:-1])

    # a stop text spanning tokens: neither it nor anything after it, streamed or not
    assert len(want_text) >= 8, want_text
    stop = want_text[3:7]
    cut = want_text[:want_text.index(stop)]
    r4 = client.chat.completions.create(model=mn, messages=MSGS, max_tokens=10, stop=[stop, "\x00"])
    assert r4.choices[0].message.content == cut and r4.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=mn, messages=MSGS, max_tokens=10, stream=True, stop=stop))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut

    # every common optional field at once: accepted, and the answer is the plain greedy one
    r2 = client.chat.completions.create(model=mn, messages=MSGS, logprobs=True, top_logprobs=2, **CHAT_OPTIONAL)
    assert r2.choices[0].message.content == want_text
    # logprobs: the model's own distribution at each step
    lps = r2.choices[0].logprobs.content
    assert len(lps) == len(want)
    full = ref.logits(ids + want[:-1])[len(ids) - 1:]
    z = full.astype(np.float64)
    ref_lp = z - (z.max(-1, keepdims=True) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)))
    for k, (entry, t) in enumerate(zip(lps, want)):
        assert entry.logprob == pytest.approx(ref_lp[k, t], abs=2e-3)
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token

    # developer messages and text parts, as newer clients send them
    r3 = client.chat.completions.create(model=mn, max_tokens=10, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "Answer "}, {"type": "text", "text": "briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": "What does add do?"}]}])
    assert r3.choices[0].message.content == want_text


def test_penalties_and_logit_bias_change_the_answer_as_the_sdk_does(served):
    mn = served["name"]  # the installed model: requests name it
    client = _client(served["port"])
    sampler = Sampler(presence_penalty=1.5, frequency_penalty=0.8)
    ref, _, want = _reference(served["model_dir"], MSGS, 12, sampler)
    r = client.chat.completions.create(model=mn, messages=MSGS, max_tokens=12, presence_penalty=1.5,
                                       frequency_penalty=0.8)
    assert r.choices[0].message.content == ref.tokenizer.decode(want)

    target = ref.tokenizer.token_to_id("return") or 40
    r = client.chat.completions.create(model=mn, messages=MSGS, max_tokens=3, logit_bias={str(target): 100})
    assert r.choices[0].message.content == ref.tokenizer.decode([target] * 3)
    streamed = list(client.chat.completions.create(model=mn, messages=MSGS, max_tokens=3, stream=True, logprobs=True,
                                                   logit_bias={str(target): 100}))
    got = [lp.token for c in streamed if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    assert len(got) == 3


def test_values_we_cannot_honour_are_clear_400s(served):
    mn = served["name"]  # the installed model: requests name it
    client = _client(served["port"])
    cases = [(dict(n=2), "n=1"), (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
             (dict(response_format={"type": "json_object"}), "json_object"),
             (dict(logit_bias={"999999": 5}), "outside the vocabulary"),
             (dict(top_logprobs=2), "logprobs"), (dict(modalities=["text", "audio"]), "modalities")]
    for kwargs, words in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=mn, messages=MSGS, max_tokens=2, **kwargs)
        assert words in str(e.value), (kwargs, str(e.value))
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model=mn, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}])
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model=mn, prompt="def", suffix="end", max_tokens=2)


def test_text_completions(served):
    mn = served["name"]  # the installed model: requests name it
    client = _client(served["port"])
    ref = load_model(served["model_dir"])
    prompt = "def add(a, b):"
    ids = ref.tokenizer.encode(prompt).ids
    if ref.cfg.bos_token_id is not None and ids[:1] != [ref.cfg.bos_token_id]:
        ids = [ref.cfg.bos_token_id] + ids
    want = ref.generate(ids, 6)
    want_text = ref.tokenizer.decode(want)

    r = client.completions.create(model=mn, prompt=prompt, max_tokens=6, presence_penalty=0, frequency_penalty=0,
                                  user="u", seed=1, n=1, best_of=1, logit_bias={}, stop=["\x00"])
    assert r.object == "text_completion" and r.choices[0].text == want_text
    assert r.usage.completion_tokens == len(want)
    # a negative seed (OpenAI's seed is a signed 64-bit integer) is the same 64 bits as the SDK's seed
    sampled = ref.generate(ids, 6, temperature=0.9, seed=2**64 - 5)
    r = client.completions.create(model=mn, prompt=prompt, max_tokens=6, temperature=0.9, seed=-5)
    assert r.choices[0].text == ref.tokenizer.decode(sampled)
    r = client.completions.create(model=mn, prompt=prompt, max_tokens=6, echo=True)
    assert r.choices[0].text == prompt + want_text
    r = client.completions.create(model=mn, prompt=prompt, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(want) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)  # a dict: two tokens of the same text share a key
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    text = "".join(c.choices[0].text for c in client.completions.create(model=mn, prompt=prompt, max_tokens=6,
                                                                         stream=True))
    assert text == want_text


def test_embeddings_base64_and_float(served, bundles):
    import torch
    import transformers

    from tests.sdk.test_runtime_encoder_mlp import _bert_tokenizer

    root = served["root"]
    torch.manual_seed(0)
    bcfg = transformers.BertConfig(vocab_size=400, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=192, max_position_embeddings=64)
    transformers.BertModel(bcfg, add_pooling_layer=False).save_pretrained(root / "bert-hf")
    _bert_tokenizer(root / "bert-hf")
    enc_dir = convert(read_hf(root / "bert-hf"), root / "enc", precision="ternary")
    en = load_model(enc_dir).manifest.name  # installed beside the chat model: requests name it
    enc = package_model(enc_dir, [HOST_DEVICE], "2.0.0", [bundles.key], root / "d2", release=41,
                        options=bundles.opts)[0].path
    assert cli("agent", "install", enc, "--config", served["cfg"]).returncode == 0

    client = _client(served["port"])
    texts = ["the sensor reads hot", "door is open"]
    want = load_model(enc_dir).embed(texts)
    r = client.embeddings.create(model=en, input=texts)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert np.array_equal(got, want) and r.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model=en, input=texts).http_response.json()
    assert isinstance(raw["data"][0]["embedding"], str)  # base64 on the wire
    r = client.embeddings.create(model=en, input=texts, encoding_format="float", user="u", dimensions=96)
    assert np.array_equal(np.array([d.embedding for d in r.data], dtype=np.float32), want)
    r = client.embeddings.create(model=en, input=[[2, 5, 6, 3]], encoding_format="float")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 96
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=en, input=texts, dimensions=32)
