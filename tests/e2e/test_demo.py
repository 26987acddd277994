"""`make demo` on this machine: the whole loop, quick settings (the language model trains with the
quick recipe: seconds, not a minute), into a temporary directory, with ``--keep-open``: the console's
URL and token are printed, the console answers while the fleet is kept open, and Ctrl-C stops every
process the demo started.

Every summary line is checked against what happened: the line is the one its recorded facts give,
and the facts are checked against the fleet, the agents (asked again while they are kept open)
and their logs."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bitnet_edge import demo_llm
from bitnet_edge import demo_summary as say

REPO = Path(__file__).resolve().parents[2]


def _console_overview(url: str, token: str) -> str:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/login", urlencode({"token": token, "next": "/"}),
                 {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{u.netloc}"})
    r = conn.getresponse()
    r.read()
    assert r.status == 303, r.status
    cookie = r.getheader("Set-Cookie").split(";")[0]
    conn.request("GET", "/", headers={"Cookie": cookie})
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 200
    return body


def _get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    body = json.loads(r.read() or b"{}")
    conn.close()
    return r.status, body


def _bne_json(*args):
    p = subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, args), "--json"], capture_output=True,
                       text=True, timeout=120)
    return json.loads(p.stdout)


def _check_while_open(out: Path, summary: dict) -> dict:
    """Ask the fleet and the agents again what the demo's facts say they did."""
    facts = summary["facts"]
    fleet = out / "fleet"
    for key, ro in facts["rollouts"].items():
        st = _bne_json("fleet", "rollout", "status", ro["id"], "--data", fleet)
        if ro["state"] == "paused":  # since rolled back by the operator
            assert st["state"] == facts["rollback"]["state"], key
            continue
        assert (st["state"], st["done"], st["devices"]) == (ro["state"], ro["done"], ro["devices"]), key
        assert {m["device_id"]: m["status"] for m in st["members"]} == ro["members"], key
    published = {b["sha256"] for r in _bne_json("fleet", "releases", "--data", fleet)
                 for b in r["bundles"].values()}
    assert facts["tampered"]["sha256"] not in published  # the fleet did refuse it
    ports = {}
    for dev in facts["mlp_inference"]:
        toml = (out / "agents" / dev / "agent.toml").read_text()
        ports[dev] = int(re.search(r"^port = (\d+)", toml, re.M).group(1))
    llm = facts["llm_rollout"]
    assert "skipped" not in llm, llm.get("skipped")
    name = llm["model"]
    fleet_now = {r["id"]: {m["name"]: (m.get("installed") or {}).get("version") for m in r.get("models") or []}
                 for r in _bne_json("fleet", "devices", "--data", fleet)}
    for dev, models in llm["fleet_view"].items():  # the same models (digits has been updated since)
        assert set(fleet_now[dev]) == set(models) and fleet_now[dev][name] == models[name], (dev, fleet_now)
    for dev, port in ports.items():
        code, models = _get(port, "/v1/models")
        assert code == 200 and sorted(m["id"] for m in models["data"]) == llm["listed"][dev]
        code, health = _get(port, "/v1/health")
        assert code == 200 and f'"{facts["rollback"]["serving"][dev]}"' in json.dumps(health), (dev, health)
        again = demo_llm.stream_chat(port, name, llm["question"], lambda _p: None)
        assert again.error is None and again.text == llm["chats"][dev]["text"], dev  # seeded: the same reply
    return ports


