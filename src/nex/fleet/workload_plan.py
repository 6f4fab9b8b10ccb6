"""One workload's part of a reconcile pass (:func:`plan_workload`), in named steps.

Pure, like the planner that calls it (:mod:`nex.fleet.planner`). The steps run in order, each
deciding one thing: whether an update rolls and whether it failed, which failed replicas
restart, how many replicas are missing and where they go, which extras, old-template and
draining replicas stop, and what the app's status says of the workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nex.api.apps import AppRecord, AppWorkload, RestartPolicyKind, RolloutState, WorkloadRollout
from nex.api.events import EventType
from nex.api.models import Health, Lifecycle
from nex.fleet.plans import (
    Announce, FleetMemory, Place, Plan, Replica, Rollback, RolloutMemo, Settings, SlotHistory, SlotKey,
    backoff_delay, is_ready, replica_bucket, stop, stop_preference,
)


def plan_workload(record: AppRecord, workload: AppWorkload, replicas: list[Replica],
                  draining_nodes: tuple[str, ...], memory: FleetMemory, now: float, settings: Settings,
                  result: Plan) -> WorkloadRollout:
    """One workload's share of the pass, in steps that each decide one thing; returns its rollout."""
    step = _WorkloadPass(record, workload, memory, now, settings, result)
    _forget_failure_of_another_template(step)
    live = [r for r in replicas if r.live]
    old_live = [r for r in live if r.revision != step.revision and not r.draining]
    rolling = _is_rolling(step, old_live)
    _stop_ended_of_another_template(step, replicas)
    current = [r for r in replicas if r.revision == step.revision and r.id not in memory.stopping]

    if rolling and memory.failed_revision.get(step.slot) != step.revision:
        rolling_back = _judge_update(step, current)
        if rolling_back is not None:
            return rolling_back
    if memory.failed_revision.get(step.slot) == step.revision:
        return _hold_failed_update(step, current)

    done, gave_up = _restart_failures(step, current)
    current = [r for r in current if r.id not in memory.stopping]
    serving = [r for r in current if r.live and not r.draining]
    ready_current = [r for r in serving if is_ready(r, workload)]
    _reset_failures_once_stable(step, ready_current, gave_up)

    draining = [r for r in live if r.draining and r.id not in memory.stopping]
    old_live = [r for r in old_live if r.id not in memory.stopping]
    occupied = _occupied(step, serving, done)
    message = _place_missing(step, occupied, serving, old_live, bool(draining), draining_nodes, gave_up)
    _stop_extras(step, occupied, serving, ready_current)
    ready_old = _replace_old_template(step, old_live, ready_current)
    _release_draining(step, draining, ready_current, ready_old)
    if rolling and _rollout_done(step, old_live, ready_current):
        rolling = False
    return _rollout_status(step, rolling, message, gave_up, ready_current, old_live)


@dataclass
class _WorkloadPass:
    """What every step of :func:`plan_workload` reads: the workload, its slot, its history, the
    plan being made."""

    record: AppRecord
    workload: AppWorkload
    memory: FleetMemory
    now: float
    settings: Settings
    result: Plan
    revision: str = ""
    history: SlotHistory = field(default_factory=SlotHistory)

    def __post_init__(self) -> None:
        self.revision = self.workload.revision()
        self.history = self.memory.history.setdefault(self.slot, SlotHistory())

    @property
    def namespace(self) -> str:
        return self.record.spec.namespace

    @property
    def app(self) -> str:
        return self.record.spec.name

    @property
    def slot(self) -> SlotKey:
        return (self.namespace, self.app, self.workload.name)

    def stop(self, replica: Replica, reason: str) -> None:
        stop(self.result, self.memory, replica, reason, self.now)

    def note(self, text: str) -> None:
        self.memory.note((self.namespace, self.app), text)

    def stop_order(self, replica: Replica) -> tuple:
        return stop_preference(replica, self.workload, self.revision)

    def rollout(self, state: RolloutState, message: str | None) -> WorkloadRollout:
        return WorkloadRollout(name=self.workload.name, revision=self.revision, state=state, message=message,
                               restarts=self.history.restarts, last_failure=self.history.last_failure_reason)


def _is_failure(replica: Replica, workload: AppWorkload) -> bool:
    """Unhealthy while live; ended, unless a clean exit the restart policy does not restart."""
    if replica.live:
        return replica.health == Health.UNHEALTHY
    if replica.succeeded:
        return workload.lifecycle != Lifecycle.JOB and workload.restart.policy == RestartPolicyKind.ALWAYS
    return True


def _is_failed_update(replica: Replica, workload: AppWorkload) -> bool:
    # During an update even a clean exit of a new service replica is a failure: it should run.
    return _is_failure(replica, workload) or (replica.ended and workload.lifecycle != Lifecycle.JOB)


