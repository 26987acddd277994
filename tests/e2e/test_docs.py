"""Every command in the README runs (docs test).

The README's journeys (blocks marked ``<!-- docs-test: journey NAME -->``) run in order in one
workspace, as a reader would type them: backslash continuations, heredocs and ``&`` background
processes included.  The workspace holds what the commands assume exists, written by
docs/readme_inputs.py (the script the README names for them).  ``make demo`` is run by
tests/e2e/test_demo.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"<!-- docs-test: journey (\w+) -->\n```(sh|python)\n(.*?)```", re.S)
#: blocks whose commands another test runs (a fresh venv per role, a minute of training):
#: ``<!-- docs-test: covered-by tests/PATH.py::TEST -->`` names it
COVERED = re.compile(r"<!-- docs-test: covered-by (tests/[\w/]+\.py)::(\w+) -->\n```(sh|python)\n", re.S)
#: background commands and the port that tells they are up
READY = {"agent run": 8700, "fleet serve": 8780}


def journeys() -> list[tuple[str, str, str]]:
    return BLOCK.findall(README)


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuations joined, heredocs kept whole, comments kept (bash drops them)."""
    out, lines, i = [], block.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        m = re.search(r"<<'?(\w+)'?\s*$", line)
        if m:
            end = lines.index(m.group(1), i + 1)
            out.append("\n".join(lines[i:end + 1]))
            i = end + 1
            continue
        while line.rstrip().endswith("\\"):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        if line.strip():
            out.append(line)
        i += 1
    return out


def _port_open(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("transformers")  # hf-bitnet/ is written by transformers itself
    ws = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # the README's inputs, made by the script the README names for them
    res = subprocess.run([sys.executable, str(REPO / "docs" / "readme_inputs.py"), str(ws)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    bg: list[subprocess.Popen] = []
    yield ws, env, bg
    for p in bg:
        os.killpg(p.pid, signal.SIGTERM)
    for p in bg:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_readme_marks_every_command_block():
    blocks = re.findall(r"```(sh|python)\n", README)
    covered = COVERED.findall(README)
    assert len(journeys()) + len(covered) == len(blocks) - 1, \
        "every sh/python block but the `make` one is a docs-test journey or names the test that runs it"
    for path, test, _ in covered:  # the named test exists
        assert re.search(rf"^def {test}\(", (REPO / path).read_text(), re.M), (path, test)
    assert [j[0] for j in journeys()] == ["build", "models", "python", "agent", "fleet"]


@pytest.mark.parametrize("name", ["build", "models", "python", "agent", "fleet"])
def test_journey(name, workspace):
    ws, env, bg = workspace
    lang, block = next((lang, b) for n, lang, b in journeys() if n == name)
    if lang == "python":
        res = subprocess.run([sys.executable, "-c", block], cwd=ws, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        return
    for cmd in commands(block):
        if cmd.rstrip().split("#")[0].rstrip().endswith("&"):
            line = cmd.split("#")[0].rstrip()[:-1]
            p = subprocess.Popen(["bash", "-c", line], cwd=ws, env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(ws / f"bg-{len(bg)}.log", "w"), start_new_session=True)
            bg.append(p)
            port = next(v for k, v in READY.items() if k in line)
            deadline = time.monotonic() + 60
            while not _port_open(port):
                assert p.poll() is None and time.monotonic() < deadline, (ws / f"bg-{len(bg) - 1}.log").read_text()
                time.sleep(0.2)
            continue
        res = subprocess.run(["bash", "-c", cmd], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"$ {cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if cmd.startswith("curl") and "/v1/infer" in cmd:
            assert len(json.loads(res.stdout)["classes"]) == 2
    if name == "fleet":  # the rollout reaches the README's agent
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = json.loads(subprocess.run(["bitnet-edge", "fleet", "rollout", "status", "--data", "fleet-data",
                                            "--json"], cwd=ws, env=env, capture_output=True, text=True).stdout)
            if st and st[0]["state"] in ("completed", "paused"):
                break
            time.sleep(0.5)
        assert st[0]["devices"] >= 1


def test_the_readme_documents_every_input_it_uses():
    """Each file the walkthrough reads is in the README's inputs table and made by the script."""
    used = {"digits.npz", "hf-bitnet/", "sensor.npz", "calib.npy", "digits-test.npy", "digit.json"}
    table = README.split("### Inputs the walkthrough uses", 1)[1].split("\n#", 1)[0]
    for name in used:
        assert name in " ".join(c for b in BLOCK.findall(README) for c in b), name
        assert f"| `{name}`" in table, name
    assert "docs/readme_inputs.py" in table and (REPO / "docs" / "readme_inputs.py").is_file()
