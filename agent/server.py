"""The agent's local API: health, metrics and admin routes here; inference routes are proxied
to the serving model worker, which the agent swaps atomically (in-flight requests finish on the
worker they started on)."""

from __future__ import annotations

import json
import threading
import time

from bitnet_edge.agent.httpbase import JsonHandler, TCPServer, UnixHTTPConnection, UnixServer

__all__ = ["make_handler", "serve", "PROXIED"]

PROXIED = ("/v1/models", "/v1/infer", "/v1/embeddings", "/v1/completions", "/v1/chat/completions")


def make_handler(agent):
    class Handler(JsonHandler):
        def _timed(self, route: str, fn) -> None:
            t0 = time.perf_counter()
            self._code = 500
            try:
                fn()
            finally:
                agent.metrics.observe(route, self._code, time.perf_counter() - t0)

        def send_response(self, code, message=None):  # remember the status for the metrics
            self._code = code
            super().send_response(code, message)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/v1/health":
                self._timed(path, lambda: self.send_json(*agent.health()))
            elif path == "/metrics":
                self._timed(path, self._metrics)
            elif path == "/v1/admin/status":
                self._timed(path, lambda: self.send_json(200, agent.status()))
            elif path in PROXIED:
                self._timed(path, lambda: self._proxy("GET", path, None))
            else:
                self._timed("other", lambda: self.send_error_json(404, "not_found", f"no route {path}"))

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            if path in PROXIED:
                body = self.read_body()
                if body is not None:
                    self._timed(path, lambda: self._proxy("POST", path, body))
            elif path in ("/v1/admin/install", "/v1/admin/rollback"):
                if not self._local_peer():
                    self._timed(path, lambda: self.send_error_json(403, "forbidden",
                                                                   "admin routes answer only on this device"))
                    return
                body = self.read_body()
                if body is not None:
                    self._timed(path, lambda: self._admin(path, body))
            else:
                self._timed("other", lambda: self.send_error_json(404, "not_found", f"no route {path}"))

        def _local_peer(self) -> bool:
            """Admin routes: only a Unix-socket peer or a loopback address."""
            addr = self.client_address
            return not isinstance(addr, tuple) or str(addr[0]).startswith("127.") or addr[0] in ("::1", "localhost")

        def _metrics(self):
            body = agent.metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _admin(self, path: str, body: bytes):
            try:
                req = json.loads(body or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:
                self.send_error_json(400, "invalid_request", str(exc))
                return
            if path.endswith("install"):
                if not isinstance(req.get("path"), str):
                    self.send_error_json(400, "invalid_request", "path: a bundle file path is required")
                    return
                outcome = agent.install_file(req["path"], allow_downgrade=bool(req.get("allow_downgrade")))
            else:
                outcome = agent.rollback()
            if agent.sync is not None:  # a USB install or a local rollback: tell the fleet
                agent.sync.publish_state()
            code = 200 if outcome.result in ("installed", "rolled_back") else 409
            self.send_json(code, outcome.model_dump())

        def _proxy(self, method: str, path: str, body: bytes | None):
            worker = agent.acquire_worker()
            if worker is None:
                self.send_error_json(503, "no_model", "no model is installed on this device")
                return
            try:
                conn = UnixHTTPConnection(worker.socket)
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                streaming = resp.getheader("Transfer-Encoding", "").lower() == "chunked"
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                if streaming:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    while True:
                        piece = resp.read1(65536)
                        if not piece:
                            break
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    data = resp.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                conn.close()
            except (ConnectionError, OSError) as exc:
                if not self.wfile.closed:
                    try:
                        self.send_error_json(502, "worker_unavailable", f"model worker failed: {exc}")
                    except OSError:
                        pass
            finally:
                agent.release_worker(worker)

    return Handler


def serve(agent, host: str, port: int, unix_socket: str | None) -> list:
    """Start the TCP (and Unix socket) servers in daemon threads; returns them (for .shutdown())."""
    servers = []
    handler = make_handler(agent)
    if port is not None and port >= 0 and host:
        servers.append(TCPServer((host, port), handler))
    if unix_socket:
        servers.append(UnixServer(unix_socket, handler))
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name=f"api-{type(s).__name__}").start()
    return servers
