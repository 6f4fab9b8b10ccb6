"""The node's feeds: log lines and CloudEvents, kept in bounded JetStream streams.

Three streams: NEX_LOGS (log lines), NEX_EVENTS (the events traffic and time make:
``function_stats``, failed calls, heartbeats) and NEX_AUDIT (security and lifecycle
events), split by event type (:data:`nex.api.events.AUDIT_EVENTS`,
:data:`~nex.api.events.ACTIVITY_EVENTS`) so that no amount of calls evicts the audit
trail. ``function_invoked`` is captured by neither. A NEX_EVENTS made by an earlier
release captures every event type; it is narrowed to its own types first, or NEX_AUDIT
could not capture theirs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from nex.api import subjects
from nex.api.events import ACTIVITY_EVENTS, AUDIT_EVENTS, EventType, kept_subjects, make_event
from nex.connection import while_jetstream_wakes

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "system"
# What NEX_EVENTS captured before the audit trail had a stream of its own.
EARLIER_EVENTS_SUBJECTS = [subjects.events_filter("*")]


class StreamConflict(Exception):
    """A stream Nex needs cannot be made: JetStream refused it (most often, another stream
    captures its subjects)."""

    def __init__(self, name: str, subjects_: list[str], reason: str) -> None:
        super().__init__(f"cannot create the JetStream stream {name} for {', '.join(subjects_[:3])}"
                         f"{' ...' if len(subjects_) > 3 else ''}: {reason}. If another stream captures "
                         f"those subjects (a NEX_EVENTS changed by hand keeps every event type), narrow it "
                         f"with nats stream edit, or remove it")
        self.name = name


@dataclass(frozen=True)
class AuditRetention:
    """How long and how much NEX_AUDIT keeps: the operator's (NodeConfig audit_stream_bytes,
    audit_max_age_s). Applied when the stream is made; an existing one is left as it is."""

    max_bytes: int = 256 << 20
    max_age_s: float = 90 * 86400


async def ensure_stream(nc: Client, name: str, subject: str | list[str], max_bytes: int, replicas: int = 1,
                        max_age_s: float = 0) -> None:
    """Create the stream if it is missing (with ``replicas`` copies on a JetStream cluster); an
    existing one is left as its operator set it."""
    js = nc.jetstream()
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=name, subjects=[subject] if isinstance(subject, str) else list(subject), max_bytes=max_bytes,
        discard=DiscardPolicy.OLD, storage=StorageType.FILE, max_msg_size=256 * 1024, num_replicas=replicas,
        max_age=max_age_s or None,
    )
    try:
        await js.add_stream(config)
    except BadRequestError as refused:
        # Another node created it between our look and our create; or a stream of the operator's
        # already captures its subjects (JetStream's error 10065), which is theirs to change.
        try:
            await js.stream_info(name)
        except NotFoundError:
            raise StreamConflict(name, config.subjects or [], refused.description or str(refused)) from None


async def narrow_earlier_events_stream(nc: Client) -> bool:
    """A NEX_EVENTS that captures every event type (as earlier releases made it) captures only its
    own types from now on; what it keeps stays. True when it was narrowed."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
    except NotFoundError:
        return False
    if list(info.config.subjects or []) != EARLIER_EVENTS_SUBJECTS:
        return False
    info.config.subjects = kept_subjects(ACTIVITY_EVENTS)
    await js.update_stream(info.config)
    log.info("%s now keeps %s only; security and lifecycle events go to %s", subjects.EVENTS_STREAM,
             ", ".join(sorted(t.value for t in ACTIVITY_EVENTS)), subjects.AUDIT_STREAM)
    return True


class Feeds:
    def __init__(self, nc: Client, node_id: str, replicas: int = 1) -> None:
        self._nc = nc
        self._node_id = node_id
        self._replicas = replicas

    async def ensure_streams(self, logs_bytes: int, events_bytes: int, patience_s: float = 60.0,
                             audit: AuditRetention | None = None) -> None:
        """Create the streams, waiting out a JetStream that does not answer yet (a cluster still
        electing its leaders) for up to ``patience_s``."""
        audit = audit or AuditRetention()

        async def ensure() -> None:
            await ensure_stream(self._nc, subjects.LOGS_STREAM, subjects.logs_filter("*", "*"), logs_bytes,
                                self._replicas)
            await narrow_earlier_events_stream(self._nc)
            await ensure_stream(self._nc, subjects.EVENTS_STREAM, kept_subjects(ACTIVITY_EVENTS), events_bytes,
                                self._replicas)
            await ensure_stream(self._nc, subjects.AUDIT_STREAM, kept_subjects(AUDIT_EVENTS), audit.max_bytes,
                                self._replicas, max_age_s=audit.max_age_s)
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
