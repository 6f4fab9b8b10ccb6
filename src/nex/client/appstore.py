"""Apps, their status and the node registry, in JetStream KV.

``NEX_APPS`` holds ``app.<ns>.<name>`` (an :class:`AppRecord`, written and signed by ``nex
apply``; a tombstone, by ``nex app delete``), ``status.<ns>.<name>`` (an :class:`AppStatus`)
and ``verified.<ns>.<name>`` (the last record the reconciler verified, nex.api.appverify),
both written by the reconciler (its writes are :class:`nex.fleet.store.AppStore`'s; this module
only reads them).
``NEX_NODES`` holds one :class:`NodeRecord` per live node and ``NEX_LEASES`` the
reconciler's lease; this module only reads those two. Every write of a record is a
compare-and-set on the key's revision, so two people applying at once never lose a
version.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from nex.api import appsig, subjects
from nex.api.appsig import AppClaim, AppOp
from nex.api.apps import AppRecord, AppSpec, AppStatus, ReconcilerLease
from nex.api.errors import AppNotFound, Conflict, Forbidden
from nex.api.records import NodeRecord
from nex.client.registry import RegistryRead, read_registry
from nex.api.appverify import RecordRefused, Trust, check_record, signer_of
from nex.jsreplicas import nodes_replicas
from nex.kvwatch import jetstream_errors, latest_values
from nex.security.keystore import UserKeys

__all__ = ["APPS_HISTORY", "AppStore", "same_spec", "sign_record", "verified_key"]

log = logging.getLogger(__name__)

APPS_HISTORY = 5
# Concurrent applies of one app retry this often before giving up with Conflict.
_CAS_ATTEMPTS = 10

M = TypeVar("M", bound=BaseModel)


class AppStore:
    """Apps, their status and the node registry, in JetStream KV: what a user reads and writes.

    Writes are compare-and-set on the key's revision; records are signed with the
    :class:`UserKeys` given, as ``nex apply`` signs them. Every failure is a
    :class:`nex.api.errors.NexError` (``AppNotFound``, ``Conflict``, ``Forbidden``, ``Unavailable``).
    """

    def __init__(self, nc: Client, replicas: int | None = None, timeout: float = 5.0) -> None:
        """``replicas``: of NEX_APPS, if this store creates it; None: as many as the nodes gave
        NEX_NODES, or the cluster's (nex.jsreplicas), so a CLI applying first on a cluster makes
        no R1 bucket."""
        self._js = nc.jetstream(timeout=timeout)
        self._replicas = replicas
        self._timeout = timeout
        self._buckets: dict[str, KeyValue] = {}

    # -- buckets -----------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create NEX_APPS if it is missing; an existing bucket is left as its operator set it."""
        if await self._bucket(subjects.APPS_BUCKET) is not None:
            return
        replicas = self._replicas or await nodes_replicas(self._js)
        config = KeyValueConfig(bucket=subjects.APPS_BUCKET, history=APPS_HISTORY, replicas=replicas,
                                storage=StorageType.FILE, description="Nex apps (desired state) and their status",
                                # direct gets name the key in the API subject, where a namespace's creds confine it
                                direct=True)
        try:
            async with jetstream_errors():
                self._buckets[subjects.APPS_BUCKET] = await self._js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # Someone else created it between our look and our create.
            if await self._bucket(subjects.APPS_BUCKET) is None:
                raise

    async def _bucket(self, name: str) -> KeyValue | None:
        """The bucket, or None when it does not exist (yet)."""
        if name in self._buckets:
            return self._buckets[name]
        try:
            async with jetstream_errors():
                kv = await self._js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return None
        self._buckets[name] = kv
        return kv

    async def _apps(self) -> KeyValue:
        await self.ensure()
        return self._buckets[subjects.APPS_BUCKET]

    # -- apps --------------------------------------------------------------------------

    async def apply(self, spec: AppSpec, keys: UserKeys | None = None) -> AppRecord:
        """Store ``spec``, signed with ``keys`` when given: version 1 when new, the next version
        (with ``previous``) when it changed, the stored record itself when it is identical and
        signed alike."""
        kv = await self._apps()
        key = subjects.app_key(spec.namespace, spec.name)
        for _ in range(_CAS_ATTEMPTS):
            current = await self._get_model(kv, key, AppRecord)
            if current is not None and _unchanged(current[0], spec, keys):
                return current[0]
            verified = await self.get_verified(spec.namespace, spec.name)
            version = max(current[0].version if current else 0, verified.version if verified else 0) + 1
            previous = _previous_of(current[0] if current else None, verified, keys)
            record = sign_record(AppRecord(spec=spec, version=version, applied_at=datetime.now(timezone.utc),
                                           applied_by=keys.issuer_public if keys else None, previous=previous), keys)
            try:
                await self._write(kv, key, record, current[1] if current else None)
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another apply won the race: read again and build on it
        raise Conflict(f"app {spec.name!r} in namespace {spec.namespace!r} is being changed by someone else; "
                       "try again")

    async def _next_version(self, namespace: str, name: str, current: tuple[AppRecord, int] | None) -> int:
        """After the stored one and the last verified one: a record someone rewrote with a lower
        version must not make the next apply look like a replay."""
        verified = await self.get_verified(namespace, name)
        return max(current[0].version if current else 0, verified.version if verified else 0) + 1

    async def _write(self, kv: KeyValue, key: str, record: AppRecord, last_revision: int | None) -> int:
        async with jetstream_errors():
            if last_revision is None:
                return await kv.create(key, encode(record))
            return await kv.update(key, encode(record), last=last_revision)

    async def get(self, namespace: str, name: str, deleted: bool = False) -> tuple[AppRecord, int]:
        """The record and its KV revision (for :meth:`replace`); AppNotFound when missing, or a
        tombstone (unless ``deleted``)."""
        kv = await self._bucket(subjects.APPS_BUCKET)
        found = await self._get_model(kv, subjects.app_key(namespace, name), AppRecord) if kv else None
        if found is None or (found[0].deleted and not deleted):
            raise AppNotFound(namespace, name)
        return found

    async def list(self, namespace: str | None = None, deleted: bool = False) -> list[AppRecord]:
        """Every app of ``namespace`` (all namespaces when None), sorted by namespace and name;
        the tombstones of deleted apps too when ``deleted``."""
        kv = await self._bucket(subjects.APPS_BUCKET)
        if kv is None:
            return []
        pattern = subjects.app_key(namespace, "*") if namespace else "app.>"
        records = await _latest(self._js, subjects.APPS_BUCKET, pattern, AppRecord, self._timeout)
        return sorted((r for r in records if deleted or not r.deleted), key=lambda r: (r.spec.namespace, r.spec.name))

    async def delete(self, namespace: str, name: str, keys: UserKeys | None = None) -> AppRecord:
        """Write the app's tombstone, signed with ``keys`` when given: the reconciler stops the
        replicas once it verifies it. The status stays until they are stopped."""
        kv = await self._apps()
        key = subjects.app_key(namespace, name)
        for _ in range(_CAS_ATTEMPTS):
            stored = await self._get_model(kv, key, AppRecord)
            # The app may still run when someone deleted its record or forged a tombstone: the
            # reconciler then runs its last verified record, which this tombstone ends too.
            verified = await self.get_verified(namespace, name)
            live = [r for r in (stored[0] if stored else None, verified) if r is not None and not r.deleted]
            if not live:
                raise AppNotFound(namespace, name)
            signer = signer_of(live[0])
            if keys is None and signer is not None:
                raise Forbidden(f"app {name!r} is signed by {signer}: deleting it takes a tombstone signed by "
                                "that issuer or an admin, and you have no keys (nex keys)")
            version = await self._next_version(namespace, name, stored)
            tombstone = sign_record(AppRecord(spec=live[0].spec, version=version, applied_at=datetime.now(timezone.utc),
                                              applied_by=keys.issuer_public if keys else None, deleted=True), keys)
            try:
                await self._write(kv, key, tombstone, stored[1] if stored else None)
                return tombstone
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise Conflict(f"app {name!r} in namespace {namespace!r} is being changed by someone else; try again")

    # -- the reconciler's high-water marks (written by nex.fleet.store) ----------------------

    async def get_verified(self, namespace: str, name: str) -> AppRecord | None:
        """The last record of the app the reconciler verified, or None."""
        kv = await self._bucket(subjects.APPS_BUCKET)
        found = await self._get_model(kv, verified_key(namespace, name), AppRecord) if kv else None
        return found[0] if found else None

    async def verified(self) -> list[AppRecord]:
        """The last verified record of every app."""
        kv = await self._bucket(subjects.APPS_BUCKET)
        if kv is None:
            return []
        return await _latest(self._js, subjects.APPS_BUCKET, "verified.>", AppRecord, self._timeout)

    # -- status ------------------------------------------------------------------------

    async def get_status(self, namespace: str, name: str) -> AppStatus | None:
        """The reconciler's status of the app, or None before its first pass."""
        kv = await self._bucket(subjects.APPS_BUCKET)
        found = await self._get_model(kv, subjects.app_status_key(namespace, name), AppStatus) if kv else None
        return found[0] if found else None

    # -- what the nodes write ----------------------------------------------------------

    async def nodes(self) -> list[NodeRecord]:
        """Every live node's record, its parts put back (nex.api.paging); [] when no node has
        registered yet."""
        return (await self.registry()).records

    async def registry(self) -> RegistryRead:
        """The node records, and how long before the read's newest write each node last wrote
        its key (nex.client.registry.read_registry)."""
        if await self._bucket(subjects.NODES_BUCKET) is None:
            return RegistryRead([], {})
        return await read_registry(self._js, self._timeout)

    async def lease(self) -> ReconcilerLease | None:
        """The reconciler's lease, if some node holds it now."""
        kv = await self._bucket(subjects.LEASES_BUCKET)
        found = await self._get_model(kv, subjects.RECONCILER_LEASE_KEY, ReconcilerLease) if kv else None
        return found[0] if found else None

    # -- plumbing ----------------------------------------------------------------------

    async def _get_model(self, kv: KeyValue, key: str, model: type[M]) -> tuple[M, int] | None:
        try:
            async with jetstream_errors():
                entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        try:
            return model.model_validate_json(entry.value or b""), entry.revision
        except ValidationError as exc:
            log.warning("key %s does not hold a valid %s: %s", key, model.__name__, exc)
            return None


