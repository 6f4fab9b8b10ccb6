"""The fleet's reconciler on three real nodes sharing one nats-server: apps kept at their desired state."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from helpers import ARTIFACT_ROOTS, eventually, file_artifact, reconciler_passes, ticker
from nex.api.apps import AppSpec, RolloutState
from nex.api.models import WorkloadState
from nex.fleet.store import AppStore
from nex.natsserver import NatsServer
from nex.node.config import NodeConfig
from nex.node.node import Node

ZONES = ("a", "b", "c")


def node_config(server: NatsServer, tmp_path: Path, zone: str) -> NodeConfig:
    return NodeConfig(artifact_roots=ARTIFACT_ROOTS,
        server=server.url, state_dir=tmp_path / f"node-{zone}", name=f"node-{zone}", tags={"zone": zone},
        stop_grace_s=1.0, lameduck_s=10.0, sandbox="none", registry_interval_s=0.5, node_timeout_s=2.0,
        lease_s=2.0, reconcile_interval_s=0.3, fleet_keys=tmp_path / "fleet")


@pytest.fixture
async def fleet(nats_server: NatsServer, tmp_path: Path):
    nodes: list[Node] = []
    for zone in ZONES:
        node = Node(node_config(nats_server, tmp_path, zone))
        await node.start()
        nodes.append(node)
    yield nodes
    for node in nodes:
        if node.nc is not None and not node.nc.is_closed:
            await node.shutdown()


@pytest.fixture
async def store(nc: Client) -> AppStore:
    apps = AppStore(nc)
    await apps.ensure()
    return apps


def app_spec(name: str, workloads: list[dict]) -> AppSpec:
    return AppSpec.model_validate({"name": name, "workloads": workloads})


async def replicas_of(store: AppStore, app: str, name: str, state: WorkloadState | None = WorkloadState.RUNNING):
    """(node name, replica) for each replica of an app's workload the registry lists."""
    found = []
    for node in await store.nodes():
        for replica in node.workloads:
            if replica.app is not None and replica.app.name == app and replica.name == name:
                if state is None or replica.state == state:
                    found.append((node.node.name, replica))
    return found


def leaders(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.reconciler is not None and n.reconciler.leading]


async def test_replicas_are_placed_and_spread_over_the_zones(fleet, store, programs):
    await store.apply(app_spec("shop", [ticker(programs, replicas=3, placement={"spread": "zone"})]), None)

    running = await eventually(lambda: _exactly(store, "shop", "ticker", 3), timeout=20)
    assert sorted(name for name, _ in running) == ["node-a", "node-b", "node-c"]
    status = await eventually(lambda: store.get_status("default", "shop"), timeout=10)
    assert status.version == 1 and status.workloads[0].state == RolloutState.STABLE
    assert status.reconciler in {n.node_id for n in fleet}


async def test_placement_tags_are_respected(fleet, store, programs):
    await store.apply(app_spec("pinned", [ticker(programs, replicas=2, placement={"tags": {"zone": "b"}})]), None)
    running = await eventually(lambda: _exactly(store, "pinned", "ticker", 2), timeout=20)
    assert [name for name, _ in running] == ["node-b", "node-b"]


async def test_a_killed_replica_is_restarted_and_the_restart_counted(fleet, store, programs):
    restart = {"policy": "on-failure", "backoff": "200ms"}
    await store.apply(app_spec("shop", [ticker(programs, replicas=2, restart=restart)]), None)
    running = await eventually(lambda: _exactly(store, "shop", "ticker", 2), timeout=20)
    victim = running[0][1].id
    pid = next(w.stats.get("pid") for n in fleet for w in n.supervisor.table if w.id == victim)
    os.kill(pid, signal.SIGKILL)

    async def replaced():
        now = await _exactly(store, "shop", "ticker", 2)
        listed = {r.id for _, r in await replicas_of(store, "shop", "ticker", state=None)}
        return now and victim not in listed
    await eventually(replaced, timeout=20)
    status = await eventually(lambda: _status_with(store, "shop", lambda s: s.workloads[0].restarts >= 1), timeout=10)
    assert status.workloads[0].restarts == 1


