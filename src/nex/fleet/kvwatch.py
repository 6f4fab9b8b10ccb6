"""JetStream KV watches that a cancellation cannot leave half-open.

nats-py's ``KeyValue.watch`` subscribes first and then asks the server for the consumer's
info. Cancelled in between (a node stopping while its reconciler starts a pass), it hands
back no watcher to stop, yet its subscription stays: the first message it receives waits
the JetStream timeout (5 s) for a setup that never finishes, and draining the connection
as the node stops waits for that message. A user saw it as a Ctrl-C that took 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable, TypeVar

import nats.errors
from nats.js.kv import KeyValue

# How long a cancelled opening may still take to finish (one round trip), so that its
# subscription is gone before the caller goes on stopping.
_OPENING_WAIT_S = 1.0
# The server drops a stopped watch's consumer this soon (nats-py's default: 5 minutes).
_INACTIVE_S = 5.0
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
