"""The demo's summary lines say what the facts show, including when something went wrong."""

from bitnet_edge import demo_summary as say
from bitnet_edge.demo_llm import parse_sse

DEVS = ["a", "b", "c"]


def test_tampered_line_follows_each_outcome():
    refused = {"refused": True, "reason": "corrupt"}
    rej = {"result": "rejected", "reason": "corrupt"}
    assert say.tampered_line(refused, {d: rej for d in DEVS}) == \
        "refused by the fleet (corrupt); refused by all 3 agents (corrupt)"
    line = say.tampered_line({"refused": False}, {"a": rej, "b": {"result": "installed", "reason": "ok"},
                                                  "c": {"error": "agent-api: HTTP 500"}})
    assert line.startswith("ACCEPTED by the fleet")
    assert "INSTALLED on b" in line and "refused (corrupt) on a" in line
    assert "no outcome (agent-api: HTTP 500) on c" in line
    mixed = say.tampered_line(refused, {"a": rej, "b": {"result": "rejected", "reason": "bad_signature"}})
    assert "refused (bad_signature) on b" in mixed and "refused (corrupt) on a" in mixed and "all" not in mixed
    assert say.tampered_line(refused, {}) == "refused by the fleet (corrupt); no agent was asked"


def test_rollout_and_rollback_lines():
    st = {"state": "paused", "done": 2, "devices": 3, "counts": {"succeeded": 2, "failed": 1},
          "reason": "failure-threshold"}
    assert say.rollout_line(st) == "paused: 2/3 devices (1 failed, 2 succeeded); failure-threshold"
    assert say.rollout_line({"state": "completed", "done": 3, "devices": 3, "counts": {}}) == "completed: 3/3 devices"
    assert say.rollback_line("rolled_back", {d: "1.1.0" for d in DEVS}) == "rolled_back: every device serves 1.1.0"
    assert say.rollback_line("rolled_back", {"a": "1.1.0", "b": "2.0.0"}) == \
        "rolled_back: a serves 1.1.0, b serves 2.0.0"


def test_llm_lines():
    m = {"ternary": {"heldout_ppl": 112.33, "weights_bytes": 352312},
         "float32": {"heldout_ppl": 102.26, "weights_bytes": 2236456}, "ternary-ptq": {"heldout_ppl": 155.7}}
    assert say.llm_line({"models": m}) == ("held-out perplexity ternary QAT 112.3 vs float32 102.3 (post-training "
                                           "ternary 155.7); weights 352,312 vs 2,236,456 bytes (6.3x smaller)")
    st = {"state": "completed", "done": 3, "devices": 3, "counts": {"succeeded": 3}}
    ok = {"done": True, "error": None, "pieces": 5}
    listed = {d: ["digits", "lm"] for d in DEVS}
    assert say.llm_rollout_line("lm", st, listed, {d: ok for d in DEVS}, "digits", {d: True for d in DEVS}) == (
        "completed: 3/3 devices (3 succeeded); lm and digits listed on all 3 agents; streamed chat replies from "
        "all 3 agents; digits kept serving on all 3 agents")
    chats = {"a": ok, "b": {"done": False, "error": "HTTP 503: no_model", "pieces": 0}, "c": {**ok, "pieces": 0}}
    line = say.llm_rollout_line("lm", st, {"a": ["digits", "lm"], "b": ["lm"], "c": ["digits", "lm"]}, chats,
                                "digits", {"a": True, "b": False, "c": True})
    assert "listed on 2 of 3 agents (not b)" in line
    assert "streamed chat replies from 1 of 3 agents (not b, c)" in line
    assert "digits kept serving on 2 of 3 agents (not b)" in line


def test_fleet_models_line():
    view = {d: {"digits": "1.0.0", "lm": "1.0.0"} for d in DEVS}
    assert say.fleet_models_line(view, ["digits", "lm"]) == "digits 1.0.0 and lm 1.0.0 on all 3 devices (fleet devices)"
    view["b"] = {"digits": "1.1.0"}
    assert say.fleet_models_line(view, ["digits", "lm"]) == \
        "digits 1.0.0/1.1.0 and lm -/1.0.0 on 2 of 3 devices (not b) (fleet devices)"


def test_parse_sse():
    lines = [b'data: {"a": 1}\n', b"\n", b": comment\n", b'data: {"b": 2}\r\n', b"data: [DONE]\n", b'data: {"c": 3}\n']
    assert list(parse_sse(lines)) == [{"a": 1}, {"b": 2}, "[DONE]"]
