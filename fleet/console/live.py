"""Live updates: a change counter the service bumps, and the server-sent-event stream of one page.

The service bumps :class:`ChangeFeed` whenever something a page shows may have changed (a device's
presence, state, progress or metrics; a rollout pass that wrote; a publish; an audit entry).  A
page's stream re-renders the page's live fragment after a bump (at most every ``min_interval``
seconds, and every ``poll`` seconds regardless, so changes another replica made show too) and
sends it only when the HTML differs from what it sent last.  One event per update::

    event: update
    data: {"html": "<section ...>"}

JSON keeps the fragment on one ``data:`` line whatever it contains.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["ChangeFeed", "sse_stream"]


class ChangeFeed:
    def __init__(self):
        self._cv = threading.Condition()
        self._seq = 0
        self.closed = False

    @property
    def seq(self) -> int:
        return self._seq

    def bump(self, *_args) -> None:
        with self._cv:
            self._seq += 1
            self._cv.notify_all()

    def wait(self, after: int, timeout: float) -> int:
        """The sequence number once it is past ``after``, or after ``timeout`` seconds, or at close."""
        with self._cv:
            self._cv.wait_for(lambda: self._seq > after or self.closed, timeout)
            return self._seq

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_stream(feed: ChangeFeed, render: Callable[[], str], *, alive: Callable[[], bool] = lambda: True,
               min_interval: float = 0.5, poll: float = 5.0, keepalive: float = 15.0,
               clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
    """Bytes to write to the client: ``retry``, the fragment now, then every changed fragment;
    ends when the feed closes or ``alive()`` turns false (the session ended)."""
    yield b"retry: 2000\n\n"
    last, seq = render(), feed.seq
    yield _event("update", {"html": last})
    sent = rendered = clock()
    while not feed.closed:
        feed.wait(seq, poll)
        if feed.closed or not alive():
            return
        wait = min_interval - (clock() - rendered)
        if wait > 0:  # a burst of changes: one render
            time.sleep(wait)
        seq = feed.seq
        html, rendered = render(), clock()
        if html != last:
            last, sent = html, rendered
            yield _event("update", {"html": html})
        elif rendered - sent >= keepalive:
            sent = rendered
            yield b": keepalive\n\n"
