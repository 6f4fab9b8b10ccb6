"""The node registry (KV bucket NEX_NODES): what the fleet's reconciler sees of each node."""

from __future__ import annotations

import asyncio
import time

from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from nex.api import subjects
from nex.api.models import NodePing
from nex.api.records import NodeRecord
from nex.connection import ConnectOptions, connect
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.node.registry import MIN_SPACING_S, NodeRegistry
from nex.node.resources import resources

from helpers import ARTIFACT_ROOTS, alive, control, eventually, start_node, ticker, wait_for_node


async def entry(nc, node_id: str) -> NodeRecord | None:
    """The node's registry entry, or None when there is none (never written, deleted, expired)."""
    kv = await nc.jetstream().key_value(subjects.NODES_BUCKET)
    try:
        found = await kv.get(node_id)
    except KeyNotFoundError:  # KeyDeletedError too
        return None
    return NodeRecord.model_validate_json(found.value)


def node_config(nats_server, **values) -> NodeConfig:
    """A node of these tests: plain processes, and no reconciler (the registry alone is under test)."""
    return NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                      server=nats_server.url, **{"sandbox": "none", "reconciler": False, **values})


def replica(programs, name: str = "ticker") -> dict:
    """A replica of an app, as the reconciler deploys it: what the registry lists."""
    return {**ticker(programs, name), "app": APP}


async def test_entry_lists_the_node_and_follows_its_workloads(node: Node, nc, programs):
    first = await entry(nc, node.node_id)
    assert first is not None and first.node.name == "test-node" and first.node.state == "running"
    assert first.node.tags["zone"] == "a" and first.workloads == []
    assert "native" in first.runtimes and first.resources.cpus >= 1

    code, deployed = await control(nc, "DEPLOY", node.node_id, replica(programs))
    assert code is None
    # Far sooner than the 2 s interval: a change is written within the debounce.
    started = time.monotonic()
    listed = await eventually(lambda: _with_workloads(nc, node.node_id, 1), timeout=1.5)
    assert time.monotonic() - started < 1.5
    listed_replica = listed.workloads[0]
    assert (listed_replica.id, listed_replica.name, listed_replica.state, listed_replica.health) == (
        deployed["id"], "ticker", "running", "healthy")
    assert listed_replica.app.name == APP["name"] and listed.node.workload_count == 1 and listed.seq > first.seq

    # A workload of no app is counted, not listed: the reconciler has no use for it.
    code, adhoc = await control(nc, "DEPLOY", node.node_id, ticker(programs, "adhoc"))
    assert code is None
    counted = await eventually(lambda: _counting(nc, node.node_id, 2), timeout=1.5)
    assert [w.id for w in counted.workloads] == [deployed["id"]]
    code, _ = await control(nc, "UNDEPLOY", adhoc["id"])
    assert code is None

    code, _ = await control(nc, "UNDEPLOY", deployed["id"])
    assert code is None
    stopped = await eventually(lambda: _state_of(nc, node.node_id, deployed["id"], "stopped"), timeout=1.5)
    assert stopped.workloads[0].health is None and stopped.workloads[0].exit_code == 0
    assert stopped.node.workload_count == 0


async def _counting(nc, node_id: str, count: int) -> NodeRecord | None:
    found = await entry(nc, node_id)
    return found if found is not None and found.node.workload_count == count else None


async def _with_workloads(nc, node_id: str, count: int) -> NodeRecord | None:
    found = await entry(nc, node_id)
    return found if found is not None and len(found.workloads) == count else None


async def _all_running(nc, node_id: str, count: int) -> NodeRecord | None:
    found = await _with_workloads(nc, node_id, count)
    return found if found is not None and {w.state for w in found.workloads} == {"running"} else None


async def _state_of(nc, node_id: str, workload_id: str, state: str) -> NodeRecord | None:
    found = await entry(nc, node_id)
    if found is not None and any(w.id == workload_id and w.state == state for w in found.workloads):
        return found
    return None


async def test_a_burst_of_deploys_makes_fewer_writes(node: Node, nc, programs):
    before = (await entry(nc, node.node_id)).seq
    started = time.monotonic()
    replies = await asyncio.gather(*(control(nc, "DEPLOY", node.node_id, replica(programs, f"t{i}"))
                                     for i in range(30)))
    burst_s = time.monotonic() - started
    assert all(code is None for code, _ in replies)
    final = await eventually(lambda: _all_running(nc, node.node_id, 30), timeout=3)
    # At most one change-driven write per MIN_SPACING_S while the burst lasts, then the last one.
    allowed = min(29, int(burst_s / MIN_SPACING_S) + 2)
    assert final.seq - before <= allowed, f"{final.seq - before} writes for 30 deploys in {burst_s:.2f}s"


