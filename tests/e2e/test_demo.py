"""`make demo` on this machine: the whole loop, quick settings, into a temporary directory."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_demo(tmp_path):
    venv = Path(sys.executable).parent.parent
    out = tmp_path / "demo-output"
    res = subprocess.run(["make", "demo", f"VENV={venv}", f"DEMO_ARGS=--quick --out {out}"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["release 1.0.0"].startswith("completed: 3/3")
    assert "completed" in summary["release 1.1.0 (delta)"]
    assert summary["tampered bundle"] == "refused by the fleet and by every agent"
    assert summary["release 2.0.0"].startswith("paused")
    assert summary["rollback"].endswith("every device serves 1.1.0")
    for step in ("1. Train", "2. Convert", "3. Start", "4. Publish", "5. Release 1.1.0", "6. A tampered", "7. Summary"):
        assert step in res.stdout
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "agent-edge-v2-03.log", "agent-edge-v3-02.log", "agent-edge-v4-01.log", "fleet.log"]
    # every process it started is gone
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps
