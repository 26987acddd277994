"""The operator's web console, served by ``fleet serve`` on the control API's port (ADR 0018).

Pages (server-rendered HTML, escaped; a small script for live updates and relative times)::

    GET  /                          fleet overview (?tag= ?profile= ?state=online|offline|failing)
    GET  /devices/{id}              one device: releases, capabilities, metrics, rollouts, history
    GET  /releases                  releases, bundles (sizes, bits/weight, signatures), TUF state
    GET  /rollouts                  rollouts, and the form that starts one
    GET  /rollouts/{id}             stages, progress, failures with reason and detail, commands
    GET  /audit                     the audit log, its hash chain verified
    GET  /events?view=PATH          server-sent events: PATH's live fragment whenever it changes
    GET  /login  POST /login        the control token -> a session cookie
    POST /logout  POST /rollouts  POST /rollouts/{id}/{pause|resume|abort|rollback}
    GET  /static/{name}             CSS, script, icon (from the package)

Every page needs a session (a cookie from /login, :mod:`.auth`); every POST but /login needs the
session's CSRF token and, when the browser names an origin, this server's origin.  Commands go
through the same service methods as the control API (one state machine, one audit log).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, quote, urlsplit

from bitnet_edge.fleet.console.auth import COOKIE, Session, Sessions, safe_next, same_origin
from bitnet_edge.fleet.console.live import sse_stream
from bitnet_edge.fleet.console.render import STATIC, Templates, static_file
from bitnet_edge.fleet.console.views import ConsoleData
from bitnet_edge.fleet.errors import FleetError, NotFound, RolloutError
from bitnet_edge.sdk.errors import FormatError

__all__ = ["Console", "Request", "Response", "SECURITY_HEADERS", "MAX_FORM", "MAX_STREAMS", "parse_query"]

log = logging.getLogger("bitnet_edge.fleet.console")

MAX_FORM = 16 * 1024  # bytes of a form body
MAX_STREAMS = 32  # event streams open at once (each holds a server thread)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "require-trusted-types-for 'script'; trusted-types bne-console")
SECURITY_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "same-origin"), ("X-Frame-Options", "DENY"),
                    ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"))
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ROLLOUT_ID = r"[A-Za-z0-9_.-]{1,64}"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    client: str
    read_body: Callable[[int], bytes] = lambda limit: b""
    query_string: str = ""

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            c = SimpleCookie(raw)
        except CookieError:
            return None
        return c[name].value if name in c else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    ctype: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterator[bytes] | None = None  # server-sent events: written and flushed piece by piece


def _redirect(location: str, *extra: tuple[str, str]) -> Response:
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location), *extra])


@dataclass(frozen=True)
class _View:
    template: str
    fragment: str
    title: str
    nav: str
    data: Callable[[ConsoleData, dict, dict], dict]  # (data, path params, query) -> page data


_VIEWS: list[tuple[re.Pattern, _View]] = [
    (re.compile(r"/"), _View("page.html", "_overview.html", "Overview", "/",
                             lambda c, p, q: c.overview(q.get("tag") or None, q.get("profile") or None,
                                                        q.get("state") or None))),
    (re.compile(rf"/devices/(?P<id>{_ID})"), _View("page.html", "_device.html", "Device", "/",
                                                   lambda c, p, q: c.device(p["id"]))),
    (re.compile(r"/releases"), _View("page.html", "_releases.html", "Releases", "/releases",
                                     lambda c, p, q: c.releases())),
    (re.compile(r"/rollouts"), _View("rollouts.html", "_rollouts.html", "Rollouts", "/rollouts",
                                     lambda c, p, q: c.rollouts())),
    (re.compile(rf"/rollouts/(?P<id>{_ROLLOUT_ID})"), _View("page.html", "_rollout.html", "Rollout", "/rollouts",
                                                            lambda c, p, q: c.rollout(p["id"]))),
    (re.compile(r"/audit"), _View("page.html", "_audit.html", "Audit log", "/audit", lambda c, p, q: c.audit())),
]


def _match(path: str) -> tuple[_View, dict] | None:
    for rx, view in _VIEWS:
        if m := rx.fullmatch(path):
            return view, m.groupdict()
    return None


def parse_query(qs: str) -> dict[str, str]:
    try:
        return {k: v[0][:256] for k, v in parse_qs(qs, max_num_fields=20).items()}
    except ValueError:
        return {}


class Console:
    def __init__(self, service, token: str, *, clock: Callable[[], float] = time.time):
        self.svc = service
        self.sessions = Sessions(token, clock=clock)
        self.data = ConsoleData(service)
        self.templates = Templates()
        self._streams = 0
        self._lock = threading.Lock()

    # ---- entry point ---------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        resp = self._handle(req)
        resp.headers += SECURITY_HEADERS
        if not any(k == "Cache-Control" for k, _ in resp.headers):
            resp.headers.append(("Cache-Control", "no-store"))
        return resp

    def _handle(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/static/") and req.method == "GET":
            name = path.removeprefix("/static/")
            body = static_file(name)
            if body is None:
                return self._plain(404, "no such file")
            return Response(200, body, STATIC[name], [("Cache-Control", "no-cache")])
        if path == "/login":
            return self._login(req)
        session = self.sessions.verify(req.cookie(COOKIE))
        if req.method == "POST":
            return self._post(req, session)
        if req.method != "GET":
            return self._plain(405, "method not allowed")
        if path == "/events":
            return self._events(req, session)
        found = _match(path)
        if session is None:
            if found is None:
                return self._plain(401, "log in first")
            target = path + (f"?{req.query_string}" if req.query_string else "")
            return _redirect("/login?next=" + quote(target, safe="/"))
        if found is None:
            return self._page_error(session, 404, "Not found", f"There is no console page at {path}.")
        view, params = found
        return self._page(req, session, view, params)

    # ---- pages ---------------------------------------------------------------------------------------

    def _ctx(self, session: Session | None, **extra) -> dict:
        return {"csrf": session.csrf if session else None, "header": self.data.header() if session else {},
                "error": None, "notice": None, **extra}

    def _live_path(self, req: Request) -> str:
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(req.query.items()) if k in ("tag", "profile",
                                                                                               "state"))
        return req.path + (f"?{qs}" if qs else "")

    def _page(self, req: Request, session: Session, view: _View, params: dict, *, status: int = 200,
              error: str | None = None, form: dict | None = None) -> Response:
        try:
            data = view.data(self.data, params, req.query)
        except (NotFound, RolloutError) as exc:
            if isinstance(exc, RolloutError) and exc.reason != "not-found":
                raise
            return self._page_error(session, 404, "Not found", str(exc))
        ctx = self._ctx(session, title=view.title, active=view.nav, fragment=view.fragment, d=data,
                        live_path=self._live_path(req), error=error)
        if view.template == "rollouts.html":
            ctx.update(choices=self.data.release_choices(), labels=self.data.known_labels(), form=form or {})
        return Response(status, self.templates.render(view.template, **ctx).encode())

    def _fragment(self, session: Session, view: _View, params: dict, query: dict) -> str:
        try:
            data = view.data(self.data, params, query)
        except (NotFound, RolloutError) as exc:
            return f'<p class="banner banner-error">{_esc(str(exc))}</p>'
        return self.templates.render(view.fragment, d=data, csrf=session.csrf)

    def _page_error(self, session: Session | None, status: int, title: str, message: str) -> Response:
        ctx = self._ctx(session, title=title, active="", message=message)
        return Response(status, self.templates.render("error.html", **ctx).encode())

    @staticmethod
    def _plain(status: int, text: str) -> Response:
        return Response(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    # ---- login -----------------------------------------------------------------------------------------

    def _login(self, req: Request) -> Response:
        nxt = safe_next(req.query.get("next"))
        if req.method == "GET":
            return self._login_page(nxt)
        if req.method != "POST":
            return self._plain(405, "method not allowed")
        if not same_origin(req.headers.get("Host"), req.headers.get("Origin"), req.headers.get("Referer"),
                           req.headers.get("X-Forwarded-Host")):
            return self._plain(403, "cross-site login refused")
        form = self._form(req)
        if form is None:
            return self._plain(400, "bad form")
        nxt = safe_next(form.get("next"))
        if not self.sessions.check_token(form.get("token", "")):
            log.warning("console login refused from %s: wrong token", req.client)
            time.sleep(0.3)  # slows guessing (the token has 192 bits anyway)
            return self._login_page(nxt, "That is not this fleet's control token.", 401)
        cookie, session = self.sessions.issue()
        log.info("console login from %s", req.client)
        return _redirect(nxt, ("Set-Cookie", f"{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; "
                                             f"Max-Age={int(self.sessions.lifetime)}"))

    def _login_page(self, nxt: str, error: str | None = None, status: int = 200) -> Response:
        body = self.templates.render("login.html", **self._ctx(None, title="Log in", active="", next=nxt,
                                                                error=error))
        return Response(status, body.encode())

    # ---- state-changing requests -------------------------------------------------------------------------

    def _form(self, req: Request) -> dict[str, str] | None:
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return None
        try:
            raw = req.read_body(MAX_FORM)
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50, strict_parsing=False)
        except (ValueError, UnicodeDecodeError, FormatError):
            return None
        return {k: v[0] for k, v in fields.items()}

    def _post(self, req: Request, session: Session | None) -> Response:
        if session is None:
            return self._plain(401, "log in first")
        if not same_origin(req.headers.get("Host"), req.headers.get("Origin"), req.headers.get("Referer"),
                           req.headers.get("X-Forwarded-Host")):
            log.warning("console: cross-origin %s %s refused (Origin %r)", req.method, req.path,
                        req.headers.get("Origin"))
            return self._plain(403, "cross-site request refused")
        form = self._form(req)
        if form is None or not self.sessions.check_csrf(session, form.get("csrf")):
            log.warning("console: %s %s without a valid CSRF token refused", req.method, req.path)
            return self._plain(403, "missing or wrong CSRF token: reload the page and try again")
        actor = f"console via {req.client}"
        if req.path == "/logout":
            self.sessions.revoke(session)
            return _redirect("/login", ("Set-Cookie", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
        if req.path == "/rollouts":
            return self._create_rollout(req, session, form, actor)
        if m := re.fullmatch(rf"/rollouts/({_ROLLOUT_ID})/(pause|resume|abort|rollback)", req.path):
            rid, action = m.groups()
            try:
                self.svc.rollout_command(rid, action, actor=actor)
            except RolloutError as exc:
                if exc.reason == "not-found":
                    return self._page_error(session, 404, "Not found", str(exc))
                view, params = _match(f"/rollouts/{rid}")
                return self._page(Request("GET", f"/rollouts/{rid}", {}, req.headers, req.client), session, view,
                                  params, status=409, error=f"{action} refused: {exc}")
            return _redirect(f"/rollouts/{rid}")
        return self._plain(404, "no such action")

    def _create_rollout(self, req: Request, session: Session, form: dict, actor: str) -> Response:
        from bitnet_edge.fleet.rollout import RolloutSpec
        from bitnet_edge.sdk.schemas import parse_model

        def split(name: str) -> list[str]:
            return [x.strip() for x in re.split(r"[,\s]+", form.get(name, "")) if x.strip()]

        try:
            model, _, version = form.get("release", "").strip().partition(" ")
            spec = parse_model(RolloutSpec, {
                "model": model, "version": version.strip(), "stages": [float(x) for x in split("stages")],
                "success_threshold": float(form.get("success") or 0.9),
                "failure_threshold": float(form.get("failure") or 0.1),
                "device_timeout": float(form.get("timeout") or 900),
                "selector": {"tags": split("tags"), "profile": form.get("profile") or None,
                             "devices": split("devices") or None}}, source="rollout form")
            st = self.svc.create_rollout(spec, actor=actor)
        except (ValueError, FormatError, FleetError) as exc:
            view, params = _match("/rollouts")
            return self._page(Request("GET", "/rollouts", {}, req.headers, req.client), session, view, params,
                              status=400, error=f"rollout not started: {exc}", form=form)
        return _redirect(f"/rollouts/{st['id']}")

    # ---- live updates ----------------------------------------------------------------------------------

    def _events(self, req: Request, session: Session | None) -> Response:
        if session is None:
            return self._plain(401, "log in first")
        view_path = req.query.get("view", "")
        u = urlsplit(view_path)
        found = _match(u.path) if view_path.startswith("/") and not view_path.startswith("//") else None
        if found is None:
            return self._plain(400, "view: a console page path expected")
        if self._streams >= MAX_STREAMS:
            return self._plain(503, "too many live views open; close some tabs")
        view, params = found
        query = parse_query(u.query)
        cookie = req.cookie(COOKIE)

        def stream() -> Iterator[bytes]:
            with self._lock:
                self._streams += 1
            try:
                yield from sse_stream(self.svc.changes, lambda: self._fragment(session, view, params, query),
                                      alive=lambda: self.sessions.verify(cookie) is not None)
            finally:
                with self._lock:
                    self._streams -= 1

        return Response(200, b"", "text/event-stream; charset=utf-8", [("Cache-Control", "no-store")],
                        stream=stream())


def _esc(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))
