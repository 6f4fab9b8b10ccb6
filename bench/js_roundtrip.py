"""Request round trip: a trivial JavaScript function vs a bare nats-py echo responder.

    .venv/bin/python bench/js_roundtrip.py [--sequential 5000] [--concurrent 20000] [--parallel 64]

Both responders run in their own process on one nats-server started here: the
function in the JavaScript agent (through JavaScriptRuntime), the echo in a small
nats-py script. Prints p50/p99 of sequential requests, the throughput of a
concurrent phase, and the ratios function/echo.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from roundtrip import ECHO_SUBJECT, echo_process, measure, print_comparison

from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime


async def main(sequential: int, concurrent: int, parallel: int) -> None:
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
                script.write_text("(subject, payload) => 'hello ' + subject")
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
    print_comparison("js", bare, function, sequential, concurrent, parallel)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.sequential, args.concurrent, args.parallel))
