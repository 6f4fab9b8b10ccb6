"""Function events, published after the replies they describe.

Building and publishing a CloudEvent costs about as much as answering a trivial
call, so the reply goes out first and one task per agent publishes the events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex.api import subjects
from nex.api.events import EventType, make_event

log = logging.getLogger(__name__)

MAX_QUEUED = 100_000


class EventFeed:
    """Queues events and publishes them in order; drops (and counts) past ``MAX_QUEUED``."""

    def __init__(self, nc: Client, node_id: str) -> None:
        self._nc = nc
        self._node_id = node_id
        self._queue: asyncio.Queue[tuple[str, EventType, str, dict[str, Any]]] = asyncio.Queue(MAX_QUEUED)
        self.dropped = 0
        self._publishing = asyncio.create_task(self._publish(), name="function events")

    def emit(self, namespace: str, event_type: EventType, workload_id: str, data: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((namespace, event_type, workload_id, data))
        except asyncio.QueueFull:
            self.dropped += 1

    async def close(self, timeout: float) -> None:
        """Publish what is queued, for up to ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d function events not published", self._queue.qsize())
        self._publishing.cancel()

    async def _publish(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():  # one wake-up for all that queued meanwhile
                batch.append(self._queue.get_nowait())
            for namespace, event_type, workload_id, data in batch:
                try:
                    event = make_event(event_type, self._node_id, data, subject=workload_id)
                    await self._nc.publish(subjects.events(namespace, event_type.value),
                                           event.model_dump_json().encode())
                except NatsError as exc:
                    log.warning("publishing a %s event: %s", event_type.value, exc)
                finally:
                    self._queue.task_done()