def verified_key(namespace: str, name: str) -> str:
    """The NEX_APPS key of the last record of an app the reconciler verified."""
    return subjects.app_verified_key(namespace, name)


def sign_record(record: AppRecord, keys: UserKeys | None) -> AppRecord:
    """``record`` with its app token (nex.api.appsig) signed by ``keys``; unchanged without keys."""
    if keys is None:
        return record
    spec = record.spec
    claim = AppClaim(
        iss=keys.issuer_public, iat=int(time.time()), op=AppOp.DELETE if record.deleted else AppOp.APPLY,
        namespace=spec.namespace, name=spec.name, version=record.version,
        spec_sha256=None if record.deleted else appsig.spec_digest(spec),
        previous_sha256=appsig.spec_digest(record.previous) if record.previous and not record.deleted else None)
    return record.model_copy(update={"token": appsig.sign(claim, keys.issuer)})


def _signs_itself(record: AppRecord) -> bool:
    """Whether the record's token verifies and binds it (whoever signed it)."""
    try:
        return record.token is not None and check_record(record, None, None, Trust()) is not None
    except RecordRefused:
        return False


def _unchanged(stored: AppRecord, spec: AppSpec, keys: UserKeys | None) -> bool:
    """Applying ``spec`` again changes nothing: same spec, signed the same way, by the same issuer."""
    if stored.deleted or stored.rolled_back or not same_spec(stored.spec, spec):
        return False
    if keys is None:
        return stored.token is None
    return _signs_itself(stored) and signer_of(stored) == keys.issuer_public


