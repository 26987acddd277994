"""Flow control of one chunked download, with no I/O: which chunk indices to request next.

At most ``window`` chunks are in flight; a chunk not received ``timeout`` seconds after it was
requested goes back to the front of the queue and is asked for again.  Requests are batched (no
request for fewer than ``window // 4`` chunks unless that is all that is left) so a steady stream
of arrivals does not turn into one request per chunk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from bitnet_edge.sdk.wire.protocol import MAX_CHUNKS_PER_REQUEST

__all__ = ["Window"]


class Window:
    def __init__(self, missing: Iterable[int], window: int = 64, timeout: float = 10.0):
        if not 1 <= window:
            raise ValueError("window must be at least 1")
        self.window, self.timeout = window, timeout
        self._wanted: deque[int] = deque(sorted(set(missing)))
        self._inflight: dict[int, float] = {}  # index -> deadline (monotonic seconds)
        self.requested = 0  # chunk indices asked for, re-requests included
        self.timeouts = 0  # chunks asked for again after their deadline

    @property
    def done(self) -> bool:
        return not self._wanted and not self._inflight

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def next_deadline(self) -> float | None:
        return min(self._inflight.values(), default=None)

    def received(self, index: int) -> bool:
        """A chunk arrived; False if it was not outstanding (a duplicate or a stray)."""
        if self._inflight.pop(index, None) is not None:
            return True
        try:
            self._wanted.remove(index)  # arrived before we asked again after a timeout
            return True
        except ValueError:
            return False

    def lost_connection(self) -> None:
        """Every request in flight is gone (reconnect): ask again at once."""
        self._wanted.extendleft(sorted(self._inflight, reverse=True))
        self._inflight.clear()

    def next_requests(self, now: float) -> list[list[int]]:
        """Batches of chunk indices to request now (each at most MAX_CHUNKS_PER_REQUEST long)."""
        expired = sorted(i for i, t in self._inflight.items() if t <= now)
        for i in expired:
            del self._inflight[i]
        self.timeouts += len(expired)
        self._wanted.extendleft(reversed(expired))
        free = self.window - len(self._inflight)
        if free <= 0 or not self._wanted or (free < max(1, self.window // 4) and free < len(self._wanted)):
            return []
        batch = [self._wanted.popleft() for _ in range(min(free, len(self._wanted)))]
        for i in batch:
            self._inflight[i] = now + self.timeout
        self.requested += len(batch)
        return [batch[k:k + MAX_CHUNKS_PER_REQUEST] for k in range(0, len(batch), MAX_CHUNKS_PER_REQUEST)]
