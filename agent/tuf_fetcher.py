"""python-tuf's ``FetcherInterface`` over the device's MQTT connection (docs/protocol.md, ADR 0010).

``_fetch(url)`` keeps the URL's last path segment (``2.root.json``), publishes a ``TufRequest`` on
``.../tuf/req`` with a fresh request id, and yields the data of the ``tuf/data`` parts answering it
as they arrive.  The public wrapper of ``FetcherInterface`` enforces ngclient's maximum length
while this generator streams; on top of that this fetcher never reads more than
``max_file_bytes`` nor waits longer than ``part_timeout`` for a part or ``file_timeout`` for a
file, and drops parts that come out of order.  Every failure is a ``DownloadError``: a 404 part is
``DownloadHTTPError(404)`` (ngclient's "no newer root"), silence is ``SlowRetrievalError``.

Threads: :meth:`deliver` runs on paho's network thread and only queues; the generator runs on the
caller's (FleetSync's worker) thread.  Pending requests are keyed by request id and removed in
``finally``; parts for unknown ids (late, stray, forged) are counted and dropped.
"""

from __future__ import annotations

import queue
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError, SlowRetrievalError
from tuf.ngclient.fetcher import FetcherInterface

from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import TUF_FILE, TufRequest, device_topic, unpack_tuf_part

__all__ = ["MqttFetcher", "FetchLimits"]


@dataclass(frozen=True)
class FetchLimits:
    part_timeout: float = 10.0  # seconds: longest wait for the next part of a metadata file
    file_timeout: float = 60.0  # seconds: longest fetch of one metadata file
    max_file_bytes: int = 8 * 1024 * 1024  # bytes: no metadata file is read past this (ngclient's are lower)
    max_queued_bytes: int = 8 * 1024 * 1024  # bytes waiting for the reader; past this the fetch fails


class MqttFetcher(FetcherInterface):
    def __init__(self, device_id: str, publish: Callable[[str, str], bool], limits: FetchLimits = FetchLimits()):
        """``publish(topic, payload) -> bool``: False when not connected."""
        self.device_id, self._publish, self.limits = device_id, publish, limits
        self._pending: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()

    def deliver(self, payload: bytes) -> None:
        """A ``tuf/data`` message (paho's thread): queue it for the request it answers."""
        try:
            head, data = unpack_tuf_part(payload)
        except FormatError:
            self.stats["malformed_parts"] += 1
            return
        with self._lock:
            entry = self._pending.get(head.request_id)
            if entry is None:
                self.stats["stray_parts"] += 1
                return
            # bounded by bytes, not parts: a flood is held until the reader's length check cuts it off
            if entry[1] + len(data) > self.limits.max_queued_bytes:
                self.stats["overflow_parts"] += 1
                entry[2] = True
                return
            entry[1] += len(data)
        entry[0].put_nowait((head, data))

    def _fetch(self, url: str) -> Iterator[bytes]:
        file = url.rsplit("/", 1)[-1]
        if not re.fullmatch(TUF_FILE, file):
            raise DownloadError(f"{url}: not a TUF metadata file this protocol serves")
        return self._stream(file)

    def _stream(self, file: str) -> Iterator[bytes]:
        lim = self.limits
        rid = secrets.token_hex(16)
        q: queue.Queue = queue.Queue()
        entry = [q, 0, False]  # queue, bytes queued, overflowed
        with self._lock:
            self._pending[rid] = entry
        try:
            req = TufRequest(device_id=self.device_id, request_id=rid, file=file, max_bytes=lim.max_file_bytes)
            if not self._publish(device_topic(self.device_id, "tuf/req"), req.model_dump_json()):
                raise DownloadError(f"{file}: not connected to the fleet")
            self.stats["requests"] += 1
            deadline = time.monotonic() + lim.file_timeout
            expect, total = 0, 0
            while True:
                wait = min(lim.part_timeout, deadline - time.monotonic())
                try:
                    if wait <= 0:
                        raise queue.Empty
                    head, data = q.get(timeout=wait)
                except queue.Empty:
                    if entry[2]:
                        raise DownloadLengthMismatchError(f"{file}: more than {lim.max_queued_bytes} bytes queued")
                    raise SlowRetrievalError(f"{file}: no answer from the fleet in time") from None
                with self._lock:
                    entry[1] -= len(data)
                if head.index != expect:
                    raise DownloadError(f"{file}: part {head.index} arrived, part {expect} expected (lost or forged)")
                if head.status != 200:
                    raise DownloadHTTPError(f"{file}: the fleet answered {head.status}", head.status)
                expect += 1
                total += len(data)
                if total > lim.max_file_bytes:
                    raise DownloadLengthMismatchError(f"{file}: more than {lim.max_file_bytes} bytes")
                if data:
                    yield data
                if head.last:
                    return
        finally:
            with self._lock:
                self._pending.pop(rid, None)
