"""Client of the fleet service's control API (what ``bitnet-edge fleet ...`` uses).

The service is found through ``DATA/service.json`` and ``DATA/control.token`` (or an explicit
``--api URL --token T``).  Every failure is a :class:`ControlError` whose ``reason`` says which:
``no-service`` (no service.json), ``unreachable`` (nothing answers), ``http`` (an error status;
``status`` and the service's ``error`` code in ``detail``).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from bitnet_edge.fleet.audit import default_actor
from bitnet_edge.fleet.errors import ControlError

__all__ = ["ControlClient"]

_BLOCK = 1 << 20  # bytes per upload write
_ACTOR = default_actor()  # user@host, recorded in the service's audit log


class ControlClient:
    def __init__(self, api: str, token: str, timeout: float = 60.0):
        u = urlsplit(api)
        if u.scheme != "http" or not u.hostname:
            raise ControlError("bad-url", f"{api!r}: expected http://host:port")
        self.api, self.host, self.port, self.token, self.timeout = api, u.hostname, u.port or 80, token, timeout

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike, api: str | None = None, token: str | None = None
                      ) -> ControlClient:
        data = Path(data_dir)
        if api is None:
            try:
                api = json.loads((data / "service.json").read_text())["api"]
            except (OSError, ValueError, KeyError):
                raise ControlError("no-service", f"no running fleet service found in {data} (service.json); "
                                                 "start one with `bitnet-edge fleet serve --data DIR` or pass "
                                                 "--api") from None
        if token is None:
            try:
                token = (data / "control.token").read_text().strip()
            except OSError:
                raise ControlError("no-service", f"cannot read {data / 'control.token'}; pass --token") from None
        return cls(api, token)

    def _request(self, method: str, path: str, body: bytes | None = None, *, stream=None, length: int = 0,
                 ctype: str = "application/json", progress: Callable[[int], None] | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": ctype, "X-BNE-Actor": _ACTOR}
            if stream is not None:
                conn.putrequest(method, path)
                for k, v in {**headers, "Content-Length": str(length)}.items():
                    conn.putheader(k, v)
                conn.endheaders()
                while block := stream.read(_BLOCK):
                    conn.send(block)
                    if progress is not None:
                        progress(len(block))
            else:
                conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError("unreachable", f"{self.api}: {exc}") from None
        finally:
            conn.close()
        ctype_back = resp.getheader("Content-Type", "")
        data = json.loads(raw) if raw and ctype_back.startswith("application/json") else raw.decode()
        if resp.status >= 400:
            code = data.get("error") if isinstance(data, dict) else None
            detail = data.get("detail") if isinstance(data, dict) else None
            raise ControlError(code if isinstance(code, str) and code else "http",
                               detail if isinstance(detail, str) and detail else f"{self.api}: HTTP {resp.status}",
                               resp.status)
        return data

    def get(self, path: str):
        return self._request("GET", path)

    def post(self, path: str, data=None):
        return self._request("POST", path, json.dumps(data if data is not None else {}).encode())

    def upload(self, path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> dict:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return self._request("POST", "/v1/bundles", stream=f, length=size, ctype="application/octet-stream",
                                 progress=progress)

    def metrics(self) -> str:
        return self._request("GET", "/metrics")
