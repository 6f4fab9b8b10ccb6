"""Self-healing: from a node's SIGKILL to its replicas running again elsewhere.

A 3-server nats-server cluster (JetStream R3, as the issue means "across the
cluster") and 3 `nex node up` processes, one homed on each server, all standing
for the reconciler lease. An app of N replicas (JavaScript functions, or with
``--native`` quiet native processes) is applied and left to converge. Then, each
round, the node holding the most replicas that is not the reconciler's is
SIGKILLed, and the bench watches two things at once:

- detection: the node's key vanishing from NEX_NODES (the registry's TTL,
  ``node_timeout_s`` after its last write);
- back to N: the nodes themselves (WPING) list N running replicas of the app,
  and still list N for ``STABLE_S`` seconds (the time reported is the start of
  that stretch); the first replacement's arrival is noted too. Replacement is
  back-to-N minus detection: the reconciler's grace for a missing node
  (2 × ``registry_interval_s``), its next pass, the auctions and deploys.

The killed node is then started again (empty: it sweeps what it ran) and the next
round kills another one. The figures are medians over the rounds, printed with
the fleet timings used: short ones by default (those of the chaos tests), the
node defaults with ``--defaults``.

Run: .venv/bin/python bench/convergence.py [--replicas N] [--rounds R] [--native] [--defaults] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from common import ROOT, build_static, report

sys.path.insert(0, str(ROOT / "tests"))
from fleet_fixtures import Cluster, NodeProcess  # noqa: E402  (the test suite's real-process fleet)

from nex.api import subjects  # noqa: E402
from nex.api.apps import AppSpec, AppWorkload  # noqa: E402
from nex.api.errors import NexError  # noqa: E402
from nex.api.models import Trigger, WorkloadState  # noqa: E402
from nex.client import NexClient  # noqa: E402
from nex.connection import ConnectOptions  # noqa: E402
from nex.fleet.store import AppStore  # noqa: E402

APP = "bench"
NODES = 3
STABLE_S = 2.0
SAMPLE_S = 0.1
JS_SOURCE = b"(subject, payload) => 'healed'"
# The chaos tests' timings, and the node's defaults.
# What a sample may meet on a busy machine or during a leader election: it is simply taken again.
TRANSIENT = (NexError, nats.errors.Error, asyncio.TimeoutError)
SHORT = {"registry_interval_s": 0.5, "node_timeout_s": 3.0, "reconcile_interval_s": 0.5, "lease_s": 3.0}
DEFAULTS = {"registry_interval_s": 2.0, "node_timeout_s": 6.0, "reconcile_interval_s": 1.0, "lease_s": 5.0}


class BenchFleet:
    """A cluster, its nodes as processes, a client; what the benches of the fleet share."""

    def __init__(self, root: Path, timings: dict[str, Any]) -> None:
        self.root = root
        self.timings = timings
        self.cluster = Cluster(root / "cluster")
        self.nodes: list[NodeProcess] = []
        self.probe: nats.NATS | None = None
        self.client: NexClient | None = None
        self.store: AppStore | None = None
        self.trace = False  # print every change of the running count, from trace_from
        self.trace_from = time.monotonic()
        self.last_seen: Counter = Counter()

    async def start(self) -> None:
        await self.cluster.start()
        self.probe = await nats.connect(servers=self.cluster.urls_from(0), connect_timeout=2,
                                        reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        for i in range(NODES):
            self.nodes.append(NodeProcess(f"node{i + 1}", self.cluster.urls_from(i), self.root / f"node{i + 1}",
                                          self.probe, config=dict(self.timings)))
        await asyncio.gather(*(n.start() for n in self.nodes))
        self.client = await NexClient.connect(ConnectOptions(servers=self.cluster.urls_from(0)), timeout=15.0)
        self.store = AppStore(self.client.nc)
        await self.until(self.holder, 30, "a node took the reconciler lease")

    async def close(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self.probe is not None:
            await self.probe.close()
        await self.cluster.close()

    def node(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def holder(self) -> str | None:
        try:
            lease = await self.store.lease()
        except TRANSIENT:  # JetStream busy electing: ask again
            return None
        return lease.holder if lease else None

    async def running(self, app: str | None = APP) -> dict[str, str]:
        """Workload id → node id of every running replica (of ``app``; None: of every app), from WPING."""
        live = sum(1 for n in self.nodes if n.running)
        found = await self.client.workloads(wait=2.0, expected_nodes=live)
        if self.trace:
            self.last_seen = Counter((self.node(w.node_id).name, w.state.value) for w in found
                                     if w.app is not None and (app is None or w.app.name == app))
        return {w.id: w.node_id for w in found if w.app is not None and w.state == WorkloadState.RUNNING
                and (app is None or w.app.name == app)}

    async def registered(self, node_id: str) -> bool:
        """Whether the node's key is in NEX_NODES."""
        kv = await self.client.nc.jetstream(timeout=2.0).key_value(subjects.NODES_BUCKET)
        try:
            await kv.get(node_id)
        except nats.js.errors.KeyNotFoundError:
            return False
        return True

    async def stable_count(self, count: int, timeout: float, app: str | None = APP,
                           above: int | None = None, interval: float = SAMPLE_S) -> tuple[float, float | None]:
        """Wait until exactly ``count`` replicas run for STABLE_S. Returns the monotonic time that
        stretch began, and the first time more than ``above`` ran (None when not asked)."""
        deadline = time.monotonic() + timeout
        since: float | None = None
        first_above: float | None = None
        last = None
        while time.monotonic() < deadline:
            sampled_at = time.monotonic()
            try:
                now_running = len(await self.running(app))
            except TRANSIENT:  # a reply lost to a busy machine: sample again
                now_running = -1
            if self.trace and now_running != last:
                seen = ", ".join(f"{name} {state} {n}" for (name, state), n in sorted(self.last_seen.items()))
                print(f"    {sampled_at - self.trace_from:6.2f} s: {now_running} running ({seen})", flush=True)
                last = now_running
            if above is not None and first_above is None and now_running > above:
                first_above = sampled_at
            if now_running == count:
                since = sampled_at if since is None else since
                if time.monotonic() - since >= STABLE_S:
                    return since, first_above
            else:
                since = None
            await asyncio.sleep(interval)
        raise RuntimeError(f"{count} replicas did not run stably within {timeout:.0f}s")

    @staticmethod
    async def until(check, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await check()
            if result:
                return result
            await asyncio.sleep(SAMPLE_S)
        raise RuntimeError(f"not done within {timeout:.0f}s: {what}")


async def js_workload(client: NexClient, root: Path, replicas: int, name: str = "fn") -> AppWorkload:
    source = root / "healed.js"
    source.write_bytes(JS_SOURCE)
    artifact = await client.upload_artifact(source)
    return AppWorkload(name=name, type="javascript", artifact=artifact, replicas=replicas,
                       triggers=[Trigger(subject=f"bench.{name}")])


async def native_workload(client: NexClient, root: Path, replicas: int) -> AppWorkload:
    program = build_static("tests/programs/probe.c", root)  # `probe hog 0`: one line, then it waits quietly
    artifact = await client.upload_artifact(program)
    return AppWorkload(name="svc", type="native", artifact=artifact, argv=["hog", "0"], replicas=replicas)


async def one_round(fleet: BenchFleet, replicas: int) -> dict[str, float]:
    before = await fleet.running()
    holder = await fleet.holder()
    per_node = Counter(before.values())
    victim_id = max((n for n in per_node if n != holder), key=lambda n: per_node[n])
    victim = fleet.node(victim_id)

    detected: list[float] = []

    async def watch_registry() -> None:
        while True:
            try:
                if not await fleet.registered(victim_id):
                    detected.append(time.monotonic())
                    return
            except TRANSIENT:  # JetStream slow to answer: look again
                pass
            await asyncio.sleep(SAMPLE_S / 2)

    stops: Counter = Counter()
    subscription = None
    if fleet.trace:  # why the reconciler stops replicas during the round
        async def stopped(msg) -> None:
            data = json.loads(msg.data).get("data", {})
            stops[(data.get("reason"), data.get("node_id", "")[:8])] += 1
        subscription = await fleet.probe.subscribe(subjects.events("default", "replica_stopped"), cb=stopped)
    killed_at = fleet.trace_from = time.monotonic()
    await victim.kill()
    watcher = asyncio.create_task(watch_registry())
    back_at, first_back = await fleet.stable_count(replicas, timeout=60, above=replicas - per_node[victim_id])
    await asyncio.wait_for(watcher, 30)
    if subscription is not None:
        await subscription.unsubscribe()
        for (reason, node_id), n in sorted(stops.items()):
            print(f"    stopped by the reconciler: {n} on {node_id}: {reason}")
    after = await fleet.running()
    assert victim_id not in after.values() and len(after) == replicas

    await victim.start()  # empty again: ready to be a target, or the next victim
    await fleet.until(lambda: fleet.registered(victim_id), 30, "the restarted node registered")
    detection = detected[0] - killed_at
    total = back_at - killed_at
    if total > 3 * fleet.timings["node_timeout_s"]:  # an outlier: show what the nodes said meanwhile
        for node in fleet.nodes:
            print(node.describe())
        if fleet.trace:  # keep the whole logs: the fleet's tmp dir goes at the end
            keep = Path(tempfile.mkdtemp(prefix="nex-bench-outlier-"))
            for node in fleet.nodes:
                shutil.copy(node.log_path, keep / f"{node.name}.log")
            print(f"    node logs kept in {keep}")
    return {"lost": per_node[victim_id], "detection_s": detection, "replacement_s": total - detection,
            "first_back_s": first_back - killed_at, "total_s": total}


async def main(replicas: int, rounds: int, native: bool, defaults: bool, trace: bool) -> None:
    timings = DEFAULTS if defaults else SHORT
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        fleet = BenchFleet(root, timings)
        fleet.trace = trace
        started = time.monotonic()
        try:
            await fleet.start()
            setup_s = time.monotonic() - started
            workload = await (native_workload if native else js_workload)(fleet.client, root, replicas)
            applied_at = time.monotonic()
            await fleet.store.apply(AppSpec(name=APP, workloads=[workload]), None)
            converged_at, _ = await fleet.stable_count(replicas, timeout=120)
            results = []
            for index in range(rounds):
                result = await one_round(fleet, replicas)
                results.append(result)
                print(f"  round {index + 1}: {result['lost']} replicas lost, detection {result['detection_s']:.2f} s, "
                      f"replacement {result['replacement_s']:.2f} s (first replica back at {result['first_back_s']:.2f} s), "
                      f"total {result['total_s']:.2f} s", flush=True)
        finally:
            await fleet.close()

    what = "native processes" if native else "JavaScript functions"
    config = ", ".join(f"{k} {v}" for k, v in timings.items())
    report(f"node loss to convergence: {replicas} {what}, {NODES} node processes on a 3-server cluster, "
           f"{rounds} rounds ({config})", {
               "cluster + nodes up, s": setup_s,
               "apply to all running (stable), s": converged_at - applied_at,
               "replicas lost per kill (median)": statistics.median(r["lost"] for r in results),
               "detection s (median)": statistics.median(r["detection_s"] for r in results),
               "replacement s (median)": statistics.median(r["replacement_s"] for r in results),
               "kill to first replica back s (median)": statistics.median(r["first_back_s"] for r in results),
               "kill to N running s (median)": statistics.median(r["total_s"] for r in results),
               "kill to N running s (min / max)": f"{min(r['total_s'] for r in results):.2f} / "
                                                  f"{max(r['total_s'] for r in results):.2f}",
           })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--native", action="store_true", help="native processes instead of JS functions")
    parser.add_argument("--defaults", action="store_true", help="the node's default fleet timings (2 s / 6 s / 1 s)")
    parser.add_argument("--trace", action="store_true", help="print each change of the running count")
    args = parser.parse_args()
    asyncio.run(main(args.replicas, args.rounds, args.native, args.defaults, args.trace))
