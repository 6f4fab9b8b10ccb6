"""The registry and the reconciler's pass at fleet sizes no machine here runs as processes.

One nats-server (JetStream, file storage, one replica) and NEX_NODES filled with N
node records shaped like a real node's (tags, an xkey, resources, runtimes, and
REPLICAS_PER_NODE app replicas each), for N in --sizes. For each N:

- **registry writes**: N puts of those records, 64 in flight, as puts/s. A fleet of
  N nodes writes N / registry_interval_s of them per second, so this rate over 0.5
  is the fleet size one such stream leader carries at the default 2 s interval;
- **a registry read** as the reconciler makes it every pass (``AppStore.registry``:
  stream info, an ordered consumer of the last value of each key, the records
  parsed and put together), median ms;
- **a planner pass** over those nodes and an app of REPLICAS_PER_NODE workloads of N
  replicas each (one of each on every node), all placed and running (the steady state: nothing to do), median ms, in-process;
- the bytes of one record.

Baseline in the same run: bare nats-py publishes of the same bytes with a flush
every 64, as msgs/s (what the connection alone carries).

Run: .venv/bin/python bench/registry_scale.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nkeys
from common import report
from nats.js.api import KeyValueConfig, StorageType

from nex.api import subjects
from nex.api.apps import AppRecord, AppSpec, AppWorkload
from nex.api.models import (
    AppRef, Artifact, Lifecycle, NodePing, NodeState, Resources, Trigger, WorkloadState, WorkloadType,
)
from nex.api.records import NodeRecord, ReplicaRecord
from nex.connection import ConnectOptions, connect
from nex.fleet.planner import FleetMemory, Settings, plan
from nex.fleet.store import AppStore
from nex.natsserver import NatsServer
from nex.security.xkeys import XKey

REPLICAS_PER_NODE = 3
IN_FLIGHT = 64
READS = 5
PASSES = 5


def node_id() -> str:
    """A fresh node id, made as a node makes its own (nex.node.identity)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)).public_key.decode()


def records(count: int, workloads: list[AppWorkload]) -> list[NodeRecord]:
    """``count`` nodes, each running one replica of each workload."""
    started = datetime.now(timezone.utc)
    xkey = XKey.create().public
    revisions = [w.revision() for w in workloads]
    found = []
    for i in range(count):
        nid = node_id()
        replicas = [ReplicaRecord(id=f"{nid[:8]}{i:06d}{r}", name=workload.name, namespace="default",
                                  type=WorkloadType.JAVASCRIPT, lifecycle=Lifecycle.FUNCTION,
                                  state=WorkloadState.RUNNING, app=AppRef(name="scale", revision=revisions[r]),
                                  started_at=started) for r, workload in enumerate(workloads)]
        found.append(NodeRecord(
            node=NodePing(node_id=nid, name=f"host-{i}", version="0.1.0", api_version="1", uptime_s=3600.0,
                          state=NodeState.RUNNING, tags={"zone": "abc"[i % 3], "rack": f"r{i % 40}"},
                          xkey=xkey, dev_mode=False, reconciles=True, workload_count=REPLICAS_PER_NODE),
            resources=Resources(cpus=8, memory_bytes=32 << 30, memory_available_bytes=24 << 30, load_1m=0.4),
            runtimes=[WorkloadType.NATIVE, WorkloadType.JAVASCRIPT, WorkloadType.WASM, WorkloadType.OCI],
            workloads=replicas, seq=1234))
    return found


async def bounded(count: int, one) -> float:
    """Seconds to run ``one(i)`` for every i, IN_FLIGHT at a time."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def run(i: int) -> None:
        async with limit:
            await one(i)
    started = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(count)))
    return time.perf_counter() - started


async def one_size(nc, size: int) -> dict:
    js = nc.jetstream(timeout=30)
    try:
        await js.delete_key_value(subjects.NODES_BUCKET)
    except Exception:  # not there yet
        pass
    kv = await js.create_key_value(KeyValueConfig(bucket=subjects.NODES_BUCKET, history=1, ttl=3600,
                                                  storage=StorageType.FILE))
    workloads = [AppWorkload(name=f"fn{r}", type="javascript", replicas=size,
                             artifact=Artifact(uri="nats://NEX_ARTIFACTS/fn", sha256="0" * 64),
                             triggers=[Trigger(subject=f"scale.fn{r}")]) for r in range(REPLICAS_PER_NODE)]
    nodes = records(size, workloads)
    values = [r.model_dump_json(exclude_none=True).encode() for r in nodes]

    async def publish(i: int) -> None:
        await nc.publish("bench.baseline", values[i])
        if i % IN_FLIGHT == 0:
            await nc.flush()
    baseline_s = await bounded(size, publish)
    puts_s = await bounded(size, lambda i: kv.put(nodes[i].node.node_id, values[i]))

    store = AppStore(nc, timeout=30)
    reads = []
    for _ in range(READS):
        started = time.perf_counter()
        read = await store.registry()
        reads.append(time.perf_counter() - started)
    assert len(read.records) == size, f"read {len(read.records)} of {size} records"

    app = AppRecord(spec=AppSpec(name="scale", workloads=workloads), version=1,
                    applied_at=datetime.now(timezone.utc))
    memory = FleetMemory()
    plan([app], read.records, memory, time.time(), Settings())  # the first pass of a term
    passes = []
    for _ in range(PASSES):
        started = time.perf_counter()
        decided = plan([app], read.records, memory, time.time(), Settings())
        passes.append(time.perf_counter() - started)
    assert not decided.places and not decided.stops, "a converged fleet needs no action"
    return {
        "record bytes": len(values[0]),
        "baseline: bare publishes of a record, msgs/s": size / baseline_s,
        "registry puts/s (64 in flight)": size / puts_s,
        "nodes one stream leader carries at a 2 s interval": 2 * size / puts_s,
        "registry read ms (median)": statistics.median(reads) * 1000,
        "planner pass ms (median)": statistics.median(passes) * 1000,
    }


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0)
        await server.start()
        nc = await connect(ConnectOptions(servers=[server.url]))
        try:
            for size in sizes:
                report(f"NEX_NODES with {size:,} nodes of {REPLICAS_PER_NODE} app replicas each (one server)",
                       await one_size(nc, size))
        finally:
            await nc.close()
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")]))
