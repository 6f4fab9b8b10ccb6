"""Python functions: call round trip against the bare nats-py echo, deploy to first reply from a
cached build, and the memory of idle Python functions.

    .venv/bin/python bench/python_function.py [--rounds 3] [--sequential 2000] [--concurrent 5000]
                                              [--deploys 5] [--idle 10]

One nats-server and one `nex node up` process (plain processes), started here. The
function is the smallest Python one (``return b"hello " + payload``), built once with
componentize-py (the build is not timed: see its cache) and deployed from a file:// artifact.

- **call**: p50/p99 of sequential requests and the throughput of a concurrent phase,
  the function and the echo measured in turn, ``--rounds`` times; medians of the rounds,
  and the ratios function/echo.
- **deploy to first reply**: the build found in the cache (``build_function``), the
  DEPLOY, and the first reply, with the node's compiled component cached (the first
  deploy, which compiles it, is shown apart); median of ``--deploys``.
- **memory**: the wasm agent's RSS (and PSS) before and after ``--idle`` more copies of the
  function are deployed and called once each, per copy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import children_of, nats_and_node, rss_bytes
from deploy_latency import undeploy
from roundtrip import ECHO_SUBJECT, Figures, echo_process, measure, print_comparison

from nex.pyfunc import build_function

SOURCE = 'def handle(subject, payload):\n    return b"hello " + payload\n'


async def deploy(nc, node_id: str, body: dict, timeout: float = 10) -> dict:
    msg = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}", json.dumps(body).encode(), timeout=timeout)
    reply = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])
    return reply


def artifact(path: Path) -> dict:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def pss_bytes(pid: int) -> int:
    """Proportional set size: pages shared with other mappings (the compiled code of one file
    mapped once per function) counted once, split among them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def wasm_agent(node_pid: int) -> int:
    for pid in children_of(node_pid):
        if b"nex.agent.wasm" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError("no wasm agent under the node")


def median_figures(rounds: list[Figures]) -> Figures:
    return Figures(statistics.median(f.p50_us for f in rounds), statistics.median(f.p99_us for f in rounds),
                   statistics.median(f.throughput for f in rounds))


async def main(rounds: int, sequential: int, concurrent: int, parallel: int, deploys: int, idle: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "hello.py"
        source.write_text(SOURCE)
        cache = Path(tmp) / "builds"
        build_started = time.perf_counter()
        built = build_function(source, cache_dir=cache)
        build_s = time.perf_counter() - build_started
        size_mib = built.path.stat().st_size / 2**20
        async with nats_and_node(["--sandbox", "none"], artifact_root=cache) as (server, nc, node_id, node_pid):
            async with echo_process(server.url):
                started = time.perf_counter()
                first = await deploy(nc, node_id, {"name": "hello", "type": "wasm", "artifact": artifact(built.path),
                                                   "triggers": [{"subject": "bench.hello"}]}, timeout=300)
                assert (await nc.request("bench.hello", b"x", timeout=30)).data == b"hello x"
                first_deploy_s = time.perf_counter() - started

                echo_rounds, function_rounds = [], []
                for _ in range(rounds):
                    echo_rounds.append(await measure(nc, ECHO_SUBJECT, sequential, concurrent, parallel))
                    function_rounds.append(await measure(nc, "bench.hello", sequential, concurrent, parallel))
                await undeploy(nc, first["id"])

                first_replies, lookups = [], []
                for i in range(deploys):
                    started = time.perf_counter()
                    cached = build_function(source, cache_dir=cache)
                    looked_up = time.perf_counter()
                    assert cached.cached
                    workload = await deploy(nc, node_id, {
                        "name": f"again{i}", "type": "wasm", "artifact": artifact(cached.path),
                        "triggers": [{"subject": f"bench.again{i}"}]})
                    assert (await nc.request(f"bench.again{i}", b"x", timeout=10)).data == b"hello x"
                    first_replies.append(time.perf_counter() - started)
                    lookups.append(looked_up - started)
                    await undeploy(nc, workload["id"])

                agent = wasm_agent(node_pid)
                keep = await deploy(nc, node_id, {"name": "idle0", "type": "wasm", "artifact": artifact(built.path),
                                                  "triggers": [{"subject": "bench.idle0"}]})
                await nc.request("bench.idle0", b"x", timeout=10)
                before, before_pss = rss_bytes(agent), pss_bytes(agent)
                for i in range(1, idle + 1):
                    await deploy(nc, node_id, {"name": f"idle{i}", "type": "wasm", "artifact": artifact(built.path),
                                               "triggers": [{"subject": f"bench.idle{i}"}]})
                    await nc.request(f"bench.idle{i}", b"x", timeout=10)
                after, after_pss = rss_bytes(agent), pss_bytes(agent)
                del keep

    print(f"build (componentize-py, not cached): {build_s:.1f} s, component {size_mib:.1f} MiB")
    print(f"medians of {rounds} rounds:")
    print_comparison("python", median_figures(echo_rounds), median_figures(function_rounds),
                     sequential, concurrent, parallel)
    print(f"first deploy to first reply (compiles the component): {first_deploy_s * 1e3:.0f} ms")
    print(f"deploy to first reply from a cached build (median of {deploys}): "
          f"{statistics.median(first_replies) * 1e3:.0f} ms, of which the build cache lookup "
          f"{statistics.median(lookups) * 1e3:.1f} ms")
    print(f"wasm agent RSS: {before / 2**20:.0f} MiB with 1 Python function, {after / 2**20:.0f} MiB with {idle + 1}:"
          f" {(after - before) / idle / 2**20:.2f} MiB per idle Python function")
    print(f"wasm agent PSS: {before_pss / 2**20:.0f} MiB with 1, {after_pss / 2**20:.0f} MiB with {idle + 1}:"
          f" {(after_pss - before_pss) / idle / 2**20:.2f} MiB per idle Python function")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--deploys", type=int, default=5)
    parser.add_argument("--idle", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.sequential, args.concurrent, args.parallel, args.deploys, args.idle))
