"""The reconciler's planner: pure decisions from app records, node records and memory."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest

from nex.api.apps import AppRecord, AppSpec, RolloutState
from nex.api.events import EventType
from nex.api.models import AppRef, Bid, Health, NodePing, NodeState, Resources, WorkloadState
from nex.api.records import NodeRecord, ReplicaRecord
from nex.fleet.planner import (
    FleetMemory, PendingReplica, Settings, backoff_delay, plan,
)
from nex.placement.scoring import choose_bid

SHA = "0" * 64
NOW = 1_000_000.0
_ids = itertools.count()


def spec(replicas: int = 3, argv: list[str] | None = None, name: str = "shop", **workload) -> AppSpec:
    return AppSpec.model_validate({"name": name, "workloads": [{
        "name": "ticker", "type": "native", "artifact": {"uri": "nats://NEXCLIFILES/ticker", "sha256": SHA},
        "argv": argv or [], "replicas": replicas, **workload}]})


def record(app: AppSpec, version: int = 1, previous: AppSpec | None = None) -> AppRecord:
    return AppRecord(spec=app, version=version, applied_at=datetime.now(timezone.utc), previous=previous)


def replica(app: AppSpec, state: str = "running", health: str | None = "healthy", started: float = NOW - 100,
            exit_code: int | None = None, revision: str | None = None, rid: str | None = None,
            workload: str | None = None) -> ReplicaRecord:
    """A replica of ``workload`` of the app (its first by default)."""
    workload = app.workload(workload) if workload else app.workloads[0]
    return ReplicaRecord(
        id=rid or f"w{next(_ids)}", name=workload.name, namespace=app.namespace, type=workload.type,
        lifecycle=workload.lifecycle, state=WorkloadState(state), health=Health(health) if health else None,
        app=AppRef(name=app.name, revision=revision or workload.revision()),
        started_at=datetime.fromtimestamp(started, timezone.utc), exit_code=exit_code)


def node(node_id: str, replicas: list[ReplicaRecord] = (), zone: str = "a", state: str = "running") -> NodeRecord:
    return NodeRecord(
        node=NodePing(node_id=node_id, name=node_id, version="0", api_version="1", uptime_s=1,
                      state=NodeState(state), tags={"zone": zone}, workload_count=len(replicas)),
        resources=Resources(cpus=2, memory_bytes=1 << 30, memory_available_bytes=1 << 29, load_1m=0),
        runtimes=["native"], workloads=list(replicas), seq=1)


def bid(node_id: str, zone: str, score: float = 1.0) -> Bid:
    return Bid(bid_id=f"{node_id}.b", node_id=node_id, name=node_id, tags={"zone": zone}, score=score,
               expires_in_ms=1000, resources=Resources(cpus=2, memory_bytes=1, memory_available_bytes=1, load_1m=0),
               workload_count=0)


def three_nodes(*replicas_per_node: list[ReplicaRecord]) -> list[NodeRecord]:
    return [node(f"N{i}", list(r), zone="abc"[i]) for i, r in enumerate(replicas_per_node)]


# -- scaling ---------------------------------------------------------------------------------


def test_an_app_with_no_replicas_gets_all_of_them_placed():
    app = spec(replicas=3, placement={"tags": {"zone": "a"}, "spread": "zone"})
    result = plan([record(app)], three_nodes([], [], []), FleetMemory(), NOW)
    assert len(result.places) == 3
    place = result.places[0]
    assert (place.namespace, place.app, place.revision) == ("default", "shop", app.workloads[0].revision())
    assert place.tags == {"zone": "a"} and place.spread == "zone"
    assert not result.stops
    version, rollouts = result.rollouts[("default", "shop")]
    assert version == 1 and rollouts[0].state == RolloutState.STABLE


def test_the_desired_count_running_means_nothing_to_do():
    app = spec(replicas=2)
    result = plan([record(app)], three_nodes([replica(app)], [replica(app)], []), FleetMemory(), NOW)
    assert not result.places and not result.stops and not result.rollbacks


def test_scale_down_stops_the_newest_extras():
    app = spec(replicas=1)
    old, newer, newest = (replica(app, started=NOW - t) for t in (300, 200, 100))
    result = plan([record(app)], three_nodes([old], [newer], [newest]), FleetMemory(), NOW)
    assert {s.workload_id for s in result.stops} == {newer.id, newest.id}
    assert not result.places


def test_scale_down_prefers_unhealthy_replicas():
    app = spec(replicas=1, health={"tcp": 8080}, restart={"policy": "never"})
    healthy, unknown = replica(app, started=NOW - 300), replica(app, health="unknown", started=NOW - 400)
    result = plan([record(app)], three_nodes([healthy], [unknown], []), FleetMemory(), NOW)
    assert [s.workload_id for s in result.stops] == [unknown.id]


def test_scale_to_zero_stops_everything():
    app = spec(replicas=0)
    replicas = [replica(app), replica(app)]
    result = plan([record(app)], three_nodes(replicas, [], []), FleetMemory(), NOW)
    assert {s.workload_id for s in result.stops} == {r.id for r in replicas}


def test_placed_replicas_count_until_the_registry_lists_them():
    app = spec(replicas=2)
    memory = FleetMemory()
    first = plan([record(app)], three_nodes([], [], []), memory, NOW)
    assert len(first.places) == 2
    for i, place in enumerate(first.places):
        memory.placed(PendingReplica(f"p{i}", f"N{i}", "default", "shop", "ticker", place.revision, NOW))
    again = plan([record(app)], three_nodes([], [], []), memory, NOW + 1)
    assert not again.places and not again.stops
    expired = plan([record(app)], three_nodes([], [], []), memory, NOW + 60)
    assert len(expired.places) == 2  # they never showed up: place again


def test_a_pending_replica_on_a_node_that_vanished_does_not_count():
    app = spec(replicas=1)
    memory = FleetMemory()
    memory.placed(PendingReplica("p0", "GONE", "default", "shop", "ticker", app.workloads[0].revision(), NOW))
    result = plan([record(app)], three_nodes([], [], []), memory, NOW + 1)
    assert len(result.places) == 1


def test_stopped_replicas_do_not_count_while_their_stop_is_under_way():
    app = spec(replicas=1)
    memory = FleetMemory()
    a, b = replica(app, started=NOW - 10), replica(app, started=NOW - 20)
    nodes = three_nodes([a], [b], [])
    first = plan([record(app)], nodes, memory, NOW)
    assert [s.workload_id for s in first.stops] == [a.id]
    second = plan([record(app)], nodes, memory, NOW + 1)  # the registry still lists it
    assert not second.stops and not second.places


# -- spread ----------------------------------------------------------------------------------


def test_choose_bid_takes_the_zone_with_the_fewest_replicas():
    bids = [bid("N0", "a", score=9), bid("N1", "b", score=1), bid("N2", "c", score=5)]
    assert choose_bid(bids, "zone", {"a": 1, "b": 1}).node_id == "N2"
    assert choose_bid(bids, "zone", {"a": 1, "b": 1, "c": 1}).node_id == "N0"  # a tie: the best score
    assert choose_bid(bids, None, {"node:N0": 2}).node_id == "N2"
    assert choose_bid([], "zone", {}) is None


def test_spread_counts_what_runs_in_each_zone():
    app = spec(replicas=3, placement={"spread": "zone"})
    result = plan([record(app)], three_nodes([replica(app)], [replica(app)], []), FleetMemory(), NOW)
    assert len(result.places) == 1
    counts = result.spread_counts[("default", "shop", "ticker")]
    assert counts == {"a": 1, "b": 1}
    bids = [bid("N0", "a"), bid("N1", "b"), bid("N2", "c")]
    assert choose_bid(bids, "zone", counts).node_id == "N2"


# -- lame duck -------------------------------------------------------------------------------


def test_replicas_on_a_lame_duck_node_are_replaced_elsewhere_before_they_stop():
    app = spec(replicas=2)
    draining = replica(app)
    nodes = [node("N0", [draining], state="lameduck"), node("N1", [replica(app)], zone="b"), node("N2", zone="c")]
    memory = FleetMemory()
    first = plan([record(app)], nodes, memory, NOW)
    assert len(first.places) == 1 and first.places[0].exclude_nodes == ("N0",)
    assert not first.stops  # the replacement is not running yet
    replacement = replica(app)
    nodes[2] = node("N2", [replacement], zone="c")
    second = plan([record(app)], nodes, memory, NOW + 1)
    assert [s.workload_id for s in second.stops] == [draining.id] and not second.places


def test_a_draining_replica_waits_for_its_replacement_to_be_healthy():
    app = spec(replicas=1, health={"tcp": 8080})
    draining, replacement = replica(app), replica(app, health="unknown", started=NOW - 1)
    nodes = [node("N0", [draining], state="lameduck"), node("N1", [replacement], zone="b")]
    result = plan([record(app)], nodes, FleetMemory(), NOW)
    assert not result.stops and not result.places


# -- node loss and return --------------------------------------------------------------------


def test_a_lost_node_has_its_replicas_placed_again_and_counted_as_restarts():
    app = spec(replicas=3)
    r0, r1, r2 = replica(app), replica(app), replica(app)
    memory = FleetMemory()
    assert not plan([record(app)], three_nodes([r0], [r1], [r2]), memory, NOW).places
    result = plan([record(app)], three_nodes([r0], [r1]), memory, NOW + 10)
    assert len(result.places) == 1
    assert result.rollouts[("default", "shop")][1][0].restarts == 1


def test_a_node_that_comes_back_has_its_stale_replicas_stopped_not_doubled():
    app = spec(replicas=2)
    stale = replica(app, started=NOW - 500)
    memory = FleetMemory()
    plan([record(app)], three_nodes([replica(app)], [], [stale]), memory, NOW)
    plan([record(app)], three_nodes([replica(app)], []), memory, NOW + 10)  # N2 gone
    nodes = three_nodes([replica(app)], [replica(app, started=NOW + 11)], [stale])  # replaced; N2 back
    result = plan([record(app)], nodes, memory, NOW + 20)
    assert [s.workload_id for s in result.stops] == [stale.id]
    assert not result.places


# -- failures, restarts, backoff ---------------------------------------------------------------


def test_a_failed_replica_is_removed_and_restarted_after_the_backoff():
    app = spec(replicas=1, restart={"policy": "on-failure", "backoff": "2s", "max_retries": 5})
    failed = replica(app, state="failed", exit_code=1)
    memory = FleetMemory()
    first = plan([record(app)], three_nodes([failed]), memory, NOW)
    assert [s.workload_id for s in first.stops] == [failed.id]
    assert not first.places  # backoff
    rollout = first.rollouts[("default", "shop")][1][0]
    assert rollout.restarts == 1 and "backoff" in rollout.message
    assert not plan([record(app)], three_nodes([]), memory, NOW + 1).places
    assert len(plan([record(app)], three_nodes([]), memory, NOW + 2.1).places) == 1


def test_backoff_doubles_up_to_the_maximum():
    assert [backoff_delay(1, 5, n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]


def test_restarts_stop_after_max_retries_in_a_row():
    app = spec(replicas=1, restart={"policy": "always", "backoff": "1s", "max_retries": 2})
    memory = FleetMemory()
    now = NOW
    for _ in range(2):
        result = plan([record(app)], three_nodes([replica(app, state="failed", exit_code=1)]), memory, now)
        assert len(result.stops) == 1
        now += 100
    last = replica(app, state="failed", exit_code=1)
    result = plan([record(app)], three_nodes([last]), memory, now)
    assert not result.stops and not result.places
    rollout = result.rollouts[("default", "shop")][1][0]
    assert rollout.restarts == 2 and "gave up" in rollout.message


def test_failures_in_a_row_reset_after_a_replica_ran_healthy():
    app = spec(replicas=1, restart={"policy": "always", "backoff": "1s", "max_retries": 1})
    memory = FleetMemory()
    plan([record(app)], three_nodes([replica(app, state="failed", exit_code=1)]), memory, NOW)
    healthy = replica(app, started=NOW + 2)
    plan([record(app)], three_nodes([healthy]), memory, NOW + 2 + Settings().stable_after_s + 1)
    result = plan([record(app)], three_nodes([replica(app, state="failed", exit_code=1)]), memory, NOW + 100)
    assert len(result.stops) == 1  # restarted again: the earlier failure no longer counts


def test_an_unhealthy_replica_is_restarted():
    app = spec(replicas=1, health={"tcp": 8080}, restart={"backoff": "0s"})
    sick = replica(app, health="unhealthy")
    result = plan([record(app)], three_nodes([sick]), FleetMemory(), NOW)
    assert [s.workload_id for s in result.stops] == [sick.id] and len(result.places) == 1


def test_policy_never_leaves_a_failed_replica_alone():
    app = spec(replicas=1, restart={"policy": "never"})
    result = plan([record(app)], three_nodes([replica(app, state="failed", exit_code=3)]), FleetMemory(), NOW)
    assert not result.stops and not result.places


def test_on_failure_does_not_restart_a_clean_exit_but_always_does():
    clean = {"state": "stopped", "exit_code": 0}
    on_failure = spec(replicas=1, restart={"policy": "on-failure", "backoff": 0})
    result = plan([record(on_failure)], three_nodes([replica(on_failure, **clean)]), FleetMemory(), NOW)
    assert not result.stops and not result.places
    always = spec(replicas=1, restart={"policy": "always", "backoff": 0})
    result = plan([record(always)], three_nodes([replica(always, **clean)]), FleetMemory(), NOW)
    assert len(result.stops) == 1 and len(result.places) == 1


def test_a_job_that_exits_0_is_done():
    app = spec(replicas=1, lifecycle="job", restart={"policy": "always"})
    result = plan([record(app)], three_nodes([replica(app, state="stopped", exit_code=0)]), FleetMemory(), NOW)
    assert not result.stops and not result.places


# -- rolling updates -------------------------------------------------------------------------


def _update(replicas: int, surge: int, unavailable: int, health: dict | None = None):
    update = {"max_surge": surge, "max_unavailable": unavailable, "health_deadline": "30s"}
    v1 = spec(replicas=replicas, argv=["one"], update=update, **({"health": health} if health else {}))
    v2 = spec(replicas=replicas, argv=["two"], update=update, **({"health": health} if health else {}))
    return v1, v2, record(v2, version=2, previous=v1)


def test_a_rolling_update_with_surge_places_first_then_stops_old():
    v1, v2, rec = _update(replicas=2, surge=1, unavailable=0)
    old = [replica(v1), replica(v1)]
    memory = FleetMemory()
    first = plan([rec], three_nodes([old[0]], [old[1]], []), memory, NOW)
    assert len(first.places) == 1 and first.places[0].revision == v2.workloads[0].revision()
    assert not first.stops
    assert first.rollouts[("default", "shop")][1][0].state == RolloutState.ROLLING
    new = replica(v2, started=NOW + 1)
    second = plan([rec], three_nodes([old[0]], [old[1]], [new]), memory, NOW + 2)
    assert len(second.stops) == 1 and second.stops[0].workload_id in {o.id for o in old}
    assert not second.places  # surge is used until the stop is seen
    remaining = next(o for o in old if o.id != second.stops[0].workload_id)
    nodes = [node("N0", [remaining]), node("N2", [new], zone="c")]
    third = plan([rec], nodes, memory, NOW + 3)
    assert len(third.places) == 1 and not third.stops
    newer = replica(v2, started=NOW + 4)
    fourth = plan([rec], [node("N0", [remaining]), node("N1", [newer], zone="b"), node("N2", [new], zone="c")],
                  memory, NOW + 5)
    assert [s.workload_id for s in fourth.stops] == [remaining.id]
    assert [a.type for a in fourth.announcements] == [EventType.ROLLOUT_COMPLETED]  # the last old one goes
    fifth = plan([rec], [node("N1", [newer], zone="b"), node("N2", [new], zone="c")], memory, NOW + 6)
    assert not fifth.places and not fifth.stops and not fifth.announcements
    assert fifth.rollouts[("default", "shop")][1][0].state == RolloutState.STABLE


def test_a_rolling_update_without_surge_stops_first_within_max_unavailable():
    v1, v2, rec = _update(replicas=3, surge=0, unavailable=1)
    old = [replica(v1), replica(v1), replica(v1)]
    memory = FleetMemory()
    first = plan([rec], three_nodes([old[0]], [old[1]], [old[2]]), memory, NOW)
    assert len(first.stops) == 1 and not first.places


def test_a_rolling_update_keeps_enough_ready_replicas():
    v1, v2, rec = _update(replicas=3, surge=1, unavailable=0, health={"tcp": 8080})
    old = [replica(v1), replica(v1), replica(v1)]
    starting = replica(v2, health="unknown", started=NOW - 1)
    result = plan([rec], three_nodes([old[0], starting], [old[1]], [old[2]]), FleetMemory(), NOW)
    assert not result.stops and not result.places  # the new one is not healthy yet, surge used


def test_scaling_alone_replaces_no_replica():
    v1 = spec(replicas=2)
    v2 = spec(replicas=3)
    assert v1.workloads[0].revision() == v2.workloads[0].revision()
    result = plan([record(v2, 2, previous=v1)], three_nodes([replica(v1)], [replica(v1)], []), FleetMemory(), NOW)
    assert len(result.places) == 1 and not result.stops


def test_a_failing_new_replica_triggers_a_rollback_to_the_previous_spec():
    v1, v2, rec = _update(replicas=2, surge=1, unavailable=0)
    failing = replica(v2, state="failed", exit_code=1)
    result = plan([rec], three_nodes([replica(v1)], [replica(v1)], [failing]), FleetMemory(), NOW)
    assert len(result.rollbacks) == 1
    assert (result.rollbacks[0].app, result.rollbacks[0].version) == ("shop", 2)
    assert not result.places


def test_a_new_replica_not_healthy_by_the_deadline_triggers_a_rollback():
    v1, v2, rec = _update(replicas=1, surge=1, unavailable=0, health={"tcp": 8080})
    late = replica(v2, health="unknown", started=NOW - 31)
    result = plan([rec], three_nodes([replica(v1)], [late]), FleetMemory(), NOW)
    assert len(result.rollbacks) == 1 and "deadline" in result.rollbacks[0].reason


def test_after_the_rollback_the_failed_replicas_go_and_the_state_is_rolled_back():
    v1, v2, _ = _update(replicas=1, surge=1, unavailable=0, health={"tcp": 8080})
    memory = FleetMemory()
    rolled = record(v1, version=3)
    memory.rolled_back(("default", "shop"), 3, "replica x failed", ["ticker"])
    old, bad = replica(v1), replica(v2, health="unhealthy")
    result = plan([rolled], three_nodes([old], [bad]), memory, NOW)
    assert [s.workload_id for s in result.stops] == [bad.id]
    rollout = result.rollouts[("default", "shop")][1][0]
    assert rollout.state == RolloutState.ROLLED_BACK and "failed" in rollout.message


def test_without_a_previous_spec_a_failed_update_leaves_the_old_replicas_running():
    v1, v2, _ = _update(replicas=2, surge=1, unavailable=0)
    rec = record(v2, version=2, previous=None)
    old = [replica(v1), replica(v1)]
    failing = replica(v2, state="failed", exit_code=1)
    memory = FleetMemory()
    result = plan([rec], three_nodes([old[0]], [old[1]], [failing]), memory, NOW)
    assert not result.rollbacks
    assert [s.workload_id for s in result.stops] == [failing.id]
    assert result.rollouts[("default", "shop")][1][0].state == RolloutState.FAILED
    later = plan([rec], three_nodes([old[0]], [old[1]], []), memory, NOW + 5)
    assert not later.places and not later.stops
    assert later.rollouts[("default", "shop")][1][0].state == RolloutState.FAILED


# -- deleted apps ----------------------------------------------------------------------------


def test_a_deleted_app_has_its_replicas_stopped_then_its_status_deleted():
    app = spec(replicas=2)
    replicas = [replica(app), replica(app)]
    memory = FleetMemory()
    result = plan([], three_nodes(replicas, [], []), memory, NOW, statuses={("default", "shop")})
    assert {s.workload_id for s in result.stops} == {r.id for r in replicas}
    assert not result.delete_statuses
    done = plan([], three_nodes([], [], []), memory, NOW + 1, statuses={("default", "shop")})
    assert done.delete_statuses == [("default", "shop")]


def test_replicas_of_an_app_the_fleet_never_stored_are_left_alone():
    app = spec(replicas=1)
    result = plan([], three_nodes([replica(app)]), FleetMemory(), NOW, statuses=set())
    assert not result.stops


def test_replicas_of_a_deleted_app_are_stopped_by_a_reconciler_that_saw_it():
    app = spec(replicas=1)
    memory = FleetMemory()
    running = replica(app)
    plan([record(app)], three_nodes([running]), memory, NOW)
    result = plan([], three_nodes([running]), memory, NOW + 1)
    assert [s.workload_id for s in result.stops] == [running.id]


def test_a_removed_workload_of_an_app_has_its_replicas_stopped():
    app = spec(replicas=1)
    other = AppSpec.model_validate({"name": "shop", "workloads": [{
        "name": "other", "type": "native", "artifact": {"uri": "nats://NEXCLIFILES/o", "sha256": SHA}}]})
    running = replica(app)
    result = plan([record(other, 2, previous=app)], three_nodes([running]), FleetMemory(), NOW)
    assert running.id in {s.workload_id for s in result.stops}


def test_workloads_that_are_not_replicas_of_an_app_are_left_alone():
    app = spec(replicas=0)
    plain = replica(app).model_copy(update={"app": None})
    result = plan([], three_nodes([plain]), FleetMemory(), NOW)
    assert not result.stops


@pytest.mark.parametrize("replicas", [0, 1, 5])
def test_the_plan_converges_when_every_action_succeeds(replicas):
    """Apply the plan's actions to a model of the fleet until nothing is left to do."""
    app = spec(replicas=replicas, placement={"spread": "zone"})
    fleet: dict[str, list[ReplicaRecord]] = {"N0": [replica(app)] * 0, "N1": [], "N2": [replica(app)] * 2}
    fleet["N2"] = [replica(app), replica(app)]
    memory = FleetMemory()
    for step in range(10):
        nodes = [node(n, fleet[n], zone="abc"[i]) for i, n in enumerate(sorted(fleet))]
        result = plan([record(app)], nodes, memory, NOW + step * 20)
        if not result.places and not result.stops:
            break
        for stop in result.stops:
            fleet[stop.node_id] = [r for r in fleet[stop.node_id] if r.id != stop.workload_id]
        counts = dict(result.spread_counts[("default", "shop", "ticker")])
        for _ in result.places:
            chosen = choose_bid([bid("N0", "a"), bid("N1", "b"), bid("N2", "c")], "zone", counts)
            counts[chosen.tags["zone"]] = counts.get(chosen.tags["zone"], 0) + 1
            fleet[chosen.node_id].append(replica(app, started=NOW + step * 20))
    else:
        pytest.fail("the plan did not converge")
    assert sum(len(r) for r in fleet.values()) == replicas
    if replicas == 5:
        assert sorted(len(r) for r in fleet.values()) == [1, 2, 2]


