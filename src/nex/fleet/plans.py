"""The planner's vocabulary: the actions of a plan, the memory between passes, the view of a replica.

Pure, like the planner (:mod:`nex.fleet.planner`), which decides with these; the steps
of one workload's decisions are in :mod:`nex.fleet.workload_plan`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nex.api.apps import AppRecord, AppSpec, AppStatus, AppWorkload, RolloutState, WorkloadRollout
from nex.api.events import EventType
from nex.api.models import Health, Lifecycle, WorkloadState
from nex.api.records import NodeRecord
from nex.placement.scoring import spread_bucket

AppKey = tuple[str, str]  # (namespace, app)
SlotKey = tuple[str, str, str]  # (namespace, app, workload)
MAX_EVENTS = 50


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Start one replica of ``workload`` on the best bidder."""

    namespace: str
    app: str
    workload: AppWorkload
    revision: str
    tags: dict[str, str]
    spread: str | None  # the tag to spread over; None: spread over nodes
    exclude_nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Stop:
    """Undeploy one replica until its node no longer lists it."""

    workload_id: str
    node_id: str
    namespace: str
    app: str
    name: str
    reason: str


@dataclass(frozen=True)
class Rollback:
    """Write the app's previous spec back (CAS on ``version``)."""

    namespace: str
    app: str
    version: int
    reason: str


@dataclass(frozen=True)
class Announce:
    """An event to publish in the app's namespace."""

    namespace: str
    type: EventType
    data: dict[str, Any]


@dataclass
class Plan:
    places: list[Place] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    rollbacks: list[Rollback] = field(default_factory=list)
    announcements: list[Announce] = field(default_factory=list)
    # (namespace, app) → (record version, one rollout per workload)
    rollouts: dict[AppKey, tuple[int, list[WorkloadRollout]]] = field(default_factory=dict)
    delete_statuses: list[AppKey] = field(default_factory=list)
    # spread bookkeeping for the placements: (ns, app, workload) → spread value → replicas
    spread_counts: dict[SlotKey, dict[str, int]] = field(default_factory=dict)


# -- memory ----------------------------------------------------------------------------------


@dataclass
class PendingReplica:
    """A replica this reconciler started that the registry may not list yet."""

    workload_id: str
    node_id: str
    namespace: str
    app: str
    name: str
    revision: str
    since: float


@dataclass
class SlotHistory:
    failures_in_row: int = 0
    restarts: int = 0
    retry_at: float = 0.0
    last_failure: float = 0.0
    last_failure_reason: str | None = None  # what the last failed replica said, for the app's status


@dataclass
class RolloutMemo:
    revision: str
    started: float


@dataclass
class FleetMemory:
    """What the reconciler remembers between passes (lost when another node takes over)."""

    pending: dict[str, PendingReplica] = field(default_factory=dict)
    stopping: dict[str, float] = field(default_factory=dict)  # workload id → when asked
    history: dict[SlotKey, SlotHistory] = field(default_factory=dict)
    rollouts: dict[SlotKey, RolloutMemo] = field(default_factory=dict)
    failed_revision: dict[SlotKey, str] = field(default_factory=dict)
    # A workload's rollback, kept until the next version: (version, state, why). Only the
    # workloads whose template the rollback changed; the others of the app ran on untouched.
    outcome: dict[SlotKey, tuple[int, RolloutState, str]] = field(default_factory=dict)
    nodes_seen: dict[str, NodeRecord] = field(default_factory=dict)
    lost_nodes: dict[str, float] = field(default_factory=dict)
    returned_nodes: dict[str, float] = field(default_factory=dict)
    events: dict[AppKey, deque[str]] = field(default_factory=dict)
    known_apps: set[AppKey] = field(default_factory=set)  # apps stored during this term
    unplaceable: dict[SlotKey, str] = field(default_factory=dict)  # why the last placement found no node
    jobs_done: dict[SlotKey, dict[str, str]] = field(default_factory=dict)  # job replica id → its revision

    def placed(self, replica: PendingReplica) -> None:
        self.pending[replica.workload_id] = replica

    def note(self, key: AppKey, text: str) -> None:
        self.events.setdefault(key, deque(maxlen=MAX_EVENTS)).append(text)

    def rolled_back(self, key: AppKey, new_version: int, message: str, workloads: Iterable[str]) -> None:
        """The app's record is now ``new_version``, its previous spec; ``workloads``: those whose
        template that changed (the failed update's), each of which now shows rolled back."""
        for name in workloads:
            self.outcome[(key[0], key[1], name)] = (new_version, RolloutState.ROLLED_BACK, message)

    def seed(self, record: AppRecord, status: AppStatus) -> None:
        """Take over from the status a previous reconciler wrote for this app."""
        key = (record.spec.namespace, record.spec.name)
        if status.version != record.version:
            return
        self.events[key] = deque(status.events, maxlen=MAX_EVENTS)
        for rollout in status.workloads:
            workload = record.spec.workload(rollout.name)
            if workload is None or workload.revision() != rollout.revision:
                continue
            slot = (key[0], key[1], rollout.name)
            history = self.history.setdefault(slot, SlotHistory())
            history.restarts, history.last_failure_reason = rollout.restarts, rollout.last_failure
            if rollout.state == RolloutState.ROLLED_BACK:
                self.outcome[slot] = (record.version, RolloutState.ROLLED_BACK, rollout.message or "rolled back")
            elif rollout.state == RolloutState.FAILED:
                self.failed_revision[slot] = rollout.revision