def _previous_of(stored: AppRecord | None, verified: AppRecord | None, keys: UserKeys | None) -> AppSpec | None:
    """The spec a rollback of the new version would restore: the stored one, never a tombstone's,
    and, for a signed apply, only one that itself carries a valid signature (a spec someone wrote
    into the bucket unsigned must not become signed by being replaced); else the one the
    reconciler last verified, which is what runs."""
    for record in (stored, verified):
        if record is None or record.deleted:
            continue
        if keys is None and record is stored:
            return record.spec
        if keys is not None and _signs_itself(record):
            return record.spec
    return None


def same_spec(a: AppSpec, b: AppSpec) -> bool:
    """Whether two specs describe the same app (compared as they would be stored)."""
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


async def _latest(js: JetStreamContext, bucket: str, pattern: str, model: type[M], timeout: float) -> list[M]:
    """The latest value of every key of ``bucket`` matching ``pattern`` that parses as ``model``;
    deleted keys and values that do not parse (a newer writer's format, a stray put) are skipped."""
    values: list[M] = []
    for subject, data, _ in await latest_values(js, bucket, pattern, timeout):
        try:
            values.append(model.model_validate_json(data))
        except ValidationError as exc:
            log.warning("key %s is not a valid %s: %s", subject, model.__name__, exc)
    return values
