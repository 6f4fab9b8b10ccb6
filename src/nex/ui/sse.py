"""Server-sent events: the wire format, and a fan-out to every open page.

Each page holds one ``EventSource`` on ``/api/stream``. A page that cannot keep up
(its queue is full) is dropped rather than slowing the others or growing memory:
the browser reconnects by itself and starts again from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

QUEUE_SIZE = 1000
RETRY_MS = 2000  # how long a browser waits before it reconnects


def encode(event: str, data: Any) -> bytes:
    """One SSE message: a named event whose data is JSON on one line."""
    if "\n" in event or "\r" in event:
        raise ValueError(f"an SSE event name cannot hold a line break: {event!r}")
    # json.dumps escapes line breaks inside strings, so the data is one `data:` line.
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def comment(text: str = "") -> bytes:
    """A comment line: keeps an idle connection open through proxies."""
    return f": {text}\n\n".encode()


def retry(ms: int = RETRY_MS) -> bytes:
    return f"retry: {ms}\n\n".encode()


class Subscriber:
    """One page's queue of encoded messages; ``None`` in it means: the stream ends."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = False

    async def next(self) -> bytes | None:
        return await self.queue.get()


class Broadcaster:
    """Sends each message to every subscriber; drops those that fall behind."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, *first: bytes) -> Subscriber:
        """A new subscriber whose queue starts with ``first`` (the snapshot it needs)."""
        subscriber = Subscriber(self._queue_size)
        for message in first:
            subscriber.queue.put_nowait(message)
        if self._closed:
            subscriber.queue.put_nowait(None)
        else:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, event: str, data: Any) -> None:
        if not self._subscribers:
            return
        message = encode(event, data)
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(subscriber)

    def close(self) -> None:
        """Ends every stream (the server is stopping); later subscribers end at once."""
        self._closed = True
        for subscriber in list(self._subscribers):
            self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.dropped = True
        # Make room for the end marker: what it replaces would never be read anyway.
        while True:
            try:
                subscriber.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                subscriber.queue.get_nowait()
