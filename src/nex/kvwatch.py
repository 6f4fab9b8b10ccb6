"""JetStream KV watches and reads that a cancellation cannot leave half-open.

nats-py's ``KeyValue.watch`` subscribes first and then asks the server for the consumer's
info. Cancelled in between (a node stopping while its reconciler starts a pass), it hands
back no watcher to stop, yet its subscription stays: the first message it receives waits
the JetStream timeout (5 s) for a setup that never finishes, and draining the connection
as the node stops waits for that message. A user saw it as a Ctrl-C that took 5 s.

Also the read of every key's latest value (:func:`latest_values`) that the app store and the
registry reader share, opened the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from nex.api.errors import Unavailable

# How long a cancelled opening may still take to finish (one round trip), so that its
# subscription is gone before the caller goes on stopping.
_OPENING_WAIT_S = 1.0
# The server drops a stopped watch's consumer this soon (nats-py's default is 5 minutes: a
# reconciler listing every second would pile up hundreds of them).
_INACTIVE_S = 5.0
KV_OPERATION = "KV-Operation"  # the header that marks a KV delete or purge
_stopping: set[asyncio.Future] = set()
T = TypeVar("T")


async def opened(opening: Awaitable[T], close: Callable[[T], Awaitable[object]]) -> T:
    """Await ``opening`` (a watch, a subscription); when cancelled meanwhile, ``close`` what it
    opens once it has, so nothing is left subscribed for a drain to wait on."""
    started = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(lambda done: _close_unused(done, close))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({started}, timeout=_OPENING_WAIT_S)
        raise


async def open_watch(kv: KeyValue, keys: str, **options) -> KeyValue.KeyWatcher:
    """``kv.watch(keys, **options)``; when cancelled, the watch is stopped once it opened."""
    return await opened(kv.watch(keys, **options), lambda watcher: watcher.stop())


def _close_unused(done: asyncio.Future, close: Callable[[Any], Awaitable[object]]) -> None:
    if done.cancelled() or done.exception() is not None:
        return  # nats-py unsubscribes itself when the opening fails
    closing = asyncio.ensure_future(_quietly(close(done.result())))
    _stopping.add(closing)  # held: the loop keeps only a weak reference to a task
    closing.add_done_callback(_stopping.discard)


async def _quietly(closing: Awaitable[object]) -> None:
    with contextlib.suppress(nats.errors.Error):
        await closing


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    await _quietly(watcher.stop())


async def watched_keys(kv: KeyValue, keys: str = ">", timeout: float = 5.0) -> list[str]:
    """The keys matching ``keys`` that hold a value: ``kv.keys()``, minus its two leaks. A
    cancelled ``kv.keys()`` never stops its watch (which then blocks a drain once 256 updates
    queue up), and its watch's consumer outlives it by 5 minutes on the server, not seconds."""
    watcher = await open_watch(kv, keys, ignore_deletes=True, meta_only=True, inactive_threshold=_INACTIVE_S)
    try:
        found = []
        while (entry := await watcher.updates(timeout=timeout)) is not None:
            found.append(entry.key)  # None: the marker after the keys present when the watch began
        return found
    finally:
        await _stop(watcher)


async def latest_values(js: JetStreamContext, bucket: str, pattern: str,
                        timeout: float) -> list[tuple[str, bytes, float]]:
    """(subject, value, when it was stored, as a POSIX time of the server) of the latest value of
    every key of ``bucket`` matching ``pattern``, deleted keys left out; a key written again during
    the read may come twice, the later value last.

    Not nats-py's KV watch: it decides that the values present have all arrived from consumer
    info taken while they may still be on their way, and on a cluster it now and then ends before
    the first one (measured: 8 reads of 1,000 missed an app that was there), which the reconciler
    would take for a deleted app. Here the stream says which keys exist, an ordered consumer
    delivers the last message of each, and the read ends at the one the server marks as the last.
    """
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{pattern}"
    async with jetstream_errors():
        info = await js.stream_info(stream, subjects_filter=subject)
        if not info.state.subjects:
            return []
        sub = await opened(js.subscribe(subject, stream=stream, ordered_consumer=True,
                                        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                        inactive_threshold=_INACTIVE_S),
                           lambda opened_sub: opened_sub.unsubscribe())
    values: list[tuple[str, bytes, float]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                raise Unavailable(f"no reply from JetStream while reading {bucket} {pattern!r}") from None
            operation = (msg.headers or {}).get(KV_OPERATION)
            if operation not in (KV_DEL, KV_PURGE) and msg.data:
                values.append((msg.subject, msg.data, msg.metadata.timestamp.timestamp()))
            if msg.metadata.num_pending == 0:
                return values
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


@contextlib.asynccontextmanager
async def jetstream_errors() -> AsyncIterator[None]:
    """Turns 'JetStream is not there' into Unavailable, with a message a user can act on."""
    try:
        yield
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        raise Unavailable("JetStream is not enabled on this NATS server") from None
    except asyncio.TimeoutError:
        raise Unavailable("JetStream did not answer in time") from None