def test_make_demo(tmp_path):
    venv = Path(sys.executable).parent.parent
    out = tmp_path / "demo-output"
    proc = subprocess.Popen(["make", "demo", f"VENV={venv}", f"DEMO_ARGS=--quick --keep-open --out {out}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    open_checks: dict = {}
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 1500  # minutes on a quiet machine; far longer on a loaded one
        while not re.search(r"press\s+Ctrl-C\s+to\s+stop\s+everything", "".join(lines)):
            assert proc.poll() is None, "".join(lines)[-6000:]
            assert time.monotonic() < deadline, "".join(lines)[-6000:]
            time.sleep(1)
        text = "".join(lines)
        m = re.search(r"fleet console:\s+(http://127\.0\.0\.1:\d+/)\s+token:\s+(\S+)", text)
        assert m, text[-4000:]
        overview = _console_overview(m.group(1), m.group(2))
        for dev in ("edge-v4-01", "edge-v3-02", "edge-v2-03"):
            assert f'data-device="{dev}" data-online="true"' in overview
        open_checks["ports"] = _check_while_open(out, json.loads((out / "summary.json").read_text()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        proc.wait(120)
        reader.join(10)
    text = "".join(lines)
    summary = json.loads((out / "summary.json").read_text())
    lines_, facts = summary["lines"], summary["facts"]
    assert open_checks.get("ports"), "the checks while the fleet was open did not run"
    ro = facts["rollouts"]
    # the lines are what the facts say ...
    assert lines_["digits 1.0.0"] == f"{say.rollout_line(ro['digits 1.0.0'])}; 3 bundles published"
    assert lines_["digits 1.1.0 (delta)"].startswith(say.rollout_line(ro["digits 1.1.0"]) + "; ")
    assert lines_["digits 2.0.0"] == say.rollout_line(ro["digits 2.0.0"])
    t = facts["tampered"]
    assert lines_["tampered bundle"] == say.tampered_line(t["fleet"], t["agents"])
    assert lines_["rollback"] == say.rollback_line(facts["rollback"]["state"], facts["rollback"]["serving"])
    assert lines_["language model"] == say.llm_line(facts["llm"])
    llm = facts["llm_rollout"]
    assert lines_["language model rollout"] == say.llm_rollout_line(
        llm["model"], ro[f"{llm['model']} 1.0.0"], llm["listed"], llm["chats"], "digits", llm["mlp_ok"])
    assert lines_["models per device"] == say.fleet_models_line(llm["fleet_view"], ["digits", llm["model"]])
    # ... and the facts are what happened (and what the demo is meant to show)
    assert (ro["digits 1.0.0"]["state"], ro["digits 1.0.0"]["done"]) == ("completed", 3)
    assert ro["digits 1.1.0"]["state"] == "completed"
    assert ro["digits 2.0.0"]["state"] == "paused"
    assert set(facts["rollback"]["serving"].values()) == {"1.1.0"}
    assert t["fleet"]["refused"] and "bundle rejected" in t["fleet"]["detail"]
    logs = out / "logs"
    fleet_log = (logs / "fleet.log").read_text()
    for dev, o in t["agents"].items():  # each agent's own log and the fleet's record of its report
        assert (o["result"], o["reason"]) == ("rejected", "corrupt"), (dev, o)
        assert f"install rejected: {o['reason']}: " in (logs / f"agent-{dev}.log").read_text()
        assert f"device {dev}: bundle {t['sha256'][:12]} rejected: {o['reason']}" in fleet_log
    report = {m["name"]: m for m in json.loads((out / "llm" / "lm-training.json").read_text())["models"]}
    for row in ("ternary", "float32", "ternary-ptq"):
        assert facts["llm"]["models"][row]["heldout_ppl"] == report[row]["heldout_ppl"]
    assert ro[f"{llm['model']} 1.0.0"]["state"] == "completed"
    assert all(llm["mlp_ok"].values()) and len(llm["chats"]) == 3
    assert llm["fleet_view"] == {d: {"digits": "1.0.0", llm["model"]: "1.0.0"} for d in llm["chats"]}
    for dev, chat in llm["chats"].items():
        assert chat["done"] and chat["error"] is None and chat["pieces"] >= 1
        assert re.sub(r"\s+", "", chat["text"]) in re.sub(r"\s+", "", text)  # printed as it streamed
    timing = json.loads((out / "demo-timing.json").read_text())
    assert timing["seconds"]["total"] > 0 and set(summary["seconds"]) == set(timing["seconds"])
    for step in ("1. Train a ternary MLP", "2. Train a ternary language model", "3. Convert", "4. Start",
                 "5. Publish", "6. Roll out the language model", "7. digits release 1.1.0", "8. A tampered",
                 "9. Summary"):
        assert step in text
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "agent-edge-v2-03.log", "agent-edge-v3-02.log", "agent-edge-v4-01.log", "fleet.log"]
    # the fleet's log says what happened, one line each (text format)
    assert "[publish]" in fleet_log and "[rollout.state]" in fleet_log and "[device.failed]" in fleet_log
    assert re.search(r"device edge-v\d-\d\d: digits 2\.0\.0 failed .*health_failed: golden inference took", fleet_log)
    # every process it started is gone
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps
