"""HTTP plumbing on the standard library: threaded TCP and Unix-socket servers, JSON replies,
and an HTTP client connection over a Unix socket (to reach model workers)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["TCPServer", "UnixServer", "UnixHTTPConnection", "JsonHandler", "MAX_BODY"]

MAX_BODY = 8 * 1024 * 1024  # bytes


class TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler):
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, handler)
        os.chmod(path, 0o660)

    # BaseHTTPRequestHandler reads these
    server_name = "localhost"
    server_port = 0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 300.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bitnet-edge"

    def address_string(self) -> str:  # Unix sockets have no (host, port)
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, fmt, *args):  # quiet by default; the agent logs through its own logger
        pass

    def read_body(self) -> bytes | None:
        """The request body, or None after replying 411/413."""
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_json(411, {"error": {"type": "length_required", "message": "Content-Length is required"}})
            return None
        try:
            n = int(length)
        except ValueError:
            self.send_json(400, {"error": {"type": "bad_request", "message": "bad Content-Length"}})
            return None
        if n > MAX_BODY:
            self.send_json(413, {"error": {"type": "too_large", "message": f"body over {MAX_BODY} bytes"}})
            return None
        return self.rfile.read(n)

    def send_json(self, code: int, obj, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, code: int, kind: str, message: str) -> None:
        self.send_json(code, {"error": {"type": kind, "message": message}})