async def test_a_stopped_nodes_replicas_are_placed_on_the_others(fleet, store, programs):
    await store.apply(app_spec("shop", [ticker(programs, replicas=3, placement={"spread": "zone"})]), None)
    await eventually(lambda: _exactly(store, "shop", "ticker", 3), timeout=20)
    gone = fleet[2]
    await gone.shutdown()

    async def moved():
        running = await _exactly(store, "shop", "ticker", 3)
        return running if running and all(name != "node-c" for name, _ in running) else None
    running = await eventually(moved, timeout=20)
    assert sorted(name for name, _ in running) in (["node-a", "node-a", "node-b"], ["node-a", "node-b", "node-b"])
    await reconciler_passes(fleet, 5)  # still exactly three, no doubles
    assert len(await replicas_of(store, "shop", "ticker")) == 3


async def test_one_reconciler_holds_the_lease_and_another_takes_over(fleet, store):
    first = (await eventually(lambda: leaders(fleet), timeout=10))
    assert len(first) == 1
    lease = await store.lease()
    assert lease.holder == first[0].node_id and lease.fleet_xkey and lease.fleet_issuer
    await reconciler_passes(fleet, 4)  # more than a lease renewal (every lease_s / 3)
    assert leaders(fleet) == first  # still one, the same
    await first[0].shutdown()
    others = [n for n in fleet if n is not first[0]]
    successor = await eventually(lambda: leaders(others), timeout=10)
    assert len(successor) == 1
    assert (await eventually(lambda: _lease_held_by(store, successor[0].node_id), timeout=5))


async def test_a_rolling_update_of_a_function_answers_every_call(fleet, store, nc, tmp_path):
    def function(text: str) -> dict:
        script = tmp_path / f"{text}.js"
        script.write_text(f"(subject, payload) => '{text}'")
        return {"name": "hello", "type": "javascript", "artifact": file_artifact(script), "replicas": 2,
                "triggers": [{"subject": "fleet.hello"}], "update": {"max_surge": 1, "max_unavailable": 0}}

    await store.apply(app_spec("greeter", [function("one")]), None)
    await eventually(lambda: _exactly(store, "greeter", "hello", 2), timeout=30)
    replies: list[bytes] = []
    unanswered: list[BaseException] = []
    stop = asyncio.Event()

    async def caller():
        while not stop.is_set():
            try:
                replies.append((await nc.request("fleet.hello", b"", timeout=5)).data)
            except (NoRespondersError, NatsTimeoutError) as exc:
                unanswered.append(exc)
            await asyncio.sleep(0.02)
    calls = asyncio.create_task(caller())
    await eventually(lambda: len(replies) > 5, timeout=10)
    await store.apply(app_spec("greeter", [function("two")]), None)

    async def updated():
        running = await _exactly(store, "greeter", "hello", 2)
        status = await store.get_status("default", "greeter")
        return (running and status and status.version == 2 and status.workloads[0].state == RolloutState.STABLE
                and len({r.app.revision for _, r in running}) == 1)
    await eventually(updated, timeout=40)
    settled = len(replies)
    await eventually(lambda: len(replies) > settled + 10, timeout=10)
    stop.set()
    await calls
    assert not unanswered
    assert set(replies) == {b"one", b"two"}
    assert set(replies[settled:]) == {b"two"}


async def test_an_update_that_fails_its_health_is_rolled_back(fleet, store, programs):
    good = app_spec("shop", [ticker(programs, replicas=2, update={"max_surge": 1, "max_unavailable": 0})])
    await store.apply(good, None)
    running = await eventually(lambda: _exactly(store, "shop", "ticker", 2), timeout=20)
    before = {r.id for _, r in running}
    bad = app_spec("shop", [{"name": "ticker", "type": "native", "artifact": file_artifact(programs["job"]),
                             "argv": ["1"], "replicas": 2, "update": {"max_surge": 1, "max_unavailable": 0}}])
    await store.apply(bad, None)

    status = await eventually(
        lambda: _status_with(store, "shop", lambda s: s.workloads[0].state == RolloutState.ROLLED_BACK), timeout=30)
    assert status.version == 2 and "rolled back" in status.workloads[0].message
    record, _ = await store.get("default", "shop")
    # The version stays: the record keeps the token of version 2, which signs the restored spec too.
    assert record.version == 2 and record.rolled_back and record.previous is None
    assert record.spec.workloads[0].revision() == good.workloads[0].revision()

    async def clean():
        listed = await replicas_of(store, "shop", "ticker", state=None)
        return {r.id for _, r in listed} == before and all(r.state == WorkloadState.RUNNING for _, r in listed)
    await eventually(clean, timeout=20)  # the old replicas never stopped; the failed ones are gone


