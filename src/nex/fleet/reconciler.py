"""The fleet's reconciler: keeps what runs equal to the apps in NEX_APPS.

Every node with ``config.reconciler`` runs one; only the holder of the lease
(:mod:`nex.fleet.lease`) acts. Each pass reads the apps and the node registry,
asks the pure planner (:mod:`nex.fleet.planner`) what to do, and does it: a
placement is an auction plus a deploy to the chosen bid, a stop an undeploy,
a rollback a compare-and-set of the app record back to its previous spec. One
action failing (a node gone between bid and deploy, a node in lame duck, NATS
reconnecting) is logged and tried again next pass; nothing stops the loop but
:meth:`Reconciler.stop`.

Only records that :mod:`nex.fleet.verify` accepts are acted on: a refused one
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
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from nex.api import appsig, subjects
from nex.api.apps import AppRecord, AppStatus, AppWorkload
from nex.api.errors import NexError, NodeNotFound, WorkloadNotFound
from nex.api.events import EventType
from nex.api.models import AppRef, AuctionReply, AuctionRequest, Bid, DeployRequest, NodeRecord
from nex.client import NexClient
from nex.fleet.lease import Lease
from nex.fleet.liveness import Liveness
from nex.fleet.planner import (
    AppKey, FleetMemory, PendingReplica, Place, Plan, Rollback, Settings, SlotKey, Stop, changed_workloads, plan,
)
from nex.fleet.sharedkeys import SharedFleetKeys
from nex.fleet.store import AppStore
from nex.fleet.verify import Decision, Trust, decide, signer_of
from nex.kvwatch import open_watch, watched_keys
from nex.placement import sampling
from nex.placement.sampling import SAMPLE_THRESHOLD
from nex.placement.scoring import bid_bucket, choose_bid
from nex.security.keystore import UserKeys
from nex.security.xkeys import open_env, seal_env

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "system"
MAX_CONCURRENT_ACTIONS = 8
MAX_CONCURRENT_PLACEMENTS = 32  # auctions, then deploys, of one batch at once
AUCTION_WAIT_S = 1.0
# A node whose registry key is this many registry intervals behind the newest write is asked
# whether it is there (PING, no responders: gone); the answer is waited for this long.
SILENT_AFTER_WRITES = 1.5
SILENT_PING_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 15.0  # an undeploy waits for the workload's grace period

Publish = Callable[[str, EventType, dict[str, Any]], None]
"""Publishes an event: (namespace, type, data)."""

# What the reconciler tolerates from one action or one pass: the engine's own errors and NATS's.
_TRANSIENT = (NexError, nats.errors.Error, asyncio.TimeoutError, OSError)


def fleet_keys(directory: Path) -> UserKeys:
    """The fleet's issuer and xkey: the same directory (and so keys) on every reconciling node."""
    keys = UserKeys.load(home=directory, create=True)
    assert keys is not None  # create=True always makes them
    return keys


