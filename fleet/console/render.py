"""Jinja2 for the console's pages: templates and static files ship in the package (no build step,
nothing fetched at run time), every value is HTML-escaped (autoescape), and a missing value is an
error rather than an empty string (StrictUndefined)."""

from __future__ import annotations

import datetime as dt
import hashlib
from importlib import resources

from bitnet_edge.sdk.extras import require

require("jinja2", "the fleet console", "fleet")  # a device install says which extra, not a traceback

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape  # noqa: E402
from markupsafe import Markup  # noqa: E402 - Jinja2's own dependency

__all__ = ["Templates", "static_file", "STATIC"]

#: static files served at /static/<name>: name -> content type
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "favicon.svg": "image/svg+xml"}


def static_file(name: str) -> bytes | None:
    if name not in STATIC:
        return None
    return resources.files("bitnet_edge.fleet.console").joinpath("static", name).read_bytes()


def _size(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _when(ts) -> Markup:
    """An absolute UTC time the page's script shows as "5 s ago" (stable text: live updates only
    send fragments that changed)."""
    if not ts:
        return Markup("-")
    t = dt.datetime.fromtimestamp(float(ts), dt.timezone.utc)
    iso = t.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup('<time datetime="{0}" title="{0}" data-ago>{1}</time>').format(
        iso, t.strftime("%Y-%m-%d %H:%M:%S") + " UTC")


def _short(sha) -> str:
    return str(sha)[:12] if sha else "-"


class Templates:
    def __init__(self):
        self.env = Environment(loader=PackageLoader("bitnet_edge.fleet.console", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(size=_size, when=_when, short=_short)
        digest = hashlib.sha256()
        for name in sorted(STATIC):
            digest.update(static_file(name) or b"")
        self.env.globals["asset_version"] = digest.hexdigest()[:12]

    def render(self, name: str, **ctx) -> str:
        return self.env.get_template(name).render(**ctx)