async def test_a_burst_of_changes_makes_one_write(nats_server, nc):
    written = []

    def snapshot(seq: int) -> NodeRecord:
        written.append(seq)
        return NodeRecord(node=PING, resources=resources(), runtimes=[], workloads=[], seq=seq)

    registry = NodeRegistry(nc, PING.node_id, snapshot, interval_s=5, ttl_s=10, replicas=1)
    await registry.start()
    try:
        for _ in range(300):
            registry.changed()
            await asyncio.sleep(0.0001)
        await eventually(lambda: len(written) == 2, timeout=2)
        await asyncio.sleep(0.3)
        assert len(written) == 2, "the start, then one write for the burst"
        assert (await entry(nc, PING.node_id)).seq == 2
    finally:
        await registry.stop()
    assert await entry(nc, PING.node_id) is None


PING = NodePing(node_id="NTESTREGISTRY", name="unit", version="0", api_version="v1", uptime_s=0,
                state="running", tags={}, workload_count=0)


async def test_lame_duck_shows_at_once(node: Node, nc):
    code, reply = await control(nc, "LAMEDUCK", node.node_id)
    assert code is None and reply["state"] == "lameduck"
    # Written before the reply went out: no waiting for the next interval.
    assert (await entry(nc, node.node_id)).node.state == "lameduck"


async def test_clean_shutdown_deletes_the_entry(nats_server, nc, tmp_path, programs):
    node = Node(node_config(nats_server, state_dir=tmp_path / "n", stop_grace_s=1))
    await node.start()
    try:
        code, _ = await control(nc, "DEPLOY", node.node_id, replica(programs))
        assert code is None
        await eventually(lambda: _with_workloads(nc, node.node_id, 1))
    finally:
        await node.shutdown()
    assert await entry(nc, node.node_id) is None  # the bucket stays, for the rest of the fleet


TTL_S = 2.0


async def test_entry_of_a_killed_node_expires(nats_server, nc, tmp_path, programs):
    config = tmp_path / "fleet.toml"
    config.write_text(f"registry_interval_s = 0.5\nnode_timeout_s = {TTL_S}\nreconciler = false\n")
    process = await start_node("--server", nats_server.url, "--state-dir", str(tmp_path / "state"),
                               "--name", "doomed", "--sandbox", "none", "--config", str(config))
    try:
        ping = await wait_for_node(nc, "doomed")
        code, _ = await control(nc, "DEPLOY", ping["node_id"], replica(programs))
        assert code is None
        await eventually(lambda: _with_workloads(nc, ping["node_id"], 1))
        # Alive, it keeps its entry well past the TTL: there at every look, rewritten all along.
        first = await entry(nc, ping["node_id"])
        since = time.monotonic()

        async def kept_past_the_ttl() -> bool:
            current = await entry(nc, ping["node_id"])
            assert current is not None, f"expired {time.monotonic() - since:.1f}s in, the node alive"
            return time.monotonic() - since > 1.5 * TTL_S and current.seq >= first.seq + 4
        await eventually(kept_past_the_ttl, timeout=10, interval=0.1)
    finally:
        process.kill()
        await process.wait()
    killed = time.monotonic()
    await eventually(lambda: _gone(nc, ping["node_id"]), timeout=10, interval=0.1)
    assert time.monotonic() - killed > 1.0, "expired by the TTL, not deleted"


async def _gone(nc, node_id: str) -> bool:
    return await entry(nc, node_id) is None


