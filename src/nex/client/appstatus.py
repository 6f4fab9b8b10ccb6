"""Desired against actual: an app's record and status next to the replicas the nodes report.

Pure: the inputs are what :class:`nex.client.appstore.AppStore` reads (the record, the
node registry, the reconciler's status); ``nex app status`` and ``nex app ls`` render
the result. What runs is read from the nodes' own records, never from the
reconciler's status, so the view is right even when no reconciler is running.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from pydantic import Field, computed_field

from nex.api.apps import AppRecord, AppSpec, AppStatus, AppWorkload, RolloutState
from nex.api.models import Health, NodeState, Strict, WorkloadState, WorkloadType
from nex.api.records import NodeRecord
from nex.api.appverify import signer_of

__all__ = [
    "AppChange", "AppView", "ReplicaView", "WorkloadChange", "WorkloadView", "app_change", "app_view", "replicas_of",
]


class ReplicaView(Strict):
    """One replica of an app workload, as its node reports it: node, state, health, revision."""

    id: str
    workload: str = Field(description="the app workload's name")
    node_id: str
    node_name: str
    node_state: NodeState
    state: WorkloadState
    health: Health | None = None
    revision: str
    current: bool = Field(description="made from the workload's current template")
    started_at: datetime
    reason: str | None = Field(default=None, description="why it failed or is unhealthy, as its node says")


class WorkloadView(Strict):
    """One workload of an app: replicas desired, running, healthy and up to date, and its rollout."""

    name: str
    type: WorkloadType
    revision: str
    desired: int
    running: int = Field(description="replicas in state running, whatever their revision")
    healthy: int = Field(description="running replicas that pass their health check (or have none)")
    up_to_date: int = Field(description="running replicas of the current revision")
    ready: int = Field(default=0, description="running replicas of the current revision that pass their health "
                       "check (or have none)")
    rollout: RolloutState | None = Field(default=None, description="None: the reconciler has not reported yet")
    message: str | None = None
    restarts: int = 0
    last_failure: str | None = Field(default=None, description="the last failure of a replica the reconciler "
                                     "saw, with its cause")
    replicas: list[ReplicaView] = Field(default_factory=list)


class AppView(Strict):
    """An app, desired against actual: what ``nex app status`` shows and :meth:`NexClient.app_status` returns.

    :attr:`ready` says whether every replica of its current version runs, healthy.
    """

    name: str
    namespace: str
    version: int
    applied_at: datetime
    applied_by: str | None = Field(default=None, description="the issuer whose signature on the record verifies "
                                   "(whether the fleet trusts it: see refused); none: unsigned")
    refused: str | None = Field(default=None, description="why the reconciler does not act on this record "
                                "(then the last verified version keeps running)")
    desired: int
    running: int
    healthy: int
    workloads: list[WorkloadView]
    leftover: list[ReplicaView] = Field(
        default_factory=list, description="replicas of workloads the app no longer has (being stopped)")
    reconciled_version: int | None = Field(default=None, description="the version the reconciler last acted on")
    reconciled_at: datetime | None = None
    reconciler: str | None = None
    events: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rollout(self) -> str:
        """One word for the whole app: the least settled of its workloads' states."""
        if self.refused is not None:
            return "refused"
        states = [w.rollout for w in self.workloads]
        if any(s is None for s in states) or self.reconciled_version != self.version:
            return "pending"
        for state in (RolloutState.FAILED, RolloutState.ROLLED_BACK, RolloutState.ROLLING):
            if state in states:
                return state.value
        return RolloutState.STABLE.value

    @property
    def ready(self) -> bool:
        """Whether the reconciler acted on this version and every replica of it runs, healthy."""
        return (self.refused is None and self.reconciled_version == self.version
                and all(w.ready >= w.desired for w in self.workloads))

    def summary(self) -> str:
        """One line: each workload's replicas of the current version running, and the last failure seen."""
        parts = []
        for w in self.workloads:
            part = f"{w.name} {w.ready}/{w.desired} ready ({w.up_to_date} of the current revision running)"
            if w.last_failure:
                part += f" (last failure: {w.last_failure})"
            parts.append(part)
        if self.reconciled_version != self.version:
            parts.append(f"the reconciler has not acted on version {self.version} yet")
        return "; ".join(parts)


def replicas_of(namespace: str, app: str, nodes: Iterable[NodeRecord],
                revisions: dict[str, str] | None = None) -> list[ReplicaView]:
    """Every replica of ``app`` the nodes list; ``revisions`` (workload name → current revision)
    decides which are current."""
    found = []
    for node in nodes:
        for replica in node.workloads:
            if replica.app is None or replica.app.name != app or replica.namespace != namespace:
                continue
            found.append(ReplicaView(
                id=replica.id, workload=replica.name, node_id=node.node.node_id, node_name=node.node.name,
                node_state=node.node.state, state=replica.state, health=replica.health,
                revision=replica.app.revision, started_at=replica.started_at, reason=replica.reason,
                current=(revisions or {}).get(replica.name) == replica.app.revision,
            ))
    return sorted(found, key=lambda r: (r.workload, not r.current, r.node_name, r.id))


