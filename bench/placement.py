"""Placements per second: AUCTION to every node, then DEPLOY through the best bid, to running.

Three nodes in this process on one nats-server, as a fleet on one host would be;
the workload is a small JavaScript function (each placement loads one more
function into a node's agent), or with ``--native`` a static native program that
waits quietly (each placement starts one more process; plain processes, no
sandbox). N placements run with a bounded number in flight;
the figures are placements/s (auction + deploy to running), auctions/s alone, and,
measured in the same run as the baseline, bare nats-py request/echo round trips/s
with the same number in flight. Where the CPU goes is printed per placement: this
process (the three nodes and the client), the children (function agents or
workload processes) and the nats-server; ``--profile`` adds the top functions of
this process during the placements (cProfile, which slows it down: the rate of a
profiled run is not a figure to quote).

With ``--signed`` (in-process only) the nodes trust one issuer and the client signs:
every auction and deploy carries a claim, and each deploy's claim is recorded once
in the fleet (``NEX_CLAIMS``), so the run shows what trust costs a placement.

With ``--cluster`` the nodes are `nex node up` processes instead, one homed on each
server of a 3-server cluster (the fleet of bench/convergence.py, JetStream R3):
placements across the cluster, with the nodes' work spread over processes.

Run: .venv/bin/python bench/placement.py [N] [IN_FLIGHT] [--native] [--cluster | --signed] [--profile]
"""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import io
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Awaitable, Callable

import nkeys
from common import build_static, children_of, cpu_seconds, echo_responder, report

from nex.api.models import Artifact, AuctionRequest, DeployRequest, Trigger
from nex.client import NexClient
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

JS_SOURCE = b"(subject, payload) => 'placed'"
NODES = 3


async def bounded(count: int, in_flight: int, one: Callable[[int], Awaitable[object]]) -> tuple[float, list]:
    """Run ``one(i)`` for i in range(count), ``in_flight`` at a time; (seconds, results)."""
    results: list = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            results[index] = await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, results


def _children_cpu(but: set[int] = frozenset()) -> float:
    """CPU seconds used so far by this process's children (the function agents), ``but`` excepted."""
    return sum(cpu_seconds(pid) for pid in children_of(os.getpid()) if pid not in but)


def workload(native: bool, root: Path) -> Callable[[int], DeployRequest]:
    """The request of placement ``i``: a function with a trigger of its own, or a quiet process."""
    if native:
        program = build_static("tests/programs/probe.c", root)  # `probe hog 0` says one line, then waits
        artifact = Artifact(uri=f"file://{program}", sha256=hashlib.sha256(program.read_bytes()).hexdigest())
        return lambda i: DeployRequest(name=f"p{i}", type="native", artifact=artifact, argv=["hog", "0"])
    function = root / "placed.js"
    function.write_bytes(JS_SOURCE)
    artifact = Artifact(uri=f"file://{function}", sha256=hashlib.sha256(JS_SOURCE).hexdigest())
    return lambda i: DeployRequest(name=f"f{i}", type="javascript", artifact=artifact,
                                   triggers=[Trigger(subject=f"bench.placed.{i}")])


