"""Console sessions and CSRF tokens, derived from the control token: no I/O, no server-side store.

A session is a cookie ``v1.<expiry>.<nonce>.<mac>``, the MAC an HMAC-SHA256 under a key derived
from the control token, so every replica that holds the token accepts it, a restart keeps it, and
replacing ``control.token`` ends every session.  The cookie is ``HttpOnly`` (page scripts cannot
read it) and ``SameSite=Strict`` (other sites cannot make the browser send it).  Every
state-changing console request also carries the session's CSRF token (a second HMAC of the nonce),
in a form field, and must come from the console's own origin when the browser names one.
Logging out revokes the nonce in this process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Sessions", "Session", "COOKIE", "same_origin", "safe_next"]

COOKIE = "bne_console"
LIFETIME = 12 * 3600.0  # seconds a login lasts


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: float
    csrf: str


class Sessions:
    def __init__(self, token: str, clock: Callable[[], float] = time.time, lifetime: float = LIFETIME):
        self._key = hashlib.sha256(b"bitnet-edge console session v1\0" + token.encode()).digest()
        self._token = token.encode()
        self.clock, self.lifetime = clock, lifetime
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, what: bytes) -> str:
        return _b64(hmac.new(self._key, what, hashlib.sha256).digest())

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self._token)

    def issue(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        exp = int(self.clock() + self.lifetime)
        nonce = _b64(secrets.token_bytes(18))
        body = f"v1.{exp}.{nonce}"
        return f"{body}.{self._mac(body.encode())}", Session(nonce, exp, self._csrf(nonce))

    def _csrf(self, nonce: str) -> str:
        return self._mac(b"csrf\0" + nonce.encode())

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for, or None (forged, expired, revoked, malformed)."""
        if not cookie or len(cookie) > 256:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._mac(body.encode()).encode()):
            return None
        exp, nonce = int(parts[1]), parts[2]
        now = self.clock()
        if exp < now:
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        return Session(nonce, exp, self._csrf(nonce))

    def check_csrf(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())

    def revoke(self, session: Session) -> None:
        now = self.clock()
        with self._lock:
            self._revoked = {n: e for n, e in self._revoked.items() if e >= now}
            self._revoked[session.nonce] = session.expires


def same_origin(host: str | None, origin: str | None, referer: str | None, forwarded_host: str | None = None) -> bool:
    """A state-changing request is from the console's own pages: the browser's ``Origin`` (else
    ``Referer``) names the host the request was sent to (``Host``, or the ``X-Forwarded-Host`` a
    reverse proxy sets: a page on another site cannot add that header to a form post).  Neither
    given (not a browser): True, the CSRF token still decides."""
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    hosts = {h.strip().lower() for h in (host, *(forwarded_host or "").split(",")) if h and h.strip()}
    if not hosts or claimed == "null":
        return False
    try:
        u = urlsplit(claimed)
    except ValueError:
        return False
    return u.scheme in ("http", "https") and u.netloc.lower() in hosts


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after logging in: a path on this server only (no scheme, host or ``//``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in target):
        return default
    return target