def _forget_failure_of_another_template(step: _WorkloadPass) -> None:
    """A failed update is remembered only until the template changes again."""
    if step.memory.failed_revision.get(step.slot) not in (None, step.revision):
        del step.memory.failed_revision[step.slot]


def _is_rolling(step: _WorkloadPass, old_live: list[Replica]) -> bool:
    """Whether an update to the current template is rolling: one remembered for this template, or
    one that starts now because replicas of another template still run."""
    memory, slot = step.memory, step.slot
    memo = memory.rollouts.get(slot)
    if memo is not None and memo.revision != step.revision:
        memo = None
        del memory.rollouts[slot]
    if memo is None and old_live:
        memo = memory.rollouts[slot] = RolloutMemo(step.revision, step.now)
        step.note(f"rolling {step.workload.name} to {step.revision}")
    return memo is not None


def _stop_ended_of_another_template(step: _WorkloadPass, replicas: list[Replica]) -> None:
    """Ended replicas of another template are only in the way."""
    for replica in replicas:
        if replica.ended and replica.revision != step.revision:
            step.stop(replica, "ended replica of an older template")


def _judge_update(step: _WorkloadPass, current: list[Replica]) -> WorkloadRollout | None:
    """A rolling update fails when a new replica fails or is not ready by the deadline. Then it is
    rolled back when it can be (the rollout returned says so), else its template is remembered
    as failed; None while it goes well, or once it is marked failed."""
    workload, now = step.workload, step.now
    late = [r for r in current if r.live and not is_ready(r, workload)
            and now - r.started > workload.update.health_deadline]
    bad = [r for r in current if _is_failed_update(r, workload)] + late
    if not bad:
        return None
    reason = bad[0].failure_text("was not healthy within the deadline" if bad[0] in late else "failed")
    step.history.last_failure_reason = reason
    record = step.record
    previous = record.previous.workload(workload.name) if record.previous is not None else None
    if workload.update.auto_rollback and previous is not None and previous.revision() != step.revision:
        step.result.rollbacks.append(Rollback(step.namespace, step.app, record.version, reason))
        return step.rollout(RolloutState.ROLLING, f"rolling back: {reason}")
    step.memory.failed_revision[step.slot] = step.revision
    step.note(f"update of {workload.name} to {step.revision} failed: {reason}")
    return None


def _hold_failed_update(step: _WorkloadPass, current: list[Replica]) -> WorkloadRollout:
    """A failed update that is not rolled back: its bad replicas stop, the old ones keep running."""
    workload = step.workload
    for replica in current:
        if _is_failed_update(replica, workload) or (replica.live and not is_ready(replica, workload)):
            step.stop(replica, "replica of a failed update")
    why = "auto_rollback is off" if not workload.update.auto_rollback else "there is no previous spec"
    return step.rollout(RolloutState.FAILED, f"the update to {step.revision} failed and {why}: the old replicas "
                        "keep running until a new spec is applied")


def _restart_failures(step: _WorkloadPass, current: list[Replica]) -> tuple[list[Replica], bool]:
    """Failures of the current template restart per the policy, with backoff. Returns the replicas
    that ended for good (a finished job, an exit not restarted), and whether restarts gave up."""
    workload, history, now = step.workload, step.history, step.now
    done: list[Replica] = []
    gave_up = False
    for replica in current:
        if not _is_failure(replica, workload):
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
        step.stop(replica, "failed: restarting")
        step.note(f"{replica.failure_text()}; restart {history.failures_in_row} in a row")
    return done, gave_up


def _reset_failures_once_stable(step: _WorkloadPass, ready_current: list[Replica], gave_up: bool) -> None:
    """A replica ready for ``stable_after_s`` since the last failure ends the failures in a row."""
    history, now, stable_after_s = step.history, step.now, step.settings.stable_after_s
    if (history.failures_in_row and not gave_up and now - history.last_failure > stable_after_s
            and any(now - r.started > stable_after_s for r in ready_current)):
        history.failures_in_row = 0


def _occupied(step: _WorkloadPass, serving: list[Replica], done: list[Replica]) -> int:
    """How many of the desired replicas are taken: those serving and those done."""
    if step.workload.lifecycle != Lifecycle.JOB:
        return len(serving) + len(done)
    # A finished job stays done even once its node forgets it (pushed out, or the node restarted).
    finished = step.memory.jobs_done.setdefault(step.slot, {})
    for replica in done:
        if replica.succeeded:
            finished[replica.id] = step.revision
    for workload_id in [i for i, r in finished.items() if r != step.revision]:
        del finished[workload_id]
    return len(serving) + len({r.id for r in done} | set(finished))