async def measure(nc, client: NexClient, request: Callable[[int], DeployRequest], native: bool, count: int,
                  in_flight: int, cpu: dict[str, Callable[[], float]], profile: bool, where: str) -> None:
    """The three phases (echo baseline, auctions, placements) and the report; ``cpu`` names the
    processes whose CPU seconds are shown per placement."""
    await echo_responder(nc, "bench.echo")
    for _ in range(200):
        await nc.request("bench.echo", b"x", timeout=5)
    echo_s, _ = await bounded(count * 4, in_flight, lambda i: nc.request("bench.echo", b"x", timeout=10))

    constraints = AuctionRequest(type="native" if native else "javascript")
    before = {name: read() for name, read in cpu.items()}
    auction_s, replies = await bounded(
        count, in_flight, lambda i: client.auction(constraints, wait=10, expected=NODES))
    auction_cpu = {name: read() - before[name] for name, read in cpu.items()}
    assert all(len(r) == NODES and all(a.bid for a in r) for r in replies), "a node did not bid"

    def place(i: int):
        return client.place(request(i), wait=10, expected=NODES)
    for extra in range(NODES):  # the agents start on the first function of each node
        await place(count + extra)
    before = {name: read() for name, read in cpu.items()}
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    place_s, summaries = await bounded(count, in_flight, place)
    if profiler:
        profiler.disable()
    used = {name: read() - before[name] for name, read in cpu.items()}
    assert all(s.state == "running" for s in summaries)
    spread = Counter(s.node_id for s in summaries)
    if not native:
        reply = await nc.request(f"bench.placed.{count // 2}", b"", timeout=10)
        assert reply.data == b"placed"

    what = "native processes" if native else "JavaScript functions"
    rows: dict[str, object] = {
        "nats-py echo round trips/s": count * 4 / echo_s,
        "auctions/s (every node answers)": count / auction_s,
        "placements/s (auction + deploy to running)": count / place_s,
        "placement ms (mean, in flight)": place_s / count * in_flight * 1000,
        "ratio placements/echo": (count / place_s) / (count * 4 / echo_s),
        "wall s of the placements": place_s,
    }
    rows.update({f"CPU ms per placement: {name}": seconds / count * 1000 for name, seconds in used.items()})
    rows["CPU ms per placement: all of the above"] = sum(used.values()) / count * 1000
    rows.update({f"CPU ms per auction alone: {name}": seconds / count * 1000 for name, seconds in auction_cpu.items()
                 if name != "agents/workloads"})
    rows["per node"] = ", ".join(str(n) for n in sorted(spread.values()))
    report(f"placement of {what}: {count} placements, {in_flight} in flight, {where}", rows)
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumtime").print_stats("nex/", 25)  # the node's own steps, callees included
        print(out.getvalue())


async def in_process(count: int, in_flight: int, native: bool, profile: bool, signed: bool = False) -> None:
    """Three nodes in this process on one nats-server; ``signed``: nodes that trust the client's issuer."""
    keys = UserKeys(nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)),
                    XKey.create()) if signed else None
    trust = {"trusted_issuers": [keys.issuer_public]} if keys else {}
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        server = NatsServer(store_dir=root / "js", port=0)
        await server.start()
        try:
            async with AsyncExitStack() as stack:
                for i in range(NODES):
                    node = Node(NodeConfig(server=server.url, state_dir=root / f"node{i}", name=f"bench{i}",
                                           sandbox="none", stop_grace_s=1.0, artifact_roots=[root], **trust))
                    await node.start()
                    stack.push_async_callback(node.shutdown)
                nc = await connect(ConnectOptions(servers=[server.url]))
                stack.push_async_callback(nc.close)
                server_pid = server.pid
                cpu = {"nodes + client (this process)": time.process_time,
                       "agents/workloads": lambda: _children_cpu(but={server_pid}),
                       "nats-server": lambda: cpu_seconds(server_pid)}
                await measure(nc, NexClient(nc, timeout=30, keys=keys), workload(native, root), native, count,
                              in_flight, cpu, profile, f"{NODES} in-process nodes, one nats-server"
                              + (", signed requests" if signed else ""))
        finally:
            await server.stop()


async def on_cluster(count: int, in_flight: int, native: bool, profile: bool) -> None:
    """Three `nex node up` processes, one homed on each server of a 3-server cluster (JetStream R3)."""
    from fleet import DEFAULTS, BenchFleet  # the fleet of the fleet benches

    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        fleet = BenchFleet(root, {**DEFAULTS, "artifact_roots": [str(root)]})
        try:
            await fleet.start()
            node_pids = [n.pid for n in fleet.nodes]
            server_pids = [s.pid for s in fleet.cluster.servers]
            cpu = {"client (this process)": time.process_time,
                   "node processes": lambda: sum(cpu_seconds(pid) for pid in node_pids),
                   "agents/workloads": lambda: sum(cpu_seconds(c) for pid in node_pids for c in children_of(pid)),
                   "nats-servers": lambda: sum(cpu_seconds(pid) for pid in server_pids)}
            await measure(fleet.client.nc, fleet.client, workload(native, root), native, count, in_flight, cpu,
                          profile, f"{NODES} node processes on a 3-server cluster")
        finally:
            await fleet.close()


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    args = (int(numbers[0]) if numbers else 600, int(numbers[1]) if len(numbers) > 1 else 32,
            "--native" in sys.argv, "--profile" in sys.argv)
    if "--cluster" in sys.argv:
        asyncio.run(on_cluster(*args))
    else:
        asyncio.run(in_process(*args, signed="--signed" in sys.argv))
