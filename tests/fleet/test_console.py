"""The fleet console over HTTP (no browser: tests/e2e/test_console_browser.py drives a real one):
login and session cookies, CSRF and cross-origin refusals, what an unauthenticated client gets,
escaping of hostile device strings, security headers, the event stream, rollout commands through
the state machine, failure details, device history, and the log lines the service writes."""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from urllib.parse import quote, urlencode

import pytest
from tests.support.fleet_helpers import FakeAgent, bundles, enroll, wait_for
from tests.support.postgres import postgres_server  # noqa: F401 - fixture

from bitnet_edge.fleet.config import FleetConfig
from bitnet_edge.fleet.console.auth import Sessions, safe_next, same_origin
from bitnet_edge.fleet.rollout import RolloutSpec, Selector
from bitnet_edge.fleet.service import FleetService

HOSTILE = '<img src=x onerror="alert(1)">\r\n2026-01-01 00:00:00 INFO forged'


class Client:
    def __init__(self, port: int):
        self.port = port
        self.cookie: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        h = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookie and "Cookie" not in h:
            h["Cookie"] = self.cookie
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data.decode("utf-8", "replace")

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post_form(self, path: str, fields: dict, origin: str | None = "self", headers: dict | None = None):
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if origin == "self":
            h["Origin"] = f"http://127.0.0.1:{self.port}"
        elif origin is not None:
            h["Origin"] = origin
        return self.request("POST", path, urlencode(fields).encode(), h)

    def login(self, token: str) -> None:
        status, headers, _ = self.post_form("/login", {"token": token, "next": "/"})
        assert status == 303, status
        self.cookie = headers["set-cookie"].split(";")[0]

    def csrf(self, path: str = "/") -> str:
        status, _, body = self.get(path)
        assert status == 200
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)


@pytest.fixture
def fleet(tmp_path, request):
    """A fleet service (embedded broker) with two fake agents: a serves release 1; b fails its
    health gate with a hostile message; one rollout ran (paused on b's failure).  The registry is
    SQLite, or PostgreSQL where a test asks for it (``indirect`` parameter)."""
    database = None
    if getattr(request, "param", "sqlite") == "postgresql":
        database = request.getfixturevalue("postgres_server").new_database()
    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), database=database, embedded_port=0, api_port=0,
                                   chunk_bytes=4096, tick=0.2, trust=[str(bundles().pub_path)])).start()
    agents = [FakeAgent("dev-a", tmp_path / "a", svc.broker_url, tags=["lab", HOSTILE], **enroll(svc, "dev-a")).start(),
              FakeAgent("dev-b", tmp_path / "b", svc.broker_url, tags=["lab"], fail=True, **enroll(svc, "dev-b")).start()]
    try:
        wait_for(lambda: sum(d["online"] for d in svc.devices()) == 2, 20, what="two devices online")
        svc.publish([svc.store.add_file(bundles().r1)[0]])
        st = svc.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100],
                                            selector=Selector(tags=["lab"])))
        wait_for(lambda: svc.rollout(st["id"])["state"] == "paused", 30, what="rollout paused on dev-b")
        token = (tmp_path / "fleet" / "control.token").read_text().strip()
        yield svc, Client(svc.api.port), token, st["id"], agents
    finally:
        for a in agents:
            a.stop()
        svc.stop()


def test_unauthenticated_clients_get_nothing(fleet):
    svc, c, token, rid, _ = fleet
    status, h, _ = c.get("/")
    assert status == 303 and h["location"] == "/login?next=/"
    status, h, _ = c.get(f"/rollouts/{rid}?x=1")
    assert status == 303 and h["location"].startswith(f"/login?next=/rollouts/{rid}")
    for path in ("/events?view=/", "/nothing-here"):
        assert c.get(path)[0] == 401
    assert c.post_form(f"/rollouts/{rid}/resume", {"csrf": "x"})[0] == 401
    assert svc.rollout(rid)["state"] == "paused"
    # the login page and its assets are public; nothing else
    status, _, body = c.get("/login")
    assert status == 200 and 'name="token"' in body and "dev-a" not in body
    assert c.get("/static/console.css")[0] == 200 and c.get("/static/../api.py")[0] == 404
    # the JSON API keeps its bearer token, and a console cookie opens none of it
    assert c.get("/v1/devices")[0] == 401
    assert c.get("/v1/devices", headers={"Authorization": f"Bearer {token}"})[0] == 200
    c.login(token)
    assert c.get("/v1/devices")[0] == 401


