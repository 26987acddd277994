"""`make demo` on this machine: the whole loop, quick settings, into a temporary directory, with
``--keep-open``: the console's URL and token are printed, the console answers while the fleet is
kept open, and Ctrl-C stops every process the demo started."""

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


def test_make_demo(tmp_path):
    venv = Path(sys.executable).parent.parent
    out = tmp_path / "demo-output"
    proc = subprocess.Popen(["make", "demo", f"VENV={venv}", f"DEMO_ARGS=--quick --keep-open --out {out}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
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
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        proc.wait(120)
        reader.join(10)
    text = "".join(lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["release 1.0.0"].startswith("completed: 3/3")
    assert "completed" in summary["release 1.1.0 (delta)"]
    assert summary["tampered bundle"] == "refused by the fleet and by every agent"
    assert summary["release 2.0.0"].startswith("paused")
    assert summary["rollback"].endswith("every device serves 1.1.0")
    for step in ("1. Train", "2. Convert", "3. Start", "4. Publish", "5. Release 1.1.0", "6. A tampered", "7. Summary"):
        assert step in text
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "agent-edge-v2-03.log", "agent-edge-v3-02.log", "agent-edge-v4-01.log", "fleet.log"]
    # the fleet's log says what happened, one line each (text format)
    fleet_log = (out / "logs" / "fleet.log").read_text()
    assert "[publish]" in fleet_log and "[rollout.state]" in fleet_log and "[device.failed]" in fleet_log
    assert re.search(r"device edge-v\d-\d\d: digits 2\.0\.0 failed .*health_failed: golden inference took", fleet_log)
    # every process it started is gone
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps
