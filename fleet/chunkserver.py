"""Answers ChunkRequests from the bundle store.

Requests wait in a bounded queue (a full queue drops the request, counted; the device asks again
after its timeout; chunks a device asks for again while they are still queued are not queued twice) and a few worker threads read the chunks (``pread``) and publish them on the
device's ``chunk/data`` topic, waiting while the broker has not acknowledged ``max_pending_mb``.
A request for a file the fleet does not serve, a chunk size out of limits, or chunks past the end
of the file is dropped and counted; none of them raises.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bitnet_edge.fleet.errors import NotFound
from bitnet_edge.fleet.link import FleetLink
from bitnet_edge.fleet.metrics import Counters
from bitnet_edge.fleet.store import BundleStore
from bitnet_edge.sdk.wire.protocol import MAX_CHUNK_BYTES, ChunkRequest, device_topic, pack_chunk

__all__ = ["ChunkServer", "MIN_CHUNK_BYTES"]

log = logging.getLogger("bitnet_edge.fleet.chunks")
MIN_CHUNK_BYTES = 1024  # bytes: smaller chunk sizes are refused (header overhead, request floods)


class ChunkServer:
    def __init__(self, store: BundleStore, link: FleetLink, file_size: Callable[[str], int | None], *,
                 workers: int = 2, queue_size: int = 16384, counters: Counters | None = None,
                 on_served: Callable[[str, str, int], None] | None = None):
        self.store, self.link, self._file_size = store, link, file_size
        self.counters = counters if counters is not None else Counters()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._workers = [threading.Thread(target=self._run, name=f"bne-chunks-{i}", daemon=True)
                         for i in range(workers)]
        self._on_served = on_served  # (device_id, file_sha256, index) after each chunk sent (tests, metrics)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queued: set[tuple[str, str, int]] = set()  # (device, file, chunk) waiting in the queue

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for _ in self._workers:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
        for w in self._workers:
            w.join(5)

    def submit(self, req: ChunkRequest) -> None:
        size = self._file_size(req.file_sha256)
        if size is None:
            self.counters.inc("dropped:unknown-file")
            return
        if not MIN_CHUNK_BYTES <= req.chunk_size <= MAX_CHUNK_BYTES:
            self.counters.inc("dropped:chunk-size")
            return
        n = -(-size // req.chunk_size)
        if any(not 0 <= i < n for i in req.chunks):
            self.counters.inc("dropped:bad-range")
            return
        with self._lock:  # a device asking again for chunks still queued (its timeout < our queue)
            fresh = [i for i in dict.fromkeys(req.chunks) if (req.device_id, req.file_sha256, i) not in self._queued]
            if not fresh:
                self.counters.inc("dropped:duplicate")
                return
            try:
                self._queue.put_nowait((req.model_copy(update={"chunks": fresh}), size))
            except queue.Full:
                self.counters.inc("dropped:overload")
                return
            self._queued.update((req.device_id, req.file_sha256, i) for i in fresh)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            req, size = item
            try:
                self._serve(req, size)
            except NotFound:
                self.counters.inc("dropped:unknown-file")
            except OSError as exc:
                log.warning("reading %s failed: %s", req.file_sha256[:12], exc)
                self.counters.inc("dropped:io-error")
            finally:
                with self._lock:
                    self._queued.difference_update((req.device_id, req.file_sha256, i) for i in req.chunks)

    def _serve(self, req: ChunkRequest, size: int) -> None:
        topic = device_topic(req.device_id, "chunk/data")
        for i in dict.fromkeys(req.chunks):
            offset = i * req.chunk_size
            data = self.store.read(req.file_sha256, offset, min(req.chunk_size, size - offset))
            if not self.link.wait_for_budget():
                self.counters.inc("dropped:backpressure")
                return
            if not self.link.publish(topic, pack_chunk(req.file_sha256, offset, data), qos=1):
                self.counters.inc("dropped:offline")
                return
            self.counters.inc("chunks_sent")
            self.counters.inc("bytes_sent", len(data))
            if self._on_served is not None:
                self._on_served(req.device_id, req.file_sha256, i)