def test_login_sets_a_strict_httponly_cookie_and_refuses_wrong_or_cross_site(fleet):
    svc, c, token, rid, _ = fleet
    status, _, body = c.post_form("/login", {"token": "wrong", "next": "/"})
    assert status == 401 and "not this fleet&#39;s control token" in body
    assert c.post_form("/login", {"token": token}, origin="http://evil.example")[0] == 403
    assert c.post_form("/login", {"token": token}, origin="null")[0] == 403
    status, h, _ = c.post_form("/login", {"token": token, "next": "//evil.example/x"})
    assert status == 303 and h["location"] == "/"  # no open redirect
    cookie = h["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    c.cookie = cookie.split(";")[0]
    assert c.get("/")[0] == 200
    # a cookie with a changed byte, or for another token, is no session
    name, value = c.cookie.split("=", 1)
    forged = value[:-1] + ("A" if value[-1] != "A" else "B")
    assert c.get("/", headers={"Cookie": f"{name}={forged}"})[0] == 303
    other, _ = Sessions("another-token").issue()
    assert c.get("/", headers={"Cookie": f"{name}={other}"})[0] == 303
    # logging out ends the session (a CSRF-protected POST)
    assert c.post_form("/logout", {})[0] == 403
    status, h, _ = c.post_form("/logout", {"csrf": c.csrf()})
    assert status == 303 and "Max-Age=0" in h["set-cookie"]
    assert c.get("/")[0] == 303


def test_state_changes_need_the_csrf_token_and_the_console_origin(fleet):
    svc, c, token, rid, _ = fleet
    c.login(token)
    csrf = c.csrf(f"/rollouts/{rid}")
    path = f"/rollouts/{rid}/resume"
    assert c.post_form(path, {})[0] == 403  # no token
    assert c.post_form(path, {"csrf": csrf[:-2] + "xx"})[0] == 403  # wrong token
    assert c.post_form(path, {"csrf": csrf}, origin="http://evil.example")[0] == 403  # another site
    assert c.post_form(path, {"csrf": csrf}, origin=None,
                       headers={"Referer": "http://evil.example/page"})[0] == 403
    assert c.request("POST", path, json.dumps({"csrf": csrf}).encode(),  # not a form
                     {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{c.port}"})[0] == 403
    other_csrf = Sessions(token).issue()[1].csrf  # a valid token of another session
    assert c.post_form(path, {"csrf": other_csrf})[0] == 403
    assert svc.rollout(rid)["state"] == "paused"  # nothing happened
    # the right token from the page, same origin: the state machine runs, the audit log names the console
    status, h, _ = c.post_form(path, {"csrf": csrf})
    assert status == 303 and h["location"] == f"/rollouts/{rid}"
    assert svc.rollout(rid)["state"] in ("running", "paused", "completed")
    last = svc.audit.entries()[-1]
    assert last.action == "rollout-resume" and last.actor == "console via 127.0.0.1"
    # a command the state machine refuses comes back as the page with the reason (409)
    svc.rollout_command(rid, "abort")
    status, _, body = c.post_form(f"/rollouts/{rid}/pause", {"csrf": csrf})
    assert status == 409 and "cannot pause a aborted rollout" in body


def test_pages_escape_hostile_device_strings_and_send_strict_headers(fleet):
    svc, c, token, rid, _ = fleet
    c.login(token)
    for path in ("/", "/devices/dev-a", "/devices/dev-b", "/releases", "/rollouts", f"/rollouts/{rid}", "/audit",
                 "/?tag=" + quote(HOSTILE)):
        status, h, body = c.get(path)
        assert status == 200, path
        assert "<img src=x" not in body and "onerror=\"alert" not in body, path
        csp = h["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert h["x-content-type-options"] == "nosniff" and h["cache-control"] == "no-store"
        assert "<script>" not in body and " style=" not in body and "onclick" not in body  # nothing inline
        assert not re.search(r'(src|href)="(https?:)?//', body), path  # nothing from elsewhere
    body = c.get("/devices/dev-a")[2]
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in body


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_rollout_page_shows_each_failure_with_reason_and_detail(fleet):
    svc, c, token, rid, _ = fleet
    c.login(token)
    body = c.get(f"/rollouts/{rid}")[2]
    failures = body[body.index('id="failures"'):]
    assert "dev-b" in failures and "health_failed" in failures
    assert "golden vectors out of tolerance (test)" in failures
    assert "failure-threshold: 1 of 2 assigned devices failed" in body
    assert re.search(r'data-action="resume"', body) and not re.search(r'data-action="pause"', body)
    # the CLI's JSON has the detail too
    member = next(m for m in svc.rollout(rid)["members"] if m["device_id"] == "dev-b")
    assert (member["reason"], member["detail"]) == ("health_failed", "golden vectors out of tolerance (test)")


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_device_page_shows_history_capabilities_and_releases(fleet):
    svc, c, token, rid, agents = fleet
    c.login(token)
    body = c.get("/devices/dev-b")[2]
    assert "health_failed" in body and "golden vectors out of tolerance (test)" in body
    assert re.search(r'class="ev-online"', body) and re.search(r'class="ev-install"', body)
    assert "avx2" in body and "linux-x86_64" in body
    agents[1].stop()
    wait_for(lambda: not svc.registry.device("dev-b").online, 10, what="dev-b offline")
    assert re.search(r'class="ev-offline"', c.get("/devices/dev-b")[2])
    assert c.get("/devices/nope")[0] == 404
    assert c.get("/rollouts/ro-nope")[0] == 404


def test_event_stream_sends_the_live_fragment_when_it_changes(fleet):
    svc, c, token, rid, _ = fleet
    c.login(token)
    assert c.get("/events?view=//evil.example/")[0] == 400
    assert c.get("/events?view=/not-a-page")[0] == 400
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=20)
    conn.request("GET", f"/events?view=/rollouts/{rid}", headers={"Cookie": c.cookie})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

    def next_update() -> str:
        while True:
            line = resp.fp.readline().decode()
            assert line, "stream ended"
            if line.startswith("data: "):
                return json.loads(line[6:])["html"]

    first = next_update()
    assert 'data-state="paused"' in first
    svc.rollout_command(rid, "abort")
    end = time.monotonic() + 10
    while 'data-state="aborted"' not in (html := next_update()):
        assert time.monotonic() < end
    assert "Rollback" in html and 'data-action="resume"' not in html
    conn.close()


def test_rollout_form_starts_a_rollout_and_reports_bad_input(fleet):
    svc, c, token, rid, _ = fleet
    c.login(token)
    csrf = c.csrf("/rollouts")
    status, _, body = c.post_form("/rollouts", {"csrf": csrf, "release": "test-mlp 1.0.0", "stages": "50,40",
                                                "devices": "dev-a"})
    assert status == 400 and "stages must increase" in body and 'value="50,40"' in body
    status, _, body = c.post_form("/rollouts", {"csrf": csrf, "release": "test-mlp 9.9", "stages": "100"})
    assert status == 400 and "was not published" in body
    status, h, _ = c.post_form("/rollouts", {"csrf": csrf, "release": "test-mlp 1.0.0", "stages": "100",
                                             "devices": "dev-a", "timeout": "60"})
    assert status == 303
    new = h["location"].rsplit("/", 1)[1]
    st = svc.rollout(new)
    assert st["spec"]["selector"]["devices"] == ["dev-a"] and st["spec"]["device_timeout"] == 60
    wait_for(lambda: svc.rollout(new)["state"] == "completed", 20, what="console rollout completed")
    assert svc.audit.entries()[-1].actor == "console via 127.0.0.1"


def test_service_log_lines(tmp_path, caplog):
    """One line per publish, rollout transition, device failure (reason and detail), online/offline."""
    caplog.set_level(logging.INFO)
    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), embedded_port=0, api_port=0, chunk_bytes=4096,
                                   tick=0.2)).start()
    a = FakeAgent("dev-a", tmp_path / "a", svc.broker_url, **enroll(svc, "dev-a")).start()
    b = FakeAgent("dev-b", tmp_path / "b", svc.broker_url, fail=True, **enroll(svc, "dev-b")).start()
    try:
        wait_for(lambda: sum(d["online"] for d in svc.devices()) == 2, 20)
        svc.publish([svc.store.add_file(bundles().r1)[0]])
        # both devices in one stage; it pauses once both finished (1 of 2 succeeded, 90% needed)
        st = svc.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100], failure_threshold=0.5))
        wait_for(lambda: svc.rollout(st["id"])["state"] == "paused", 30)
        svc.rollout_command(st["id"], "rollback", actor="alice@ops")
        b.stop()
        wait_for(lambda: not svc.registry.device("dev-b").online, 10)
    finally:
        a.stop()
        svc.stop()

    def lines(event):
        return [r for r in caplog.records if getattr(r, "bne_event", None) == event]

    assert {r.bne_fields["device"] for r in lines("device.online")} == {"dev-a", "dev-b"}
    assert [r.bne_fields["device"] for r in lines("device.offline")][0] == "dev-b"
    (pub,) = lines("publish")
    assert pub.bne_fields["version"] == "1.0.0" and "linux-x86_64" in pub.getMessage()
    assert len(lines("rollout.created")) == 1
    states = [(r.bne_fields["previous"], r.bne_fields["state"]) for r in lines("rollout.state")]
    assert ("running", "paused") in states and ("paused", "rolled_back") in states
    assert any("alice@ops" in r.getMessage() for r in lines("rollout.state"))
    (fail,) = [r for r in lines("device.failed") if r.bne_fields["device"] == "dev-b"]
    assert fail.bne_fields["reason"] == "health_failed"
    assert fail.bne_fields["detail"] == "golden vectors out of tolerance (test)"
    assert "golden vectors out of tolerance (test)" in fail.getMessage() and fail.levelno == logging.WARNING
    assert [r.bne_fields["device"] for r in lines("device.install")].count("dev-a") >= 1


