"""Function events, published after the replies they describe.

Building and publishing a CloudEvent costs about as much as answering a trivial
call, so the reply goes out first and one task per agent publishes the events,
each encoded by an :class:`EventEncoder` made once per function and event type.
Which events a call makes, and how often, is :mod:`nex.agent.activity`'s concern;
the feed's :class:`~nex.agent.activity.ActivityReporter` sends the periodic
``function_stats`` of every function.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex.agent.activity import DEFAULT_STATS_INTERVAL_S, ActivityReporter
from nex.api.events import EventEncoder

log = logging.getLogger(__name__)

MAX_QUEUED = 100_000


class EventFeed:
    """Queues events and publishes them in order; drops (and counts) past ``MAX_QUEUED``."""

    def __init__(self, nc: Client, stats_interval_s: float = DEFAULT_STATS_INTERVAL_S) -> None:
        self._nc = nc
        self.reporter = ActivityReporter(stats_interval_s)
        self._queue: asyncio.Queue[tuple[str, EventEncoder, dict[str, Any]]] = asyncio.Queue(MAX_QUEUED)
        self.dropped = 0
        self._publishing = asyncio.create_task(self._publish(), name="function events")

    def emit(self, subject: str, encoder: EventEncoder, data: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((subject, encoder, data))
        except asyncio.QueueFull:
            self.dropped += 1

    async def close(self, timeout: float) -> None:
        """Publish what is queued (the last function_stats too), for up to ``timeout`` seconds."""
        self.reporter.close()
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
            for subject, encoder, data in batch:
                try:
                    await self._nc.publish(subject, encoder.encode(data))
                except NatsError as exc:
                    log.warning("publishing an event on %s: %s", subject, exc)
                finally:
                    self._queue.task_done()
