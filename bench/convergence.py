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
  back-to-N minus detection. A node whose connection is gone is found before its
  key expires (the reconciler PINGs a node whose key stopped moving, and no
  responders means gone: nex.fleet.liveness), so the expiry no longer gates the
  replacement, which comes out negative.

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
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import report
from fleet import APP, DEFAULTS, NODES, SAMPLE_S, SHORT, TRANSIENT, BenchFleet, js_workload, native_workload

from nex.api import subjects
from nex.api.apps import AppSpec

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