def test_sessions_expire_and_helpers_refuse_foreign_targets():
    now = [1000.0]
    s = Sessions("tok", clock=lambda: now[0], lifetime=60)
    cookie, sess = s.issue()
    assert s.verify(cookie) == sess and s.check_csrf(sess, sess.csrf) and not s.check_csrf(sess, "")
    now[0] += 61
    assert s.verify(cookie) is None
    assert s.check_token("tok\n") and not s.check_token("tok2")
    assert safe_next("/rollouts/x?a=1") == "/rollouts/x?a=1"
    for bad in ("//evil", "http://evil", "\\\\evil", "/\nx", "", None, "javascript:alert(1)"):
        assert safe_next(bad) == "/"
    assert same_origin("h:1", "http://h:1", None) and not same_origin("h:1", "http://h:2", None)
    assert same_origin("h:1", None, None) and not same_origin("h:1", "null", None)
    assert not same_origin("h:1", None, "https://evil/h:1")
    assert same_origin("127.0.0.1:8780", "https://fleet.example", None, "fleet.example")  # behind a proxy
    assert not same_origin("127.0.0.1:8780", "https://evil.example", None, "fleet.example")


def test_releases_page_shows_tuf_state_per_bundle(tmp_path):
    """With TUF initialised: each bundle listed in the signed targets or not, and the roles' versions."""
    from click.testing import CliRunner

    from bitnet_edge.cli import main
    from bitnet_edge.fleet.service import load_token
    from tests.support.agent_fixtures import Bundles

    b = Bundles(tmp_path / "bundles")
    data = tmp_path / "fleet"
    svc = FleetService(FleetConfig(data_dir=str(data), embedded_port=0, api_port=0, trust=[str(b.pub)])).start()
    try:
        api = ["--api", svc.api.url, "--token", load_token(data)]

        def run(*args):
            res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
            assert res.exit_code == 0, res.output
            return res.output

        c = json.loads(run("fleet", "tuf", "init", tmp_path / "offline", "--online-key",
                           run("fleet", "tuf", "online-key", "--data", data).strip()))
        run("fleet", "tuf", "push", c["root"], c["targets"], *api)
        run("fleet", "publish", b.v1, "--targets-key", tmp_path / "offline" / "keys" / "targets-1.key", *api)
        run("fleet", "publish", b.v2, *api)
        client = Client(svc.api.port)
        client.login(load_token(data))
        body = client.get("/releases")[2]
        v1 = body[body.index('id="release-sensor-mlp-1"'):]
        v2 = body[body.index('id="release-sensor-mlp-2"'):body.index('id="release-sensor-mlp-1"')]
        assert "pill-ok\">listed" in v1.split("</section>")[0]
        assert "not listed" in v2 and "pill-ok\">verified" in v2
        tuf = body[:body.index('id="release-sensor-mlp-2"')]
        assert re.search(r"<td>targets</td><td class=\"num\">2</td>", tuf), tuf
        assert re.search(r"<td>root</td><td class=\"num\">1</td>", tuf)
    finally:
        svc.stop()