def _surge(workload: AppWorkload) -> int:
    """How many replicas beyond the desired count an update may run. A function must keep answering
    through its update: one new replica always runs before an old one stops, whatever the strategy
    says (a second copy of a function costs little)."""
    if workload.lifecycle == Lifecycle.FUNCTION:
        return max(workload.update.max_surge, 1)
    return workload.update.max_surge


def _ready_floor(workload: AppWorkload) -> int:
    """How few ready replicas an update may leave (one at least for a function, as for :func:`_surge`)."""
    floor = workload.replicas - workload.update.max_unavailable
    if workload.lifecycle == Lifecycle.FUNCTION and workload.replicas > 0:
        floor = max(floor, 1)
    return floor


def _place_missing(step: _WorkloadPass, occupied: int, serving: list[Replica], old_live: list[Replica],
                   replacing_draining: bool, draining_nodes: tuple[str, ...], gave_up: bool) -> str | None:
    """Place what is missing, within the surge while old replicas remain; nothing during a restart's
    backoff or once restarts gave up. Records the spread the placements start from. Returns what the
    status says of the replicas not placed, if anything."""
    workload, memory, slot, now = step.workload, step.memory, step.slot, step.now
    history = step.history
    wanted = workload.replicas
    message = None
    missing = wanted - occupied
    if old_live:
        missing = min(missing, wanted + _surge(workload) - len(serving) - len(old_live))
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
    step.result.spread_counts[slot] = counts
    for _ in range(max(0, missing)):
        step.result.places.append(Place(
            step.namespace, step.app, workload, step.revision, dict(workload.placement.tags),
            workload.placement.spread, draining_nodes,
            "replacing a draining replica" if replacing_draining else "below the desired count"))
    return message


def _stop_extras(step: _WorkloadPass, occupied: int, serving: list[Replica], ready_current: list[Replica]) -> None:
    """Stop extras of the current template (a scale down, a node that came back); they leave
    ``serving`` and ``ready_current``."""
    extra = occupied - step.workload.replicas
    if extra <= 0:
        return
    for replica in sorted(serving, key=step.stop_order)[:extra]:
        step.stop(replica, "more replicas than desired")
        serving.remove(replica)
        if replica in ready_current:
            ready_current.remove(replica)


def _replace_old_template(step: _WorkloadPass, old_live: list[Replica], ready_current: list[Replica]) -> list[Replica]:
    """Stop replicas of the old template while enough ready ones remain; returns the old ready ones."""
    workload = step.workload
    ready_old = [r for r in old_live if is_ready(r, workload)]
    stoppable = len(ready_current) + len(ready_old) - _ready_floor(workload)
    for replica in sorted(old_live, key=step.stop_order):
        if is_ready(replica, workload):
            if stoppable <= 0:
                continue
            stoppable -= 1
        step.stop(replica, "replaced by the new template")
    return ready_old


def _release_draining(step: _WorkloadPass, draining: list[Replica], ready_current: list[Replica],
                      ready_old: list[Replica]) -> None:
    """Replicas on nodes in lame duck go once their replacements are ready."""
    stopping = step.memory.stopping
    ready_elsewhere = len([r for r in ready_current if r.id not in stopping]) + len(
        [r for r in ready_old if r.id not in stopping])
    allowed = ready_elsewhere + len(draining) - step.workload.replicas
    for replica in sorted(draining, key=step.stop_order)[:max(0, allowed)]:
        step.stop(replica, "its node is in lame duck")


def _rollout_done(step: _WorkloadPass, old_live: list[Replica], ready_current: list[Replica]) -> bool:
    """Whether the rolling update has ended: no old replica left, every new one ready. Announces it."""
    remaining_old = [r for r in old_live if r.id not in step.memory.stopping]
    if remaining_old or len(ready_current) < step.workload.replicas:
        return False
    del step.memory.rollouts[step.slot]
    step.note(f"{step.workload.name} now runs {step.revision}")
    step.result.announcements.append(Announce(step.namespace, EventType.ROLLOUT_COMPLETED, {
        "app": step.app, "workload": step.workload.name, "revision": step.revision, "version": step.record.version}))
    return True


def _rollout_status(step: _WorkloadPass, rolling: bool, message: str | None, gave_up: bool,
                    ready_current: list[Replica], old_live: list[Replica]) -> WorkloadRollout:
    """The workload's rollout as the app's status shows it."""
    state = RolloutState.STABLE
    outcome = step.memory.outcome.get(step.slot)
    if outcome is not None and outcome[0] == step.record.version:
        state, message = outcome[1], outcome[2]
    elif rolling:
        state = RolloutState.ROLLING
        message = message or f"{len(ready_current)}/{step.workload.replicas} ready on {step.revision}, {len(old_live)} old"
    if gave_up:
        message = f"gave up after {step.history.failures_in_row} restarts in a row"
    return step.rollout(state, message)
