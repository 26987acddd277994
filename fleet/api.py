"""The service's small HTTP port: the control API the CLI uses, ``/metrics`` (docs/adr/0007), and the
operator's web console at every path outside ``/v1/`` (:mod:`bitnet_edge.fleet.console`, ADR 0018).

    GET  /metrics                      Prometheus text (no token)
    GET  /v1/health                    {ok, broker_connected, leader} (no token)
    GET  /v1/devices                   registry
    GET  /v1/releases                  releases with their bundles and deltas
    POST /v1/bundles                   body: a bundle file -> {sha256, size} (stored, not yet published)
    POST /v1/releases                  {"bundles": [sha256, ...]} -> what was published
    GET  /v1/rollouts                  summaries
    POST /v1/rollouts                  RolloutSpec -> status
    GET  /v1/rollouts/{id}             status with members
    POST /v1/rollouts/{id}/{action}    pause | resume | abort | rollback
    GET  /v1/tuf                       TUF repository status (versions, expiry, keys)
    GET  /v1/tuf/{file}                a metadata file (root.json, 3.targets.json, timestamp.json, ...)
    POST /v1/tuf                       {"root": text?, "targets": text?}: offline-signed metadata (ADR 0010)

Every other ``/v1/`` request needs ``Authorization: Bearer <token>`` (``DATA/control.token``).
Errors are JSON ``{"error": reason, "detail": text}`` with 400 (bad input), 401, 404, 409 (state); a
bug is a 500 with a JSON body, never a dead server.  The console authenticates with a session
cookie from its login page instead (the same token), never the other way round: a cookie opens no
``/v1/`` route.

Server: the standard library's threading HTTP server (one thread per connection, a socket timeout
so an idle or stalled client frees its thread; ADR 0018 says why it stays).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bitnet_edge.fleet.console import SECURITY_HEADERS, Console, Request, parse_query
from bitnet_edge.fleet.errors import NotFound, PublishError, RolloutError, TufError
from bitnet_edge.sdk.errors import BitnetEdgeError, FormatError, listen_error
from bitnet_edge.sdk.schemas import parse_model

__all__ = ["ControlServer"]

log = logging.getLogger("bitnet_edge.fleet.api")
MAX_JSON = 1 << 20  # bytes of a JSON request body
SOCKET_TIMEOUT = 120.0  # seconds a connection may sit idle (or a client stall a write) before it is closed


def _status(exc: BitnetEdgeError) -> int:
    """The HTTP status of a typed error: 404 (not found), 409 (state), 413 (too large), else 400."""
    if isinstance(exc, NotFound) or exc.reason == "not-found":
        return 404
    if isinstance(exc, RolloutError):
        return 409
    if isinstance(exc, TufError) and exc.reason in ("version", "exists"):
        return 409
    if isinstance(exc, PublishError) and exc.reason == "too-large":
        return 413
    return 400


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def log_message(self, fmt, *args):  # quiet: requests go to the debug log
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _read_limited(self, limit: int) -> bytes:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise FormatError("Content-Length is not a number") from None
        if n < 0 or n > limit:
            raise FormatError(f"request body of {n} bytes exceeds {limit}")
        return self.rfile.read(n)

    def _console(self, method: str, path: str, qs: str) -> None:
        req = Request(method, path, parse_query(qs), self.headers, self.client_address[0], self._read_limited, qs)
        try:
            resp = self.server.console.handle(req)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the server lives on
            log.exception("console %s %s failed", method, path)
            body = f"internal error: {type(exc).__name__}\n".encode()
            self.send_response(500)
            for k, v in (("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                         *SECURITY_HEADERS):
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.ctype)
        for k, v in resp.headers:
            self.send_header(k, v)
        if resp.stream is None:
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
            return
        self.close_connection = True  # an event stream ends with the connection
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        try:
            for piece in resp.stream:
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError:  # the browser went away (or stalled past the socket timeout)
            pass
        finally:
            resp.stream.close()

    def _json(self, status: int, data) -> None:
        self._send(status, json.dumps(data, sort_keys=True).encode())

    def _error(self, status: int, reason: str, detail: str) -> None:
        self._json(status, {"error": reason, "detail": detail})

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.server.token}".encode())

    def _actor(self) -> str:
        """Who to record in the audit log: the caller's ``X-BNE-Actor`` (user@host, sent by the CLI;
        self-declared: the API has one token) and its address."""
        who = re.sub(r"[^\w.@:+-]", "_", self.headers.get("X-BNE-Actor", "") or "unknown")[:128]
        return f"{who} via {self.client_address[0]}"

    def _body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_JSON:
            raise FormatError(f"request body of {n} bytes exceeds {MAX_JSON}")
        try:
            return json.loads(self.rfile.read(n) or b"{}")
        except json.JSONDecodeError as exc:
            raise FormatError(f"body is not JSON ({exc})") from None

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        svc = self.server.service
        raw, _, qs = self.path.partition("?")
        path = raw.rstrip("/") or "/"
        if path != "/metrics" and path != "/v1" and not path.startswith("/v1/"):
            return self._console(method, path, qs)
        try:
            if method == "GET" and path == "/metrics":
                return self._send(200, svc.metrics_text().encode(), "text/plain; version=0.0.4")
            if method == "GET" and path == "/v1/health":
                return self._json(200, svc.health())
            if not self._authorized():
                return self._error(401, "unauthorized", "missing or wrong bearer token (DATA/control.token)")
            if method == "GET" and path == "/v1/devices":
                return self._json(200, svc.devices())
            if method == "GET" and path == "/v1/releases":
                return self._json(200, svc.releases())
            if method == "POST" and path == "/v1/bundles":
                n = self.headers.get("Content-Length")
                if n is None:
                    return self._error(411, "length-required", "send the bundle with a Content-Length")
                return self._json(201, svc.add_bundle(self.rfile, int(n)))
            if method == "POST" and path == "/v1/releases":
                body = self._body_json()
                shas = body.get("bundles") if isinstance(body, dict) else None
                if not isinstance(shas, list) or not shas or not all(isinstance(s, str) for s in shas):
                    return self._error(400, "bad-request", '{"bundles": [sha256, ...]} expected')
                return self._json(201, svc.publish(shas, actor=self._actor()))
            if method == "GET" and path == "/v1/rollouts":
                return self._json(200, svc.rollouts())
            if method == "POST" and path == "/v1/rollouts":
                from bitnet_edge.fleet.rollout import RolloutSpec

                spec = parse_model(RolloutSpec, self._body_json(), source="rollout spec")
                return self._json(201, svc.create_rollout(spec, actor=self._actor()))
            if m := re.fullmatch(r"/v1/rollouts/([A-Za-z0-9_.-]+)", path):
                if method == "GET":
                    return self._json(200, svc.rollout(m.group(1)))
            if m := re.fullmatch(r"/v1/rollouts/([A-Za-z0-9_.-]+)/(pause|resume|abort|rollback)", path):
                if method == "POST":
                    return self._json(200, svc.rollout_command(m.group(1), m.group(2), actor=self._actor()))
            if path == "/v1/tuf" and method == "GET":
                return self._json(200, svc.tuf_status())
            if path == "/v1/tuf" and method == "POST":
                body = self._body_json()
                docs = {k: body.get(k) for k in ("root", "targets")} if isinstance(body, dict) else {}
                if not any(docs.values()) or not all(v is None or isinstance(v, str) for v in docs.values()):
                    return self._error(400, "bad-request", '{"root": text, "targets": text} expected')
                return self._json(200, svc.tuf_update(*(v.encode() if v else None for v in docs.values()),
                                                      actor=self._actor()))
            if (m := re.fullmatch(r"/v1/tuf/([0-9a-z.]+)", path)) and method == "GET":
                data = svc.tuf.read(m.group(1))
                if data is None:
                    return self._error(404, "not-found", f"no TUF metadata {m.group(1)}")
                return self._send(200, data)
            return self._error(404, "not-found", f"{method} {path}")
        except BitnetEdgeError as exc:
            return self._error(_status(exc), exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the server lives on
            log.exception("%s %s failed", method, path)
            return self._error(500, "internal", f"{type(exc).__name__}: {exc}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, service, token: str):
        super().__init__(addr, _Handler)
        self.service, self.token = service, token
        self.console = Console(service, token)


class ControlServer:
    def __init__(self, service, host: str, port: int, token: str):
        try:
            self._server = _Server((host, port), service, token)
        except OSError as exc:
            raise listen_error(exc, "fleet control API", host, port, "--api-port") from None
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bne-fleet-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