def test_a_silent_device_fails_with_timeout_detail_and_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), embedded_port=0, api_port=0, chunk_bytes=4096,
                                   tick=0.2)).start()
    slow = FakeAgent("slow", tmp_path / "slow", svc.broker_url, install_delay=4.0, **enroll(svc, "slow")).start()
    try:
        wait_for(lambda: any(d["online"] for d in svc.devices()), 20)
        svc.publish([svc.store.add_file(bundles().r1)[0]])
        rid = svc.create_rollout(RolloutSpec(model="test-mlp", version="1.0.0", stages=[100], device_timeout=1.0,
                                             failure_threshold=0.5))["id"]
        wait_for(lambda: svc.rollout(rid)["state"] == "paused", 20, what="paused on the timeout")
        (m,) = svc.rollout(rid)["members"]
        assert (m["status"], m["reason"], m["detail"]) == ("failed", "timeout",
                                                           "no install outcome within 1 s while online")
        (line,) = [r for r in caplog.records if getattr(r, "bne_event", None) == "device.failed"]
        assert line.bne_fields == {"device": "slow", "rollout": rid, "reason": "timeout",
                                   "detail": "no install outcome within 1 s while online"}
    finally:
        slow.stop()
        svc.stop()


def test_device_page_and_overview_show_every_model_of_a_device(tmp_path):
    """Several models per device (ADR 0021): the overview counts each model a device serves, the
    device page lists each model with its release, health, worker and the fleet's desired state."""
    from tests.support.fleet_helpers import MultiFakeAgent, model_b_bundles

    svc = FleetService(FleetConfig(data_dir=str(tmp_path / "fleet"), embedded_port=0, api_port=0, chunk_bytes=4096,
                                   tick=0.2)).start()
    agents = [MultiFakeAgent(d, tmp_path / d, svc.broker_url, **enroll(svc, d)).start() for d in ("m1", "m2")]
    try:
        wait_for(lambda: len(svc.devices()) == 2, 20, what="two devices")
        svc.publish([svc.store.add_file(p)[0] for p in (bundles().r1, model_b_bundles().r1)])
        for model, version in (("test-mlp", "1.0.0"), ("test-det", "0.1.0")):
            rid = svc.create_rollout(RolloutSpec(model=model, version=version, stages=[100]))["id"]
            wait_for(lambda: svc.rollout(rid)["state"] == "completed", 30, what=f"{model} rolled out")
        wait_for(lambda: all(len(d["models"]) == 2 for d in svc.devices()), what="both models reported")
        c = Client(svc.api.port)
        c.login((tmp_path / "fleet" / "control.token").read_text().strip())
        status, _, body = c.get("/devices/m1")
        assert status == 200
        rows = dict(re.findall(r'<tr id="model-([\w.-]+)" data-model="[^"]+">(.*?)</tr>', body, re.S))
        assert set(rows) == {"test-mlp", "test-det"}
        assert "1.0.0" in rows["test-mlp"] and "0.1.0" in rows["test-det"]
        assert rid in rows["test-det"] and rid not in rows["test-mlp"]  # each model's own desired state
        assert "h-ok" in rows["test-mlp"] and "loaded" in rows["test-det"]
        overview = c.get("/")[2]
        row = re.search(r'<tr id="device-m2".*?</tr>', overview, re.S).group(0)
        assert "test-mlp 1.0.0" in row and "test-det 0.1.0" in row
        versions = dict(re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">\d+</td><td class=\"num\">(\d+)</td></tr>",
                                   overview))
        assert versions == {"test-det 0.1.0": "2", "test-mlp 1.0.0": "2"}
    finally:
        for a in agents:
            a.stop()
        svc.stop()
