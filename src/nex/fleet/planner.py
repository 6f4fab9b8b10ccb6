"""The reconciler's decisions: desired apps + the node registry + memory → actions.

Pure: no I/O and no clock of its own. The reconciler hands it the app records,
the live node records, what it remembers (replicas it placed or stopped that the
registry may not show yet, failure history, rollouts) and ``now``; the planner
updates that memory with its decisions and returns what to do. Keeping it pure
makes every rule (scaling, spread, lame duck, node loss, restarts with backoff,
rolling updates and rollback) testable in milliseconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nex.api.apps import AppRecord, AppSpec, AppStatus, AppWorkload, RestartPolicyKind, RolloutState, WorkloadRollout
from nex.api.events import EventType
from nex.api.models import Bid, Health, Lifecycle, NodeRecord, NodeState, WorkloadState

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
    return f"node:{replica.node_id}" if spread is None else replica.node_tags.get(spread, "")


def bid_bucket(bid: Bid, spread: str | None) -> str:
    return f"node:{bid.node_id}" if spread is None else bid.tags.get(spread, "")


def choose_bid(bids: list[Bid], spread: str | None, counts: dict[str, int]) -> Bid | None:
    """The bid on the node whose spread bucket holds the fewest replicas; then the best score."""
    if not bids:
        return None
    return min(bids, key=lambda b: (counts.get(bid_bucket(b, spread), 0), -b.score, b.node_id))


# -- the planner ------------------------------------------------------------------------------


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
            rollouts.append(_plan_workload(record, workload, by_slot.get(slot, []), draining_nodes,
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


def _is_ready(replica: Replica, workload: AppWorkload) -> bool:
    """Running, listed, and healthy when the workload has a check."""
    if replica.pending or replica.state != WorkloadState.RUNNING:
        return False
    if workload.health is None:
        return replica.health != Health.UNHEALTHY
    return replica.health == Health.HEALTHY


def _stop_preference(replica: Replica, workload: AppWorkload, revision: str) -> tuple:
    """Sort key: the replica to stop first comes first."""
    return (replica.revision == revision, _is_ready(replica, workload), not replica.returned,
            -replica.started, replica.id)


def _stop(result: Plan, memory: FleetMemory, replica: Replica, reason: str, now: float) -> None:
    memory.stopping[replica.id] = now
    memory.pending.pop(replica.id, None)
    result.stops.append(Stop(replica.id, replica.node_id, replica.namespace, replica.app, replica.name, reason))


def _plan_workload(record: AppRecord, workload: AppWorkload, replicas: list[Replica],
                   draining_nodes: tuple[str, ...], memory: FleetMemory, now: float, settings: Settings,
                   result: Plan) -> WorkloadRollout:
    spec = record.spec
    namespace, app = spec.namespace, spec.name
    slot = (namespace, app, workload.name)
    revision = workload.revision()
    wanted = workload.replicas
    history = memory.history.setdefault(slot, SlotHistory())
    if memory.failed_revision.get(slot) not in (None, revision):
        del memory.failed_revision[slot]

    live = [r for r in replicas if r.live]
    ended = [r for r in replicas if r.ended]
    old_live = [r for r in live if r.revision != revision and not r.draining]
    memo = memory.rollouts.get(slot)
    if memo is not None and memo.revision != revision:
        memo = None
        del memory.rollouts[slot]
    if memo is None and old_live:
        memo = memory.rollouts[slot] = RolloutMemo(revision, now)
        memory.note((namespace, app), f"rolling {workload.name} to {revision}")
    rolling = memo is not None

    def failure(r: Replica) -> bool:
        if r.live:
            return r.health == Health.UNHEALTHY
        if r.succeeded:
            return workload.lifecycle != Lifecycle.JOB and workload.restart.policy == RestartPolicyKind.ALWAYS
        return True

    # Ended replicas of another template are only in the way.
    for replica in ended:
        if replica.revision != revision:
            _stop(result, memory, replica, "ended replica of an older template", now)

    current = [r for r in replicas if r.revision == revision and r.id not in memory.stopping]
    state, message = RolloutState.STABLE, None

    def failed_update(r: Replica) -> bool:
        # During an update even a clean exit of a new service replica is a failure: it should run.
        return failure(r) or (r.ended and workload.lifecycle != Lifecycle.JOB)

    # A rollout fails when a new replica fails or is not ready by the deadline.
    if rolling and memory.failed_revision.get(slot) != revision:
        late = [r for r in current if r.live and not _is_ready(r, workload)
                and now - r.started > workload.update.health_deadline]
        bad = [r for r in current if failed_update(r)] + late
        if bad:
            reason = bad[0].failure_text("was not healthy within the deadline" if bad[0] in late else "failed")
            history.last_failure_reason = reason
            previous = record.previous.workload(workload.name) if record.previous is not None else None
            if workload.update.auto_rollback and previous is not None and previous.revision() != revision:
                result.rollbacks.append(Rollback(namespace, app, record.version, reason))
                return WorkloadRollout(name=workload.name, revision=revision, state=RolloutState.ROLLING,
                                       message=f"rolling back: {reason}", restarts=history.restarts,
                                       last_failure=history.last_failure_reason)
            memory.failed_revision[slot] = revision
            memory.note((namespace, app), f"update of {workload.name} to {revision} failed: {reason}")
    if memory.failed_revision.get(slot) == revision:
        for replica in current:
            if failed_update(replica) or (replica.live and not _is_ready(replica, workload)):
                _stop(result, memory, replica, "replica of a failed update", now)
        why = "auto_rollback is off" if not workload.update.auto_rollback else "there is no previous spec"
        return WorkloadRollout(name=workload.name, revision=revision, state=RolloutState.FAILED,
                               message=f"the update to {revision} failed and {why}: the old replicas keep "
                               "running until a new spec is applied", restarts=history.restarts,
                               last_failure=history.last_failure_reason)

    # Failures of the current template: restart per policy, with backoff.
    done: list[Replica] = []
    gave_up = False
    for replica in current:
        if not failure(replica):
            if replica.ended:
                done.append(replica)  # a job that finished, or an exit the policy does not restart
            continue
        if workload.restart.policy == RestartPolicyKind.NEVER:
            if replica.ended:
                done.append(replica)  # listed as it ended; an unhealthy one keeps running
            continue
        if history.failures_in_row >= workload.restart.max_retries:
            gave_up = True
            if replica.ended:
                done.append(replica)
            continue
        history.failures_in_row += 1
        history.restarts += 1
        history.last_failure = now
        history.last_failure_reason = replica.failure_text()
        history.retry_at = now + backoff_delay(workload.restart.backoff, workload.restart.max_backoff,
                                               history.failures_in_row)
        _stop(result, memory, replica, "failed: restarting", now)
        memory.note((namespace, app), f"{replica.failure_text()}; restart {history.failures_in_row} in a row")
    current = [r for r in current if r.id not in memory.stopping]
    serving = [r for r in current if r.live and not r.draining]
    ready_current = [r for r in serving if _is_ready(r, workload)]
    if (history.failures_in_row and not gave_up and now - history.last_failure > settings.stable_after_s
            and any(now - r.started > settings.stable_after_s for r in ready_current)):
        history.failures_in_row = 0

    draining = [r for r in live if r.draining and r.id not in memory.stopping]
    old_live = [r for r in old_live if r.id not in memory.stopping]
    if workload.lifecycle == Lifecycle.JOB:
        # A finished job stays done even once its node forgets it (pushed out, or the node restarted).
        finished = memory.jobs_done.setdefault(slot, {})
        for replica in done:
            if replica.succeeded:
                finished[replica.id] = revision
        for workload_id in [i for i, r in finished.items() if r != revision]:
            del finished[workload_id]
        occupied = len(serving) + len({r.id for r in done} | set(finished))
    else:
        occupied = len(serving) + len(done)

    # A function must keep answering through its update: one new replica always runs before an
    # old one stops, whatever the strategy says (a second copy of a function costs little).
    is_function = workload.lifecycle == Lifecycle.FUNCTION
    surge = max(workload.update.max_surge, 1) if is_function else workload.update.max_surge
    floor = wanted - workload.update.max_unavailable
    if is_function and wanted > 0:
        floor = max(floor, 1)

    # Place what is missing, within the surge while old replicas remain.
    missing = wanted - occupied
    if old_live:
        missing = min(missing, wanted + surge - len(serving) - len(old_live))
    if missing > 0 and now < history.retry_at:
        message = f"restart in {history.retry_at - now:.1f}s (backoff)"
        missing = 0
    if missing > 0 and gave_up:
        missing = 0
    if missing > 0 and slot in memory.unplaceable:
        message = f"{missing} replica(s) not placed: {memory.unplaceable[slot]}"
    elif missing <= 0:
        memory.unplaceable.pop(slot, None)
    counts: dict[str, int] = {}
    for replica in serving + old_live:
        bucket = replica_bucket(replica, workload.placement.spread)
        counts[bucket] = counts.get(bucket, 0) + 1
    result.spread_counts[slot] = counts
    for _ in range(max(0, missing)):
        result.places.append(Place(namespace, app, workload, revision, dict(workload.placement.tags),
                                   workload.placement.spread, draining_nodes,
                                   "replacing a draining replica" if draining else "below the desired count"))

    # Stop extras of the current template (scale down, a node that came back).
    extra = occupied - wanted
    if extra > 0:
        candidates = sorted((r for r in serving), key=lambda r: _stop_preference(r, workload, revision))
        for replica in candidates[:extra]:
            _stop(result, memory, replica, "more replicas than desired", now)
            serving.remove(replica)
            if replica in ready_current:
                ready_current.remove(replica)

    # Stop old-template replicas while keeping enough ready ones.
    ready_old = [r for r in old_live if _is_ready(r, workload)]
    stoppable = len(ready_current) + len(ready_old) - floor
    for replica in sorted(old_live, key=lambda r: _stop_preference(r, workload, revision)):
        if _is_ready(replica, workload):
            if stoppable <= 0:
                continue
            stoppable -= 1
        _stop(result, memory, replica, "replaced by the new template", now)

    # Draining replicas go once their replacements are ready.
    ready_elsewhere = len([r for r in ready_current if r.id not in memory.stopping]) + len(
        [r for r in ready_old if r.id not in memory.stopping])
    allowed = ready_elsewhere + len(draining) - wanted
    for replica in sorted(draining, key=lambda r: _stop_preference(r, workload, revision))[:max(0, allowed)]:
        _stop(result, memory, replica, "its node is in lame duck", now)

    # Rollout progress.
    if rolling:
        remaining_old = [r for r in old_live if r.id not in memory.stopping]
        if not remaining_old and len(ready_current) >= wanted:
            del memory.rollouts[slot]
            rolling = False
            memory.note((namespace, app), f"{workload.name} now runs {revision}")
            result.announcements.append(Announce(namespace, EventType.ROLLOUT_COMPLETED, {
                "app": app, "workload": workload.name, "revision": revision, "version": record.version}))
    outcome = memory.outcome.get(slot)
    if outcome is not None and outcome[0] == record.version:
        state, message = outcome[1], outcome[2]
    elif rolling:
        state = RolloutState.ROLLING
        message = message or f"{len(ready_current)}/{wanted} ready on {revision}, {len(old_live)} old"
    if gave_up:
        message = f"gave up after {history.failures_in_row} restarts in a row"
    return WorkloadRollout(name=workload.name, revision=revision, state=state, message=message,
                           restarts=history.restarts, last_failure=history.last_failure_reason)


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
                _stop(result, memory, replica, "its app or workload was deleted", now)


def _forget_apps(memory: FleetMemory, keep: set[AppKey]) -> None:
    for table in (memory.history, memory.rollouts, memory.failed_revision, memory.unplaceable, memory.jobs_done,
                  memory.outcome):
        for slot in [s for s in table if (s[0], s[1]) not in keep]:
            del table[slot]
    for key in [k for k in memory.events if k not in keep]:
        del memory.events[key]
    memory.known_apps &= keep
