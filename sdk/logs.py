"""One log format for the fleet service and the agent: readable text by default, JSON lines with
``--log-format json``.

Code logs operator-relevant events with :func:`log_event`: a stable ``event`` name (``publish``,
``rollout.state``, ``device.failed``, ``mqtt.disconnected``, ``transfer.finish`` ...), a human
message, and structured fields.  Plain ``logger.info(...)`` lines work too (their event is ``log``).

JSON line, one per record::

    {"ts": "2026-12-03T07:28:07.655Z", "level": "warning", "logger": "bitnet_edge.fleet.registry",
     "event": "device.failed", "msg": "device edge-3: ...", "device": "edge-3", "reason": "health_failed", ...}

Text line::

    2026-12-03 07:28:07.655 WARNING fleet.registry: device edge-3: ... [device.failed]

Device-reported strings are hostile: in text lines every control character (newline, carriage
return, escape ...) is written as an escape sequence, so a device cannot forge a log line or
drive the terminal; JSON lines are safe by construction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Literal

__all__ = ["LOG_FORMATS", "setup_logging", "log_event", "JsonFormatter", "TextFormatter", "clean"]

LogFormat = Literal["text", "json"]
LOG_FORMATS = ("text", "json")
_RESERVED = frozenset({"ts", "level", "logger", "event", "msg", "exc"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b`` ...): one safe line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def log_event(logger: logging.Logger, event: str, msg: str, /, *args, level: int = logging.INFO, **fields) -> None:
    """Log ``msg % args`` as ``event`` with structured ``fields`` (JSON-serialisable values)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, *args, extra={"bne_event": event, "bne_fields": fields}, stacklevel=2)


def _ts(record: logging.LogRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.created, dt.timezone.utc)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _ts(record).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "event": getattr(record, "bne_event", "log"), "msg": record.getMessage()}
        for k, v in (getattr(record, "bne_fields", None) or {}).items():
            out[f"field_{k}" if k in _RESERVED else k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = _ts(record).astimezone().strftime("%Y-%m-%d %H:%M:%S.") + f"{int(record.msecs):03d}"
        name = record.name.removeprefix("bitnet_edge.")
        event = getattr(record, "bne_event", None)
        line = f"{ts} {record.levelname} {name}: {clean(record.getMessage())}" + (f" [{event}]" if event else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: LogFormat = "text", level: int = logging.INFO, stream=None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``fmt``; replaces handlers set up before."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("amqtt", "transitions", "asyncio", "urllib3"):  # libraries' chatter stays below the operator's
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return handler
