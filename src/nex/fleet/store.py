"""The reconciler's side of the app store: what only the fleet's reconciler writes.

:class:`nex.client.appstore.AppStore` reads and writes what users do (app records and their
tombstones, signed); the reconciler also writes each app's status, the last record it verified,
and the rollback of a failed version, which this subclass adds.
"""

from __future__ import annotations

import nats.js.errors

from nex.api import subjects
from nex.api.apps import AppRecord, AppStatus
from nex.api.errors import Conflict
from nex.client.appstore import AppStore as UserAppStore, encode, jetstream_errors, verified_key

__all__ = ["AppStore"]


class AppStore(UserAppStore):
    """Apps in JetStream KV, as the reconciler reads and writes them."""

    async def replace(self, record: AppRecord, last_revision: int) -> int:
        """Write ``record`` only if its key is still at ``last_revision``; Conflict otherwise."""
        kv = await self._apps()
        key = subjects.app_key(record.spec.namespace, record.spec.name)
        try:
            async with jetstream_errors():
                return await kv.update(key, encode(record), last=last_revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Conflict(f"app {record.spec.name!r} changed since revision {last_revision}") from None

    async def put_verified(self, record: AppRecord) -> None:
        """The last record of an app the reconciler verified (nex.api.appverify)."""
        kv = await self._apps()
        async with jetstream_errors():
            await kv.put(verified_key(record.spec.namespace, record.spec.name), encode(record))

    async def delete_verified(self, namespace: str, name: str) -> None:
        kv = await self._bucket(subjects.APPS_BUCKET)
        if kv is None:
            return
        async with jetstream_errors():
            await kv.delete(verified_key(namespace, name))

    async def put_status(self, status: AppStatus) -> None:
        kv = await self._apps()
        async with jetstream_errors():
            await kv.put(subjects.app_status_key(status.namespace, status.name), encode(status))

    async def delete_status(self, namespace: str, name: str) -> None:
        kv = await self._bucket(subjects.APPS_BUCKET)
        if kv is None:
            return
        async with jetstream_errors():
            await kv.delete(subjects.app_status_key(namespace, name))