async def test_two_nodes_create_the_bucket_together(nats_server, nc, tmp_path):
    nodes = [Node(node_config(nats_server, state_dir=tmp_path / f"n{i}", name=f"twin-{i}")) for i in range(2)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        for started in nodes:
            assert (await entry(nc, started.node_id)).node.name == started.name
    finally:
        await asyncio.gather(*(n.shutdown() for n in nodes))


async def test_existing_bucket_is_kept_as_it_is(nats_server, nc, tmp_path):
    js = nc.jetstream()
    await js.create_key_value(bucket=subjects.NODES_BUCKET, ttl=30, history=1)
    node = Node(node_config(nats_server, state_dir=tmp_path / "n"))
    await node.start()
    try:
        assert await entry(nc, node.node_id) is not None
        info = await js.stream_info(f"KV_{subjects.NODES_BUCKET}")
        assert info.config.max_age == 30
    finally:
        await node.shutdown()


async def test_a_lost_bucket_is_made_again_at_the_next_tick(nats_server, nc, tmp_path):
    node = Node(node_config(nats_server, state_dir=tmp_path / "n", registry_interval_s=0.2, node_timeout_s=2))
    await node.start()
    try:
        await nc.jetstream().delete_key_value(subjects.NODES_BUCKET)
        await eventually(lambda: _present(nc, node.node_id), timeout=5, interval=0.1)
    finally:
        await node.shutdown()


async def _present(nc, node_id: str) -> bool:
    try:
        return await entry(nc, node_id) is not None
    except BucketNotFoundError:  # not made again yet
        return False



async def test_writes_survive_nats_going_away(nats_server, tmp_path, caplog):
    """While NATS is gone the writes fail, said once; once it is back the entry is current again."""
    node = Node(node_config(nats_server, state_dir=tmp_path / "n", registry_interval_s=0.2, node_timeout_s=2))
    await node.start()
    try:
        before = node.registry.seq
        await nats_server.stop()
        await eventually(lambda: _cannot_write(caplog), timeout=10, interval=0.05)  # writes fail
        await nats_server.start()
        observer = await connect(ConnectOptions(servers=[nats_server.url]))
        try:
            current = await eventually(lambda: _newer(observer, node.node_id, before + 3), timeout=10, interval=0.1)
            assert current.node.state == "running"
        finally:
            await observer.close()
    finally:
        await node.shutdown()
    failures = _cannot_write(caplog)
    assert len(failures) == 1, [r.getMessage() for r in failures]


def _cannot_write(caplog) -> list:
    return [r for r in caplog.records if "cannot write" in r.getMessage()]


async def _newer(nc, node_id: str, seq: int) -> NodeRecord | None:
    found = await entry(nc, node_id)
    return found if found is not None and found.seq > seq else None

# -- lame duck: the fleet moves the app replicas away, then the node leaves ------------------

APP = {"name": "shop", "revision": "0123456789ab"}


async def test_lame_duck_leaves_once_its_app_replicas_are_gone(nats_server, nc, tmp_path, programs):
    node = Node(node_config(nats_server, state_dir=tmp_path / "n", name="draining", lameduck_s=60, stop_grace_s=1,
                            registry_interval_s=0.2, node_timeout_s=2))
    running = asyncio.create_task(node.run())
    try:
        await wait_for_node(nc, "draining")
        code, replica = await control(nc, "DEPLOY", node.node_id, {**ticker(programs, "ticker"), "app": APP})
        assert code is None and replica["app"] == APP
        code, adhoc = await control(nc, "DEPLOY", node.node_id, ticker(programs, "adhoc"))
        assert code is None and "app" not in adhoc

        code, _ = await control(nc, "LAMEDUCK", node.node_id)
        assert code is None
        listed = await entry(nc, node.node_id)
        assert listed.node.state == "lameduck"
        assert [(w.name, w.app.name) for w in listed.workloads] == [("ticker", "shop")]
        assert listed.node.workload_count == 2
        await eventually(lambda: _newer(nc, node.node_id, listed.seq + 2), timeout=5)  # it lives on, in lame duck
        assert not running.done(), "an app replica is still here: the node waits"

        # What the reconciler does once the replacement runs elsewhere.
        code, _ = await control(nc, "UNDEPLOY", replica["id"])
        assert code is None
        left = time.monotonic()
        await asyncio.wait_for(asyncio.shield(running), 15)
        assert time.monotonic() - left < 10, "left long before the 60 s lame duck period"
    finally:
        node.request_stop()
        await asyncio.gather(running, return_exceptions=True)
    assert not alive(adhoc["pid"]), "the ad-hoc workload stopped with the node"
    assert await entry(nc, node.node_id) is None


async def test_lame_duck_without_app_replicas_waits_its_period(nats_server, nc, tmp_path, programs):
    node = Node(node_config(nats_server, state_dir=tmp_path / "n", name="idle", lameduck_s=1.5, stop_grace_s=1))
    running = asyncio.create_task(node.run())
    try:
        await wait_for_node(nc, "idle")
        code, adhoc = await control(nc, "DEPLOY", node.node_id, ticker(programs, "adhoc"))
        assert code is None
        started = time.monotonic()
        code, _ = await control(nc, "LAMEDUCK", node.node_id)
        assert code is None
        code, refused = await control(nc, "DEPLOY", node.node_id, ticker(programs, "late"))
        assert code == 409, refused
        await asyncio.wait_for(asyncio.shield(running), 15)
        assert time.monotonic() - started >= 1.4
    finally:
        node.request_stop()
        await asyncio.gather(running, return_exceptions=True)
    assert not alive(adhoc["pid"])
