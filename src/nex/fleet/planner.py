"""The reconciler's decisions: desired apps + the node registry + memory → actions.

Pure: no I/O and no clock of its own. The reconciler hands it the app records,
the live node records, what it remembers (replicas it placed or stopped that the
registry may not show yet, failure history, rollouts) and ``now``; the planner
updates that memory with its decisions and returns what to do. Keeping it pure
makes every rule (scaling, spread, lame duck, node loss, restarts with backoff,
rolling updates and rollback) testable in milliseconds.

This module holds the pass over the fleet (:func:`plan`); each workload's decisions are
:func:`nex.fleet.workload_plan.plan_workload`'s, and what they are written with (actions,
memory, settings) is :mod:`nex.fleet.plans`', re-exported here.
"""

from __future__ import annotations

from nex.api.apps import AppRecord, WorkloadRollout
from nex.api.models import Lifecycle, NodeState, WorkloadState
from nex.api.records import NodeRecord
from nex.fleet.plans import (
    MAX_EVENTS, Announce, AppKey, FleetMemory, PendingReplica, Place, Plan, Replica, Rollback, RolloutMemo, Settings,
    SlotHistory, SlotKey, Stop, backoff_delay, changed_workloads, replica_bucket, stop,
)
from nex.fleet.workload_plan import plan_workload

__all__ = [
    "MAX_EVENTS", "Announce", "AppKey", "FleetMemory", "PendingReplica", "Place", "Plan", "Replica", "Rollback",
    "RolloutMemo", "Settings", "SlotHistory", "SlotKey", "Stop", "backoff_delay", "changed_workloads", "plan",
    "replica_bucket",
]


def plan(apps: list[AppRecord], nodes: list[NodeRecord], memory: FleetMemory, now: float,
         settings: Settings = Settings(), statuses: set[AppKey] | None = None) -> Plan:
    """Decide one reconcile pass. ``statuses``: the apps that have a status record."""
    result = Plan()
    live_nodes = {n.node.node_id: n for n in nodes}
    _track_nodes(live_nodes, memory, now, settings)
    replicas, listed_apps = _replicas(live_nodes, memory, now, settings)
    by_slot: dict[SlotKey, list[Replica]] = {}
    for replica in replicas:
        by_slot.setdefault((replica.namespace, replica.app, replica.name), []).append(replica)

    wanted: set[SlotKey] = set()
    draining_nodes = tuple(sorted(i for i, n in live_nodes.items() if n.node.state != NodeState.RUNNING))
    for record in apps:
        spec = record.spec
        app_key = (spec.namespace, spec.name)
        rollouts: list[WorkloadRollout] = []
        for workload in spec.workloads:
            slot = (spec.namespace, spec.name, workload.name)
            wanted.add(slot)
            rollouts.append(plan_workload(record, workload, by_slot.get(slot, []), draining_nodes,
                                          memory, now, settings, result))
        result.rollouts[app_key] = (record.version, rollouts)

    known_apps = {(r.spec.namespace, r.spec.name) for r in apps}
    memory.known_apps |= known_apps
    _stop_orphans(by_slot, wanted, memory.known_apps | (statuses or set()), result, memory, now)
    occupied_apps = {(s[0], s[1]) for s in by_slot} | listed_apps  # listed ones being stopped included
    for key in sorted((statuses or set()) - known_apps - occupied_apps):
        result.delete_statuses.append(key)
    _forget_apps(memory, known_apps | occupied_apps)
    return result


def _track_nodes(live: dict[str, NodeRecord], memory: FleetMemory, now: float, settings: Settings) -> None:
    """Remember nodes that vanished (their replicas are lost) and nodes that came back."""
    for node_id, record in memory.nodes_seen.items():
        if node_id not in live and node_id not in memory.lost_nodes:
            memory.lost_nodes[node_id] = now
            for replica in record.workloads:
                if replica.app is not None and replica.state in (WorkloadState.STARTING, WorkloadState.RUNNING):
                    slot = (replica.namespace, replica.app.name, replica.name)
                    memory.history.setdefault(slot, SlotHistory()).restarts += 1
                    memory.note((replica.namespace, replica.app.name),
                                f"node {node_id} is gone: replica {replica.id} lost")
    for node_id in list(memory.lost_nodes):
        if node_id in live:
            del memory.lost_nodes[node_id]
            memory.returned_nodes[node_id] = now
    for node_id, since in list(memory.returned_nodes.items()):
        if now - since > settings.returned_memory_s:
            del memory.returned_nodes[node_id]
    memory.nodes_seen = dict(live)


def _replicas(live: dict[str, NodeRecord], memory: FleetMemory, now: float,
              settings: Settings) -> tuple[list[Replica], set[AppKey]]:
    """Every app replica the registry lists, plus those we placed that it does not list yet,
    less those we asked to stop; and the apps with any replica listed (those being stopped too)."""
    listed: list[Replica] = []
    seen_ids = {record.id for node in live.values() for record in node.workloads}
    for workload_id, since in list(memory.stopping.items()):
        if workload_id not in seen_ids or now - since > settings.pending_ttl_s:
            del memory.stopping[workload_id]  # gone, or the stop did not work: decide again
    apps: set[AppKey] = set()
    for node_id, node in live.items():
        for record in node.workloads:
            if record.app is not None:
                apps.add((record.namespace, record.app.name))
            if record.app is None or record.id in memory.stopping:
                continue
            listed.append(Replica(
                id=record.id, node_id=node_id, namespace=record.namespace, app=record.app.name,
                name=record.name, revision=record.app.revision, state=record.state, health=record.health,
                started=record.started_at.timestamp(), exit_code=record.exit_code, lifecycle=record.lifecycle,
                draining=node.node.state != NodeState.RUNNING, returned=node_id in memory.returned_nodes,
                node_tags=node.node.tags, reason=record.reason,
            ))
    for workload_id, pending in list(memory.pending.items()):
        if workload_id in seen_ids or pending.node_id not in live or now - pending.since > settings.pending_ttl_s:
            del memory.pending[workload_id]
            continue
        node = live[pending.node_id]
        listed.append(Replica(
            id=workload_id, node_id=pending.node_id, namespace=pending.namespace, app=pending.app,
            name=pending.name, revision=pending.revision, state=WorkloadState.STARTING, health=None,
            started=pending.since, exit_code=None, lifecycle=Lifecycle.SERVICE,
            draining=node.node.state != NodeState.RUNNING, pending=True, node_tags=node.node.tags,
        ))
    return listed, apps


def _stop_orphans(by_slot: dict[SlotKey, list[Replica]], wanted: set[SlotKey], managed: set[AppKey],
                  result: Plan, memory: FleetMemory, now: float) -> None:
    """Replicas of apps (or app workloads) that no longer exist.

    Only apps the fleet managed: stored while this reconciler ran, or with a status record.
    A replica naming an app that was never stored (deployed by hand with an ``app``, or a
    store that was reset) is not the reconciler's to stop.
    """
    for slot, replicas in sorted(by_slot.items()):
        if slot in wanted or (slot[0], slot[1]) not in managed:
            continue
        for replica in replicas:
            if replica.id not in memory.stopping:
                stop(result, memory, replica, "its app or workload was deleted", now)


def _forget_apps(memory: FleetMemory, keep: set[AppKey]) -> None:
    for table in (memory.history, memory.rollouts, memory.failed_revision, memory.unplaceable, memory.jobs_done,
                  memory.outcome):
        for slot in [s for s in table if (s[0], s[1]) not in keep]:
            del table[slot]
    for key in [k for k in memory.events if k not in keep]:
        del memory.events[key]
    memory.known_apps &= keep