def test_a_new_service_replica_that_exits_cleanly_during_an_update_fails_it():
    v1, v2, rec = _update(replicas=1, surge=1, unavailable=0)
    quitter = replica(v2, state="stopped", exit_code=0)
    result = plan([rec], three_nodes([replica(v1)], [quitter]), FleetMemory(), NOW)
    assert len(result.rollbacks) == 1


def test_a_new_reconciler_takes_over_restart_counts_and_outcomes_from_the_status():
    from nex.api.apps import AppStatus, WorkloadRollout

    v1, v2, _ = _update(replicas=1, surge=1, unavailable=0)
    rec = record(v1, version=3)
    status = AppStatus(name="shop", namespace="default", version=3, reconciled_at=datetime.now(timezone.utc),
                       reconciler="N0", events=["rolled back"], workloads=[WorkloadRollout(
                           name="ticker", revision=v1.workloads[0].revision(), state=RolloutState.ROLLED_BACK,
                           message="version 2 rolled back", restarts=4)])
    memory = FleetMemory()
    memory.seed(rec, status)
    result = plan([rec], three_nodes([replica(v1)]), memory, NOW)
    rollout = result.rollouts[("default", "shop")][1][0]
    assert (rollout.state, rollout.message, rollout.restarts) == (RolloutState.ROLLED_BACK, "version 2 rolled back", 4)
    stale = FleetMemory()
    stale.seed(record(v1, version=4), status)  # a newer version was applied since: nothing carries over
    assert not stale.outcome and not stale.history


