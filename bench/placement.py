"""Placements per second: AUCTION to every node, then DEPLOY through the best bid, to running.

Three nodes in this process on one nats-server, as a fleet on one host would be;
the workload is a small JavaScript function (each placement loads one more
function into a node's agent), or with ``--native`` a static native program that
waits quietly (each placement starts one more process; plain processes, no
sandbox). N placements run with a bounded number in flight;
the figures are placements/s (auction + deploy to running), auctions/s alone, and,
measured in the same run as the baseline, bare nats-py request/echo round trips/s
with the same number in flight.

Run: .venv/bin/python bench/placement.py [N] [IN_FLIGHT] [--native]
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Awaitable, Callable

from common import build_static, children_of, echo_responder, report

from nex.api.models import Artifact, AuctionRequest, DeployRequest, Trigger
from nex.client import NexClient
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.node.config import NodeConfig
from nex.node.node import Node

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


def _children_cpu() -> float:
    """CPU seconds used so far by this process's children (the function agents)."""
    total = 0
    for pid in children_of(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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


async def main(count: int, in_flight: int, native: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        request = workload(native, root)
        server = NatsServer(store_dir=root / "js", port=0)
        await server.start()
        try:
            async with AsyncExitStack() as stack:
                nodes = []
                for i in range(NODES):
                    node = Node(NodeConfig(server=server.url, state_dir=root / f"node{i}", name=f"bench{i}",
                                           sandbox="none", stop_grace_s=1.0))
                    await node.start()
                    stack.push_async_callback(node.shutdown)
                    nodes.append(node)
                nc = await connect(ConnectOptions(servers=[server.url]))
                stack.push_async_callback(nc.close)
                client = NexClient(nc, timeout=30)

                await echo_responder(nc, "bench.echo")
                for _ in range(200):
                    await nc.request("bench.echo", b"x", timeout=5)
                echo_s, _ = await bounded(count * 4, in_flight,
                                          lambda i: nc.request("bench.echo", b"x", timeout=10))

                constraints = AuctionRequest(type="native" if native else "javascript")
                auction_s, replies = await bounded(
                    count, in_flight, lambda i: client.auction(constraints, wait=10, expected=NODES))
                assert all(len(r) == NODES and all(a.bid for a in r) for r in replies), "a node did not bid"

                def place(i: int):
                    return client.place(request(i), wait=10, expected=NODES)
                await place(count)  # the agents start on the first function of each node
                await place(count + 1)
                await place(count + 2)
                cpu_before, children_before = time.process_time(), _children_cpu()
                place_s, summaries = await bounded(count, in_flight, place)
                place_cpu = time.process_time() - cpu_before
                agents_cpu = _children_cpu() - children_before
                assert all(s.state == "running" for s in summaries)
                spread = Counter(s.node_id for s in summaries)
                if not native:
                    reply = await nc.request(f"bench.placed.{count // 2}", b"", timeout=10)
                    assert reply.data == b"placed"

                what = "native processes" if native else "JavaScript functions"
                report(f"placement of {what}: {count} placements, {in_flight} in flight, {NODES} in-process nodes", {
                    "nats-py echo round trips/s": count * 4 / echo_s,
                    "auctions/s (every node answers)": count / auction_s,
                    "placements/s (auction + deploy to running)": count / place_s,
                    "placement ms (mean, in flight)": place_s / count * in_flight * 1000,
                    "ratio placements/echo": (count / place_s) / (count * 4 / echo_s),
                    "CPU s of this process (nodes + client)": place_cpu,
                    "CPU s of the children (agents, workloads)": agents_cpu,
                    "wall s of the placements": place_s,
                    "per node": ", ".join(str(n) for n in sorted(spread.values())),
                })
        finally:
            await server.stop()


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(numbers[0]) if numbers else 600, int(numbers[1]) if len(numbers) > 1 else 32,
                     "--native" in sys.argv))
