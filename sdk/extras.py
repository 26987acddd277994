"""Optional dependencies by role: import one, or say which extra installs it.

The base install is the runtime; each role adds an extra (pyproject.toml, docs/install.md):
``agent`` (paho-mqtt, tuf), ``builder`` (gguf, flatbuffers, onnx), ``fleet`` (amqtt, paho-mqtt, tuf, psycopg, Jinja2),
``mlx``.  Code that needs one of them imports it through :func:`require`, so a device install
without, say, gguf gets a one-line :class:`MissingExtra` naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["EXTRAS", "MissingExtra", "require", "missing"]

#: top-level module -> (distribution, the extras that install it)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gguf": ("gguf", ("builder",)),
    "flatbuffers": ("flatbuffers", ("builder",)),
    "onnx": ("onnx", ("builder", "onnx")),
    "paho": ("paho-mqtt", ("agent", "fleet")),
    "tuf": ("tuf", ("agent", "fleet")),
    "securesystemslib": ("securesystemslib", ("agent", "fleet")),
    "amqtt": ("amqtt", ("fleet",)),
    "jinja2": ("Jinja2", ("fleet",)),
    "waitress": ("waitress", ("agent",)),
    "psycopg": ("psycopg", ("fleet",)),
    "mlx": ("mlx", ("mlx",)),
}


class MissingExtra(BitnetEdgeError, ImportError):
    """An optional dependency of one role is not installed.  ``module``, ``distribution``, ``extra``."""

    reason = "missing-extra"

    def __init__(self, module: str, purpose: str, extra: str | None = None):
        top = module.split(".")[0]
        dist, extras = EXTRAS.get(top, (top, ()))
        self.module, self.distribution = module, dist
        self.extra = extra if extra in extras else (extras[0] if extras else None)
        hint = f"pip install 'bitnet-edge[{self.extra}]'" if self.extra else f"pip install {dist}"
        super().__init__("missing-extra", f"{purpose} needs {dist}, which is not installed; install it with: {hint}")
        self.name = module  # ImportError's attribute: the module that is missing


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` when its distribution is missing.

    ``purpose`` names what needs it ("the GGUF importer"); ``extra`` picks the extra to suggest when
    several install the module (the fleet's code says ``fleet`` for tuf).  A module that is installed but fails to
    import for another reason raises that error unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == module or module.startswith(exc.name + ".")):
            raise  # the module is there; something it imports is not
        raise MissingExtra(module, purpose, extra) from None


def missing(exc: ModuleNotFoundError, purpose: str, extra: str | None = None) -> Exception:
    """For a module-level ``try: import ... except ModuleNotFoundError as exc: raise missing(exc, ...)``:
    :class:`MissingExtra` when the missing module is an optional dependency, else ``exc`` itself."""
    top = (exc.name or "").split(".")[0]
    return MissingExtra(exc.name, purpose, extra) if top in EXTRAS else exc
