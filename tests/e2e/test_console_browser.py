"""The fleet console in a real headless browser (Debian's chromium over the DevTools protocol)
against a real fleet: `fleet serve` (embedded broker) and three `agent run` processes.

Log in; see the three devices; start a rollout from the form and watch it complete live (no
reload); see a failing device's reason AND detail ("worker uses N MiB, budget 1 MiB"); watch a
device go offline; pause and resume a rollout with the buttons (the same state machine as the CLI,
recorded in the verified audit log); CSRF and unauthenticated requests refused; no script errors,
no CSP violations, no request leaves the console's origin, no horizontal overflow at 1280x800 or
on a phone.  The fleet's and the agents' JSON log lines are checked too.

With ``BNE_CONSOLE_SCREENSHOTS=docs/console`` the screenshots of every page (desktop and phone)
are written there (what docs/console.md shows); otherwise into the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.agent_fixtures import HOST_DEVICE, bundles, free_port  # noqa: F401
from tests.support.browser import Browser
from tests.support.fleet_helpers import wait_for
from tests.support.tools import REPO, require_tool

PAGES = ("overview", "device", "releases", "rollouts", "rollout", "audit")


def _bne(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bitnet_edge", *map(str, args)], **kw)


def _cli_json(*args):
    out = subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, args)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def _json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line is JSON (--log-format json)
    return out


class Agent:
    def __init__(self, root: Path, dev: str, pub: Path, broker: str, tags: list[str], extra: str = "",
                 fleet_data: Path | None = None):
        self.dev, self.root = dev, root / dev
        self.root.mkdir(parents=True)
        self.config = self.root / "agent.toml"
        enrolled = self.root / "enroll"  # the embedded broker admits enrolled devices only
        _cli_json("fleet", "enroll", dev, "--data", fleet_data, "--broker", broker, "--trust", pub, "--out", enrolled,
                  "--agent-data", self.root / "data", "--json")
        self.config.write_text("\n".join([
            f'device_id = "{dev}"', f'data_dir = "{self.root / "data"}"', f'trust = ["{pub}"]',
            f'fleet_keys = ["{enrolled / "desired.pub"}"]',
            f'profile = "{HOST_DEVICE}"', "tags = [" + ", ".join(f'"{t}"' for t in tags) + "]", "metrics_interval = 1",
            "[api]", f"port = {free_port()}", "[health]", "max_latency_ms = 20000", extra,
            "[mqtt]", f'url = "{broker}"', f'username = "{dev}"', f'password_file = "{enrolled / "mqtt.password"}"',
            "reconnect_max = 1.0"]) + "\n")
        self.log = self.root / "agent.jsonl"
        self.proc = None

    def start(self) -> Agent:
        self.proc = _bne("agent", "run", "--config", self.config, "--log-format", "json", stdout=subprocess.DEVNULL,
                         stderr=open(self.log, "a"))
        return self

    def ready(self) -> None:
        wait_for(lambda: '"event": "ready"' in self.log.read_text(), 90, what=f"{self.dev} ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def fleet(tmp_path, bundles):  # noqa: F811
    data = tmp_path / "fleet"
    log = tmp_path / "fleet.jsonl"
    proc = _bne("fleet", "serve", "--data", data, "--mqtt-port", "0", "--api-port", "0", "--chunk-kib", "16",
                "--trust", bundles.pub, "--log-format", "json", stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    agents = []
    try:
        wait_for(lambda: (data / "service.json").exists(), 60, what="fleet service")
        info = json.loads((data / "service.json").read_text())
        for dev, tags, extra in (("edge-a", ["stable", "lab"], ""), ("edge-b", ["stable", "lab"], ""),
                                 ("edge-c", ["gateway", "lab"], "max_rss_mb = 1")):
            agents.append(Agent(tmp_path / "agents", dev, bundles.pub, info["broker"], tags, extra, data).start())
        for a in agents:
            a.ready()
        _cli_json("fleet", "publish", bundles.v1, bundles.v2, "--data", data, "--json")
        yield {"data": data, "api": info["api"], "token": (data / "control.token").read_text().strip(),
               "agents": {a.dev: a for a in agents}, "log": log, "tmp": tmp_path}
    finally:
        for a in agents:
            a.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _shots_dir(tmp_path: Path) -> Path:
    target = os.environ.get("BNE_CONSOLE_SCREENSHOTS")
    return (REPO / target) if target else tmp_path / "screenshots"


def _marker(page) -> None:
    """Tag the loaded document: if it is still tagged later, the page was updated without a reload."""
    page.eval("window.__kept = true")


def test_console_in_a_real_browser(fleet):
    chromium = require_tool("chromium", "chromium")
    base, token, agents = fleet["api"], fleet["token"], fleet["agents"]
    shots = _shots_dir(fleet["tmp"])
    with Browser(chromium, fleet["tmp"]) as browser:
        page = browser.page(1280, 800)

        # ---- not logged in: every page sends to the login page; a wrong token is refused
        page.goto(base + "/rollouts")
        page.loaded("/login")
        assert page.eval("location.search") == "?next=/rollouts"
        page.screenshot(shots / "login-desktop.png")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        page.wait("document.querySelector('.banner-error') !== null", what="wrong-token message")
        assert "not this fleet's control token" in page.text(".banner-error")
        status = page.eval("fetch('/events?view=/').then(r => r.status)", await_promise=True)
        assert status == 401

        # ---- log in: back to the page asked for; the session cookie is out of the scripts' reach
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.loaded("/rollouts")
        (cookie,) = [c for c in page.cookies() if c["name"] == "bne_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.eval("document.cookie") == ""

        # ---- the overview: three devices from the real fleet, online
        page.goto(base + "/")
        page.wait("document.querySelectorAll('tr[data-device][data-online=true]').length === 3", 30,
                  what="three devices online")
        assert {r for r in page.eval("[...document.querySelectorAll('tr[data-device]')].map(r => r.dataset.device)")} \
            == {"edge-a", "edge-b", "edge-c"}
        page.wait("document.getElementById('live-state').dataset.state === 'live'", what="live updates connected")

        # ---- start a rollout from the form and watch it complete without reloading
        ro1 = _start_rollout(page, base, "sensor-mlp 1.0.0", tags="stable", stages="50,100")
        _marker(page)
        page.wait("document.querySelector('#rollout-state').dataset.state === 'completed'", 90,
                  what="rollout 1 completed")
        assert page.eval("window.__kept === true"), "the page reloaded instead of updating live"
        page.wait("Number(document.getElementById('live').dataset.updates || 0) >= 1", what="an update event")
        assert page.eval("[...document.querySelectorAll('tr[data-status=succeeded]')].length") == 2

        # ---- a device that fails its health gate: the reason code AND the detail
        ro2 = _start_rollout(page, base, "sensor-mlp 1.0.0", tags="gateway", stages="100")
        page.wait("document.querySelector('#rollout-state').dataset.state === 'paused'", 90, what="rollout 2 paused")
        failures = page.text("#failures")
        assert "edge-c" in failures and "health_failed" in failures
        assert "budget 1 MiB" in failures and "worker uses" in failures, failures

        # ---- a device goes offline: the overview shows it live
        page.goto(base + "/")
        _marker(page)
        agents["edge-b"].stop()
        page.wait("document.querySelector('tr[data-device=\"edge-b\"]').dataset.online === 'false'", 30,
                  what="edge-b offline on the overview")
        assert page.eval("window.__kept === true")

        # ---- pause and resume with the buttons; the rollout completes when the device returns
        ro3 = _start_rollout(page, base, "sensor-mlp 2.0.0", devices="edge-b", stages="100")
        assert page.eval("document.querySelector('#rollout-state').dataset.state") == "running"
        page.click("button[data-action=pause]")
        page.wait("document.querySelector('#rollout-state') && "
                  "document.querySelector('#rollout-state').dataset.state === 'paused'", 20, what="paused by button")
        assert _cli_json("fleet", "rollout", "status", ro3, "--data", fleet["data"], "--json")["state"] == "paused"
        # a forged request from this page's own scripts: no CSRF token, a wrong one -> refused
        for body in ("new URLSearchParams({})", "new URLSearchParams({csrf: 'forged'})"):
            code = page.eval(f"fetch('/rollouts/{ro3}/resume', {{method: 'POST', body: {body}}})"
                             ".then(r => r.status)", await_promise=True)
            assert code == 403
        assert page.eval("document.querySelector('#rollout-state').dataset.state") == "paused"
        page.click("button[data-action=resume]")
        page.wait("document.querySelector('#rollout-state') && "
                  "document.querySelector('#rollout-state').dataset.state === 'running'", 20, what="resumed")
        _marker(page)
        agents["edge-b"].start()
        page.wait("document.querySelector('#rollout-state').dataset.state === 'completed'", 120,
                  what="rollout 3 completed after edge-b returned")
        assert page.eval("window.__kept === true")

        # ---- the audit log: verified chain with the console's commands in it
        page.goto(base + "/audit")
        assert page.eval("document.getElementById('audit-verify').dataset.ok") == "true"
        audit = page.text("table.audit")
        for action in ("rollout-create", "rollout-pause", "rollout-resume", "publish"):
            assert action in audit
        assert "console via 127.0.0.1" in audit

        # ---- releases: sizes, bits/weight, verified signatures
        page.goto(base + "/releases")
        rel = page.text("main")
        assert "sensor-mlp 1.0.0" in rel and "sensor-mlp 2.0.0" in rel and "verified" in rel
        assert page.eval("[...document.querySelectorAll('table.bundles tbody tr')].length") == 2

        # ---- the failing device's page: history with reason and message, capabilities, metrics
        page.goto(base + "/devices/edge-c")
        page.wait("document.querySelector('main').innerText.includes('mean latency')", 30, what="metrics shown")
        dev = page.text("main")
        assert "health_failed" in dev and "budget 1 MiB" in dev and "online" in dev

        # ---- every page: screenshots, no overflow, no script error, nothing from elsewhere
        phone = browser.page(390, 844, mobile=True, scale=2)
        urls = {"overview": "/", "device": "/devices/edge-c", "releases": "/releases", "rollouts": "/rollouts",
                "rollout": f"/rollouts/{ro2}", "audit": "/audit"}
        for p, kind in ((page, "desktop"), (phone, "phone")):
            for name in PAGES:
                p.goto(base + urls[name])
                p.wait("document.getElementById('live-state').dataset.state === 'live'", 20, what="live")
                width = p.eval("[document.documentElement.scrollWidth, window.innerWidth]")
                assert width[0] <= width[1], f"{name} overflows horizontally on {kind}: {width}"
                p.screenshot(shots / f"{name}-{kind}.png")
        phone.goto(base + "/login")  # logged in: the login page still renders (and is screenshotted)
        phone.screenshot(shots / "login-phone.png")
        for p in (page, phone):
            assert p.problems() == [], p.problems()
            foreign = [u for u in p.requests() if not (u.startswith(base + "/") or u.startswith("about:"))]
            assert foreign == []
        assert ro1 != ro2 != ro3

    # ---- the logs an operator reads
    log = _json_lines(fleet["log"])
    ev = lambda name: [x for x in log if x["event"] == name]  # noqa: E731
    assert {x["device"] for x in ev("device.online")} >= {"edge-a", "edge-b", "edge-c"}
    assert "edge-b" in {x["device"] for x in ev("device.offline")}
    assert {x["version"] for x in ev("publish")} == {"1.0.0", "2.0.0"}
    states = {(x["rollout"], x["state"]) for x in ev("rollout.state")}
    assert {(ro2, "paused"), (ro3, "paused"), (ro3, "running"), (ro3, "completed"), (ro1, "completed")} <= states
    (failed,) = [x for x in ev("device.failed") if x["device"] == "edge-c"]
    assert failed["reason"] == "health_failed" and "budget 1 MiB" in failed["detail"] and failed["rollout"] == ro2
    c_log = _json_lines(agents["edge-c"].log)
    (c_install,) = [x for x in c_log if x.get("event") == "install" and "level" in x]
    assert c_install["result"] == "failed" and c_install["reason"] == "health_failed"
    assert "budget 1 MiB" in c_install["message"]
    b_log = [x for x in _json_lines(agents["edge-b"].log) if "level" in x]
    assert [x["event"] for x in b_log].count("mqtt.connected") == 2
    assert any(x["event"] == "transfer.finish" for x in b_log)


def _start_rollout(page, base: str, release: str, stages: str, tags: str = "", devices: str = "") -> str:
    page.goto(base + "/rollouts")
    page.select("#f-release", release)
    page.fill("#f-tags", tags) if tags else None
    page.fill("#f-devices", devices) if devices else None
    page.fill("#f-stages", stages)
    page.fill("#f-success", "1")
    page.fill("#f-failure", "0.5")
    page.click("#rollout-form button[type=submit]")
    page.wait("location.pathname.startsWith('/rollouts/ro-') && document.readyState === 'complete' && "
              "document.querySelector('#rollout-state') !== null", 20, what="the new rollout's page")
    return page.eval("location.pathname").rsplit("/", 1)[1]
