"""Apps from the client: apply an :class:`AppSpec` or an app file, read their status, delete them.

What ``nex apply`` and ``nex app`` do, as methods: the same app store (``NEX_APPS``), the same
signatures (the record is signed with the client's keys, a tombstone too), the same events
(``app_applied``, ``app_deleted``). The fleet's reconciler, on some node, then places the
replicas; :meth:`Apps.wait_app` waits until it has.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from nex.api import subjects
from nex.api.apps import AppRecord, AppSpec
from nex.api.errors import AppNotFound, AppNotRunning, Unavailable
from nex.api.events import EVENT_TYPE_PREFIX, CloudEvent, EventType
from nex.client.appfile import ParsedApp, build_spec, check_subjects, parse_app_file
from nex.client.appstatus import AppChange, AppView, app_change, app_view, replicas_of
from nex.client.appstore import AppStore, same_spec
from nex.client.artifacts import Artifacts
from nex.security.keystore import UserKeys

__all__ = ["Apps"]

_POLL_S = 0.25
DEFAULT_APP_WAIT_S = 60.0


class Apps(Artifacts):
    """Desired state: apps the fleet's reconciler keeps running (docs/operations.md)."""

    def __init__(self, nc: Client, namespace: str, timeout: float, keys: UserKeys | None, confined: bool,
                 sample_threshold: int) -> None:
        super().__init__(nc, namespace, timeout, keys, confined, sample_threshold)
        self._app_store: AppStore | None = None  # made on first use: most clients never touch an app

    @property
    def _apps_kv(self) -> AppStore:
        """The app store (``NEX_APPS``, the node registry, the lease) on this client's connection."""
        if self._app_store is None:
            self._app_store = AppStore(self.nc, timeout=self.timeout)
        return self._app_store

    async def apply_app(self, app: AppSpec | ParsedApp | str | os.PathLike[str], *,
                        dry_run: bool = False) -> AppChange:
        """Store an app for the fleet's reconciler to run, as ``nex apply -f FILE`` does.

        ``app`` is an :class:`~nex.api.apps.AppSpec` (its artifacts already uploaded, with their
        sha256; a spec that names no namespace goes to the client's), or the path of an app file
        (YAML, or JSON for ``.json``; docs/operations.md): its local artifacts are hashed and
        uploaded, its env sealed to the fleet's key, and its namespace, when it names none, is the
        client's. The record is signed with the client's keys. ``dry_run`` says what would change
        and changes (and uploads) nothing.

        Returns what changed: created, updated (with each workload's change) or unchanged.

        Raises:
            AppFileError: the file is unreadable or wrong (the message names the file and field), or
                a trigger or health check of the spec is outside its namespace's subjects.
            Conflict: someone else kept changing the app while this apply retried.
            Unavailable: NATS or JetStream did not answer.

        Example:
            ```python
            change = await client.apply_app("shop.yaml")
            print(change.action, change.version)   # created 1
            ```

        """
        store = self._apps_kv
        if isinstance(app, AppSpec):
            spec = app if "namespace" in app.model_fields_set else app.model_copy(update={"namespace": self.namespace})
            check_subjects(f"app {spec.name!r}", spec.namespace, spec.workloads)
        else:
            parsed = app if isinstance(app, ParsedApp) else parse_app_file(Path(app), self.namespace)
            spec = await build_spec(parsed, self, store, self.keys, upload=not dry_run)
        try:
            before: AppRecord | None = (await store.get(spec.namespace, spec.name))[0]
        except AppNotFound:
            before = None
        if dry_run:
            if before is None:
                return app_change(None, spec, 1, dry_run=True)
            if same_spec(before.spec, spec):
                return app_change(before.spec, spec, before.version, dry_run=True)
            return _updated(app_change(before.spec, spec, before.version + 1, dry_run=True))
        record = await store.apply(spec, self.keys)
        if before is not None and record.version == before.version:
            return app_change(record.spec, record.spec, record.version)
        change = app_change(record.previous, record.spec, record.version)
        if record.previous is not None:
            change = _updated(change)
        await self._publish_app_event(EventType.APP_APPLIED, record.spec.namespace, record.spec.name, {
            "name": record.spec.name, "namespace": record.spec.namespace, "version": record.version,
            "applied_by": self.keys.issuer_public if self.keys else None,
            "workloads": {c.name: c.change for c in change.workloads},
        })
        return change

    async def apps(self, all_namespaces: bool = False) -> list[AppView]:
        """The apps of the client's namespace (of every namespace with ``all_namespaces``), sorted by
        namespace and name, each with its replicas as the nodes report them.

        An app whose record was deleted without a signed tombstone still runs, and is listed, as
        refused. Raises Unavailable when NATS or JetStream does not answer.
        """
        store = self._apps_kv
        namespace = None if all_namespaces else self.namespace
        records = await store.list(namespace)
        stored = {(r.spec.namespace, r.spec.name) for r in await store.list(namespace, deleted=True)}
        records += [r for r in await store.verified() if not r.deleted and (r.spec.namespace, r.spec.name) not in
                    stored and namespace in (None, r.spec.namespace)]
        records.sort(key=lambda r: (r.spec.namespace, r.spec.name))
        nodes = await store.nodes() if records else []
        statuses = await asyncio.gather(*(store.get_status(r.spec.namespace, r.spec.name) for r in records))
        return [app_view(r, nodes, s) for r, s in zip(records, statuses)]

    async def app_status(self, name: str) -> AppView:
        """One app of the client's namespace: desired against actual, replica by replica.

        What runs is read from the nodes' own records, so the view is right even when no
        reconciler runs. Raises AppNotFound when the namespace has no such app, BadRequest for a
        name that cannot be one.
        """
        subjects.check_token(name, "app name")
        store = self._apps_kv
        status = await store.get_status(self.namespace, name)
        try:
            record, _ = await store.get(self.namespace, name)
        except AppNotFound:
            # Deleted without a tombstone: the reconciler keeps running the last verified version.
            verified = await store.get_verified(self.namespace, name)
            if verified is None or status is None or status.refused is None or verified.deleted:
                raise
            record = verified
        return app_view(record, await store.nodes(), status)

    async def app_spec(self, name: str) -> AppSpec:
        """The spec stored for an app of the client's namespace: what the last apply stored, to
        change and apply again.

        Raises AppNotFound when there is no such app (or only its tombstone).

        Example:
            ```python
            spec = await client.app_spec("shop")
            scaled = spec.model_copy(update={"workloads": [
                spec.workloads[0].model_copy(update={"replicas": 3})]})
            await client.apply_app(scaled)
            ```

        """
        subjects.check_token(name, "app name")
        record, _ = await self._apps_kv.get(self.namespace, name)
        return record.spec

    async def wait_app(self, name: str, timeout: float = DEFAULT_APP_WAIT_S) -> AppView:
        """Wait until every replica of the app's current version runs and is healthy; returns its view.

        Raises AppNotRunning (an Unavailable) when that has not happened within ``timeout`` seconds,
        or at once when the fleet refuses the app's record (its message says why), and AppNotFound
        when there is no such app.

        Example:
            ```python
            view = await client.wait_app("shop", timeout=30)
            print(f"{view.running}/{view.desired} running")
            ```

        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            view = await self.app_status(name)
            if view.refused is not None:
                raise AppNotRunning(view.namespace, name, f"the fleet refuses its record: {view.refused}")
            if view.ready:
                return view
            if loop.time() >= deadline:
                raise AppNotRunning(view.namespace, name, f"not running after {timeout:g}s: {view.summary()}")
            await asyncio.sleep(_POLL_S)

    async def delete_app(self, name: str, *, wait: bool = False, timeout: float | None = None) -> int:
        """Delete an app, as ``nex app delete`` does: a tombstone signed with the client's keys, on
        which the reconciler stops its replicas. Returns how many replicas still run (0 with
        ``wait``, which waits until none does, for at most ``timeout`` seconds, the client's
        timeout by default).

        Raises AppNotFound when there is no such app, Forbidden when the app is signed and the
        client has no keys, Unavailable when ``wait`` runs out first.
        """
        subjects.check_token(name, "app name")
        store = self._apps_kv
        try:
            record: AppRecord | None = (await store.get(self.namespace, name))[0]
        except AppNotFound:
            record = await store.get_verified(self.namespace, name)  # its record vanished; it still runs
        tombstone = await store.delete(self.namespace, name, self.keys)
        await self._publish_app_event(EventType.APP_DELETED, self.namespace, name, {
            "name": name, "namespace": self.namespace,
            "version": record.version if record else tombstone.version - 1,
            "deleted_by": self.keys.issuer_public if self.keys else None})
        if not wait:
            return len(replicas_of(self.namespace, name, await store.nodes()))
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while remaining := replicas_of(self.namespace, name, await store.nodes()):
            if loop.time() >= deadline:
                raise Unavailable(
                    f"app {name!r} is deleted, but {len(remaining)} replicas still run after {timeout:g}s: "
                    "the reconciler stops them (is a node with the reconciler running?)")
            await asyncio.sleep(_POLL_S)
        return 0

    async def _publish_app_event(self, event_type: EventType, namespace: str, app_name: str,
                                 data: dict[str, Any]) -> None:
        """An event in the app's namespace, from this client (source: the user's issuer key)."""
        issuer = self.keys.issuer_public if self.keys else "anonymous"
        event = CloudEvent(source=f"nex/cli/{issuer}", type=EVENT_TYPE_PREFIX + event_type.value,
                           subject=app_name, data=data)
        try:
            await self.nc.publish(subjects.events(namespace, event_type.value), event.model_dump_json().encode())
            await self.nc.flush(timeout=self.timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"the {event_type.value} event was not flushed within {self.timeout:g}s") from None


def _updated(change: AppChange) -> AppChange:
    # A new version even when no workload differs on its own (their order changed, say).
    return change.model_copy(update={"action": "updated"})

