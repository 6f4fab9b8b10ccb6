"""The fleet's reconciler: keeps what runs equal to the apps in NEX_APPS.

Every node with ``config.reconciler`` runs one; only the holder of the lease
(:mod:`nex.fleet.lease`) acts. Each pass reads the apps and the node registry,
asks the pure planner (:mod:`nex.fleet.planner`) what to do, and does it
(:mod:`nex.fleet.execution`): a placement is an auction plus a deploy to the
chosen bid, a stop an undeploy, a rollback a compare-and-set of the app record
back to its previous spec. One action failing (a node gone between bid and
deploy, a node in lame duck, NATS reconnecting) is logged and tried again next
pass; nothing stops the loop but :meth:`Reconciler.stop`.

Only records that :mod:`nex.api.appverify` accepts are acted on: a refused one
leaves the last verified record running, and is reported. A deploy for a signed
app is signed with the fleet key and carries the user's app token; one for an
unsigned app (dev mode) is sent unsigned, so that a node that trusts issuers
refuses it.

The fleet keys are the same on every node that may reconcile: given (``fleet_keys``), or,
in dev mode without them, shared in NEX_FLEET (:mod:`nex.fleet.sharedkeys`). A node
without them does not stand for the lease, and the holder seals a copy for each node
that has none, every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from nex.api import subjects
from nex.api.apps import AppRecord, AppStatus
from nex.api.errors import NodeNotFound
from nex.api.events import EventType
from nex.api.records import NodeRecord
from nex.client import NexClient
from nex.fleet.execution import TRANSIENT, PlanExecution, Publish, describe
from nex.fleet.lease import Lease
from nex.fleet.liveness import Liveness
from nex.fleet.planner import AppKey, FleetMemory, Plan, Settings, plan
from nex.fleet.sharedkeys import SharedFleetKeys
from nex.fleet.store import AppStore
from nex.api.appverify import Decision, Trust, decide, signer_of
from nex.kvwatch import open_watch, watched_keys
from nex.placement.sampling import SAMPLE_THRESHOLD
from nex.security.keystore import UserKeys

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "system"
# A node whose registry key is this many registry intervals behind the newest write is asked
# whether it is there (PING, no responders: gone); the answer is waited for this long.
SILENT_AFTER_WRITES = 1.5
SILENT_PING_TIMEOUT_S = 1.0


def fleet_keys(directory: Path) -> UserKeys:
    """The fleet's issuer and xkey: the same directory (and so keys) on every reconciling node."""
    keys = UserKeys.load(home=directory, create=True)
    assert keys is not None  # create=True always makes them
    return keys


