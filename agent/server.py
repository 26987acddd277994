"""The agent's local API (WSGI on waitress, :mod:`bitnet_edge.agent.httpbase`): health, metrics and
the inference routes, which are proxied to the serving model worker (swapped atomically;
in-flight requests finish on the worker they started on).

Two listeners, two apps:

- TCP (``api.host:api.port``): health, metrics, inference.  A web page in a browser on the device
  can reach it, so every request must name this device in ``Host`` (loopback names, ``api.host``,
  ``api.allowed_hosts``: a DNS-rebinding page names its own domain), carry no ``Origin`` outside
  ``api.allowed_origins``, no cross-site ``Sec-Fetch-Site``, and a POST must be
  ``application/json`` (a form or ``text/plain`` POST, which a page may send without asking, is
  refused).  The admin routes are not served here at all.
- Unix socket (``api.unix_socket``, default ``data_dir/admin.sock``, mode 0600): everything,
  including the admin routes (install, rollback, status); only the agent's own user reaches it.
"""

from __future__ import annotations

import http.client
import json
import time

from bitnet_edge.agent.errors import ConfigError, UnknownModel
from bitnet_edge.agent.httpbase import (
    MAX_BODY,
    HttpError,
    HttpServer,
    Request,
    ServerLimits,
    UnixHTTPConnection,
    error_response,
    json_response,
)
from bitnet_edge.sdk.errors import listen_error

__all__ = ["make_app", "serve", "PROXIED", "ADMIN"]

