"""Twenty nodes: placement, auction fan-out, loss, idle cost and control latency, in one run.

A 3-server cluster (JetStream R3) and NODES `nex node up` processes homed on its
servers round-robin, with the node's default timings (nothing set but what the test
fleet sets for every node: plain processes, short stop graces). In order:

1. **Idle cost.** With no workload, over IDLE_S seconds: the CPU of each node process
   (utime + stime in /proc) as % of a core, alone and with its function agents, and the messages and bytes each node's
   connection sent and received (the servers' /connz). Baseline in the same window:
   a bare nats-py client process, connected and idle, and the three nats-servers.
2. **Control latency.** p50 and p99 of PING and INFO sent to one node (every node in
   turn), and of fleet-wide PING and WPING gathered from all nodes (a gather ends
   with the last node's reply). Baseline: a bare nats-py echo responder in its own
   process, homed on another server than the bench's client, like most nodes.
3. **Placement through the reconciler.** An app of REPLICAS JavaScript replicas is
   applied; the time to the last replica's ``workload_started`` event, and to the
   nodes listing them all running (WPING). Meanwhile every auction request and its
   replies are counted on the bus: the replies one placement draws. Baseline: the
   same number of DEPLOYs sent straight to the nodes (no auction, no reconciler),
   all at once, then undeployed; measured after, so it meets the function agents
   already running (the placement started them: each node's first function does).
4. **Loss.** KILL of the nodes are SIGKILLed at once, the reconciler's among them;
   the time until as many replacement replicas have started as were lost, and until
   the surviving nodes list REPLICAS running for STABLE_S seconds.

Run: .venv/bin/python bench/fleet_scale.py [--nodes 20] [--replicas 60] [--kill 5] [--idle 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import nats.errors

from common import children_of, cpu_seconds, percentile, report
from fleet import TRANSIENT, BenchFleet, js_workload

from nex.api import subjects
from nex.api.apps import AppSpec
from nex.api.models import Artifact, DeployRequest, Trigger
from nex.natsserver import free_port

APP = "scale"
WORKLOAD = "scalefn"
STABLE_S = 2.0
TRACE = "--trace" in sys.argv
# What every node of the test fleet sets, and nothing more: the node's own default timings.
DEFAULT_TIMINGS = {"registry_interval_s": None, "node_timeout_s": None, "reconcile_interval_s": None,
                   "lease_s": None}
IDLE_CLIENT = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(servers=sys.argv[1].split(","))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(servers=sys.argv[1].split(","))
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Monitor:
    """The servers' monitoring endpoints: each client connection's message counters, by name."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.ports = []
        for server in fleet.cluster.servers:
            port = free_port()
            server.extra_args = ["-m", str(port)]
            self.ports.append(port)

    def _connz(self, port: int) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?limit=100000", timeout=5) as reply:
            return json.load(reply)["connections"] or []

    async def counters(self, prefix: str = "nex-node ") -> dict[str, Counter]:
        """Connection name → in/out messages and bytes, of the connections whose name starts with ``prefix``."""
        found: dict[str, Counter] = {}
        for port in self.ports:
            for conn in await asyncio.to_thread(self._connz, port):
                name = conn.get("name", "")
                if name.startswith(prefix):
                    found[name] = Counter({k: conn[k] for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")})
        return found


async def helper_process(script: str, servers: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, servers,
                                                   stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return process


def tree_cpu(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children_of(pid))


async def idle_cost(fleet: BenchFleet, monitor: Monitor, window: float) -> dict:
    idle_client = await helper_process(IDLE_CLIENT, fleet.cluster.urls)
    try:
        await asyncio.sleep(5)  # past the start: the first registry writes, the lease, the fleet keys
        nodes = {n.name: n.pid for n in fleet.nodes}
        servers = [s.pid for s in fleet.cluster.servers]
        before_cpu = {name: cpu_seconds(pid) for name, pid in nodes.items()}
        before_tree = {name: tree_cpu(pid) for name, pid in nodes.items()}
        before_servers = sum(cpu_seconds(pid) for pid in servers)
        before_idle = cpu_seconds(idle_client.pid)
        before_msgs = await monitor.counters()
        traffic = Traffic(fleet)
        await traffic.start()
        started = time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - started
        after_msgs = await monitor.counters()
        kinds = await traffic.stop(elapsed, len(fleet.nodes))
        used = {name: cpu_seconds(pid) - before_cpu[name] for name, pid in nodes.items()}
        used_tree = {name: tree_cpu(pid) - before_tree[name] for name, pid in nodes.items()}
        servers_used = sum(cpu_seconds(pid) for pid in servers) - before_servers
        idle_used = cpu_seconds(idle_client.pid) - before_idle
    finally:
        idle_client.kill()
        await idle_client.wait()
    moved = {name: after_msgs[name] - before_msgs.get(name, Counter()) for name in after_msgs}
    holder = fleet.node(await fleet.holder()).name
    per_node = [moved[f"nex-node {name}"] for name in nodes if f"nex-node {name}" in moved]
    others = [u for name, u in used.items() if name != holder]
    pct = lambda seconds: 100 * seconds / elapsed  # noqa: E731
    return {
        "window s": elapsed,
        "node CPU % of a core (median, not the reconciler)": pct(statistics.median(others)),
        "node CPU % of a core (max, not the reconciler)": pct(max(others)),
        "reconciler's node CPU % of a core": pct(used[holder]),
        "node + its function agents CPU % (median, not the reconciler)": pct(statistics.median(
            u for name, u in used_tree.items() if name != holder)),
        "baseline: idle nats-py client CPU %": pct(idle_used),
        "the 3 nats-servers CPU % (sum)": pct(servers_used),
        "msgs/s sent per node (median)": statistics.median(c["in_msgs"] for c in per_node) / elapsed,
        "msgs/s received per node (median)": statistics.median(c["out_msgs"] for c in per_node) / elapsed,
        "bytes/s sent per node (median)": statistics.median(c["in_bytes"] for c in per_node) / elapsed,
        "bytes/s received per node (median)": statistics.median(c["out_bytes"] for c in per_node) / elapsed,
        "nodes counted": len(per_node),
        "every message on the bus, by kind:": "",
        **kinds,
    }


async def control_latency(fleet: BenchFleet, rounds: int, gathers: int) -> dict:
    client = fleet.client
    echo = await helper_process(ECHO, ",".join(fleet.cluster.urls_from(1)))
    try:
        # Its subscription reaches the bench's server over a route a moment after it says ready.
        await fleet.until(lambda: _answers(client.nc, "bench.echo"), 10, "the echo answered across the cluster")
        async def timed(call, count: int) -> list[float]:
            samples = []
            for i in range(count):
                started = time.perf_counter()
                await call(i)
                samples.append(time.perf_counter() - started)
            return samples

        ids = [n.node_id for n in fleet.nodes]
        size = len(ids)
        results = {
            "bare nats-py echo": await timed(lambda i: client.nc.request("bench.echo", b"x", timeout=5),
                                             rounds * size),
            "PING one node": await timed(lambda i: client.ping_node(ids[i % size]), rounds * size),
            "INFO one node": await timed(lambda i: client.node_info(ids[i % size]), rounds * size),
        }

        async def ping_all(i: int) -> None:
            assert len(await client.ping(wait=5, expected=size)) == size

        async def wping_all(i: int) -> None:
            await client.workloads(wait=5, expected_nodes=size)
        results[f"PING all {size} nodes"] = await timed(ping_all, gathers)
        results[f"WPING all {size} nodes"] = await timed(wping_all, gathers)
    finally:
        echo.kill()
        await echo.wait()
    echo_p50 = statistics.median(results["bare nats-py echo"])
    rows = {}
    for name, samples in results.items():
        p50 = statistics.median(samples)
        rows[f"{name}: p50 / p99 ms"] = f"{p50 * 1e3:.2f} / {percentile(samples, 0.99) * 1e3:.2f}" + (
            "" if name.startswith("bare") else f" ({p50 / echo_p50:.1f}× the echo p50)")
    return rows


class Traffic:
    """Every message the clients publish, counted by kind (a subject with its ids left out): what
    an idle fleet sends, as the model of docs/scale.md needs it. Server-internal traffic (routes,
    JetStream's replication) is not seen here; the nats-servers' CPU stands for it."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.fleet = fleet
        self.ids = {n.node_id for n in fleet.nodes}
        self.counts: Counter = Counter()
        self.sizes: Counter = Counter()
        self.subscription = None

    def kind(self, subject: str) -> str:
        tokens = subject.split(".")
        if tokens[0] == "_INBOX":
            return "_INBOX (replies)"
        if tokens[0] == "$JS" and tokens[1] == "ACK":
            return "$JS.ACK (consumer acks)"
        if tokens[:2] == ["$JS", "API"]:
            return ".".join(tokens[:4])
        return ".".join("<id>" if t in self.ids or len(t) == 56 else t for t in tokens)

    async def start(self) -> None:
        async def seen(msg) -> None:
            kind = self.kind(msg.subject)
            self.counts[kind] += 1
            self.sizes[kind] += len(msg.data) + sum(len(k) + len(v) for k, v in (msg.headers or {}).items())
        self.subscription = await self.fleet.probe.subscribe(">", cb=seen)
        await self.fleet.probe.flush()

    async def stop(self, elapsed: float, nodes: int) -> dict:
        await self.subscription.unsubscribe()
        rows = {}
        for kind, count in self.counts.most_common(12):
            rows[f"  {kind}"] = (f"{count / elapsed / nodes:.3f} msgs/s per node, "
                                 f"{self.sizes[kind] / count:.0f} B each")
        return rows


async def _answers(nc, subject: str) -> bool:
    try:
        await nc.request(subject, b"x", timeout=0.5)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return True


class AuctionCounter:
    """Every auction request on the bus and the replies to it: the fan-out of a placement."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.fleet = fleet
        self.requests = 0
        self.times: list[float] = []
        self.reply_subjects: set[str] = set()
        self.inbox: Counter = Counter()
        self.subscriptions = []

    async def start(self) -> None:
        probe = self.fleet.probe
        auction = subjects.control(subjects.DEFAULT_NAMESPACE, subjects.AUCTION)

        async def request(msg) -> None:
            self.requests += 1
            self.times.append(time.monotonic())
            if msg.reply:
                self.reply_subjects.add(msg.reply)

        async def reply(msg) -> None:
            self.inbox[msg.subject] += 1
        self.subscriptions = [await probe.subscribe(auction, cb=request),
                              await probe.subscribe(f"{auction}.*", cb=request),
                              await probe.subscribe("_INBOX.>", cb=reply)]
        await probe.flush()

    async def stop(self) -> tuple[int, int, int]:
        """(auction requests, distinct auctions, replies to them)."""
        await self.fleet.probe.flush()
        for subscription in self.subscriptions:
            await subscription.unsubscribe()
        replies = sum(self.inbox[subject] for subject in self.reply_subjects)
        return self.requests, len(self.reply_subjects), replies


class Starts:
    """The arrival times of the app's ``workload_started`` events, by node."""

    def __init__(self, fleet: BenchFleet) -> None:
        self.fleet = fleet
        self.times: list[tuple[float, str]] = []
        self.subscription = None

    async def start(self) -> None:
        async def started(msg) -> None:
            data = json.loads(msg.data).get("data", {})
            if data.get("name") == WORKLOAD:
                self.times.append((time.monotonic(), data.get("node_id", "")))
        self.subscription = await self.fleet.probe.subscribe(
            subjects.events(subjects.DEFAULT_NAMESPACE, "workload_started"), cb=started)
        await self.fleet.probe.flush()

    async def nth(self, count: int, since: float, timeout: float, not_on: set[str] = frozenset()) -> float:
        """The time the ``count``-th start after ``since`` (on a node not in ``not_on``) arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = [t for t, node_id in self.times if t >= since and node_id not in not_on]
            if len(after) >= count:
                return sorted(after)[count - 1]
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{count} starts did not come within {timeout:.0f}s")


async def direct_deploys(fleet: BenchFleet, artifact: Artifact, count: int) -> float:
    """The baseline of placement: ``count`` DEPLOYs straight to the nodes, all at once, round-robin."""
    ids = [n.node_id for n in fleet.nodes]
    request = DeployRequest(name="direct", type="javascript", artifact=artifact,
                            triggers=[Trigger(subject="bench.direct")])
    started = time.monotonic()
    placed = await asyncio.gather(*(fleet.client.deploy(ids[i % len(ids)], request) for i in range(count)))
    elapsed = time.monotonic() - started
    await asyncio.gather(*(fleet.client.undeploy(w.id) for w in placed))
    return elapsed


async def placement(fleet: BenchFleet, starts: Starts, replicas: int) -> dict:
    workload = await js_workload(fleet.client, fleet.root, replicas, WORKLOAD)
    auctions = AuctionCounter(fleet)
    await auctions.start()
    applied_at = time.monotonic()
    await fleet.store.apply(AppSpec(name=APP, workloads=[workload]), None)
    last_started = await starts.nth(replicas, applied_at, timeout=120)
    listed_at, _ = await fleet.stable_count(replicas, timeout=120, app=APP, interval=0.05)
    requests, distinct, replies = await auctions.stop()
    seconds = last_started - applied_at
    if TRACE:
        offsets = sorted(t - applied_at for t, _ in starts.times if t >= applied_at)
        print("    starts after apply, s:", " ".join(f"{o:.2f}" for o in offsets))
        print("    auctions after apply, s:", " ".join(f"{t - applied_at:.2f}" for t in auctions.times))
    # After, so that it meets the function agents the placement started: the floor of a deploy.
    baseline = await direct_deploys(fleet, workload.artifact, replicas)
    return {
        f"baseline: {replicas} DEPLOYs straight to the nodes (agents up), s": baseline,
        f"apply to the {replicas}th workload_started, s": seconds,
        "placements/s through the reconciler": replicas / seconds,
        "ratio to the direct DEPLOYs": seconds / baseline,
        f"apply to the nodes listing {replicas} running (WPING), s": listed_at - applied_at,
        "auction requests (subjects asked)": requests,
        "auctions": distinct,
        "replies per auction": replies / distinct if distinct else 0.0,
        "replies per placement": replies / replicas,
    }


async def loss(fleet: BenchFleet, starts: Starts, replicas: int, kill: int) -> dict:
    before = await fleet.running(APP)
    holder = await fleet.holder()
    per_node = Counter(before.values())
    others = sorted((n for n in per_node if n != holder), key=lambda n: -per_node[n])
    victims = [holder, *others[:kill - 1]]
    lost = sum(per_node[v] for v in victims)
    registered = [fleet.node(v) for v in victims]
    killed_at = time.monotonic()
    await asyncio.gather(*(node.kill() for node in registered))

    async def gone() -> bool:
        try:
            return not any([await fleet.registered(v) for v in victims])
        except TRANSIENT:
            return False

    async def new_holder() -> str | None:
        current = await fleet.holder()
        return current if current not in (None, *victims) else None
    detect = asyncio.create_task(fleet.until(gone, 60, "the killed nodes left the registry"))
    elect = asyncio.create_task(fleet.until(new_holder, 60, "another node took the lease"))
    detected, elected = [], []
    detect.add_done_callback(lambda _: detected.append(time.monotonic()))
    elect.add_done_callback(lambda _: elected.append(time.monotonic()))
    last_back = await starts.nth(lost, killed_at, timeout=120, not_on=set(victims))
    first_back = await starts.nth(1, killed_at, timeout=1, not_on=set(victims))
    stable_at, _ = await fleet.stable_count(replicas, timeout=120, app=APP, interval=0.1)
    await asyncio.gather(detect, elect)
    after = await fleet.running(APP)
    assert len(after) == replicas and not set(after.values()) & set(victims), "replicas on the dead nodes"
    return {
        "nodes killed (the reconciler's among them)": len(victims),
        "replicas lost": lost,
        "kill to the dead nodes gone from the registry, s": detected[0] - killed_at,
        "kill to a new reconciler, s": elected[0] - killed_at,
        "kill to the first replacement started, s": first_back - killed_at,
        "kill to every replacement started, s": last_back - killed_at,
        f"kill to {replicas} listed running, stable {STABLE_S:.0f} s (start of the stretch), s": stable_at - killed_at,
    }


async def main(nodes: int, replicas: int, kill: int, idle: float, rounds: int, gathers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        fleet = BenchFleet(root, DEFAULT_TIMINGS, size=nodes)
        monitor = Monitor(fleet)
        started = time.monotonic()
        try:
            await fleet.start()
            report(f"{nodes} `nex node up` processes on a 3-server cluster, node default timings",
                   {"cluster + nodes up, s": time.monotonic() - started})
            report(f"idle cost per node, over {idle:.0f} s, no workloads", await idle_cost(fleet, monitor, idle))
            report("control latency (the bench's client homed on the first server)",
                   await control_latency(fleet, rounds, gathers))
            starts = Starts(fleet)
            await starts.start()
            report(f"placement of an app of {replicas} JavaScript replicas through the reconciler",
                   await placement(fleet, starts, replicas))
            report(f"loss of {kill} of {nodes} nodes at once", await loss(fleet, starts, replicas, kill))
        finally:
            await fleet.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=60)
    parser.add_argument("--kill", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    parser.add_argument("--rounds", type=int, default=10, help="PING and INFO rounds over every node")
    parser.add_argument("--gathers", type=int, default=50, help="fleet-wide PINGs and WPINGs")
    parser.add_argument("--trace", action="store_true", help="print the start times of the replicas")
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.replicas, args.kill, args.idle, args.rounds, args.gathers))