async def test_scale_to_zero_then_delete(fleet, store, programs):
    await store.apply(app_spec("shop", [ticker(programs, replicas=2)]), None)
    await eventually(lambda: _exactly(store, "shop", "ticker", 2), timeout=20)
    await store.apply(app_spec("shop", [ticker(programs, replicas=0)]), None)
    await eventually(lambda: _none_listed(store, "shop"), timeout=20)
    await store.apply(app_spec("shop", [ticker(programs, replicas=1)]), None)
    await eventually(lambda: _exactly(store, "shop", "ticker", 1), timeout=20)
    await store.delete("default", "shop")
    await eventually(lambda: _none_listed(store, "shop"), timeout=20)

    async def status_gone():
        return await store.get_status("default", "shop") is None
    await eventually(status_gone, timeout=10)


async def _exactly(store: AppStore, app: str, name: str, count: int):
    """The running replicas when there are exactly ``count`` of them and nothing else is listed."""
    running = await replicas_of(store, app, name)
    listed = await replicas_of(store, app, name, state=None)
    return running if len(running) == count and len(listed) == count else None


async def _none_listed(store: AppStore, app: str) -> bool:
    found = []
    for node in await store.nodes():
        found += [r for r in node.workloads if r.app is not None and r.app.name == app]
    return not found


async def _status_with(store: AppStore, app: str, check):
    status = await store.get_status("default", app)
    return status if status is not None and check(status) else None


async def _lease_held_by(store: AppStore, node_id: str) -> bool:
    lease = await store.lease()
    return lease is not None and lease.holder == node_id


async def test_a_lame_duck_node_has_its_replicas_started_elsewhere_first(fleet, store, nc, programs):
    from nex.client import NexClient

    await store.apply(app_spec("shop", [ticker(programs, replicas=3, placement={"spread": "zone"})]), None)
    await eventually(lambda: _exactly(store, "shop", "ticker", 3), timeout=20)
    ducking = fleet[0]
    await NexClient(nc).lameduck(ducking.node_id)

    async def drained():
        running = await _exactly(store, "shop", "ticker", 3)
        return running if running and all(name != "node-a" for name, _ in running) else None
    running = await eventually(drained, timeout=20)
    assert sorted(name for name, _ in running) in (["node-b", "node-b", "node-c"], ["node-b", "node-c", "node-c"])
    record = next(n for n in await store.nodes() if n.node.node_id == ducking.node_id)
    assert record.node.state == "lameduck" and not [r for r in record.workloads if r.app is not None]


async def test_a_node_that_restarts_rejoins_without_doubling_replicas(fleet, store, nats_server, tmp_path, programs):
    await store.apply(app_spec("shop", [ticker(programs, replicas=3, placement={"spread": "zone"})]), None)
    await eventually(lambda: _exactly(store, "shop", "ticker", 3), timeout=20)
    await fleet[2].shutdown()

    async def moved():
        running = await _exactly(store, "shop", "ticker", 3)
        return running if running and all(name != "node-c" for name, _ in running) else None
    await eventually(moved, timeout=20)
    again = Node(node_config(nats_server, tmp_path, "c"))
    await again.start()
    fleet.append(again)
    await eventually(lambda: _registered(store, again.node_id), timeout=10)
    await reconciler_passes(fleet, 6)  # with the node back
    assert await _exactly(store, "shop", "ticker", 3)


async def test_an_update_whose_health_check_fails_is_rolled_back(fleet, store, programs, closed_port):
    update = {"max_surge": 1, "max_unavailable": 0, "health_deadline": "3s"}
    good = app_spec("shop", [ticker(programs, replicas=1, update=update)])
    await store.apply(good, None)
    running = await eventually(lambda: _exactly(store, "shop", "ticker", 1), timeout=20)
    nobody_listens = {"tcp": closed_port.getsockname()[1], "interval_ms": 100, "timeout_ms": 100, "failures": 2}
    await store.apply(app_spec("shop", [ticker(programs, replicas=1, argv=["v2"], health=nobody_listens,
                                               update=update)]), None)

    status = await eventually(
        lambda: _status_with(store, "shop", lambda s: s.workloads[0].state == RolloutState.ROLLED_BACK), timeout=30)
    assert status.version == 2
    # The status says why: the check's own words, not only "replica ... failed".
    port = nobody_listens["tcp"]
    [rollout] = status.workloads
    assert f"port {port}: Connection refused" in rollout.message, rollout.message
    assert rollout.last_failure.endswith(f"was not healthy within the deadline: port {port}: Connection refused") \
        or rollout.last_failure.endswith(f"failed: port {port}: Connection refused"), rollout.last_failure
    await eventually(lambda: _only(store, "shop", "ticker", {running[0][1].id}), timeout=20)


