"""The demo's language-model part without a fleet: train (quick recipe), package, install on a real
agent serving only it (scalar kernels, the demo gateway's 50 ms health budget), chat streamed
through the demo's own client, and the summary line computed from the training report."""

import io
import json

from rich.console import Console

from tests.support.agent_fixtures import HOST_DEVICE, Daemon, bundles, cli, free_port  # noqa: F401
from bitnet_edge import demo_llm
from bitnet_edge import demo_summary as say
from bitnet_edge.packagers.builder import package_model
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.chat import render_chat
from bitnet_edge.sdk.train import tokenizer as tk
from bitnet_edge.sdk.train.report import REPORT_FILE


def test_demo_llm_trains_packages_and_chats_streamed(tmp_path, bundles):
    log = io.StringIO()
    report = demo_llm.train(tmp_path / "llm", quick=True, console=Console(file=log, width=120))
    assert "reading the standard library" in log.getvalue()
    model_dir = next(m.model_dir for m in report.models if m.name == "ternary")
    name = json.loads((tmp_path / "llm" / "models" / "ternary" / "manifest.json").read_text())["name"]
    b = package_model(model_dir, [HOST_DEVICE], "1.0.0", [bundles.key], tmp_path / "dist", release=1,
                      options=bundles.opts)[0]

    # the figures shown are the report's (written by train_lm), the line is computed from them
    facts = demo_llm.llm_facts(report, [{"target": b.target, "size": b.size}])
    on_disk = {m["name"]: m for m in json.loads((tmp_path / "llm" / REPORT_FILE).read_text())["models"]}
    for row in ("ternary", "float32", "ternary-ptq"):
        assert facts["models"][row]["heldout_ppl"] == on_disk[row]["heldout_ppl"]
        assert facts["models"][row]["weights_bytes"] == on_disk[row]["weights_bytes"]
    assert facts["bundles"] == {b.target: b.path.stat().st_size}
    line = say.llm_line(facts)
    t, f = on_disk["ternary"], on_disk["float32"]
    assert f"ternary QAT {t['heldout_ppl']:.1f} vs float32 {f['heldout_ppl']:.1f}" in line
    assert f"{t['weights_bytes']:,} vs {f['weights_bytes']:,} bytes" in line
    assert f["weights_bytes"] > 3 * t["weights_bytes"]  # int8 embeddings + 2-bit projections vs float32
    table = Console(file=io.StringIO(), width=200)
    table.print(demo_llm.ppl_table(facts))
    assert f"{t['heldout_ppl']:.2f}" in table.file.getvalue()

    # what the agent must answer: the same tokens our runtime samples with the same seed
    question = demo_llm.chat_question(report)
    assert any(question.startswith(f"What does the {k}") for k in ("function", "class", "method"))
    ref = load_model(model_dir)
    end = ref.tokenizer.token_to_id(tk.END)
    ids = ref.tokenizer.encode(render_chat(ref.manifest.chat_template, [{"role": "user", "content": question}]),
                               add_special_tokens=False).ids
    s = demo_llm.SAMPLING
    want = ref.generate(ids, demo_llm.MAX_TOKENS, temperature=s["temperature"], top_k=s["top_k"], seed=s["seed"],
                        stop=[end])

    port = free_port()
    data = tmp_path / "data"
    cfg = tmp_path / "agent.toml"
    cfg.write_text("\n".join([
        'device_id = "gw-1"', f'data_dir = "{data}"', f'trust = ["{bundles.pub}"]', "[api]", f"port = {port}",
        "[health]", "max_latency_ms = 50"]) + "\n")
    d = Daemon(cfg, port, env={"BITNET_EDGE_KERNEL": "ref"})  # the demo's x86-64-v2 gateway
    try:
        r = cli("agent", "install", b.path, "--config", cfg, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["result"] == "installed"
        pieces: list[str] = []
        res = demo_llm.stream_chat(port, name, question, pieces.append)
        assert res.error is None and res.done and res.status == 200, res
        assert res.model == name
        assert res.text == ref.tokenizer.decode(want) and "".join(pieces) == res.text
        assert res.pieces == len(pieces) >= 2  # arrived in pieces, not one body
        assert res.usage["completion_tokens"] == len(want)
        assert res.finish_reason == ("stop" if want[-1] == end else "length")

        # a refused install through the running agent is reported as its outcome (the demo records it)
        r2 = package_model(model_dir, [HOST_DEVICE], "1.0.1", [bundles.key], tmp_path / "dist2", release=2,
                           options=bundles.opts)[0]
        bad = bytearray(r2.path.read_bytes())
        bad[len(bad) // 2] ^= 1
        (tmp_path / "bad.bundle").write_bytes(bytes(bad))
        r = cli("agent", "install", tmp_path / "bad.bundle", "--config", cfg, "--json")
        out = json.loads(r.stdout)
        assert r.returncode != 0 and out["result"] == "rejected" and out["reason"] == "corrupt", out
        res2 = demo_llm.stream_chat(port, name, question, lambda _p: None)
        assert res2.text == res.text  # still serving the good one

        # what the demo sees from an agent that cannot answer
        res3 = demo_llm.stream_chat(free_port(), name, question, lambda _p: None, timeout=5)
        assert res3.error and not res3.done and res3.text == ""
    finally:
        d.stop()
