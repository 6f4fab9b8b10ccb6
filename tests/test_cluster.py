"""Nodes on a real 3-server NATS cluster and behind a leaf node, as real processes.

The fleet fixtures (tests/fleet_fixtures.py) start the servers and the nodes: node i
connects to server n(i mod 3 + 1) first and lists the other two as fallbacks.
The last tests check the launcher itself: clear errors for what cannot work.
"""

from __future__ import annotations


import pytest
from nats.errors import Error as NatsError
from nats.js.api import StreamInfo

from helpers import alive, eventually, native_body, process_group, ticker_request
from fleet_fixtures import NodeProcess
from nex.api import subjects
from nex.api.models import DeployRequest, WorkloadState
from nex.api.errors import NexError, Unavailable
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.natsserver import NatsServer, NatsServerError, PortTaken


async def client_on(*urls: str) -> NexClient:
    return await NexClient.connect(ConnectOptions(servers=list(urls)), timeout=5.0)


async def log_lines(client: NexClient, workload_id: str) -> list[str]:
    return [line.data.decode() async for line in client.logs(workload_id) if line.stream == "stdout"]


async def ticked(client: NexClient, workload_id: str, at_least: int) -> list[str]:
    """The workload's stdout lines in the logs stream, once it holds ``at_least`` ticks."""
    async def enough():
        lines = await log_lines(client, workload_id)
        return lines if sum(line.startswith("tick ") for line in lines) >= at_least else None
    return await eventually(enough, timeout=15, interval=0.2)


async def everywhere(client: NexClient, nodes: int) -> dict[str, list[str]]:
    """Every workload id of the namespace, by the id of the node that runs it."""
    found: dict[str, list[str]] = {}
    for workload in await client.workloads(wait=2.0, expected_nodes=nodes):
        found.setdefault(workload.node_id, []).append(workload.id)
    return found


def replicas(info: StreamInfo) -> int:
    return 1 + len(info.cluster.replicas or []) if info.cluster else 1


async def test_nodes_on_three_servers_are_one_fleet(nats_cluster, node_processes, programs):
    nodes = await node_processes(3)
    client = await client_on(nats_cluster.servers[0].url)
    try:
        pings = await client.ping(wait=5.0, expected=3)
        assert sorted(p.name for p in pings) == ["node1", "node2", "node3"]
        assert {p.node_id for p in pings} == {n.node_id for n in nodes}

        on_n3 = nodes[2]
        assert nats_cluster.home(on_n3) == "n3"
        workload = await client.deploy(on_n3.node_id, ticker_request(programs))
        assert workload.node_id == on_n3.node_id and workload.state == WorkloadState.RUNNING
        lines = await ticked(client, workload.id, 3)
        assert lines[:4] == ["started - with 0 args", "tick 0", "tick 1", "tick 2"]

        for stream in (subjects.LOGS_STREAM, subjects.EVENTS_STREAM, subjects.AUDIT_STREAM):
            info = await eventually(lambda: _all_current(client, stream), timeout=10, interval=0.2)
            assert info.config.num_replicas == 3 and replicas(info) == 3, stream
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_node_keeps_its_workload_when_its_server_goes(nats_cluster, node_processes, programs, how):
    nodes = await node_processes(3)
    on_n1 = nodes[0]
    assert nats_cluster.home(on_n1) == "n1"
    # A client on n2 and n3 only: it must not notice n1 going away.
    client = await client_on(nats_cluster.servers[1].url, nats_cluster.servers[2].url)
    try:
        workload = await client.deploy(on_n1.node_id, ticker_request(programs))
        before = len(await ticked(client, workload.id, 1))
        assert "reconnected to NATS" not in on_n1.log_tail(100)

        await (nats_cluster.stop("n1") if how == "stop" else nats_cluster.kill("n1"))

        other_ports = {f"127.0.0.1:{s.port}" for s in nats_cluster.servers[1:]}
        reconnected = await eventually(
            lambda: [line for line in on_n1.log_tail(100).splitlines() if "reconnected to NATS at" in line],
            timeout=15, interval=0.2)
        assert any(port in reconnected[-1] for port in other_ports), reconnected[-1]
        assert await eventually(lambda: on_n1.ping(1.0), timeout=10, interval=0.2)

        # The same workload, still running, once, on the same node; nothing started elsewhere.
        info = await client.workload_info(workload.id)
        assert (info.node_id, info.state, info.pid) == (on_n1.node_id, WorkloadState.RUNNING, workload.pid)
        assert alive(workload.pid)
        assert await everywhere(client, 3) == {on_n1.node_id: [workload.id]}

        # Its logs still reach the replicated stream, through another server.
        await eventually(lambda: _more_lines(client, workload.id, before + 30), timeout=25, interval=0.2)

        if how == "stop":  # (a restart is the same after either; once is enough)
            # n1 comes back and catches up: every replica of the streams is current again.
            await nats_cluster.restart("n1")
            info = await eventually(lambda: _all_current(client, subjects.LOGS_STREAM), timeout=15, interval=0.2)
            assert replicas(info) == 3
            assert await everywhere(client, 3) == {on_n1.node_id: [workload.id]}
    finally:
        await client.close()


async def test_a_node_leaves_a_server_that_stops_answering(nats_cluster, node_processes, programs):
    nodes = await node_processes(3)
    on_n1 = nodes[0]
    client = await client_on(nats_cluster.servers[1].url, nats_cluster.servers[2].url)
    try:
        workload = await client.deploy(on_n1.node_id, ticker_request(programs))

        nats_cluster.freeze("n1")  # no reset, no EOF: only the missing PONGs tell

        reconnected = await eventually(
            lambda: [line for line in on_n1.log_tail(100).splitlines() if "reconnected to NATS at" in line],
            timeout=15, interval=0.2)
        assert f"127.0.0.1:{nats_cluster.servers[0].port}" not in reconnected[-1]
        # Asked from the server it moved to. From the third server a PING may still go to the
        # node's old subscription on the frozen one, which that server's route to it still lists
        # (routes find a frozen peer by their own PINGs, every 2 minutes by default): a queue
        # group, such as the node's PING endpoint, then picks one member of the two.
        new_home = reconnected[-1].rsplit("reconnected to NATS at ", 1)[1].split()[0]
        local = await client_on(f"nats://{new_home}")
        try:
            assert await eventually(lambda: _answers(local, on_n1.node_id), timeout=10, interval=0.2)
        finally:
            await local.close()
        info = await client.workload_info(workload.id)
        assert (info.node_id, info.state, info.pid) == (on_n1.node_id, WorkloadState.RUNNING, workload.pid)
    finally:
        await client.close()


async def _answers(client: NexClient, node_id: str) -> bool:
    try:
        return (await client.ping_node(node_id, timeout=1.0)).node_id == node_id
    except NexError:
        return False


async def test_a_node_whose_first_server_is_down_starts_on_another(nats_cluster, node_processes):
    await nats_cluster.stop("n1")
    node, = await node_processes(1)
    assert nats_cluster.home(node) == "n1"
    ping = await node.ping()
    assert ping is not None and ping["name"] == "node1"


async def _all_current(client: NexClient, stream: str) -> StreamInfo | None:
    try:
        info = await client.nc.jetstream().stream_info(stream)
    except NatsError:
        return None
    return info if info.cluster and all(r.current for r in info.cluster.replicas or []) else None


async def _more_lines(client: NexClient, workload_id: str, count: int) -> bool:
    try:
        return len(await log_lines(client, workload_id)) >= count
    except (NatsError, Unavailable):  # the client says Unavailable where nats-py timed out
        # After a SIGKILL the stream's replicas elect a new leader first: seconds without one.
        return False


