"""The one log format of the fleet service and the agent (bitnet_edge.sdk.logs)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bitnet_edge.sdk.logs import clean, log_event, setup_logging


@pytest.fixture
def capture():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()

    def use(fmt):
        setup_logging(fmt, logging.INFO, stream=buf)
        return buf
    yield use
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_event_and_fields(capture):
    buf = capture("json")
    log = logging.getLogger("bitnet_edge.fleet.registry")
    log_event(log, "device.failed", "device %s: %s", "d1", "worker uses 67 MiB, budget 1 MiB", level=logging.WARNING,
              device="d1", reason="health_failed", detail="worker uses 67 MiB, budget 1 MiB", msg="collides")
    logging.getLogger("bitnet_edge.x").info("plain line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second, third = (json.loads(x) for x in buf.getvalue().splitlines())
    assert first["event"] == "device.failed" and first["level"] == "warning"
    assert first["logger"] == "bitnet_edge.fleet.registry" and first["ts"].endswith("Z")
    assert first["msg"] == "device d1: worker uses 67 MiB, budget 1 MiB"
    assert (first["device"], first["reason"], first["detail"]) == ("d1", "health_failed",
                                                                   "worker uses 67 MiB, budget 1 MiB")
    assert first["field_msg"] == "collides"  # a field never overwrites the record's own keys
    assert second == {**second, "event": "log", "msg": "plain line", "level": "info"}
    assert "ValueError: boom" in third["exc"]


def test_text_lines_are_readable_and_cannot_be_forged(capture):
    buf = capture("text")
    log = logging.getLogger("bitnet_edge.agent.sync")
    log_event(log, "install", "install failed: %s", "bad\n2026-01-01 00:00:00.000 INFO fleet: forged\x1b[31m",
              result="failed")
    out = buf.getvalue()
    assert out.count("\n") == 1  # one record, one line
    assert " INFO agent.sync: install failed: bad\\n2026-01-01" in out and out.rstrip().endswith("[install]")
    assert "\x1b" not in out and "\\x1b[31m" in out
    assert clean("a\u2028b\rc") == "a\\u2028b\\rc"


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format 'xml'"):
        setup_logging("xml")
