"""/v1/chat/completions through a real agent and a signed bundle of a decoder that carries a chat
template (a stdlib-LM-shaped model: our tokenizer and chat format, untrained weights)."""

import http.client
import json
from pathlib import Path

import numpy as np

from tests.support.agent_fixtures import HOST_DEVICE, Daemon, bundles, cli, free_port, write_config  # noqa: F401
from bitnet_edge.packagers.builder import package_model
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.chat import render_chat
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.hf import read_hf
from bitnet_edge.sdk.train import export, lm
from bitnet_edge.sdk.train import tokenizer as tk


def _chat_model(root):
    text = ["def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n" * 40, "import os\nprint(os.sep)\n" * 40]
    tok = tk.train_tokenizer(text, 300)
    cfg = lm.LmConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=1, max_position=128)
    hf = export.export_hf(root / "hf", lm.init_params(cfg, 7), cfg, tok, ternary=True, name="chat-lm")
    return convert(read_hf(hf), root / "model", precision="ternary", embeddings="int8")


def _post_stream(port: int, path: str, body: dict) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
    conn.request("POST", path, body=data, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_chat_completions_plain_and_streamed(tmp_path, bundles):
    model_dir = _chat_model(tmp_path)
    bundle = package_model(model_dir, [HOST_DEVICE], "1.0.0", [bundles.key], tmp_path / "dist", release=20,
                           options=bundles.opts)[0].path
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What does add do?"}]
    ref = load_model(model_dir)
    ids = ref.tokenizer.encode(render_chat(ref.manifest.chat_template, msgs), add_special_tokens=False).ids
    want = ref.generate(ids, 12, stop=[ref.tokenizer.token_to_id(tk.END)])
    want_text = ref.tokenizer.decode(want)

    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port)
    try:
        assert cli("agent", "install", bundle, "--config", cfg).returncode == 0
        _, st = d.admin("GET", "/v1/admin/status")
        if st["memory"]["zygote_pid"]:  # a model with a tokenizer: the zygote imported tokenizers before forking
            assert "/tokenizers" in Path(f"/proc/{st['memory']['zygote_pid']}/maps").read_text()
        code, out = d.request("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 12})
        assert code == 200, out
        assert out["object"] == "chat.completion"
        choice = out["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": want_text}
        assert choice["finish_reason"] == ("stop" if want[-1] in ref.cfg.eos_token_ids else "length")
        assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(want),
                                "total_tokens": len(ids) + len(want)}

        events = _post_stream(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "stream": True})
        assert all(e["object"] == "chat.completion.chunk" for e in events)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        assert text == want_text and events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
        assert events[-1]["usage"] == out["usage"]

        code, err = d.request("POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]})
        assert code == 400 and "role" in err["error"]["message"]
        code, err = d.request("POST", "/v1/chat/completions", {"messages": []})
        assert code == 400
    finally:
        d.stop()


def test_chat_needs_a_template(tmp_path):
    """A decoder converted without a chat template says so (no guessing a format)."""
    model_dir = _chat_model(tmp_path)
    man = json.loads((model_dir / "manifest.json").read_text())
    assert man["chat_template"]["turns"]["user"]["prefix"] == tk.USER
    man["chat_template"] = None
    (model_dir / "manifest.json").write_text(json.dumps(man))
    assert load_model(model_dir).manifest.chat_template is None
    assert np.isfinite(load_model(model_dir).logits([0, 3, 7])).all()