class Reconciler(PlanExecution):
    """``keys``: the fleet keys, or None to load them from NEX_FLEET through ``shared`` before
    standing for the lease (nex.fleet.sharedkeys); ``on_keys`` learns the keys once known."""

    def __init__(self, nc: Client, node_id: str, name: str, keys: UserKeys | None, publish: Publish, *,
                 interval_s: float, lease_s: float, replicas: int = 1, registry_interval_s: float = 2.0,
                 trust: Trust = Trust(), sample_threshold: int = SAMPLE_THRESHOLD,
                 shared: SharedFleetKeys | None = None,
                 on_keys: Callable[[UserKeys], None] | None = None) -> None:
        if keys is None and shared is None:
            raise ValueError("a reconciler needs the fleet keys or a place to load them from")
        self._nc = nc
        self._sample_threshold = sample_threshold
        self._trust = trust
        self.node_id = node_id
        self._keys: UserKeys | None = None
        self._shared = shared
        self._on_keys = on_keys
        self._publish = publish
        self._interval = interval_s
        self.lease = Lease(nc, node_id, name, lease_s, replicas)
        if keys is not None:
            self._take_keys(keys)
        self._store = AppStore(nc, replicas=replicas, timeout=max(2.0, lease_s))
        self._settings = Settings(pending_ttl_s=max(5.0, 4 * registry_interval_s))
        self._memory = FleetMemory()
        self._liveness = Liveness(node_id, grace_s=registry_interval_s)
        self._writing_within_s = 2 * registry_interval_s
        self._silent_after_s = SILENT_AFTER_WRITES * registry_interval_s
        self._written: dict[AppKey, dict] = {}
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._clients: dict[tuple[str, bool], NexClient] = {}
        self._acting: dict[AppKey, AppRecord] = {}  # the verified record of each app this pass
        self._refused: dict[AppKey, Decision] = {}  # apps whose stored record is refused this pass
        self._reported: dict[AppKey, tuple[str, int | None]] = {}  # refusals already announced
        self._live_nodes = 0
        self._seeded = False
        self._last_trouble: str | None = None
        self._stopping = False
        self.passes = 0
        # Actions taken since the node started ("place", "stop", "restart", "rollback"), for its metrics.
        self.actions: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        """Stop acting and give the lease up, so another node takes over at once."""
        self._stopping = True
        for task in (self._task, self._renewer, self._watcher):
            # Cancelled until done: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the awaited thing completes, and the loop would go on.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
        self._task = self._renewer = self._watcher = None
        await self.lease.release()

    @property
    def leading(self) -> bool:
        return self.lease.held

    def _take_keys(self, keys: UserKeys) -> None:
        self._keys = keys
        self.lease.set_fleet(keys.issuer_public, keys.xkey.public)
        if self._on_keys is not None:
            self._on_keys(keys)

    async def _has_keys(self) -> bool:
        """Whether this node holds the fleet keys; without them it does not stand for the lease."""
        if self._keys is None and self._shared is not None:
            keys = await self._shared.load()
            if keys is not None:
                self._take_keys(keys)
        return self._keys is not None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if not self.lease.held:
                    await self.lease.ensure()
                    if await self._has_keys() and await self.lease.acquire():
                        self._elected()
                if self.lease.held:
                    await self._pass_unless_lost()
            except TRANSIENT as exc:
                self._trouble(describe(exc))
            else:
                self._last_trouble = None
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval if self.lease.held else self.lease.lease_s / 3)

    def _trouble(self, message: str) -> None:
        """A pass that failed as a whole (NATS away, no JetStream): said once, not every pass."""
        if message != self._last_trouble:
            log.warning("reconciler: %s (retrying)", message)
        else:
            log.debug("reconciler: %s", message)
        self._last_trouble = message

    def _elected(self) -> None:
        log.info("this node now reconciles the fleet")
        self._memory = FleetMemory()  # what a previous term remembered may be stale
        self._liveness.forget()
        self._seeded = False
        self._written.clear()
        self._lost.clear()
        if self._shared is not None:
            self._shared.forget()
        self._renewer = asyncio.create_task(self._renew(), name="reconciler-lease")
        self._watcher = asyncio.create_task(self._watch_apps(), name="reconciler-watch")
        lease = self.lease.value
        self._publish(SYSTEM_NAMESPACE, EventType.RECONCILER_ELECTED, {
            "node_id": self.node_id, "name": lease.name, "fleet_issuer": lease.fleet_issuer,
            "fleet_xkey": lease.fleet_xkey})

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease.lease_s / 3)
            if not await self.lease.renew():
                self._lost.set()
                self._wake.set()
                if self._watcher is not None:
                    self._watcher.cancel()
                return

    async def _watch_apps(self) -> None:
        """Wake the loop at once when an app is applied or deleted (cheaper than a short interval)."""
        while True:
            try:
                # Made here if no app was ever applied: the watch then sees the first apply too.
                await self._store.ensure()
                kv = await self._nc.jetstream().key_value(subjects.APPS_BUCKET)
                watcher = await open_watch(kv, "app.>", meta_only=True)
                try:
                    while True:
                        with contextlib.suppress(asyncio.TimeoutError):
                            if await watcher.updates(timeout=60) is not None:
                                self._wake.set()
                finally:
                    with contextlib.suppress(*TRANSIENT):
                        await watcher.stop()
            except TRANSIENT as exc:
                log.debug("reconciler: app watch: %s", describe(exc))
                await asyncio.sleep(self._interval * 5)

    async def _pass_unless_lost(self) -> None:
        """One pass, abandoned the moment the lease is lost."""
        work = asyncio.create_task(self.reconcile_once())
        lost = asyncio.create_task(self._lost.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()  # stopped: the pass goes too
            raise
        finally:
            lost.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})  # raises nothing of the pass; a cancel of this task still does
            return
        work.result()

    # -- one pass ----------------------------------------------------------------------------

    async def reconcile_once(self) -> Plan:
        apps = await self._verified_apps()
        registry = await self._store.registry()
        listed = registry.records
        if not self._liveness.trustworthy(listed):
            log.info("reconciler: the registry read lacks this node; not acting on it (JetStream busy?)")
            return Plan()
        await self._confirm_silent(listed, registry.behind_s)
        await self._share_keys(listed)
        statuses = await self._status_keys()
        if not self._seeded:
            await self._seed(apps)
        now = time.time()
        nodes = self._liveness.view(listed, time.monotonic())
        self._live_nodes = self._liveness.writing(time.monotonic(), self._writing_within_s)
        restarts = self._restarts_counted()
        # An app whose record is refused and that has nothing verified to run is left alone: what
        # may run of it is not stopped (a refusal changes nothing), and its status says why.
        untouchable = {key for key, decision in self._refused.items() if decision.act_on is None}
        self._memory.known_apps -= untouchable
        decided = plan(apps, nodes, self._memory, now, self._settings, statuses - untouchable)
        self.actions["restart"] += max(0, self._restarts_counted() - restarts)  # forgotten apps lower it
        await self._execute(decided, nodes)
        await self._write_statuses(decided)
        self.passes += 1
        return decided

    async def _confirm_silent(self, listed: list[NodeRecord], behind_s: dict[str, float]) -> None:
        """Ask each node that stopped writing its registry key whether it is there (nex.fleet.liveness):
        one nothing listens for any more is gone now, not once its key expires."""
        silent = self._liveness.silent(listed, behind_s, self._silent_after_s)
        if not silent:
            return
        client = self._client(SYSTEM_NAMESPACE, signed=False)

        async def ask(record: NodeRecord) -> None:
            try:
                await client.ping_node(record.node.node_id, timeout=SILENT_PING_TIMEOUT_S)
            except NodeNotFound:
                log.info("reconciler: node %s (%s) stopped writing its registry entry and no longer "
                         "listens: it is gone", record.node.name, record.node.node_id)
                self._liveness.gone(record)
            except TRANSIENT:
                pass  # no answer proves nothing: its key's TTL decides
        await asyncio.gather(*(ask(record) for record in silent))

    async def _share_keys(self, listed: list[NodeRecord]) -> None:
        """A copy of the fleet keys for each node that has none, so that any can take over."""
        if self._shared is None or self._keys is None:
            return
        try:
            sealed = await self._shared.share(self._keys, listed)
        except TRANSIENT as exc:
            log.warning("reconciler: cannot share the fleet keys: %s (next pass)", describe(exc))
            return
        if sealed:
            log.info("reconciler: sealed a copy of the fleet keys for %d node(s)", sealed)

    async def _verified_apps(self) -> list[AppRecord]:
        """The records to reconcile: for each app, the stored record if it verifies, else the last
        verified one (nex.api.appverify); refusals are announced once each."""
        stored = {(r.spec.namespace, r.spec.name): r for r in await self._store.list(deleted=True)}
        verified = {(r.spec.namespace, r.spec.name): r for r in await self._store.verified()}
        self._acting, self._refused = {}, {}
        for key in sorted(stored.keys() | verified.keys()):
            decision = decide(stored.get(key), verified.get(key), self._trust)
            if decision.accept is not None:
                await self._store.put_verified(decision.accept)
            if decision.forget:
                await self._store.delete_verified(*key)
            if decision.act_on is not None:
                self._acting[key] = decision.act_on
            if decision.refused is not None:
                self._refused[key] = decision
                self._report_refusal(key, decision, stored.get(key))
        for key in [k for k in self._reported if k not in self._refused]:
            del self._reported[key]
        return list(self._acting.values())

    def _report_refusal(self, key: AppKey, decision: Decision, record: AppRecord | None) -> None:
        said = (decision.refused or "", decision.refused_version)
        if self._reported.get(key) == said:
            return
        self._reported[key] = said
        namespace, app = key
        running = self._acting.get(key)
        log.warning("reconciler: app %s/%s: the record of version %s is refused: %s", namespace, app,
                    decision.refused_version, decision.refused)
        self._memory.note(key, f"version {decision.refused_version} refused: {decision.refused}")
        self._publish(namespace, EventType.APP_REFUSED, {
            "app": app, "namespace": namespace, "version": decision.refused_version, "reason": decision.refused,
            "signed_by": signer_of(record) if record is not None else None,
            "running_version": running.version if running is not None else None})

    def _restarts_counted(self) -> int:
        """Replicas the planner has found failed or lost so far (it restarts each)."""
        return sum(history.restarts for history in self._memory.history.values())

    # -- status ------------------------------------------------------------------------------

    async def _seed(self, apps: list[AppRecord]) -> None:
        """Carry over what the previous reconciler wrote: restart counts, and a rollback or failed
        update of the version that is still current (a new term would otherwise forget them)."""
        for record in apps:
            status = await self._store.get_status(record.spec.namespace, record.spec.name)
            if status is None:
                continue
            self._memory.seed(record, status)
        self._seeded = True

    async def _status_keys(self) -> set[AppKey]:
        try:
            kv: KeyValue = await self._nc.jetstream().key_value(subjects.APPS_BUCKET)
            keys = await watched_keys(kv, "status.>")
        except nats.js.errors.BucketNotFoundError:
            return set()
        found: set[AppKey] = set()
        for key in keys:
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "status":
                found.add((parts[1], parts[2]))
        return found

    async def _write_statuses(self, decided: Plan) -> None:
        rollouts_of = dict(decided.rollouts)
        for key, decision in self._refused.items():
            # A refused record with nothing verified to run still gets a status that says why.
            rollouts_of.setdefault(key, (decision.refused_version or 0, []))
        for (namespace, app), (version, rollouts) in rollouts_of.items():
            events = list(self._memory.events.get((namespace, app), ()))
            refusal = self._refused.get((namespace, app))
            refused = {"refused": refusal.refused, "refused_version": refusal.refused_version} if refusal else {}
            content = {"version": version, "workloads": [r.model_dump() for r in rollouts], "events": events,
                       **refused}
            if self._written.get((namespace, app)) == content:
                continue  # unchanged: no KV write
            status = AppStatus(name=app, namespace=namespace, version=version,
                               reconciled_at=datetime.now(timezone.utc), reconciler=self.node_id,
                               workloads=rollouts, events=events, **refused)
            try:
                await self._store.put_status(status)
                self._written[(namespace, app)] = content
            except TRANSIENT as exc:
                log.warning("reconciler: cannot write the status of %s/%s: %s", namespace, app, describe(exc))
