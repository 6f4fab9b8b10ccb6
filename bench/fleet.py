"""The fleet of the fleet benches: a 3-server cluster (JetStream R3), `nex node up` processes
homed round-robin on its servers, a client and the app store; what they share.

bench/convergence.py, bench/reconciler_cpu.py, bench/placement.py --cluster and
bench/fleet_scale.py run on it. The nodes are the test suite's real processes
(tests/fleet_fixtures.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from common import ROOT, build_static

sys.path.insert(0, str(ROOT / "tests"))
from fleet_fixtures import Cluster, NodeProcess  # noqa: E402  (the test suite's real-process fleet)

from nex.api import subjects  # noqa: E402
from nex.api.apps import AppWorkload  # noqa: E402
from nex.api.errors import NexError  # noqa: E402
from nex.api.models import Trigger, WorkloadState  # noqa: E402
from nex.client import NexClient  # noqa: E402
from nex.connection import ConnectOptions  # noqa: E402
from nex.fleet.store import AppStore  # noqa: E402

APP = "bench"
NODES = 3  # the default size of a bench fleet
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

    def __init__(self, root: Path, timings: dict[str, Any], size: int = NODES) -> None:
        self.root = root
        self.timings = timings
        self.size = size
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
        for i in range(self.size):
            self.nodes.append(NodeProcess(f"node{i + 1}", self.cluster.urls_from(i % len(self.cluster.servers)), self.root / f"node{i + 1}",
                                          self.probe, config=dict(self.timings)))
        # Started a few at a time: twenty Python processes importing at once on two cores would
        # keep each from answering its first PING in time.
        for first in range(0, self.size, 4):
            await asyncio.gather(*(n.start(timeout=60) for n in self.nodes[first:first + 4]))
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
