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

from roundtrip import ECHO_SUBJECT, echo_process, function_through_node, measure, print_comparison

from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime

SOURCE = "(subject, payload) => 'hello ' + subject"


def write_script(directory: Path) -> Path:
    script = directory / "hello.js"
    script.write_text(SOURCE)
    return script


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
        asyncio.run(function_through_node("javascript", write_script, args.runs, args.sequential, args.concurrent,
                                          args.parallel, args.node_arg))
    else:
        asyncio.run(runtime_alone(args.sequential, args.concurrent, args.parallel))
