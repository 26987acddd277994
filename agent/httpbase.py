"""HTTP plumbing of the agent and its model workers on waitress (ADR 0013): WSGI apps served by a
maintained server with a fixed pool of request threads, poll() instead of select() (no limit at
1024 file descriptors), an idle timeout on every connection (a half-sent request is dropped), a
cap on open connections and on request bodies, and strict Content-Length parsing (``-1`` or
garbage is a 400 from the server itself).  This module adds JSON replies, typed errors, and an
HTTP client connection over a Unix socket (to reach model workers).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

__all__ = ["HttpServer", "ServerLimits", "UnixHTTPConnection", "Request", "json_response", "error_response",
           "MAX_BODY", "HttpError"]

log = logging.getLogger("bitnet_edge.agent.http")

MAX_BODY = 8 * 1024 * 1024  # bytes


@dataclass(frozen=True)
class ServerLimits:
    threads: int = 8  # requests handled at once; more wait (read already) in the server's queue
    connection_limit: int = 64  # open connections at most; more wait in the listen backlog
    channel_timeout: float = 30.0  # seconds a connection may sit idle (or half-sent) before it is closed
    max_body: int = MAX_BODY  # bytes of request body at most (a 413 beyond, from the server)


class HttpError(Exception):
    """A typed error reply: ``code``, ``kind`` (the ``error.type`` field), ``message``."""

    def __init__(self, code: int, kind: str, message: str, headers: list[tuple[str, str]] | None = None):
        self.code, self.kind, self.message, self.headers = code, kind, message, headers or []
        super().__init__(f"{code} {kind}: {message}")


_REASONS = http.client.responses


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Status')}"


def json_response(start_response, code: int, obj, headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(obj).encode()
    start_response(_status(code), [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                   *(headers or [])])
    return [body]


def error_response(start_response, code: int, kind: str, message: str,
                   headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    return json_response(start_response, code, {"error": {"type": kind, "message": message}}, headers)


class Request:
    """What a handler needs from a WSGI environ."""

    def __init__(self, environ: dict):
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.path = environ.get("PATH_INFO", "/") or "/"

    def header(self, name: str, default: str | None = None) -> str | None:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return self.environ.get(key, default) or default
        return self.environ.get(f"HTTP_{key}", default)

    def body(self, limit: int = MAX_BODY) -> bytes:
        """The request body (the server has read it, within its own cap); HttpError 413 over ``limit``."""
        try:
            n = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HttpError(400, "bad_request", "bad Content-Length") from None
        if n < 0:
            raise HttpError(400, "bad_request", "bad Content-Length")
        if n > limit:
            raise HttpError(413, "too_large", f"body of {n} bytes is over {limit}")
        return self.environ["wsgi.input"].read(n) if n else b""


class HttpServer:
    """A waitress server for ``app`` on TCP (``host``, ``port``) or a Unix socket (``unix_socket``,
    mode ``socket_mode``) in a daemon thread; ``stop()`` closes it and every open connection."""

    def __init__(self, app, *, host: str | None = None, port: int | None = None, unix_socket: str | None = None,
                 socket_mode: int = 0o600, limits: ServerLimits = ServerLimits(), name: str = "http"):
        from bitnet_edge.sdk.extras import require

        create_server = require("waitress.server", "the agent's HTTP API", "agent").create_server

        kw = dict(threads=limits.threads, connection_limit=limits.connection_limit,
                  channel_timeout=limits.channel_timeout, max_request_body_size=limits.max_body,
                  asyncore_use_poll=True, ident="bitnet-edge", expose_tracebacks=False,
                  cleanup_interval=max(1, int(limits.channel_timeout // 3)), outbuf_high_watermark=1 << 20)
        if unix_socket is not None:
            if os.path.exists(unix_socket):
                os.unlink(unix_socket)
            self._server = create_server(app, unix_socket=unix_socket, unix_socket_perms=f"{socket_mode:o}", **kw)
            self.address: str | tuple = unix_socket
        else:
            self._server = create_server(app, host=host, port=port, **kw)
            self.address = (self._server.effective_host, self._server.effective_port)
        self.name = name
        self._thread = threading.Thread(target=self._run, name=f"bne-{name}", daemon=True)

    @property
    def server_address(self):
        return self.address

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # noqa: BLE001 - the serving loop ended badly: say so
            log.exception("%s server stopped", self.name)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server = self._server

        def close_all():  # in the server's own loop thread
            for d in list(server._map.values()):
                try:
                    d.close()
                except OSError:
                    pass

        if self._thread.ident is None:  # never started (a later listener failed): no loop to ask
            close_all()
        else:
            try:
                server.trigger.pull_trigger(close_all)
            except OSError:
                close_all()
            self._thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)
        if isinstance(self.address, str):
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                pass

    shutdown = stop  # the name the agent's callers use


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 300.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s
