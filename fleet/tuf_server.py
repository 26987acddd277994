"""Answers devices' ``tuf/req`` with metadata files in ``tuf/data`` parts (docs/protocol.md, ADR 0010).

Metadata is public (it is signed, not secret), so any device that may publish on its own
``tuf/req`` gets an answer; the broker's ACLs decide who that is.  A malformed request, or one
whose device id is not the topic's, is dropped and counted (``dropped:tuf-malformed``,
``dropped:mismatch``); a file the repository does not have is a 404 part, one larger than the
device's ``max_bytes`` a 413, a service without a TUF repository a 503.  Never raises.
"""

from __future__ import annotations

import logging

from bitnet_edge.fleet.metrics import Counters
from bitnet_edge.fleet.tuf_repo import TufRepository
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import (
    MAX_TUF_PART_BYTES,
    device_topic,
    pack_tuf_part,
    parse_device_topic,
    parse_message,
)

__all__ = ["TufResponder"]

log = logging.getLogger("bitnet_edge.fleet.tuf")


class TufResponder:
    def __init__(self, repo: TufRepository, publish, counters: Counters | None = None):
        """``publish(topic, payload) -> bool`` (the service's FleetLink, QoS 1)."""
        self.repo, self._publish = repo, publish
        self.counters = counters if counters is not None else Counters()

    def handle(self, topic: str, payload: bytes) -> None:
        parsed = parse_device_topic(topic)
        if parsed is None or parsed[1] != "tuf/req" or not payload:
            self.counters.inc("dropped:unknown-topic")
            return
        try:
            req = parse_message("tuf/req", payload)
        except FormatError as exc:
            log.debug("dropped %s: %s", topic, exc)
            self.counters.inc("dropped:tuf-malformed")
            return
        if req.device_id != parsed[0]:
            self.counters.inc("dropped:mismatch")
            return
        self.counters.inc("rx:tuf/req")
        out = device_topic(req.device_id, "tuf/data")
        data = self.repo.read(req.file) if self.repo.enabled else None
        status = 503 if not self.repo.enabled else 404 if data is None else 413 if len(data) > req.max_bytes else 200
        if status != 200:
            self._publish(out, pack_tuf_part(req.request_id, status, 0, True))
            return
        parts = [data[i:i + MAX_TUF_PART_BYTES] for i in range(0, len(data), MAX_TUF_PART_BYTES)] or [b""]
        for i, part in enumerate(parts):
            if not self._publish(out, pack_tuf_part(req.request_id, 200, i, i == len(parts) - 1, part)):
                self.counters.inc("dropped:offline")
                return
        self.counters.inc("tuf_files_sent")