class Reconciler:
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
            except _TRANSIENT as exc:
                self._trouble(_describe(exc))
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
                    with contextlib.suppress(*_TRANSIENT):
                        await watcher.stop()
            except _TRANSIENT as exc:
                log.debug("reconciler: app watch: %s", _describe(exc))
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
            except _TRANSIENT:
                pass  # no answer proves nothing: its key's TTL decides
        await asyncio.gather(*(ask(record) for record in silent))

    async def _share_keys(self, listed: list[NodeRecord]) -> None:
        """A copy of the fleet keys for each node that has none, so that any can take over."""
        if self._shared is None or self._keys is None:
            return
        try:
            sealed = await self._shared.share(self._keys, listed)
        except _TRANSIENT as exc:
            log.warning("reconciler: cannot share the fleet keys: %s (next pass)", _describe(exc))
            return
        if sealed:
            log.info("reconciler: sealed a copy of the fleet keys for %d node(s)", sealed)

    async def _verified_apps(self) -> list[AppRecord]:
        """The records to reconcile: for each app, the stored record if it verifies, else the last
        verified one (nex.fleet.verify); refusals are announced once each."""
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

    async def _execute(self, decided: Plan, nodes: list[NodeRecord] | None = None) -> None:
        """Every action of the plan, a bounded number at once; one failing does not stop the others."""
        limit = asyncio.Semaphore(MAX_CONCURRENT_ACTIONS)
        by_slot: dict[SlotKey, list[Place]] = {}
        for place in decided.places:
            by_slot.setdefault((place.namespace, place.app, place.workload.name), []).append(place)

        async def bounded(action: Any, coro_fn: Callable[[], Any]) -> None:
            async with limit:
                try:
                    await coro_fn()
                except _TRANSIENT as exc:
                    log.warning("reconciler: %s: %s", _what(action), _describe(exc))

        jobs = [bounded(r, lambda r=r: self._rollback(r)) for r in decided.rollbacks]
        jobs += [bounded(s, lambda s=s: self._stop(s)) for s in decided.stops]
        # The replicas of one workload are placed as a batch: targets decided together, then deployed.
        jobs += [bounded(places[0], lambda slot=slot, places=places: self._place_all(
            places, decided.spread_counts.get(slot, {}), nodes or [])) for slot, places in by_slot.items()]
        await asyncio.gather(*jobs)
        for announce in decided.announcements:
            self._publish(announce.namespace, announce.type, announce.data)
        for namespace, app in decided.delete_statuses:
            with contextlib.suppress(*_TRANSIENT):
                await self._store.delete_status(namespace, app)
                self._written.pop((namespace, app), None)
                self._memory.events.pop((namespace, app), None)

    def _client(self, namespace: str, signed: bool = True) -> NexClient:
        """A client that signs with the fleet key, or (for the replicas of an unsigned app) one that
        signs nothing: the fleet key never vouches for a record that no user signed."""
        client = self._clients.get((namespace, signed))
        if client is None:
            client = self._clients[(namespace, signed)] = NexClient(
                self._nc, namespace, REQUEST_TIMEOUT_S, keys=self._keys if signed else None)
        return client

    async def _place_all(self, places: list[Place], counts: dict[str, int], nodes: list[NodeRecord]) -> None:
        """The replicas of one workload, as a batch. Each gets an auction, all at once: past
        ``sample_threshold`` nodes, of the eligible nodes or a sample of them (nex.placement.sampling),
        widened to every node when none of them bids. Then each replica is given a bid in turn, so
        the batch keeps the spread (``choose_bid``); then the deploys go, all at once."""
        first = places[0]
        record = self._acting.get((first.namespace, first.app))
        if record is None:
            return  # no longer verified since the plan was made
        workload = first.workload
        client = self._client(first.namespace, signed=record.token is not None)
        constraints = AuctionRequest(type=workload.type, lifecycle=workload.lifecycle, tags=first.tags,
                                     memory_mib=workload.limits.memory_mib, exclude_nodes=list(first.exclude_nodes))
        asked = sampling.whom_to_ask(nodes, constraints, len(places), self._sample_threshold, spread=first.spread,
                                     counts=counts)
        limit = asyncio.Semaphore(MAX_CONCURRENT_PLACEMENTS)

        async def auction(sample: list[str] | None) -> list[AuctionReply] | BaseException:
            async with limit:
                try:
                    return await client.sampled_auction(constraints, sample, AUCTION_WAIT_S,
                                                        self._live_nodes or None)
                except _TRANSIENT as exc:
                    return exc

        answers = await asyncio.gather(*(auction(sample) for sample in asked))
        counts = dict(counts)
        chosen: list[tuple[Place, Bid]] = []
        for place, replies in zip(places, answers):
            if isinstance(replies, BaseException):
                self._placing_failed(place, _describe(replies))
                continue
            bid = choose_bid([r.bid for r in replies if r.bid is not None], place.spread, counts)
            if bid is None:
                self._unplaceable(place, "; ".join(f"{r.node_id}: {r.declined}" for r in replies if r.declined)
                                  or "no node answered")
                continue
            bucket = bid_bucket(bid, place.spread)
            counts[bucket] = counts.get(bucket, 0) + 1
            chosen.append((place, bid))

        async def deploy(place: Place, bid: Bid) -> None:
            async with limit:
                try:
                    await self._deploy(client, place, record, bid)
                except _TRANSIENT as exc:
                    self._placing_failed(place, _describe(exc))

        await asyncio.gather(*(deploy(place, bid) for place, bid in chosen))

    def _placing_failed(self, place: Place, reason: str) -> None:
        # Tried again next pass; shown in the app's status, and logged once, not every pass.
        slot = (place.namespace, place.app, place.workload.name)
        if self._memory.unplaceable.get(slot) != reason:
            log.warning("reconciler: %s: %s", _what(place), reason)
            self._memory.note((place.namespace, place.app), f"placing {place.workload.name} failed: {reason}")
        self._memory.unplaceable[slot] = reason

    def _unplaceable(self, place: Place, reasons: str) -> None:
        slot = (place.namespace, place.app, place.workload.name)
        if self._memory.unplaceable.get(slot) != reasons:  # said once, not every pass
            self._memory.note((place.namespace, place.app), f"no node can take {place.workload.name}: {reasons}")
            log.warning("reconciler: no node can take %s of app %s: %s", place.workload.name, place.app, reasons)
        self._memory.unplaceable[slot] = reasons

    async def _deploy(self, client: NexClient, place: Place, record: AppRecord, chosen: Bid) -> None:
        workload = place.workload
        summary = await client.deploy(chosen.bid_id, self._deploy_request(place, record, chosen.xkey),
                                      xkey=chosen.xkey)
        self.actions["place"] += 1
        self._memory.unplaceable.pop((place.namespace, place.app, workload.name), None)
        self._memory.placed(PendingReplica(summary.id, summary.node_id, place.namespace, place.app, workload.name,
                                           place.revision, time.time()))
        self._memory.note((place.namespace, place.app), f"placed {workload.name} {summary.id} on {chosen.name}")
        self._publish(place.namespace, EventType.REPLICA_PLACED, {
            "app": place.app, "workload": workload.name, "workload_id": summary.id, "node_id": summary.node_id,
            "revision": place.revision, "reason": place.reason})

    def _deploy_request(self, place: Place, record: AppRecord, node_xkey: str | None) -> DeployRequest:
        workload: AppWorkload = place.workload
        env = open_env(workload.sealed_env, workload.sender_xkey, self._keys.xkey) if workload.sealed_env else {}
        sealed: dict[str, Any] = {}
        if env and record.token is None and node_xkey is not None:
            # Unsigned, so the client seals nothing: sealed here, the env never travels in the clear.
            sealed = {"sealed_env": seal_env(env, self._keys.xkey, node_xkey), "sender_xkey": self._keys.xkey.public}
            env = {}
        app = AppRef(name=place.app, revision=place.revision)
        if record.token is not None:
            # What the user signed, for the node to check this deploy against (nex.security.apps).
            app = app.model_copy(update={
                "token": record.token, "template": appsig.template(workload),
                "digests": appsig.workload_digests(record.spec), "rolled_back": record.rolled_back or None})
        return DeployRequest(
            name=workload.name, type=workload.type, lifecycle=workload.lifecycle, artifact=workload.artifact,
            namespace=place.namespace, argv=list(workload.argv), env=env, triggers=list(workload.triggers),
            limits=workload.limits, network=workload.network, health=workload.health, app=app,
            description=f"replica of app {place.app} ({place.reason})", **sealed)

    async def _stop(self, stop: Stop) -> None:
        """Undeploy until the node no longer lists it: the first stops it, the second removes it."""
        client = self._client(stop.namespace)
        try:
            await client.undeploy(stop.workload_id)
            await client.undeploy(stop.workload_id)
        except WorkloadNotFound:
            pass
        self.actions["stop"] += 1
        self._memory.note((stop.namespace, stop.app), f"stopped {stop.name} {stop.workload_id}: {stop.reason}")
        self._publish(stop.namespace, EventType.REPLICA_STOPPED, {
            "app": stop.app, "workload": stop.name, "workload_id": stop.workload_id, "node_id": stop.node_id,
            "reason": stop.reason})

    async def _rollback(self, rollback: Rollback) -> None:
        """Restore the previous spec of the verified record. No new signature: the record keeps
        its token, which signs the previous spec's digest, and is marked rolled back."""
        key = (rollback.namespace, rollback.app)
        record = self._acting.get(key)
        if record is None or record.version != rollback.version or record.previous is None or record.rolled_back:
            return
        stored, revision = await self._store.get(rollback.namespace, rollback.app, deleted=True)
        if stored != record and decide(stored, record, self._trust).refused is None:
            return  # someone applied (or deleted) meanwhile: theirs wins
        restored = record.model_copy(update={"spec": record.previous, "previous": None, "rolled_back": True})
        await self._store.replace(restored, revision)
        self.actions["rollback"] += 1
        message = f"version {record.version} rolled back to the previous spec: {rollback.reason}"
        self._memory.rolled_back((rollback.namespace, rollback.app), restored.version, message,
                                 changed_workloads(record.previous, record.spec))
        self._memory.note((rollback.namespace, rollback.app), message)
        log.warning("reconciler: app %s/%s: %s", rollback.namespace, rollback.app, message)
        self._publish(rollback.namespace, EventType.ROLLOUT_ROLLED_BACK, {
            "app": rollback.app, "failed_version": record.version, "version": restored.version, "rolled_back": True,
            "reason": rollback.reason})
        self._wake.set()

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
            except _TRANSIENT as exc:
                log.warning("reconciler: cannot write the status of %s/%s: %s", namespace, app, _describe(exc))


def _what(action: Any) -> str:
    if isinstance(action, Place):
        return f"placing {action.workload.name} of app {action.namespace}/{action.app}"
    if isinstance(action, Stop):
        return f"stopping {action.workload_id} of app {action.namespace}/{action.app}"
    if isinstance(action, Rollback):
        return f"rolling back app {action.namespace}/{action.app}"
    return str(action)


def _describe(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