async def test_a_failed_update_without_rollback_leaves_the_old_replicas(fleet, store, programs):
    update = {"max_surge": 1, "max_unavailable": 0, "auto_rollback": False}
    await store.apply(app_spec("shop", [ticker(programs, replicas=2, update=update)]), None)
    running = await eventually(lambda: _exactly(store, "shop", "ticker", 2), timeout=20)
    bad = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["job"]), "argv": ["1"],
           "replicas": 2, "update": update}
    await store.apply(app_spec("shop", [bad]), None)

    status = await eventually(
        lambda: _status_with(store, "shop", lambda s: s.workloads[0].state == RolloutState.FAILED), timeout=30)
    assert status.version == 2
    await eventually(lambda: _only(store, "shop", "ticker", {r.id for _, r in running}), timeout=20)
    record, _ = await store.get("default", "shop")
    assert record.version == 2 and not record.rolled_back  # nothing was written back


async def _only(store: AppStore, app: str, name: str, ids: set[str]) -> bool:
    listed = await replicas_of(store, app, name, state=None)
    return {r.id for _, r in listed} == ids and all(r.state == WorkloadState.RUNNING for _, r in listed)


async def _registered(store: AppStore, node_id: str) -> bool:
    return any(n.node.node_id == node_id for n in await store.nodes())


@pytest.fixture
def closed_port():
    """A loopback port bound and not listening, for the test's whole length: a connection to it
    is refused, and no other process (a test running alongside) can start listening there."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s


async def test_the_lease_goes_to_one_node_and_to_another_once_it_expires(nc):
    from nex.fleet.lease import Lease

    first, second = Lease(nc, "N1", "one", lease_s=2.0), Lease(nc, "N2", "two", lease_s=2.0)
    # A create that JetStream answers too late for the lease (a loaded machine) is no lease yet.
    await eventually(first.acquire, timeout=5, interval=0.1)
    assert not await second.acquire()
    assert await first.renew() and first.held
    # The first holder goes silent: no renew. Its key expires and the second takes the lease.
    await eventually(second.acquire, timeout=5, interval=0.1)
    assert not await first.renew() and not first.held
    assert (await AppStore(nc).lease()).holder == "N2"
    await second.release()
    assert await AppStore(nc).lease() is None
    await eventually(first.acquire, timeout=1.5, interval=0.1)  # released: taken at once, no TTL to wait for


async def test_sealed_app_env_reaches_the_replica_and_events_tell_what_happened(fleet, store, nc, programs):
    from nex.api import subjects
    from nex.security.xkeys import XKey, seal_env

    lease = await eventually(store.lease, timeout=10)
    user = XKey.create()
    sealed = seal_env({"GREETING": "from-the-fleet"}, user, lease.fleet_xkey)
    logs = await nc.subscribe(subjects.logs_filter("default"))
    placed = await nc.subscribe(subjects.events("default", "replica_placed"))
    await store.apply(app_spec("shop", [ticker(programs, replicas=1, sealed_env=sealed, sender_xkey=user.public,
                                               env_keys=["GREETING"])]), None)

    async def greeted():
        msg = await logs.next_msg(timeout=10)
        return b"started from-the-fleet" in msg.data
    await eventually(greeted, timeout=20)
    event = json.loads((await placed.next_msg(timeout=5)).data)
    assert event["data"]["app"] == "shop" and event["data"]["workload"] == "ticker"


async def test_an_app_no_node_can_take_says_why_in_its_status(fleet, store, programs):
    await store.apply(app_spec("nowhere", [ticker(programs, replicas=1, placement={"tags": {"zone": "z"}})]), None)

    status = await eventually(
        lambda: _status_with(store, "nowhere", lambda s: "not placed" in (s.workloads[0].message or "")), timeout=15)
    assert "zone" in status.workloads[0].message
    assert not await replicas_of(store, "nowhere", "ticker", state=None)