def test_a_rollback_marks_only_the_workloads_it_changed():
    """An app of two workloads, an update that changes one of them and fails: the other ran on
    untouched, and must not show as rolled back, nor with the other's reason."""
    from nex.fleet.planner import changed_workloads

    def spec(web_argv: str) -> AppSpec:
        return AppSpec.model_validate({"name": "shop", "workloads": [
            {"name": "web", "type": "native", "artifact": {"uri": "nats://NEXCLIFILES/web", "sha256": SHA},
             "argv": [web_argv], "replicas": 1},
            {"name": "worker", "type": "native", "artifact": {"uri": "nats://NEXCLIFILES/worker", "sha256": SHA},
             "replicas": 1}]})
    v1, v2 = spec("serve"), spec("serve-broken")
    assert changed_workloads(v2, v1) == ["web"]

    memory = FleetMemory()
    memory.rolled_back(("default", "shop"), 3, "version 2 rolled back: replica x of web failed", changed_workloads(v2, v1))
    rolled = AppRecord(spec=v1, version=3, applied_at=datetime.now(timezone.utc), rolled_back=True)
    web, worker = (replica(v1, workload=w) for w in ("web", "worker"))
    result = plan([rolled], three_nodes([web], [worker]), memory, NOW)
    states = {r.name: (r.state, r.message) for r in result.rollouts[("default", "shop")][1]}
    assert states["web"] == (RolloutState.ROLLED_BACK, "version 2 rolled back: replica x of web failed")
    assert states["worker"] == (RolloutState.STABLE, None)