def app_view(record: AppRecord, nodes: Iterable[NodeRecord], status: AppStatus | None) -> AppView:
    """The view of ``record``: its replicas found in the nodes' records, its rollout from the reconciler's ``status``."""
    spec = record.spec
    revisions = {w.name: w.revision() for w in spec.workloads}
    replicas = replicas_of(spec.namespace, spec.name, nodes, revisions)
    # A status about another version says nothing about this one's rollout.
    rollouts = {r.name: r for r in status.workloads} if status and status.version == record.version else {}
    workloads = []
    for workload in spec.workloads:
        mine = [r for r in replicas if r.workload == workload.name]
        running = [r for r in mine if r.state == WorkloadState.RUNNING]
        rollout = rollouts.get(workload.name)
        workloads.append(WorkloadView(
            name=workload.name, type=workload.type, revision=revisions[workload.name],
            desired=workload.replicas, running=len(running),
            healthy=sum(1 for r in running if _healthy(r, workload)),
            up_to_date=sum(1 for r in running if r.current),
            ready=sum(1 for r in running if r.current and _healthy(r, workload)),
            rollout=rollout.state if rollout else None,
            message=rollout.message if rollout else None,
            restarts=rollout.restarts if rollout else 0,
            last_failure=rollout.last_failure if rollout else None,
            replicas=mine,
        ))
    return AppView(
        name=spec.name, namespace=spec.namespace, version=record.version, applied_at=record.applied_at,
        applied_by=signer_of(record),
        refused=status.refused if status and status.refused_version == record.version else None,
        desired=sum(w.desired for w in workloads), running=sum(w.running for w in workloads),
        healthy=sum(w.healthy for w in workloads), workloads=workloads,
        leftover=[r for r in replicas if r.workload not in revisions],
        reconciled_version=status.version if status else None,
        reconciled_at=status.reconciled_at if status else None,
        reconciler=status.reconciler if status else None,
        events=list(status.events) if status else [],
    )


def _healthy(replica: ReplicaView, workload: AppWorkload) -> bool:
    if replica.health == Health.HEALTHY:
        return True
    # Without a check, a running process is all there is to know.
    return workload.health is None and replica.health != Health.UNHEALTHY


class WorkloadChange(Strict):
    """What an apply does to one workload: added, removed, replaced, scaled, changed or unchanged."""

    name: str
    change: str = Field(description="added, removed, replaced (new revision), scaled, changed (placement, "
                        "restart or update strategy) or unchanged")
    revision_from: str | None = None
    revision_to: str | None = None
    replicas_from: int | None = None
    replicas_to: int | None = None


class AppChange(Strict):
    """What an apply does (or would do, with ``--dry-run``) to the stored app."""

    name: str
    namespace: str
    action: str = Field(description="created, updated or unchanged")
    version: int = Field(description="the version after the apply")
    dry_run: bool = False
    workloads: list[WorkloadChange] = Field(default_factory=list)


def app_change(before: AppSpec | None, after: AppSpec, version: int, dry_run: bool = False) -> AppChange:
    """The difference between the stored spec (None: there is none) and the applied one."""
    old = {w.name: w for w in before.workloads} if before else {}
    changes = []
    for workload in after.workloads:
        previous = old.pop(workload.name, None)
        revision = workload.revision()
        if previous is None:
            changes.append(WorkloadChange(name=workload.name, change="added", revision_to=revision,
                                          replicas_to=workload.replicas))
            continue
        was = previous.revision()
        if was != revision:
            kind = "replaced"
        elif previous.replicas != workload.replicas:
            kind = "scaled"
        elif previous.model_dump(mode="json") != workload.model_dump(mode="json"):
            kind = "changed"
        else:
            kind = "unchanged"
        changes.append(WorkloadChange(name=workload.name, change=kind, revision_from=was, revision_to=revision,
                                      replicas_from=previous.replicas, replicas_to=workload.replicas))
    for name, workload in old.items():
        changes.append(WorkloadChange(name=name, change="removed", revision_from=workload.revision(),
                                      replicas_from=workload.replicas))
    if before is None:
        action = "created"
    elif all(c.change == "unchanged" for c in changes):
        action = "unchanged"
    else:
        action = "updated"
    return AppChange(name=after.name, namespace=after.namespace, action=action, version=version,
                     dry_run=dry_run, workloads=changes)
