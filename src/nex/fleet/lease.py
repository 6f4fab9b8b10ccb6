"""One reconciler at a time: a lease in the KV bucket NEX_LEASES.

The bucket's TTL is the lease time. A node takes the lease with ``create`` (which
fails while someone holds it) and renews it every third of the lease time with
``update`` on the revision it last wrote: a renew that fails means someone else
wrote the key (the lease expired and was taken) or JetStream did not answer in time;
either way the holder must stop acting at once. A holder that dies stops renewing,
the key expires, and another node's ``create`` wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nex.api import subjects
from nex.api.apps import ReconcilerLease
from nex.kvbucket import ensure_bucket

log = logging.getLogger(__name__)


class Lease:
    """This node's claim on the reconciler lease."""

    def __init__(self, nc: Client, holder: str, name: str, lease_s: float, replicas: int = 1,
                 fleet_issuer: str | None = None, fleet_xkey: str | None = None) -> None:
        self._nc = nc
        self._value = ReconcilerLease(holder=holder, name=name, fleet_issuer=fleet_issuer, fleet_xkey=fleet_xkey,
                                      acquired_at=datetime.now(timezone.utc))
        self.lease_s = lease_s
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self._written_at = 0.0  # monotonic time the last successful write was sent
        # Never wait for JetStream longer than the lease lasts: a late answer is a lost lease.
        self._timeout = max(0.2, lease_s / 3)

    @property
    def held(self) -> bool:
        """Whether this node may act: it wrote the lease, less than a lease time ago (past that
        the key may have expired and been taken, whether or not a renew said so yet)."""
        if self._revision is not None and time.monotonic() - self._written_at >= self.lease_s:
            self._revision = None
        return self._revision is not None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            config = KeyValueConfig(bucket=subjects.LEASES_BUCKET, history=1, ttl=self.lease_s,
                                    replicas=self._replicas, storage=StorageType.FILE,
                                    description="Nex: who reconciles the fleet (the key expires with its holder)")
            self._kv = await ensure_bucket(self._nc, config, timeout=max(self._timeout, 2.0))
        return self._kv

    async def ensure(self) -> None:
        """Create the bucket if it is missing (a node that stands for the lease makes it at start)."""
        await self._bucket()

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this node holds it now.

        The key is read first, and created only when it is not there: every node that stands
        tries every ``lease_s / 3``, and a read is one request where a create that fails is a
        write refused by the stream's leader, then a read (docs/scale.md)."""
        if self.held:
            return True
        kv = await self._bucket()
        if await self._taken(kv):
            return False
        value = self._value.model_copy(update={"acquired_at": datetime.now(timezone.utc)})
        sent = time.monotonic()
        try:
            self._revision = await asyncio.wait_for(
                kv.create(subjects.RECONCILER_LEASE_KEY, value.model_dump_json(exclude_none=True).encode()),
                self._timeout * 2)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # held by another node
        except asyncio.TimeoutError:
            # Not held, as far as this node knows. Had the write landed after all, nobody renews
            # it, and the key expires after one lease time like a dead holder's.
            log.debug("no answer to the lease's create within %.2fs", self._timeout * 2)
            return False
        self._value, self._written_at = value, sent
        return True

    async def _taken(self, kv: KeyValue) -> bool:
        """Whether another node holds the lease now, as far as a read says (no answer: taken)."""
        try:
            entry = await asyncio.wait_for(kv.get(subjects.RECONCILER_LEASE_KEY), self._timeout * 2)
        except nats.js.errors.KeyNotFoundError:  # never taken, expired, or released
            return False
        except (nats.errors.Error, asyncio.TimeoutError):
            return True  # JetStream slow to answer: try again next time, as after a create that timed out
        return entry.value is not None and entry.operation is None

    async def renew(self) -> bool:
        """Extend the lease; False (and no longer held) when it is lost."""
        if not self.held:
            return False
        kv = await self._bucket()
        sent = time.monotonic()
        try:
            self._revision = await asyncio.wait_for(
                kv.update(subjects.RECONCILER_LEASE_KEY, self._value.model_dump_json(exclude_none=True).encode(),
                          last=self._revision), self._timeout)
            self._written_at = sent
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.errors.Error, asyncio.TimeoutError) as exc:
            log.warning("reconciler lease lost: %s", exc or type(exc).__name__)
            self._revision = None
            return False

    async def release(self) -> None:
        """Give the lease up so another node takes it at once (not after the TTL)."""
        revision, self._revision = self._revision, None
        if revision is None or self._kv is None or not self._nc.is_connected:
            return
        try:
            await asyncio.wait_for(self._kv.delete(subjects.RECONCILER_LEASE_KEY, last=revision), self._timeout)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            log.info("could not release the reconciler lease (it expires by itself): %s", exc)

    def set_fleet(self, fleet_issuer: str, fleet_xkey: str) -> None:
        """The fleet keys this node reconciles with, published from its next acquire on."""
        self._value = self._value.model_copy(update={"fleet_issuer": fleet_issuer, "fleet_xkey": fleet_xkey})

    @property
    def value(self) -> ReconcilerLease:
        return self._value