def test_a_function_update_starts_a_new_replica_before_stopping_the_old_whatever_the_strategy():
    def fn(text: str) -> AppSpec:
        return AppSpec.model_validate({"name": "greeter", "workloads": [{
            "name": "hello", "type": "javascript", "artifact": {"uri": "nats://NEXCLIFILES/" + text, "sha256": SHA},
            "triggers": [{"subject": "hello"}], "replicas": 1, "update": {"max_surge": 0, "max_unavailable": 1}}]})
    v1, v2 = fn("one"), fn("two")
    old = replica(v1)
    memory = FleetMemory()
    first = plan([record(v2, 2, previous=v1)], three_nodes([old]), memory, NOW)
    assert len(first.places) == 1 and not first.stops
    new = replica(v2, started=NOW + 1)
    second = plan([record(v2, 2, previous=v1)], three_nodes([old], [new]), memory, NOW + 2)
    assert [s.workload_id for s in second.stops] == [old.id]


def test_a_slot_no_node_could_take_says_why():
    app = spec(replicas=2)
    memory = FleetMemory()
    memory.unplaceable[("default", "shop", "ticker")] = "N0: no zone=z"
    result = plan([record(app)], three_nodes([]), memory, NOW)
    assert result.rollouts[("default", "shop")][1][0].message == "2 replica(s) not placed: N0: no zone=z"


def test_a_finished_job_is_not_run_again_when_its_node_forgets_it():
    app = spec(replicas=1, lifecycle="job")
    memory = FleetMemory()
    finished = replica(app, state="stopped", exit_code=0)
    assert not plan([record(app)], three_nodes([finished]), memory, NOW).places
    assert not plan([record(app)], three_nodes([]), memory, NOW + 1).places
    changed = spec(replicas=1, lifecycle="job", argv=["again"])
    assert len(plan([record(changed, 2, previous=app)], three_nodes([]), memory, NOW + 2).places) == 1


def test_a_deleted_apps_status_stays_while_a_stop_of_its_replica_is_under_way():
    app = spec(replicas=1)
    memory = FleetMemory()
    running = replica(app)
    plan([record(app)], three_nodes([running]), memory, NOW, statuses={("default", "shop")})
    first = plan([], three_nodes([running]), memory, NOW + 1, statuses={("default", "shop")})
    assert [s.workload_id for s in first.stops] == [running.id] and not first.delete_statuses
    # The stop did not happen (its node did not answer): still listed, so still the app's.
    waiting = plan([], three_nodes([running]), memory, NOW + 2, statuses={("default", "shop")})
    assert not waiting.delete_statuses
    again = plan([], three_nodes([running]), memory, NOW + 60, statuses={("default", "shop")})
    assert [s.workload_id for s in again.stops] == [running.id]
