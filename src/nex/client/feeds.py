"""Feeds: the log lines and events a node keeps in its streams, read through a consumer, or, for a
client confined to a namespace, through direct gets of its namespace's copy."""

from __future__ import annotations

import json
import logging
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import AsyncIterator, Awaitable, Callable, Iterable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from nex.api import subjects
from nex.api.errors import NotFound, Unavailable, UnknownWorkload, WorkloadNotFound
from nex.api.events import CloudEvent
from nex.api.models import describe_validation_error
from nex.client.transport import target_token
from nex.client.workloads import Workloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogLine:
    """One line a workload wrote, on its stdout or stderr, from the logs feed."""

    workload_id: str
    stream: str
    data: bytes
    time: datetime

    @property
    def text(self) -> str:
        """The line as text (invalid UTF-8 replaced)."""
        return self.data.decode(errors="replace")


@dataclass(frozen=True)
class FeedMessage:
    """One message of a kept feed, read through a consumer or a direct get."""

    subject: str
    data: bytes
    time: datetime


# The streams that keep events (nex.node.feeds): the audit trail, then what traffic and time make.
EVENT_STREAMS = (subjects.AUDIT_STREAM, subjects.EVENTS_STREAM)
LIVE_OVERLAP = timedelta(seconds=2)  # a kept event this close to the live subscription may come twice


def _event_id(data: bytes) -> str:
    try:
        found = json.loads(data).get("id")
    except (ValueError, AttributeError):
        return ""
    return found if isinstance(found, str) else ""


async def merged_by_time(sources: list[AsyncIterator[FeedMessage]]) -> AsyncIterator[FeedMessage]:
    """Messages of several time-ordered sources, in one time order (a source is read as needed)."""
    heads: list[tuple[FeedMessage, int]] = []
    for index, source in enumerate(sources):
        first = await anext(source, None)
        if first is not None:
            heads.append((first, index))
    try:
        while heads:
            heads.sort(key=lambda head: head[0].time)
            msg, index = heads.pop(0)
            yield msg
            following = await anext(sources[index], None)
            if following is not None:
                heads.append((following, index))
    finally:
        for source in sources:
            await source.aclose()  # type: ignore[attr-defined]


