"""The fleet service's MQTT connection: subscriptions, an inbound queue, and flow-controlled publishing.

* Subscriptions are made in ``on_connect`` (so they come back after every reconnect).  With a
  share group (MQTT 5) ``chunk/req`` and ``events`` are subscribed as ``$share/<group>/...`` so
  replicas split the work; ``presence`` and ``state`` stay unshared (brokers send retained
  messages to plain subscriptions only, and every replica keeps its view current; the database
  writes are idempotent upserts).
* paho's network thread only queues inbound messages; a dispatcher thread hands them to the
  service (database writes never stall the socket).  A full queue drops messages (counted).
* Publishes are tracked by message id until the broker acknowledges them (QoS 1) so chunk senders
  can wait while too many bytes are unacknowledged; the table is cleared on disconnect (paho
  re-sends what was in flight after the reconnect).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bitnet_edge.fleet.metrics import Counters
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import PREFIX

__all__ = ["FleetLink", "DEVICE_SUBSCRIPTIONS"]

log = logging.getLogger("bitnet_edge.fleet.link")

#: device -> fleet leaves the service listens to
DEVICE_SUBSCRIPTIONS = ("presence", "state", "events", "chunk/req", "tuf/req")
SHARED = ("events", "chunk/req", "tuf/req")  # split between replicas of a share group


class FleetLink:
    def __init__(self, connection: BrokerConnection, default_client_id: str, handler: Callable[[str, bytes], None], *,
                 on_connected: Callable[[], None] = lambda: None, share_group: str | None = None,
                 inbound_queue: int = 100_000, max_pending_bytes: int = 64 << 20, counters: Counters | None = None):
        self.url, self.share_group = connection.broker, share_group
        self._keepalive = connection.keepalive
        self._handler, self._on_connected = handler, on_connected
        self.counters = counters if counters is not None else Counters()
        self._client = connection.client(default_client_id, clean_session=True, mqtt5=share_group is not None,
                                         max_inflight=256)
        self._client.max_queued_messages_set(0)
        self._client.on_connect, self._client.on_disconnect = self._on_connect, self._on_disconnect
        self._client.on_message, self._client.on_publish = self._on_message, self._on_publish
        self._inbound: queue.Queue = queue.Queue(maxsize=inbound_queue)
        self._pending: dict[int, int] = {}  # message id -> bytes, until PUBACK
        self._acked_early: set[int] = set()  # PUBACKs that beat the registration of their mid
        self._pending_bytes = 0
        self._max_pending = max_pending_bytes
        self._cv = threading.Condition()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._dispatcher: threading.Thread | None = None

    def start(self) -> None:
        self._dispatcher = threading.Thread(target=self._dispatch, name="bne-fleet-dispatch", daemon=True)
        self._dispatcher.start()
        if self.share_group is not None:
            self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive, clean_start=True)
        else:
            self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._inbound.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(10)
        with self._cv:
            self._cv.notify_all()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    # ---- inbound ---------------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        base = f"{PREFIX}/devices/+/"
        share = f"$share/{self.share_group}/" if self.share_group else ""
        client.subscribe([((share if leaf in SHARED else "") + base + leaf, 1) for leaf in DEVICE_SUBSCRIPTIONS])
        self.connected.set()
        self.counters.inc("connects")
        try:
            self._on_connected()
        except Exception:  # noqa: BLE001 - a failing hook must not kill paho's thread
            log.exception("on_connected hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        with self._cv:  # nothing in flight will be acknowledged on this connection
            self._pending.clear()
            self._acked_early.clear()
            self._pending_bytes = 0
            self._cv.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._inbound.put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            self.counters.inc("dropped:overload")

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            item = self._inbound.get()
            if item is None:
                return
            try:
                self._handler(*item)
            except Exception:  # noqa: BLE001 - one bad message never stops the service
                log.exception("handling %s failed", item[0])
                self.counters.inc("dropped:error")

    # ---- outbound ---------------------------------------------------------------------------------

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cv:
            n = self._pending.pop(mid, None)
            if n is None:
                self._acked_early.add(mid)
                return
            self._pending_bytes -= n
            self._cv.notify_all()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False when not connected (nothing queued)."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0 or info.rc != 0:
            return info.rc == 0
        n = len(payload)
        with self._cv:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._pending[info.mid] = n
                self._pending_bytes += n
        return True

    def wait_for_budget(self, timeout: float = 5.0) -> bool:
        """Block while more than ``max_pending_bytes`` are unacknowledged; False on timeout or stop."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending_bytes <= self._max_pending or self._stop.is_set(),
                                     timeout) and not self._stop.is_set()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes
