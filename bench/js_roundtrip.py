"""Request round trip: a trivial JavaScript function vs a bare nats-py echo responder.

    .venv/bin/python bench/js_roundtrip.py [--mode node|runtime] [--runs 3] [--sequential 5000]
                                           [--concurrent 20000] [--parallel 64]

``--mode node`` (the default) measures what users get: a `nex node up` process with its
embedded nats-server and JetStream, the function deployed through the control API, the
echo in a process of its own, both measured in alternating blocks of each of ``--runs``
runs; it prints each run, the medians of the ratios function/echo, and how many
messages JetStream stored per 1,000 calls. ``--mode runtime`` measures the engine alone:
JavaScriptRuntime started here on a nats-server without JetStream, the echo, then the
function.

Targets (issue 19, node mode, medians of 3 runs): p50 at most 1.3x the echo's,
throughput at least 70 % of the echo's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from roundtrip import (ECHO_SUBJECT, cpu_per_call, deploy_function, echo_process, echo_ready, interleaved,
                       kept_messages, measure, node_process, print_comparison, print_cpu, print_runs,
                       processes_of)

from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime

SOURCE = "(subject, payload) => 'hello ' + subject"


async def through_node(runs: int, sequential: int, concurrent: int, parallel: int, node_args: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        script = Path(tmp) / "hello.js"
        script.write_text(SOURCE)
        async with node_process(Path(tmp) / "node", Path(tmp), node_args) as node:
            nc = await connect(ConnectOptions(servers=[node.url]))
            try:
                async with echo_process(node.url) as echo_pid:
                    await echo_ready(nc)
                    await deploy_function(nc, node.node_id, "javascript", script, "bench.hello", "hello")
                    stored = await kept_messages(nc)
                    results = [await interleaved(nc, "bench.hello", sequential, concurrent, parallel)
                               for _ in range(runs)]
                    await asyncio.sleep(6)  # the last function_stats (every 5 s) is part of the cost
                    stored = await kept_messages(nc) - stored
                    pids = {"node": node.pid, **processes_of(node.pid), "echo": echo_pid}
                    cpu_echo = await cpu_per_call(nc, ECHO_SUBJECT, sequential, pids)
                    cpu_function = await cpu_per_call(nc, "bench.hello", sequential, pids)
            finally:
                await nc.close()
    calls = runs * (sequential + concurrent + 200)
    print_runs("js", results, stored / calls * 1000, sequential, concurrent, parallel)
    print_cpu("js", cpu_echo, cpu_function)


async def runtime_alone(sequential: int, concurrent: int, parallel: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0, jetstream=False)
        await server.start()
        options = ConnectOptions(servers=[server.url])
        runtime = JavaScriptRuntime(RuntimeContext(node_id="BENCH", state_dir=Path(tmp),
                                                   connect_options=options))
        nc = await connect(options)
        try:
            async with echo_process(server.url):
                script = Path(tmp) / "hello.js"
                script.write_text(SOURCE)
                await runtime.start(WorkloadSpec(
                    id="hello", name="hello", namespace="bench", type=WorkloadType.JAVASCRIPT,
                    lifecycle=Lifecycle.FUNCTION, artifact_path=script, work_dir=Path(tmp),
                    triggers=[Trigger(subject="bench.hello")]), lambda stream, line: None)
                bare = await measure(nc, ECHO_SUBJECT, sequential, concurrent, parallel)
                function = await measure(nc, "bench.hello", sequential, concurrent, parallel)
        finally:
            await nc.close()
            await runtime.close()
            await server.stop()
    print("the runtime alone, on a nats-server without JetStream:")
    print_comparison("js", bare, function, sequential, concurrent, parallel)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["node", "runtime"], default="node")
    parser.add_argument("--runs", type=int, default=3, help="node mode: runs, each interleaved")
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                        help="node mode: an argument for `nex node up` (repeat it)")
    args = parser.parse_args()
    if args.mode == "node":
        asyncio.run(through_node(args.runs, args.sequential, args.concurrent, args.parallel, args.node_arg))
    else:
        asyncio.run(runtime_alone(args.sequential, args.concurrent, args.parallel))