PROXIED = ("/v1/models", "/v1/infer", "/v1/embeddings", "/v1/completions", "/v1/chat/completions")
ADMIN = ("/v1/admin/install", "/v1/admin/rollback", "/v1/admin/status")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _host_only(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("["):  # [::1]:8700
        return v[1:v.index("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


def browser_guard(req: Request, hosts: set[str], origins: set[str]) -> None:
    """HttpError when a request to the TCP API looks like it came from a web page that may not use it."""
    host = req.header("Host")
    if host is None or _host_only(host) not in hosts:
        raise HttpError(403, "forbidden_host", f"Host {host!r} is not this device's API (DNS rebinding?); "
                                               "add it to api.allowed_hosts to allow it")
    origin = req.header("Origin")
    if origin is not None and origin.rstrip("/").lower() not in origins:
        raise HttpError(403, "forbidden_origin", f"requests from web origin {origin!r} are refused; add it to "
                                                 "api.allowed_origins to allow it")
    site = (req.header("Sec-Fetch-Site") or "").lower()
    if site in ("cross-site", "same-site") and origin is None:
        raise HttpError(403, "forbidden_origin", f"a {site} browser request is refused")
    if req.method == "POST":
        ctype = (req.header("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "unsupported_media_type", f"POST bodies must be application/json, not {ctype!r}")


def make_app(agent, *, admin: bool, hosts: set[str] | None = None, origins: set[str] | None = None,
             admin_socket: str | None = None):
    """The WSGI app of one listener: ``admin`` (the Unix socket) serves the admin routes and skips
    the browser checks; the TCP app applies them and has no admin routes."""
    hosts = {h.lower() for h in (hosts or _LOOPBACK_HOSTS)}
    origins = {o.rstrip("/").lower() for o in (origins or ())}

    def app(environ, start_response):
        req = Request(environ)
        path = req.path
        route = path if path in PROXIED or path in ADMIN or path in ("/v1/health", "/metrics") else "other"
        t0 = time.perf_counter()
        status = {"code": 500, "model": ""}

        def start(st, headers, exc_info=None):
            status["code"] = int(st.split(" ", 1)[0])
            return start_response(st, headers, exc_info)

        done = True
        try:
            if not admin:
                browser_guard(req, hosts, origins)
            result = _route(agent, req, start, admin, admin_socket, status)
            if isinstance(result, _Stream):
                done = False
                result.on_close = lambda: agent.metrics.observe(route, status["code"], time.perf_counter() - t0,
                                                                status["model"])
            return result
        except HttpError as exc:
            return error_response(start, exc.code, exc.kind, exc.message, exc.headers)
        except UnknownModel as exc:
            code = {"no_model": 503, "model_required": 400}.get(exc.reason, 404)
            return json_response(start, code, {"error": {"type": exc.reason, "message": exc.detail,
                                                         "installed": exc.installed}})
        finally:
            if done:
                agent.metrics.observe(route, status["code"], time.perf_counter() - t0, status["model"])

    return app


def _model_field(body: bytes) -> str | None:
    """The request's ``model`` (OpenAI's field) when the body is a JSON object that names one;
    a body that is not JSON is left to the worker to refuse."""
    try:
        obj = json.loads(body or b"{}")
    except ValueError:
        return None
    m = obj.get("model") if isinstance(obj, dict) else None
    if m is not None and not isinstance(m, str):
        raise HttpError(400, "invalid_request", "model: a model name (string) is expected")
    return m


def _models_list(agent) -> dict:
    """GET /v1/models: every installed model (OpenAI's list), whether or not its worker runs."""
    data = []
    for m in agent.reported_state().models:
        if m.installed is None:
            continue
        data.append({"id": m.name, "object": "model", "created": agent.installed_at(m.name), "owned_by": "bitnet-edge",
                     "architecture": agent.architecture(m.name), "version": m.installed.version,
                     "release": m.installed.release, "on_demand": m.on_demand, "loaded": m.loaded,
                     "health": m.health, "default": m.name == agent.default_model})
    return {"object": "list", "data": data}


def _route(agent, req: Request, start, admin: bool, admin_socket: str | None, status: dict):
    path, method = req.path, req.method
    if path in ADMIN and not admin:
        raise HttpError(403, "forbidden", f"admin routes answer only on the agent's Unix socket "
                                          f"({admin_socket or 'api.unix_socket'})")
    if method == "GET":
        if path == "/v1/health":
            code, body = agent.health()
            return json_response(start, code, body)
        if path == "/metrics":
            body = agent.metrics.render().encode()
            start("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/v1/admin/status":
            return json_response(start, 200, agent.status())
        if path == "/v1/models":
            return json_response(start, 200, _models_list(agent))
        if path in PROXIED:
            return _proxy(agent, start, "GET", path, None, None, None, status)
    elif method == "POST":
        if path in PROXIED:
            body = req.body(MAX_BODY)
            return _proxy(agent, start, "POST", path, body, req.header("Content-Type"), _model_field(body), status)
        if path in ("/v1/admin/install", "/v1/admin/rollback"):
            return _admin(agent, start, path, req.body(64 * 1024))
    else:
        raise HttpError(405, "method_not_allowed", f"{method} is not supported")
    raise HttpError(404, "not_found", f"no route {method} {path}")


def _admin(agent, start, path: str, body: bytes):
    try:
        req = json.loads(body or b"{}")
        if not isinstance(req, dict):
            raise ValueError("body must be a JSON object")
    except ValueError as exc:
        raise HttpError(400, "invalid_request", str(exc).splitlines()[0]) from None
    model = req.get("model")
    if model is not None and not isinstance(model, str):
        raise HttpError(400, "invalid_request", "model: a model name (string) is expected")
    if path.endswith("install"):
        if not isinstance(req.get("path"), str):
            raise HttpError(400, "invalid_request", "path: a bundle file path is required")
        outcome = agent.install_local(req["path"], allow_downgrade=bool(req.get("allow_downgrade")), model=model)
    else:
        agent.rollback_target(model)  # UnknownModel (a typed 400 / 404) when it is ambiguous or not installed
        outcome = agent.rollback(model)
    if agent.sync is not None:  # a USB install or a local rollback: tell the fleet
        agent.sync.publish_state()
    code = 200 if outcome.result in ("installed", "rolled_back") else 409
    return json_response(start, code, outcome.model_dump())


class _Stream:
    """A proxied streaming body: its pieces as they come; the worker is released on close()."""

    def __init__(self, resp, conn, release):
        self.resp, self.conn, self._release, self.on_close = resp, conn, release, None

    def __iter__(self):
        while True:
            piece = self.resp.read1(65536)
            if not piece:
                return
            yield piece

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self._release()
            if self.on_close is not None:
                self.on_close()


def _proxy(agent, start, method: str, path: str, body: bytes | None, ctype: str | None, model: str | None,
           status: dict):
    """Forward to the worker of ``model`` (None: the default model); UnknownModel when it is not installed."""
    name = agent.resolve(model)
    status["model"] = name
    worker = agent.acquire_worker(name)
    if worker is None:
        raise HttpError(503, "model_unavailable", f"model {name}'s worker is not running (it failed to start; "
                                                  "see the agent's log)")
    conn = None
    released = False

    def release():
        nonlocal released
        if not released:
            released = True
            agent.release_worker(worker)

    try:
        conn = UnixHTTPConnection(worker.socket, timeout=600)
        headers = {"Content-Type": ctype or "application/json"}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        out = [("Content-Type", resp.getheader("Content-Type", "application/json"))]
        for h in ("Retry-After", "Cache-Control"):
            if resp.getheader(h):
                out.append((h, resp.getheader(h)))
        if resp.getheader("Transfer-Encoding", "").lower() == "chunked":  # streamed: pass it on as it comes
            start(f"{resp.status} {resp.reason}", out)
            stream = _Stream(resp, conn, release)
            conn = None
            return stream
        data = resp.read()
        start(f"{resp.status} {resp.reason}", out + [("Content-Length", str(len(data)))])
        return [data]
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        raise HttpError(502, "worker_unavailable", f"model worker failed: {exc}") from None
    finally:
        if conn is not None:
            conn.close()
            release()


def serve(agent, cfg) -> list[HttpServer]:
    """Start the TCP API (when enabled with a port) and the admin Unix socket; returns the servers
    (each has ``.server_address`` and ``.shutdown()``)."""
    from bitnet_edge.agent.config import admin_socket

    servers = []
    api = cfg.api
    sock = admin_socket(cfg)
    try:
        if api.enabled and api.port is not None and api.port >= 0 and api.host:
            hosts = set(_LOOPBACK_HOSTS) | {_host_only(api.host)} | {_host_only(h) for h in api.allowed_hosts}
            limits = ServerLimits(threads=api.threads, connection_limit=api.max_connections,
                                  channel_timeout=api.idle_timeout_s, max_body=MAX_BODY)
            app = make_app(agent, admin=False, hosts=hosts, origins=set(api.allowed_origins), admin_socket=sock)
            try:
                servers.append(HttpServer(app, host=api.host, port=api.port, limits=limits, name="api"))
            except OSError as exc:
                raise listen_error(exc, "agent API", api.host, api.port, "[api] port in the agent config") from None
        admin_limits = ServerLimits(threads=2, connection_limit=16, channel_timeout=api.idle_timeout_s,
                                    max_body=MAX_BODY)
        try:
            servers.append(HttpServer(make_app(agent, admin=True, admin_socket=sock), unix_socket=sock,
                                      socket_mode=0o600, limits=admin_limits, name="admin"))
        except OSError as exc:
            raise ConfigError(sock, f"the agent's admin socket cannot listen here: {exc.strerror or exc}",
                              reason="socket-unusable") from None
    except BaseException:
        for s in servers:
            s.stop(timeout=1.0)
        raise
    for s in servers:
        s.start()
    return servers
