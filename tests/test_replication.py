"""Replication follows the cluster (nex.jsreplicas): a node given no ``replicas`` gives the
streams and buckets it creates min(3, what the JetStream cluster holds); an explicit setting
wins; an existing stream with fewer replicas is reported, with the fix, and left alone.
Real nats-servers, real `nex node up` processes, the `nex` CLI as a user runs it.
"""

from __future__ import annotations

import json
import shutil

import nats
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from fleet_fixtures import AppFleet, NodeProcess
from helpers import eventually, nex
from nex.api import subjects
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.natsserver import NatsServer

# What a node makes at start: its feeds, the claim ledger, its registry entry and the lease
# it stands for. (NEX_APPS comes with the first app: test_the_app_store_outlives_one_server_of_three.)
NODE_STREAMS = (subjects.LOGS_STREAM, subjects.EVENTS_STREAM, subjects.AUDIT_STREAM, f"KV_{subjects.NODES_BUCKET}",
                f"KV_{subjects.CLAIMS_BUCKET}", f"KV_{subjects.LEASES_BUCKET}",
                f"KV_{subjects.FLEET_BUCKET}")  # a reconciling node in dev mode shares the fleet keys there


async def connect_to(urls: list[str]) -> nats.NATS:
    return await nats.connect(servers=urls, connect_timeout=2, reconnect_time_wait=0.2, max_reconnect_attempts=-1)


def placed(info: StreamInfo) -> int | None:
    """The servers that hold a copy (the leader and its followers); None before a leader is elected."""
    if not info.cluster:
        return 1
    if not info.cluster.leader:
        return None
    return len({info.cluster.leader} | {peer.name for peer in info.cluster.replicas or []})


async def replicas_of(nc, names: tuple[str, ...] = NODE_STREAMS) -> dict[str, tuple[int, int]]:
    """Stream name -> (configured replicas, placed replicas), once every one of them exists."""
    js = nc.jetstream(timeout=5.0)

    async def all_there() -> dict[str, tuple[int, int]] | None:
        found = {}
        for name in names:
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                return None
            if placed(info) is None:
                return None
            found[name] = (info.config.num_replicas, placed(info))
        return found
    return await eventually(all_there, timeout=20, interval=0.2)


def same_for_all(count: int, names: tuple[str, ...] = NODE_STREAMS) -> dict[str, tuple[int, int]]:
    return {name: (count, count) for name in names}


async def test_a_node_on_a_cluster_gives_what_it_creates_three_replicas(nats_cluster, node_processes):
    node, = await node_processes(1)
    nc = await connect_to(nats_cluster.urls_from(1))
    try:
        assert await replicas_of(nc) == same_for_all(3)
        assert "get 3 replicas (min(3, what the JetStream cluster can hold))" in node.log_tail(100)
        assert "nats stream edit" not in node.log_tail(100)
        names = [info.config.name for info in await nc.jetstream().streams_info()]
        assert not [name for name in names if name.startswith("NEX_REPLICAS_PROBE")], "the probe is deleted"
    finally:
        await nc.close()


async def test_an_explicit_replicas_setting_wins(nats_cluster, node_processes, tmp_path):
    nc = await connect_to(nats_cluster.urls_from(0))
    node = NodeProcess("one", nats_cluster.urls_from(0), tmp_path / "one", nc, extra_args=["--replicas", "1"])
    try:
        await node.start()
        assert await replicas_of(nc) == same_for_all(1)
        assert "get 1 replica (as configured)" in node.log_tail(100)
    finally:
        await node.stop()
        print(node.describe())
        await nc.close()


async def test_a_node_on_a_single_server_gives_one_replica(nats_server, tmp_path):
    nc = await connect_to([nats_server.url])
    node = NodeProcess("alone", [nats_server.url], tmp_path / "alone", nc)
    try:
        await node.start()
        assert await replicas_of(nc) == same_for_all(1)
        assert "get 1 replica (min(3" in node.log_tail(100)
    finally:
        await node.stop()
        print(node.describe())
        await nc.close()