def changed_workloads(before: AppSpec, after: AppSpec) -> list[str]:
    """The workloads of ``before`` whose template ``after`` changes (or lacks, or adds): those an
    update of one into the other rolls, and a rollback rolls back."""
    names = {w.name for w in before.workloads} | {w.name for w in after.workloads}
    changed = []
    for name in sorted(names):
        old, new = before.workload(name), after.workload(name)
        if old is None or new is None or old.revision() != new.revision():
            changed.append(name)
    return changed


@dataclass(frozen=True)
class Settings:
    pending_ttl_s: float = 10.0  # how long a placed replica counts before the registry lists it
    stable_after_s: float = 10.0  # a replica healthy this long resets the failures in a row
    returned_memory_s: float = 120.0  # how long a node that came back is preferred for stopping


# -- the view of one replica -------------------------------------------------------------------


@dataclass
class Replica:
    id: str
    node_id: str
    namespace: str
    app: str
    name: str
    revision: str
    state: WorkloadState
    health: Health | None
    started: float
    exit_code: int | None
    lifecycle: Lifecycle
    draining: bool = False  # on a node in lame duck
    returned: bool = False  # on a node that vanished and came back
    pending: bool = False  # placed by us, not listed yet
    node_tags: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why it failed or is unhealthy, as its node says

    def failure_text(self, what: str = "failed") -> str:
        """``replica <id> of <workload> failed: <why>``, the why when its node said it."""
        return f"replica {self.id} of {self.name} {what}" + (f": {self.reason}" if self.reason else "")

    @property
    def live(self) -> bool:
        return self.state in (WorkloadState.STARTING, WorkloadState.RUNNING)

    @property
    def ended(self) -> bool:
        return self.state in (WorkloadState.STOPPED, WorkloadState.FAILED)

    @property
    def succeeded(self) -> bool:
        return self.state == WorkloadState.STOPPED and self.exit_code in (0, None)


def backoff_delay(restart_backoff: float, max_backoff: float, failures_in_row: int) -> float:
    """Wait before restart number ``failures_in_row`` (1 = the first): doubling, capped."""
    return min(restart_backoff * (2 ** max(0, failures_in_row - 1)), max_backoff)


def replica_bucket(replica: Replica, spread: str | None) -> str:
    """The spread bucket a replica falls in: its node's value of the spread tag, or its node."""
    return spread_bucket(replica.node_id, replica.node_tags, spread)


# -- deciding about replicas -----------------------------------------------------------------


def is_ready(replica: Replica, workload: AppWorkload) -> bool:
    """Running, listed, and healthy when the workload has a check."""
    if replica.pending or replica.state != WorkloadState.RUNNING:
        return False
    if workload.health is None:
        return replica.health != Health.UNHEALTHY
    return replica.health == Health.HEALTHY


def stop_preference(replica: Replica, workload: AppWorkload, revision: str) -> tuple:
    """Sort key: the replica to stop first comes first."""
    return (replica.revision == revision, is_ready(replica, workload), not replica.returned,
            -replica.started, replica.id)


def stop(result: Plan, memory: FleetMemory, replica: Replica, reason: str, now: float) -> None:
    """Plan to stop ``replica``, and remember it is being stopped."""
    memory.stopping[replica.id] = now
    memory.pending.pop(replica.id, None)
    result.stops.append(Stop(replica.id, replica.node_id, replica.namespace, replica.app, replica.name, reason))