async def test_a_node_behind_a_leaf_server_runs_hub_artifacts(nats_cluster, leaf_server, programs, tmp_path):
    # The leaf connects to n1 first; the client is on n2, so requests cross the hub's routes.
    client = await client_on(nats_cluster.servers[1].url)
    node = NodeProcess("leafnode", [leaf_server.url], tmp_path / "leafnode", client.nc, tags={"site": "edge"})
    try:
        await node.start()
        ping = await client.ping_node(node.node_id)
        assert ping.name == "leafnode" and ping.tags["site"] == "edge"

        artifact = await client.upload_artifact(programs["ticker"], key="ticker")
        workload = await client.deploy(node.node_id, ticker_request(programs, artifact=artifact.model_dump()))
        assert workload.state == WorkloadState.RUNNING
        lines = await ticked(client, workload.id, 2)
        assert lines[:3] == ["started - with 0 args", "tick 0", "tick 1"]
        info = await client.nc.jetstream().stream_info(subjects.LOGS_STREAM)
        assert replicas(info) == 3, "the leaf's node made its streams in the hub's JetStream"

        # The leaf's hub server goes: the leaf connects to another, the node is reachable again.
        await nats_cluster.stop("n1")
        await eventually(lambda: "Leafnode connection closed" in leaf_server.log_tail(50), timeout=10)
        assert await eventually(lambda: node.ping(1.0), timeout=15, interval=0.2)
        info = await client.workload_info(workload.id)
        assert (info.state, info.pid) == (WorkloadState.RUNNING, workload.pid)
    finally:
        await node.stop()
        print(node.describe())
        await client.close()


async def test_a_killed_node_leaves_no_workload_process(nats_cluster, node_processes, programs):
    node, = await node_processes(1)
    client = await client_on(*nats_cluster.urls.split(","))
    try:
        first = await client.deploy(node.node_id, ticker_request(programs))
        stubborn = await client.deploy(node.node_id, DeployRequest(**native_body(programs["stubborn"], "stubborn")))
        # stubborn forks a child that outlives its parent's PR_SET_PDEATHSIG; the reaper gets it.
        children = await eventually(lambda: [p for p in process_group(stubborn.pid) if p != stubborn.pid])

        await node.kill()

        await eventually(lambda: not any(alive(p) for p in (first.pid, stubborn.pid, *children)), timeout=10)
        assert await node.ping(0.5) is None
    finally:
        await client.close()



async def test_a_server_whose_port_is_taken_says_so(nats_server, tmp_path):
    second = NatsServer(store_dir=tmp_path / "second", port=nats_server.port)
    with pytest.raises(PortTaken) as caught:
        await second.start()
    assert caught.value.port == nats_server.port  # read from nats-server's last words
    assert str(caught.value) == f"port {nats_server.port} of 127.0.0.1 is in use (by another node or server)"
    assert "address already in use" in second.log_path.read_text()
    assert not second.running


async def test_a_chosen_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path, monkeypatch):
    """What happens when a test running alongside binds the port a start chose, before the
    server does: the start chooses again (a port given by number stays, as above)."""
    import socket

    import nats

    from nex import natsserver

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    choices, choose = iter([taken]), natsserver.free_port
    monkeypatch.setattr(natsserver, "free_port", lambda host: next(choices, None) or choose(host))
    server = NatsServer(store_dir=tmp_path / "js", port=0)
    try:
        await server.start()
        assert server.running and server.port not in (0, taken)
        assert "address already in use" in server.log_path.read_text(), "the first choice was taken"
        nc = await nats.connect(server.url)
        await nc.close()
    finally:
        holder.close()
        await server.stop()


def test_cluster_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(NatsServerError) as no_port:
        NatsServer(store_dir=tmp_path, port=0, routes=["nats-route://127.0.0.1:6222"])
    assert "routes need a cluster port" in str(no_port.value)
    with pytest.raises(NatsServerError) as two_configs:
        NatsServer(store_dir=tmp_path, port=0, cluster_port=0, extra_args=["-c", "x.conf"])
    assert "writes its own config file" in str(two_configs.value)
    assert not list(tmp_path.iterdir()), "nothing was written"
