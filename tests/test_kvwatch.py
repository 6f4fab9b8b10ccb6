"""A KV watch cancelled while it opens leaves nothing behind that would hold a node's shutdown.

nats-py's KeyValue.watch subscribes, then asks for the consumer's info; cancelled in
between, its subscription stayed and made the connection's drain (a node stopping,
Ctrl-C) wait 5 s. The reconciler is cancelled so whenever its node stops.
"""

from __future__ import annotations

import asyncio
import time

from nats.js.api import KeyValueConfig

from nex.kvwatch import open_watch, watched_keys


async def _cancelled_while_opening(nc, kv) -> None:
    """Start a watch and cancel it right after its subscription exists, before it is set up."""
    before = set(nc._subs)  # only to time the cancel: the window is one round trip
    opening = asyncio.create_task(open_watch(kv, ">"))
    while set(nc._subs) == before:
        await asyncio.sleep(0)
    opening.cancel()
    done, _ = await asyncio.wait({opening}, timeout=5)
    assert done and opening.cancelled()


async def test_a_watch_cancelled_while_opening_does_not_hold_the_drain(nc):
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="WATCHED"))
    await kv.put("a", b"1")
    await _cancelled_while_opening(nc, kv)
    await kv.put("b", b"2")  # a message for the watch, had it stayed
    started = time.monotonic()
    await nc.drain()
    assert time.monotonic() - started < 1.0


async def test_watched_keys_lists_the_keys_with_a_value(nc):
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="LISTED"))
    assert await watched_keys(kv) == []
    for key in ("status.a.x", "status.b.y", "app.a.x"):
        await kv.put(key, b"{}")
    await kv.delete("status.b.y")
    assert sorted(await watched_keys(kv)) == ["app.a.x", "status.a.x"]
    assert await watched_keys(kv, "status.>") == ["status.a.x"]
