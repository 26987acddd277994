"""Device -> fleet messages: validated, attributed to a known device, or dropped and counted.

Dropped (``bne_fleet_dropped_messages_total{reason=...}``), never raised:
``unknown-topic`` (not a device->fleet topic of this protocol version), ``malformed`` (too large,
not JSON, fails the pydantic model), ``mismatch`` (the payload's device id is not the topic's),
``unknown-device`` (anything but a birth from a device the registry does not know).
A birth registers the device (open enrollment; the broker's authentication decides who may
connect at all).  An empty payload (a cleared retained message) is ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bitnet_edge.fleet.chunkserver import ChunkServer
from bitnet_edge.fleet.metrics import Counters
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import Progress, parse_device_topic, parse_message

__all__ = ["Ingest", "INBOUND_LEAVES"]

log = logging.getLogger("bitnet_edge.fleet.ingest")
INBOUND_LEAVES = ("presence", "state", "events", "chunk/req")


class Ingest:
    def __init__(self, registry: Registry, chunks: ChunkServer, counters: Counters,
                 on_change: Callable[[str], None] = lambda device_id: None, clock: Callable[[], float] = time.time):
        self.registry, self.chunks, self.counters = registry, chunks, counters
        self._on_change, self._clock = on_change, clock
        self.progress: dict[str, Progress] = {}  # latest Progress event per device (not persisted)
        self._lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> None:
        parsed = parse_device_topic(topic)
        if parsed is None or parsed[1] not in INBOUND_LEAVES:
            self.counters.inc("dropped:unknown-topic")
            return
        device_id, leaf = parsed
        if not payload:
            return
        try:
            msg = parse_message(leaf, payload)
        except FormatError as exc:
            log.debug("dropped %s: %s", topic, exc)
            self.counters.inc("dropped:malformed")
            return
        if msg.device_id != device_id:
            self.counters.inc("dropped:mismatch")
            return
        now = self._clock()
        if leaf == "presence":
            if not self.registry.on_presence(msg, now):
                self.counters.inc("dropped:unknown-device")
                return
            self.counters.inc("rx:presence")
            self._on_change(device_id)
            return
        if not self.registry.known(device_id):
            self.counters.inc("dropped:unknown-device")
            return
        self.counters.inc(f"rx:{leaf}")
        if leaf == "state":
            self.registry.on_state(msg, now)
            self._on_change(device_id)
        elif leaf == "events":
            with self._lock:
                self.progress[device_id] = msg
            self.registry.touch(device_id, now)
        else:  # chunk/req
            self.registry.touch(device_id, now)
            self.chunks.submit(msg)
