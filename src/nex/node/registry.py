"""The node's entry in the fleet's node registry: KV bucket NEX_NODES, key ``<node id>``.

The entry (a :class:`NodeRecord`: the node's ping with its workload count, resources,
runtimes and its app replicas) is rewritten every ``registry_interval_s``, and after a change of a workload as soon as
changes pause for 50 ms (debounced: a burst of 300 deploys makes a few writes, not 300; a
steady stream of changes still gets a write each interval). The bucket's TTL is
``node_timeout_s``: the entry of a node that stops writing (killed, cut off) expires, and that
is how the fleet's reconciler learns that a node is gone. A node that stops cleanly deletes its
entry. A write that fails (NATS reconnecting, a JetStream leader election) is logged once and
tried again at the next tick; the registry never takes the node down.

A KV value is a message, bounded by the server's ``max_payload``: replicas that do not fit in
the entry go into more keys, ``<node id>.1``, ``<node id>.2``... written just before it, with
its ``seq`` (nex.api.paging). A node with thousands of app replicas stays registered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nex.api import subjects
from nex.api.records import NodeRecord
from nex.api.paging import encoded, part_key, split_record
from nex.kvbucket import ensure_bucket

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.05
MIN_SPACING_S = 0.25  # change-driven writes at most this often: a long burst makes a few writes
MAX_WRITE_TIMEOUT_S = 5.0

Snapshot = Callable[[int], NodeRecord]
"""Builds the node's record with the given sequence number."""


class NodeRegistry:
    """Keeps this node's entry in NEX_NODES current until :meth:`stop`."""

    def __init__(self, nc: Client, node_id: str, snapshot: Snapshot, *, interval_s: float,
                 ttl_s: float, replicas: int) -> None:
        self._nc = nc
        self._key = node_id
        self._snapshot = snapshot
        self._interval = interval_s
        self._bucket = KeyValueConfig(
            bucket=subjects.NODES_BUCKET, description="Nex nodes: one entry per live node",
            history=1, ttl=ttl_s, replicas=replicas, storage=StorageType.FILE,
        )
        # A write must give up well before the entry would expire, so the next one comes in time.
        self._timeout = min(MAX_WRITE_TIMEOUT_S, max(0.5, ttl_s / 2))
        self._kv: KeyValue | None = None
        self._parts = 1  # keys the last write used: the entry and its parts
        self._seq = 0
        self._last_write = 0.0  # loop time of the last write
        self._dirty = asyncio.Event()
        self._failing = False
        self._writing = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopped = False

    @property
    def seq(self) -> int:
        """The sequence number of the last write attempted."""
        return self._seq

    async def start(self) -> None:
        """Write the entry once (or log why not) and keep it current from then on."""
        await self.write_now()
        self._task = asyncio.create_task(self._run(), name="node registry")

    def changed(self) -> None:
        """A workload changed: write soon. Cheap, synchronous, callable any number of times."""
        self._dirty.set()

    async def write_now(self) -> bool:
        """Write the entry at once (the node's state changed); False when the write failed."""
        async with self._writing:
            if self._stopped:
                return False  # deleted on purpose: never written back
            self._dirty.clear()
            self._seq += 1
            self._last_write = asyncio.get_running_loop().time()
            try:
                if self._kv is None:
                    self._kv = await ensure_bucket(self._nc, self._bucket, self._timeout)
                record, parts = split_record(self._snapshot(self._seq), self._nc.max_payload)
                for part in parts:
                    await self._kv.put(part_key(self._key, part.part), encoded(part))
                await self._kv.put(self._key, encoded(record))
                await self._delete_parts(len(parts) + 1)
            except (NatsError, asyncio.TimeoutError) as exc:
                self._kv = None  # look the bucket up again: it may have been deleted or moved
                if not self._failing:
                    log.warning("node registry: cannot write %s/%s, retrying every %gs: %s",
                                subjects.NODES_BUCKET, self._key, self._interval, exc or type(exc).__name__)
                    self._failing = True
                return False
            if self._failing:
                log.info("node registry: %s/%s written again", subjects.NODES_BUCKET, self._key)
                self._failing = False
            return True

    async def stop(self) -> None:
        """Stop writing and delete the entry: a node that leaves cleanly is gone at once."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        async with self._writing:
            if self._kv is None or not self._nc.is_connected:
                return
            try:
                await self._kv.delete(self._key)
                await self._delete_parts(1)
            except (NatsError, asyncio.TimeoutError) as exc:
                log.warning("node registry: entry %s not deleted, it expires on its own: %s", self._key, exc)

    async def _delete_parts(self, keep: int) -> None:
        """Delete the parts past the first ``keep - 1`` that an earlier write left (readers ignore
        them, but they would linger until the bucket's TTL)."""
        assert self._kv is not None
        for part in range(keep, self._parts):
            await self._kv.delete(part_key(self._key, part))
        self._parts = keep

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:  # besides the cancel: nats-py's requests may swallow one
            due = loop.time() + self._interval
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
                # that arrives as the event is set, and stop() would wait for this loop forever.
                async with asyncio.timeout(self._interval):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            # Spaced: at most one change-driven write per MIN_SPACING_S (or half an interval).
            spacing = min(MIN_SPACING_S, self._interval / 2)
            if self._dirty.is_set() and (wait := self._last_write + spacing - loop.time()) > 0:
                await asyncio.sleep(wait)
            # Debounce: write once the changes pause for DEBOUNCE_S, and at the latest when due.
            while self._dirty.is_set() and loop.time() < due:
                self._dirty.clear()
                await asyncio.sleep(min(DEBOUNCE_S, max(0.0, due - loop.time())))
            await self.write_now()
