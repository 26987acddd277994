"""[hardening] (issue 18, security): the agent's secrets, admin routes, HTTP server robustness and
request bounds."""

from __future__ import annotations

import os

import pytest

from bitnet_edge.agent.config import AgentConfig
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.agent.errors import ConfigError
from bitnet_edge.packagers.keys import generate_keypair


def test_an_mtls_key_other_users_can_read_is_refused(tmp_path):
    kp = generate_keypair(tmp_path / "keys")
    key = tmp_path / "device.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    os.chmod(key, 0o644)
    cfg = AgentConfig(device_id="d1", data_dir=str(tmp_path / "data"), trust=[str(kp.public_path)],
                      mqtt=BrokerConnection(url="mqtts://127.0.0.1:8883", tls_cert=str(key), tls_key=str(key)))
    with pytest.raises(ConfigError, match="mqtt.tls_key: mode 0644"):
        Agent(cfg)
    os.chmod(key, 0o600)
    Agent(cfg).shutdown()  # the same file, owner-only: accepted


# ---- a running agent (module scope: one daemon serving release 1) ----------------------------------

import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from tests.support.agent_fixtures import Daemon, bundles, cli, free_port, write_config  # noqa: E402,F401

from bitnet_edge.agent.httpbase import UnixHTTPConnection  # noqa: E402


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundles):  # noqa: F811
    root = tmp_path_factory.mktemp("hardening-agent")
    port = free_port()
    cfg = write_config(root / "agent.toml", root / "data", [bundles.pub], port=port,
                       extra="")
    text = cfg.read_text().replace("[api]", "[api]\nidle_timeout_s = 2.0")
    cfg.write_text(text)
    d = Daemon(cfg, port)
    res = cli("agent", "install", bundles.v1, "--config", cfg, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    d.root, d.cfg, d.sock = root, cfg, str(root / "data" / "api.sock")
    yield d
    d.stop()


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                piece = s.recv(65536)
            except socket.timeout:
                break
            if not piece:
                break
            out += piece
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                m = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
                if m and len(rest) >= int(m[0].split(b":")[1]):
                    break
        return out


def _tcp(d, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, (json.loads(raw) if raw and "json" in resp.getheader("Content-Type", "") else raw)


def _admin(d, method, path, body=None):
    conn = UnixHTTPConnection(d.sock, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, out


# ---- 2. admin routes only on the Unix socket; browsers refused -------------------------------------------

def test_admin_routes_answer_only_on_the_owner_only_unix_socket(daemon, bundles, tmp_path):  # noqa: F811
    d = daemon
    for method, path, body in (("POST", "/v1/admin/install", {"path": str(bundles.v2)}),
                               ("POST", "/v1/admin/rollback", {}), ("GET", "/v1/admin/status", None)):
        code, out = _tcp(d, method, path, body)
        assert code == 403 and out["error"]["type"] == "forbidden", (path, out)
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o600
    code, st = _admin(d, "GET", "/v1/admin/status")
    assert code == 200 and st["state"]["installed"]["version"] == "1.0.0"
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$saltsalt$hash:19000:0:99999:7:::\n")
    incoming = d.root / "data" / "incoming"
    inside = incoming / "notes.txt"
    inside.write_text("root:$6$saltsalt$hash\n")
    fifo = incoming / "fifo.bundle"
    os.mkfifo(fifo)
    link = incoming / "zero.bundle"
    link.symlink_to("/dev/zero")
    try:
        for path, reason in ((str(secret), "forbidden"), ("/etc/shadow", "forbidden"), ("/dev/zero", "forbidden"),
                             (str(link), "forbidden"), (str(fifo), "forbidden"), (str(inside), "corrupt"),
                             ("relative.bundle", "forbidden")):
            t0 = time.monotonic()
            code, out = _admin(d, "POST", "/v1/admin/install", {"path": path})
            assert code == 409 and out["result"] == "rejected" and out["reason"] == reason, (path, out)
            assert out["bundle_sha256"] == "0" * 64 and "root:" not in json.dumps(out), out  # nothing echoed
            assert time.monotonic() - t0 < 10
    finally:
        fifo.unlink()
        link.unlink()
        inside.unlink()
    code, st = _admin(d, "GET", "/v1/admin/status")
    assert st["state"]["installed"]["version"] == "1.0.0"  # still serving


def test_web_pages_cannot_use_the_tcp_api(daemon):
    d = daemon
    x = {"inputs": [[0.0] * 32]}
    assert _tcp(d, "POST", "/v1/infer", x)[0] == 200
    for headers, code, kind in (({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
                                ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
                                ({"Origin": "http://evil.example"}, 403, "forbidden_origin"),
                                ({"Origin": "null"}, 403, "forbidden_origin"),
                                ({"Sec-Fetch-Site": "cross-site"}, 403, "forbidden_origin"),
                                ({"Host": f"rebind.evil.example:{d.port}"}, 403, "forbidden_host")):
        got, out = _tcp(d, "POST", "/v1/infer", json.dumps(x).encode(), headers)
        assert got == code and out["error"]["type"] == kind, (headers, got, out)
    assert _tcp(d, "GET", "/v1/health", headers={"Host": "evil.example"})[0] == 403
    assert _tcp(d, "GET", "/v1/health", headers={"Host": f"localhost:{d.port}"})[0] == 200


# ---- 3. the HTTP server survives bad requests, slow clients, many fds --------------------------------------

def _threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def test_bad_requests_get_typed_errors_and_leak_nothing(daemon):
    d = daemon
    pid = d.proc.pid
    worker_pid = _tcp(d, "GET", "/v1/health")[1]["worker_pid"]
    for cl in (b"-1", b"abc", b"+5", b"1 2"):
        resp = _raw(d.port, b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + cl + b"\r\n\r\n{}")
        assert resp.startswith(b"HTTP/1.1 400"), (cl, resp[:200])
    before = (_threads(pid), _threads(worker_pid), len(os.listdir(f"/proc/{pid}/fd")))
    for _ in range(60):  # ragged inputs used to kill the worker's request thread (and fill its stderr pipe)
        code, out = _tcp(d, "POST", "/v1/infer", {"inputs": [[0.0] * 32, [0.0] * 7]})
        assert code == 400 and out["error"]["type"] == "invalid_request", out
        code, out = _tcp(d, "POST", "/v1/infer", {"inputs": [[1e308 * 10] * 32]})
        assert code in (200, 400), out
    assert _tcp(d, "POST", "/v1/infer", {"inputs": [[0.0] * 32]})[0] == 200
    after = (_threads(pid), _threads(worker_pid), len(os.listdir(f"/proc/{pid}/fd")))
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2 and after[2] <= before[2] + 4, (before, after)
    assert _tcp(d, "GET", "/v1/health")[1]["worker_pid"] == worker_pid  # the same worker, alive


def test_half_sent_requests_are_timed_out(daemon):
    d = daemon
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")  # never finished
        socks.append(s)
    try:
        assert _tcp(d, "GET", "/v1/health")[0] == 200  # others are served meanwhile
        time.sleep(2.0)
        closed = 0
        for s in socks:
            s.settimeout(3.0)
            try:
                closed += s.recv(1024) == b""  # the server hung up (idle_timeout_s = 2)
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        assert closed == len(socks), f"{closed} of {len(socks)} half-sent connections closed"
    finally:
        for s in socks:
            s.close()


def test_an_install_works_past_1024_open_files(tmp_path, bundles):  # noqa: F811
    import resource

    from bitnet_edge.agent.config import load_config

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    ag = Agent(load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub])))
    try:
        out = ag.install_file(bundles.v1)
        assert out.result == "installed", out
    finally:
        ag.shutdown()
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ag._worker is None


# ---- 10. concurrent requests and their bytes are bounded by the memory budget ---------------------------

class _SlowModel:
    architecture = "mlp"

    class cfg:  # noqa: N801 - what the app reads of a model config
        class_names = None

    def predict(self, x):
        time.sleep(0.6)
        import numpy as np

        return np.zeros((x.shape[0], 2), np.float32)


def _call(app, body: bytes) -> tuple[int, dict, dict]:
    import io

    got = {}

    def start_response(status, headers, exc_info=None):
        got["code"], got["headers"] = int(status.split()[0]), dict(headers)

    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/infer", "CONTENT_LENGTH": str(len(body)),
           "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body)}
    out = b"".join(app(env, start_response))
    return got["code"], json.loads(out), got["headers"]


def test_concurrent_requests_and_in_flight_bytes_are_capped():
    from bitnet_edge.agent.worker import Admission, make_app

    app = make_app(_SlowModel(), "m", threading.Lock(), Admission(max_requests=2, max_bytes=4000))
    small = json.dumps({"inputs": [[0.0] * 4]}).encode()
    results = []
    ts = [threading.Thread(target=lambda: results.append(_call(app, small))) for _ in range(5)]
    for t in ts:
        t.start()
        time.sleep(0.02)
    for t in ts:
        t.join()
    codes = sorted(c for c, _, _ in results)
    assert codes == [200, 200, 429, 429, 429], results
    busy = [(o, h) for c, o, h in results if c == 429][0]
    assert busy[0]["error"]["type"] == "busy" and busy[1]["Retry-After"] == "1"
    big = json.dumps({"inputs": [[0.0] * 700]}).encode()  # ~2.8 KB: one fits the 4000-byte budget, two do not
    results.clear()
    ts = [threading.Thread(target=lambda: results.append(_call(app, big))) for _ in range(2)]
    for t in ts:
        t.start()
        time.sleep(0.05)
    for t in ts:
        t.join()
    assert sorted(c for c, _, _ in results) == [200, 503], results
    assert [o for c, o, _ in results if c == 503][0]["error"]["type"] == "over_memory_budget"
    huge = json.dumps({"inputs": [[0.0] * 2000]}).encode()
    code, out, _ = _call(app, huge)
    assert code == 413 and out["error"]["type"] == "too_large"
    assert _call(app, small)[0] == 200  # everything released


def test_the_worker_budget_follows_the_memory_budget(tmp_path):
    from bitnet_edge.agent.config import LimitsConfig

    kp = generate_keypair(tmp_path / "keys")
    base = AgentConfig(device_id="d1", data_dir=str(tmp_path / "data"), trust=[str(kp.public_path)])
    ag = Agent(base.model_copy(update={"limits": LimitsConfig(memory_budget_mb=256)}))
    assert (ag.worker_budget.max_requests, ag.worker_budget.max_inflight_bytes) == (4, 4 << 20)
    ag.shutdown()
    ag = Agent(base.model_copy(update={"limits": LimitsConfig(memory_budget_mb=256, max_concurrent_requests=2,
                                                              max_inflight_prompt_mb=0.5)}))
    assert (ag.worker_budget.max_requests, ag.worker_budget.max_inflight_bytes) == (2, 512 << 10)
    ag.shutdown()


def test_a_seed_out_of_range_is_a_validation_error():
    from pydantic import ValidationError

    from bitnet_edge.agent.api import CompletionRequest

    for bad in (-1e23, -(2**63) - 1, 2**63, 2**64, 1.5):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": [1, 2], "seed": bad})
    for good in (-1, -(2**63), 2**63 - 1):  # OpenAI's seed is a signed 64-bit integer
        assert CompletionRequest.model_validate({"prompt": [1, 2], "seed": good}).seed == good


def test_a_worker_that_fails_to_start_in_any_way_is_stopped(tmp_path, monkeypatch):
    import subprocess

    from bitnet_edge.agent import workers

    started = []
    real_popen = subprocess.Popen

    def recording(*a, **kw):
        p = real_popen(*a, **kw)
        started.append(p)
        return p

    def broken(text):  # an unexpected error while reading the report (the old select() ValueError)
        raise ValueError("injected")

    monkeypatch.setattr(workers.subprocess, "Popen", recording)
    monkeypatch.setattr(workers.json, "loads", broken)
    (tmp_path / "slot").mkdir()
    with pytest.raises(ValueError, match="injected"):
        workers.start_worker("a", tmp_path / "slot", tmp_path / "run", timeout=60)
    assert started and started[0].poll() is not None  # no orphan worker left behind
