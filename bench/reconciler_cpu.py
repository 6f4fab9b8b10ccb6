"""The reconciler's cost with 1,000 desired workloads, and placements/s through it.

The fleet of bench/convergence.py (a 3-server cluster, 3 `nex node up` processes,
node default timings unless ``--short``): APPS apps of REPLICAS JavaScript function
replicas each (1,000 in all by default) are applied at once, and the bench times
apply → every replica running (WPING), the placement rate through the reconciler.

Then, with nothing changing, it reads the CPU seconds (utime + stime in /proc; the
node process alone, not its function agent) of every node over a WINDOW_S window
while the bench itself sleeps. Every node writes its registry entry, answers the
others' traffic and runs its agent's bookkeeping; only the lease holder also
reconciles. The reconciler's own share is the holder's CPU minus the mean of the
two others', given as % of one core.

Last, one planner pass in-process: ``nex.fleet.planner.plan`` on the same app
records and node records read from KV, timed as a median (memory carried from
pass to pass, as the reconciler does), next to the time of the two KV reads that
feed a pass.

Run: .venv/bin/python bench/reconciler_cpu.py [--apps 10] [--replicas 100] [--window 30] [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from common import cpu_seconds, report
from fleet import DEFAULTS, SHORT, BenchFleet, js_workload

from nex.api.apps import AppSpec
from nex.fleet.planner import FleetMemory, Settings, plan

PLANNER_PASSES = 30


async def main(apps: int, replicas: int, window: float, short: bool) -> None:
    timings = SHORT if short else DEFAULTS
    total = apps * replicas
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        root = Path(tmp)
        fleet = BenchFleet(root, timings)
        try:
            await fleet.start()
            specs = [AppSpec(name=f"app{i}", workloads=[await js_workload(fleet.client, root, replicas, f"fn{i}")])
                     for i in range(apps)]

            applied_at = time.monotonic()
            for spec in specs:
                await fleet.store.apply(spec, applied_by=None)
            converged_at, _ = await fleet.stable_count(total, timeout=600, app=None, interval=0.5)
            converge_s = converged_at - applied_at

            holder = await fleet.holder()
            before = {n.node_id: cpu_seconds(n.pid) for n in fleet.nodes}
            started = time.monotonic()
            await asyncio.sleep(window)
            elapsed = time.monotonic() - started
            used = {n.node_id: cpu_seconds(n.pid) - before[n.node_id] for n in fleet.nodes}
            still = len(await fleet.running(None))

            records = await fleet.store.list()
            read_s = []
            for _ in range(5):
                t0 = time.perf_counter()
                await fleet.store.list()
                nodes = await fleet.store.nodes()
                read_s.append(time.perf_counter() - t0)
            memory = FleetMemory()
            plan(records, nodes, memory, time.time(), Settings())  # the first pass of a term
            pass_s = []
            for _ in range(PLANNER_PASSES):
                t0 = time.perf_counter()
                decided = plan(records, nodes, memory, time.time(), Settings())
                pass_s.append(time.perf_counter() - t0)
            assert not decided.places and not decided.stops, "a converged fleet needs no action"
        finally:
            await fleet.close()

    others = [cpu for node_id, cpu in used.items() if node_id != holder]
    share = used[holder] - statistics.mean(others)
    config = ", ".join(f"{k} {v}" for k, v in timings.items())
    report(f"reconciler with {total} desired workloads ({apps} apps x {replicas} JavaScript functions), "
           f"3 node processes on a 3-server cluster ({config})", {
               "apply to all running, s": converge_s,
               "placements/s through the reconciler": total / converge_s,
               "running at the end of the window": still,
               "window s": elapsed,
               "reconciler's node CPU s": used[holder],
               "other nodes' CPU s": ", ".join(f"{c:.2f}" for c in others),
               "reconciler's node, % of one core": used[holder] / elapsed * 100,
               "other nodes, % of one core (mean)": statistics.mean(others) / elapsed * 100,
               "reconciler's own share, % of one core": share / elapsed * 100,
               "planner pass ms (median, in-process)": statistics.median(pass_s) * 1000,
               "KV reads of a pass ms (apps + registry, median)": statistics.median(read_s) * 1000,
           })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--short", action="store_true", help="the chaos tests' short fleet timings")
    args = parser.parse_args()
    asyncio.run(main(args.apps, args.replicas, args.window, args.short))
