"""Chaos on a real cluster: nodes SIGKILLed, restarted, drained; a nats-server stopped;
the reconciler's node killed. Each test ends by asserting the exact state the fleet
converged to, from the nodes themselves (WPING), not only from the registry.

The fleet runs with the short timings of tests/fleet_fixtures.py (registry every
0.5 s, a silent node gone after 3 s, the reconciler lease 3 s, a pass every 0.5 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from fleet_fixtures import AppFleet, Cluster, NodeProcess
from helpers import alive, collect, eventually
from nex.api import subjects
from nex.api.apps import AppSpec, AppWorkload, Placement, RestartPolicy
from nex.api.models import NodeState, WorkloadState
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.client.appstatus import ReplicaView, replicas_of

APP = "chaos"
REPLICAS = 3


class Fleet(AppFleet):
    """The chaos app on the fleet: a native ticker spread over the zones."""

    def __init__(self, cluster: Cluster, nodes: list[NodeProcess], client: NexClient) -> None:
        super().__init__(cluster, nodes, client, APP)

    async def apply(self, programs, replicas: int = REPLICAS) -> None:
        artifact = await self.client.upload_artifact(programs["ticker"])
        await self.store.apply(AppSpec(name=APP, workloads=[AppWorkload(
            name="ticker", type="native", artifact=artifact, replicas=replicas,
            placement=Placement(spread="zone"), restart=RestartPolicy(backoff=0.2))]), None)

    async def registry_replicas(self) -> list[ReplicaView]:
        return replicas_of("default", APP, await self.store.nodes())

    async def converged(self, replicas: int = REPLICAS, timeout: float = 20.0,
                        not_on: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
        return await super().converged(replicas, timeout, not_on)


async def start_fleet(nats_cluster: Cluster, node_processes, programs, n: int = 3, **config) -> Fleet:
    nodes = await node_processes(n, **config)
    client = await NexClient.connect(ConnectOptions(servers=nats_cluster.urls_from(0)), timeout=10.0)
    fleet = Fleet(nats_cluster, nodes, client)
    await eventually(fleet.holder, timeout=15, interval=0.2)
    await fleet.apply(programs)
    running = await fleet.converged()
    assert len(set(running.values())) == REPLICAS, "spread over the three zones, one replica each"
    return fleet


async def test_a_killed_nodes_replicas_are_back_within_10_seconds(nats_cluster, node_processes, programs):
    fleet = await start_fleet(nats_cluster, node_processes, programs)
    try:
        before = await fleet.running()
        holder = await fleet.holder()
        victim = next(fleet.node(node_id) for node_id in before.values() if node_id != holder)
        lost = {wid for wid, node_id in before.items() if node_id == victim.node_id}
        pids = [w.pid for w in await fleet.client.workloads(wait=1.0, expected_nodes=3) if w.id in lost]

        killed_at = time.monotonic()
        await victim.kill()
        running = await fleet.converged(timeout=10, not_on={victim.node_id})
        took = time.monotonic() - killed_at

        assert len(running) == REPLICAS and not set(running) & lost
        assert set(before) - lost <= set(running), "the survivors' replicas were left alone"
        assert not any(alive(pid) for pid in pids), "the dead node's reaper killed its workload"
        assert took < 10 + 1.0, f"converged {took:.1f}s after the kill"  # + the one-second stability check
    finally:
        await fleet.client.close()


async def test_a_stopped_nats_server_changes_nothing(nats_cluster, node_processes, programs):
    # A silent node is declared gone only after 6 s here: longer than a reconnect plus a
    # JetStream leader election, which is what this test is about.
    ttl_s = 6.0
    fleet = await start_fleet(nats_cluster, node_processes, programs, node_timeout_s=ttl_s)
    placed = await collect(fleet.client.nc, subjects.events("default", "replica_placed"))
    try:
        before = await fleet.running()
        stopped_at = time.monotonic()
        await nats_cluster.stop("n2")
        on_n2 = next(n for n in fleet.nodes if nats_cluster.home(n) == "n2")
        await eventually(lambda: "reconnected to NATS at" in on_n2.log_tail(200), timeout=15, interval=0.2)
        # Past the registry's TTL from the stop, a real-time window: a key the outage kept from being
        # written has expired by then or been written again. Then passes of the reconciler on what it
        # reads from then on: had it counted a node as gone, it would have acted by now.
        await asyncio.sleep(max(0.0, stopped_at + ttl_s + 1.0 - time.monotonic()))
        await fleet.reconciler_passes(4)
        assert placed == [], "a replica was placed: a node was taken for gone"
        after = await fleet.converged()
        assert after == before, "the same replicas on the same nodes: none lost, none doubled"
        assert len(await fleet.registry_replicas()) == REPLICAS
    finally:
        await fleet.client.close()


async def test_killing_the_reconcilers_node_hands_the_lease_over(nats_cluster, node_processes, programs):
    fleet = await start_fleet(nats_cluster, node_processes, programs)
    try:
        holder = fleet.node(await fleet.holder())
        lease_s = holder.config["lease_s"]
        killed_at = time.monotonic()
        await holder.kill()

        async def new_holder() -> str | None:
            current = await fleet.holder()
            return current if current not in (None, holder.node_id) else None
        successor = await eventually(new_holder, timeout=lease_s + 5, interval=0.1)
        took = time.monotonic() - killed_at
        assert fleet.node(successor).running
        assert took <= lease_s + 2 * holder.config["reconcile_interval_s"] + 1.0, f"took over after {took:.1f}s"

        # The new reconciler replaces what died with the old one's node.
        running = await fleet.converged(timeout=15, not_on={holder.node_id})
        assert len(running) == REPLICAS
    finally:
        await fleet.client.close()


async def test_a_restarted_node_rejoins_without_duplicates(nats_cluster, node_processes, programs):
    fleet = await start_fleet(nats_cluster, node_processes, programs)
    try:
        holder = await fleet.holder()
        victim = next(n for n in fleet.nodes if n.node_id != holder)
        await victim.kill()
        await victim.start()  # before its registry entry expired: it sweeps what it ran and starts empty
        running = await fleet.converged(timeout=20)
        assert len(running) == REPLICAS

        records = {r.node.node_id: r for r in await fleet.store.nodes()}
        assert victim.node_id in records and records[victim.node_id].node.state == NodeState.RUNNING
        views = await fleet.registry_replicas()
        assert sorted(v.id for v in views if v.state == WorkloadState.RUNNING) == sorted(running)
    finally:
        await fleet.client.close()


async def test_a_lame_duck_node_is_drained_before_it_stops(nats_cluster, node_processes, programs):
    fleet = await start_fleet(nats_cluster, node_processes, programs, lameduck_s=20.0)
    try:
        holder = await fleet.holder()
        before = await fleet.running()
        victim = next(fleet.node(node_id) for node_id in before.values() if node_id != holder)

        low = REPLICAS
        await fleet.client.lameduck(victim.node_id)
        deadline = time.monotonic() + 20
        while victim.running and time.monotonic() < deadline:
            low = min(low, len(await fleet.running()))
            await asyncio.sleep(0.2)
        assert not victim.running, "the node left once its replicas were replaced"
        assert victim.process.returncode == 0
        assert low == REPLICAS, "a replacement ran before each replica of the draining node stopped"

        running = await fleet.converged(not_on={victim.node_id})
        assert len(running) == REPLICAS
    finally:
        await fleet.client.close()


# -- a dead node is known before its registry key expires -----------------------------------------
# The TTL of the registry here is 30 s: only the reconciler's PING of a node that stopped writing
# its key (no responders: its connection is gone) can explain a recovery within seconds.
LONG_TTL = {"node_timeout_s": 30.0}


async def test_a_killed_node_is_replaced_long_before_its_registry_key_expires(nats_cluster, node_processes, programs):
    fleet = await start_fleet(nats_cluster, node_processes, programs, **LONG_TTL)
    try:
        before = await fleet.running()
        holder = await fleet.holder()
        victim = next(fleet.node(node_id) for node_id in before.values() if node_id != holder)
        lost = {wid for wid, node_id in before.items() if node_id == victim.node_id}

        await victim.kill()
        running = await fleet.converged(timeout=10, not_on={victim.node_id})
        assert len(running) == REPLICAS and not set(running) & lost
        assert set(before) - lost <= set(running), "the survivors' replicas were left alone"
        listed = {r.node.node_id for r in await fleet.store.nodes()}
        assert victim.node_id in listed, "replaced while the dead node's key was still there"
    finally:
        await fleet.client.close()


async def test_a_frozen_node_that_still_holds_its_connection_is_not_taken_for_gone(
        nats_cluster, node_processes, programs):
    """SIGSTOP: the node stops writing its key, but its connection stays and its subjects keep
    their listener, so its PING goes unanswered rather than to no one: that proves nothing, and
    the fleet waits for the key's TTL before replacing anything."""
    fleet = await start_fleet(nats_cluster, node_processes, programs, **LONG_TTL)
    placed = []

    async def on_placed(msg) -> None:
        placed.append(msg)
    subscription = await fleet.client.nc.subscribe(subjects.events("default", "replica_placed"), cb=on_placed)
    try:
        before = await fleet.running()
        holder = await fleet.holder()
        victim = next(fleet.node(node_id) for node_id in before.values() if node_id != holder)

        os.kill(victim.pid, signal.SIGSTOP)
        try:
            # The frozen node is silent after 1.5 registry intervals, then asked at each pass (1 s
            # without an answer, then the next pass): in five passes it was asked at least three times.
            await fleet.reconciler_passes(5, nodes=[n for n in fleet.nodes if n is not victim])
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        assert placed == [], "a replica was placed while the frozen node still ran its own"
        assert await fleet.converged() == before
    finally:
        await subscription.unsubscribe()
        await fleet.client.close()
