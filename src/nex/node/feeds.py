"""The node's feeds: log lines and CloudEvents, kept in bounded JetStream streams."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from nex.api import subjects
from nex.api.events import EventType, make_event
from nex.connection import while_jetstream_wakes

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "system"


async def ensure_stream(nc: Client, name: str, subject: str, max_bytes: int, replicas: int = 1) -> None:
    """Create the stream if it is missing (with ``replicas`` copies on a JetStream cluster); an
    existing one is left as its operator set it."""
    js = nc.jetstream()
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=name, subjects=[subject], max_bytes=max_bytes, discard=DiscardPolicy.OLD,
        storage=StorageType.FILE, max_msg_size=256 * 1024, num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Another node created it between our look and our create.
        await js.stream_info(name)


class Feeds:
    def __init__(self, nc: Client, node_id: str, replicas: int = 1) -> None:
        self._nc = nc
        self._node_id = node_id
        self._replicas = replicas

    async def ensure_streams(self, logs_bytes: int, events_bytes: int, patience_s: float = 60.0) -> None:
        """Create the streams, waiting out a JetStream that does not answer yet (a cluster still
        electing its leaders) for up to ``patience_s``."""
        async def ensure() -> None:
            await ensure_stream(self._nc, subjects.LOGS_STREAM, subjects.logs_filter("*", "*"), logs_bytes,
                                self._replicas)
            await ensure_stream(self._nc, subjects.EVENTS_STREAM, subjects.events_filter("*"), events_bytes,
                                self._replicas)
        await while_jetstream_wakes(ensure, patience_s)

    def _publish(self, subject: str, payload: bytes) -> None:
        # nats-py buffers publishes; scheduling keeps log pumps synchronous and cheap.
        task = asyncio.ensure_future(self._nc.publish(subject, payload))
        task.add_done_callback(_report_publish_failure)

    def log(self, namespace: str, workload_id: str, stream: str, line: bytes) -> None:
        self._publish(subjects.logs(namespace, workload_id, stream), line)

    def event(
        self, namespace: str, event_type: EventType, data: dict[str, Any], subject: str | None = None
    ) -> None:
        event = make_event(event_type, self._node_id, data, subject=subject)
        self._publish(subjects.events(namespace, event_type.value), event.model_dump_json().encode())

    def node_event(self, event_type: EventType, data: dict[str, Any]) -> None:
        """Node-wide events go to the ``system`` namespace."""
        self.event(SYSTEM_NAMESPACE, event_type, data)


def _report_publish_failure(task: asyncio.Future) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, (ConnectionClosedError, OutboundBufferLimitError)):
        log.warning("feed message dropped: %s", exc)
    elif exc is not None:
        log.error("feed publish failed", exc_info=exc)
