"""The local API for decoder and encoder bundles: /v1/completions (plain and streaming) and
/v1/embeddings, through a real agent daemon and a real signed bundle of each."""

import json

import numpy as np
import pytest

from tests.support.agent_fixtures import HOST_DEVICE, Daemon, bundles, cli, free_port, write_config  # noqa: F401
from tests.support.hf_fixtures import save_bitnet_float
from bitnet_edge.packagers.builder import package_model
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import read_hf


def _stream(port: int, body: dict) -> list[dict]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode()
    conn.request("POST", "/v1/completions", body=data, headers={"Content-Type": "application/json",
                                                                 "Content-Length": str(len(data))})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_completions_and_embeddings_over_the_local_api(tmp_path, bundles):
    from tests.sdk.test_runtime_encoder_mlp import _bert_tokenizer  # noqa: F401  (tiny tokenizer builder)
    import transformers
    import torch

    dec_dir = convert(read_hf(save_bitnet_float(tmp_path / "hf")), tmp_path / "dec", precision="ternary")
    dec = package_model(dec_dir, [HOST_DEVICE], "1.0.0", [bundles.key], tmp_path / "d1", release=10,
                        options=bundles.opts)[0].path
    torch.manual_seed(0)
    bert_cfg = transformers.BertConfig(vocab_size=400, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=192, max_position_embeddings=64)
    transformers.BertModel(bert_cfg, add_pooling_layer=False).save_pretrained(tmp_path / "bert-hf")
    enc_dir = convert(read_hf(tmp_path / "bert-hf"), tmp_path / "enc", precision="ternary")
    enc = package_model(enc_dir, [HOST_DEVICE], "2.0.0", [bundles.key], tmp_path / "d2", release=11,
                        options=bundles.opts)[0].path

    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port)
    try:
        assert cli("agent", "install", dec, "--config", cfg).returncode == 0
        prompt = [1, 17, 250, 33, 7]
        want = load_model(dec_dir).generate(prompt, 6, stop=[])
        code, out = d.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 6})
        assert code == 200, out
        ch = out["choices"][0]
        assert ch["token_ids"] == want[: len(ch["token_ids"])] and ch["finish_reason"] in ("length", "stop")
        assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": len(ch["token_ids"]),
                                "total_tokens": 5 + len(ch["token_ids"])}
        events = _stream(port, {"prompt": prompt, "max_tokens": 6, "stream": True})
        streamed = [e["choices"][0]["token_ids"][0] for e in events if e["choices"][0]["finish_reason"] is None]
        assert streamed == ch["token_ids"] and events[-1]["choices"][0]["finish_reason"] == ch["finish_reason"]
        code, err = d.request("POST", "/v1/completions", {"prompt": "hello", "max_tokens": 2})
        assert code == 400 and "tokenizer" in err["error"]["message"]
        code, err = d.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 100000})
        assert code == 400
        code, err = d.request("POST", "/v1/infer", {"inputs": [[1.0]]})
        assert code == 400 and err["error"]["type"] == "wrong_model"

        assert cli("agent", "install", enc, "--config", cfg).returncode == 0  # a second model beside the first
        seqs = [[2, 45, 67, 3], [2, 11, 3]]
        code, err = d.request("POST", "/v1/embeddings", {"input": seqs})  # two models: which one?
        assert code == 400 and err["error"]["type"] == "model_required" and err["error"]["installed"] == [
            "bert-hf", "hf"]
        code, out = d.request("POST", "/v1/embeddings", {"input": seqs, "model": "bert-hf"})
        assert code == 200, out
        got = np.array([row["embedding"] for row in out["data"]], np.float32)
        np.testing.assert_allclose(got, load_model(enc_dir).embed(seqs), rtol=1e-5, atol=1e-6)
        assert out["usage"]["prompt_tokens"] == 7
    finally:
        d.stop()
