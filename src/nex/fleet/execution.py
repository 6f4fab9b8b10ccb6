"""How the reconciler carries out a plan: every action of a pass, a bounded number at once.

A placement is a batch: the replicas of one workload get their auctions all at once (of the
eligible nodes or a sample of them past ``sample_threshold`` nodes, nex.placement.sampling),
then a bid each in turn, so the batch keeps the spread (nex.placement.scoring.choose_bid),
then their deploys all at once. A stop is an undeploy until the node no longer lists the
replica; a rollback a compare-and-set of the app record back to its previous spec. One action
failing is logged and tried again next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client

from nex.api import appsig
from nex.api.apps import AppRecord, AppWorkload
from nex.api.errors import NexError, WorkloadNotFound
from nex.api.events import EventType
from nex.api.models import AppRef, AuctionReply, AuctionRequest, Bid, DeployRequest
from nex.api.records import NodeRecord
from nex.client import NexClient
from nex.fleet.planner import (
    AppKey, FleetMemory, PendingReplica, Place, Plan, Rollback, SlotKey, Stop, changed_workloads,
)
from nex.fleet.store import AppStore
from nex.api.appverify import Trust, decide
from nex.placement import sampling
from nex.placement.scoring import bid_bucket, choose_bid
from nex.security.keystore import UserKeys
from nex.security.xkeys import open_env, seal_env

log = logging.getLogger("nex.fleet.reconciler")  # these are the reconciler's lines, under its name

MAX_CONCURRENT_ACTIONS = 8
MAX_CONCURRENT_PLACEMENTS = 32  # auctions, then deploys, of one batch at once
AUCTION_WAIT_S = 1.0
REQUEST_TIMEOUT_S = 15.0  # an undeploy waits for the workload's grace period

Publish = Callable[[str, EventType, dict[str, Any]], None]
"""Publishes an event: (namespace, type, data)."""

# What the reconciler tolerates from one action or one pass: the engine's own errors and NATS's.
TRANSIENT = (NexError, nats.errors.Error, asyncio.TimeoutError, OSError)


class PlanExecution:
    """The reconciler's actions (:class:`nex.fleet.reconciler.Reconciler` is made of this and its loop)."""

    _nc: Client
    _keys: UserKeys | None
    _publish: Publish
    _store: AppStore
    _memory: FleetMemory
    _trust: Trust
    _sample_threshold: int
    _live_nodes: int
    _clients: dict[tuple[str, bool], NexClient]
    _acting: dict[AppKey, AppRecord]  # the verified record of each app this pass
    _written: dict[AppKey, dict]
    _wake: asyncio.Event
    actions: Counter[str]

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
                except TRANSIENT as exc:
                    log.warning("reconciler: %s: %s", _what(action), describe(exc))

        jobs = [bounded(r, lambda r=r: self._rollback(r)) for r in decided.rollbacks]
        jobs += [bounded(s, lambda s=s: self._stop(s)) for s in decided.stops]
        # The replicas of one workload are placed as a batch: targets decided together, then deployed.
        jobs += [bounded(places[0], lambda slot=slot, places=places: self._place_all(
            places, decided.spread_counts.get(slot, {}), nodes or [])) for slot, places in by_slot.items()]
        await asyncio.gather(*jobs)
        for announce in decided.announcements:
            self._publish(announce.namespace, announce.type, announce.data)
        for namespace, app in decided.delete_statuses:
            with contextlib.suppress(*TRANSIENT):
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
                                     memory_mib=workload.limits.memory_mib, isolation=workload.isolation,
                                     exclude_nodes=list(first.exclude_nodes))
        asked = sampling.whom_to_ask(nodes, constraints, len(places), self._sample_threshold, spread=first.spread,
                                     counts=counts)
        limit = asyncio.Semaphore(MAX_CONCURRENT_PLACEMENTS)

        async def auction(sample: list[str] | None) -> list[AuctionReply] | BaseException:
            async with limit:
                try:
                    return await client.sampled_auction(constraints, sample, AUCTION_WAIT_S,
                                                        self._live_nodes or None)
                except TRANSIENT as exc:
                    return exc

        answers = await asyncio.gather(*(auction(sample) for sample in asked))
        counts = dict(counts)
        chosen: list[tuple[Place, Bid]] = []
        for place, replies in zip(places, answers):
            if isinstance(replies, BaseException):
                self._placing_failed(place, describe(replies))
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
                except TRANSIENT as exc:
                    self._placing_failed(place, describe(exc))

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
            limits=workload.limits, network=workload.network, isolation=workload.isolation, health=workload.health,
            app=app,
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


def _what(action: Any) -> str:
    if isinstance(action, Place):
        return f"placing {action.workload.name} of app {action.namespace}/{action.app}"
    if isinstance(action, Stop):
        return f"stopping {action.workload_id} of app {action.namespace}/{action.app}"
    if isinstance(action, Rollback):
        return f"rolling back app {action.namespace}/{action.app}"
    return str(action)


def describe(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