async def test_a_node_behind_a_leaf_follows_the_jetstream_it_uses(nats_cluster, leaf_server, tmp_path):
    """A leaf without JetStream of its own uses the hub's: 3. A leaf with its own JetStream
    domain keeps the node's streams on itself, one server: 1."""
    hub = await connect_to(nats_cluster.urls_from(0))
    own = NatsServer(store_dir=tmp_path / "edge", port=0, server_name="edge", jetstream_domain="edge",
                     leaf_remotes=[s.leafnode_url for s in nats_cluster.servers])
    await own.start()
    edge = await connect_to([own.url])
    on_hub_leaf = NodeProcess("hubleaf", [leaf_server.url], tmp_path / "hubleaf", hub)
    on_own_leaf = NodeProcess("edgeleaf", [own.url], tmp_path / "edgeleaf", edge, config={"reconciler": False})
    try:
        await on_hub_leaf.start()
        assert await replicas_of(hub) == same_for_all(3)
        await on_own_leaf.start()
        assert await replicas_of(edge, NODE_STREAMS[:4]) == same_for_all(1, NODE_STREAMS[:4])
    finally:
        await on_hub_leaf.stop()
        await on_own_leaf.stop()
        print(on_hub_leaf.describe(), on_own_leaf.describe())
        await edge.close()
        await hub.close()
        await own.stop()


async def test_an_older_r1_stream_is_reported_with_its_fix_and_left_alone(nats_cluster, node_processes):
    nc = await connect_to(nats_cluster.urls_from(0))
    try:
        # NEX_EVENTS as an earlier release made it: one replica.
        await nc.jetstream().add_stream(StreamConfig(
            name=subjects.EVENTS_STREAM, subjects=[subjects.events_filter("*")], num_replicas=1))
        node, = await node_processes(1)
        found = await replicas_of(nc)
        assert found == {**same_for_all(3), subjects.EVENTS_STREAM: (1, 1)}
        warnings = [line for line in node.log_tail(200).splitlines() if "nats stream edit" in line]
        assert len(warnings) == 1, warnings
        assert "JetStream stream NEX_EVENTS has 1 replica, fewer than the 3" in warnings[0]
        assert warnings[0].rstrip().endswith("To fix it: nats stream edit NEX_EVENTS --replicas 3")
    finally:
        await nc.close()


APP_YAML = """\
name: shop
workloads:
  - name: ticker
    type: native
    artifact: ./ticker
    replicas: 3
    placement: {spread: zone}
    env: {GREETING: sealed-hello}
"""


async def test_the_app_store_outlives_one_server_of_three(nats_cluster, node_processes, programs, tmp_path):
    """The issue's failure: with R1 buckets, stopping the nats-server that held NEX_APPS took
    `nex app status` and `nex app delete` down ("stream is offline"), and replicas went missing.
    The fleet is started the plain way (no fleet flags), and the app has env (sealed to the
    fleet key the nodes share)."""
    nodes = await node_processes(3)
    servers = nats_cluster.urls
    shutil.copy(programs["ticker"], tmp_path / "ticker")
    app = tmp_path / "shop.yaml"
    app.write_text(APP_YAML)
    code, out, err = await nex("apply", "-f", str(app), "--server", servers)
    assert code == 0, err

    async def status() -> dict | None:
        code, out, err = await nex("app", "status", "shop", "--json", "--server", servers, timeout=30)
        return json.loads(out) if code == 0 else None

    async def all_running() -> dict | None:
        view = await status()
        return view if view and view["running"] == 3 else None
    await eventually(all_running, timeout=30, interval=0.5)

    nc = await connect_to(nats_cluster.urls_from(0))
    try:
        js = nc.jetstream(timeout=5.0)
        info = await js.stream_info(f"KV_{subjects.APPS_BUCKET}")  # made by `nex apply`, like the nodes'
        assert (info.config.num_replicas, placed(info)) == (3, 3)
        artifacts = await js.stream_info(f"OBJ_{subjects.ARTIFACT_BUCKET}")
        assert artifacts.config.num_replicas == 3
        leader = info.cluster.leader
    finally:
        await nc.close()
    client = await NexClient.connect(ConnectOptions(servers=nats_cluster.urls_from(0)), timeout=10.0)
    fleet = AppFleet(nats_cluster, nodes, client, "shop")
    try:
        before = await fleet.converged(3, timeout=20)
        await nats_cluster.stop(leader)  # the server that held NEX_APPS (alone, before)

        # The nodes homed on it move to the others; the replicas run on, exactly three, untouched.
        assert await fleet.converged(3, timeout=20) == before
        view = await eventually(all_running, timeout=20, interval=0.5)
        assert (view["name"], view["desired"]) == ("shop", 3)
    finally:
        await client.close()
    code, out, err = await nex("app", "delete", "shop", "--wait", "--timeout", "30", "--server", servers, timeout=60)
    assert code == 0, err
    assert out.strip() == "app 'shop' is deleted"
    code, out, err = await nex("app", "status", "shop", "--server", servers)
    assert code == 1 and err.strip() == "nex: error: no app 'shop' in namespace 'default'"