class Feeds(Workloads):
    """Logs and events, kept and live."""

    async def logs(self, workload_id: str, follow: bool = False) -> AsyncIterator[LogLine]:
        """The log lines of a workload kept in the logs stream, then new ones when ``follow``.

        UnknownWorkload when the stream keeps none of its lines and no node runs it: there is
        nothing to print, and nothing will come to follow.

        Raises:
            UnknownWorkload: the stream keeps no line of the workload and no node runs it.
            NotFound: the namespace has no logs stream (no node has started yet).
            Unavailable: JetStream did not answer.

        Example:
            ```python
            async for line in client.logs(workload.id, follow=True):
                print(line.stream, line.text)
            ```

        """
        filter_subject = subjects.logs_filter(self.namespace, target_token(workload_id, "workload id"))

        async def unknown_unless_running() -> None:
            try:
                await self.workload_info(workload_id)
            except WorkloadNotFound:
                raise UnknownWorkload(workload_id, self.namespace) from None

        messages = self._stream(subjects.LOGS_STREAM, filter_subject, follow, "logs", when_empty=unknown_unless_running)
        async with aclosing(messages):
            async for msg in messages:
                tokens = msg.subject.split(".")
                yield LogLine(workload_id=tokens[-2], stream=tokens[-1], data=msg.data, time=msg.time)

    async def events(
        self, follow: bool = False, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        """The events kept in the audit and events streams, oldest first, then new ones when ``follow``.

        ``types`` are event type tokens (``workload_started``) or full CloudEvents types. Live-only
        events (``function_invoked``, kept by no stream) come only when following.

        Raises:
            NotFound: the namespace has no events stream (no node has started yet).
            Unavailable: JetStream did not answer.

        """
        wanted = {t.rsplit(".", 1)[-1] for t in types or ()}
        if len(wanted) == 1:
            filter_subject = subjects.events(self.namespace, target_token(next(iter(wanted)), "event type"))
        else:
            filter_subject = subjects.events_filter(self.namespace)
        if self.confined:
            messages = self._namespace_feed(filter_subject, follow, "events")
        else:
            messages = self._kept_events(filter_subject, follow)
        async with aclosing(messages):
            async for msg in messages:
                if wanted and msg.subject.rsplit(".", 1)[-1] not in wanted:
                    continue
                try:
                    event = CloudEvent.model_validate_json(msg.data)
                except ValidationError as exc:
                    log.warning("skipped a malformed event on %s: %s", msg.subject,
                                describe_validation_error(exc))
                    continue
                yield event

    async def _kept_events(self, filter_subject: str, follow: bool) -> AsyncIterator[FeedMessage]:
        """The events of both streams under a filter, merged by time; then, when ``follow``, the live
        subject (subscribed before the history is read: nothing falls between, and an event
        read in both is given once)."""
        js = self.nc.jetstream(timeout=self.timeout)
        live = await self.nc.subscribe(filter_subject) if follow else None
        subscribed = datetime.now().astimezone()
        try:
            histories = []
            for stream in EVENT_STREAMS:
                try:
                    info = await js.stream_info(stream, subjects_filter=filter_subject)
                except nats.js.errors.NotFoundError:
                    continue  # made by a later node; an earlier NEX_EVENTS may still keep every type
                except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                    raise Unavailable("JetStream is not enabled on this NATS server") from None
                histories.append(self._history(js, stream, filter_subject, bool(info.state.messages)))
            if not histories:
                raise NotFound(f"there is no events stream ({' or '.join(EVENT_STREAMS)}) yet: no Nex node has"
                               " started on this NATS")
            recent: set[str] = set()
            async with aclosing(merged_by_time(histories)) as history:
                async for msg in history:
                    if live is not None and msg.time >= subscribed - LIVE_OVERLAP:
                        recent.add(_event_id(msg.data))
                    yield msg
            while live is not None:
                msg = await live.next_msg(timeout=None)
                if recent and _event_id(msg.data) in recent:
                    continue
                yield FeedMessage(msg.subject, msg.data, datetime.now().astimezone())
        finally:
            if live is not None and not self.nc.is_closed:
                await live.unsubscribe()

    async def _history(self, js, stream: str, filter_subject: str, any_kept: bool) -> AsyncIterator[FeedMessage]:
        """What one stream keeps under a filter, oldest first."""
        if not any_kept:
            return
        async with aclosing(self._stream(stream, filter_subject, False, "events")) as messages:
            async for msg in messages:
                yield msg

    async def recent_event_messages(self, count: int) -> AsyncIterator[Msg]:
        """The last ``count`` events kept in the audit and events streams, of every namespace, oldest
        first (raw: a watcher parses them as it parses live ones). None when no node has made the
        streams yet, or without JetStream."""
        js = self.nc.jetstream(timeout=self.timeout)
        found: list[Msg] = []
        for stream in EVENT_STREAMS:
            found += [msg async for msg in self._last_messages(js, stream, count)]
        found.sort(key=lambda m: m.metadata.timestamp)
        for msg in found[-count:] if count > 0 else []:
            yield msg

    async def _last_messages(self, js, stream: str, count: int) -> AsyncIterator[Msg]:
        try:
            info = await js.stream_info(stream)
        except (nats.js.errors.NotFoundError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            return
        if not info.state.messages or count <= 0:
            return
        start = max(info.state.first_seq, info.state.last_seq - count + 1)
        sub = await js.subscribe(subjects.events_filter("*"), stream=stream, ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                       opt_start_seq=start))
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.timeout)
                except nats.errors.TimeoutError:
                    return  # the history ended early: messages were removed while we read
                yield msg
                if msg.metadata.num_pending == 0:
                    return
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()

    async def _stream(
        self, stream: str, filter_subject: str, follow: bool, what: str,
        when_empty: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[FeedMessage]:
        """The messages of a stream under a filter, oldest first; live ones too when ``follow``.
        ``when_empty`` is awaited (and may raise) when the stream keeps no message under the filter."""
        if self.confined:
            async with aclosing(self._namespace_feed(filter_subject, follow, what, when_empty)) as messages:
                async for msg in messages:
                    yield msg
            return
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            info = await js.stream_info(stream, subjects_filter=filter_subject)
        except nats.js.errors.NotFoundError:
            raise NotFound(
                f"there is no {what} stream ({stream}) yet: no Nex node has started on this NATS"
            ) from None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise Unavailable("JetStream is not enabled on this NATS server") from None
        kept = any((info.state.subjects or {}).values())
        if not kept and when_empty is not None:
            await when_empty()
        if not follow and not kept:
            return
        sub = await js.subscribe(
            filter_subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=None if follow else self.timeout)
                except nats.errors.TimeoutError:
                    return  # history ended early: messages were removed while we read
                yield FeedMessage(msg.subject, msg.data, msg.metadata.timestamp)
                if not follow and msg.metadata.num_pending == 0:
                    return
        finally:
            # A generator left unfinished is closed late, maybe after the connection.
            if not self.nc.is_closed:
                await sub.unsubscribe()

    async def _namespace_feed(self, filter_subject: str, follow: bool, what: str,
                              when_empty: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[FeedMessage]:
        """The kept feed of a confined client: its namespace's feed stream (a copy that ``nex creds``
        makes), read a message at a time with direct gets, which make no consumer; then, when
        ``follow``, the live subjects (subscribed before the history is read, so nothing falls
        between; a line published during the read may come twice)."""
        js = self.nc.jetstream(timeout=self.timeout)
        stream = subjects.feed_stream(self.namespace)
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"there is no {what} stream for namespace {self.namespace!r} ({stream}): the operator"
                           " makes it with nex creds") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no answer from JetStream about {stream}") from None
        live = await self.nc.subscribe(filter_subject) if follow else None
        try:
            seq = 1
            while True:
                try:
                    raw = await js.get_msg(stream, seq=seq, subject=filter_subject, next=True, direct=True)
                except nats.js.errors.NotFoundError:
                    if seq == 1 and when_empty is not None:
                        await when_empty()
                    break  # nothing past seq
                except nats.errors.TimeoutError:
                    raise Unavailable(f"no answer from JetStream about {stream}") from None
                yield FeedMessage(raw.subject or "", raw.data or b"", raw.time or datetime.now().astimezone())
                seq = (raw.seq or seq) + 1
            while live is not None:
                msg = await live.next_msg(timeout=None)
                yield FeedMessage(msg.subject, msg.data, datetime.now().astimezone())
        finally:
            if live is not None and not self.nc.is_closed:
                await live.unsubscribe()
