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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime

ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()
asyncio.run(main())
"""


@dataclass
class Figures:
    p50_us: float
    p99_us: float
    throughput: float


async def measure(nc: Client, subject: str, sequential: int, concurrent: int, parallel: int) -> Figures:
    for _ in range(200):
        await nc.request(subject, b"ping", timeout=5)
    latencies = []
    for _ in range(sequential):
        started = time.perf_counter()
        await nc.request(subject, b"ping", timeout=5)
        latencies.append((time.perf_counter() - started) * 1e6)
    quantiles = statistics.quantiles(latencies, n=100)

    remaining = concurrent

    async def requester() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await nc.request(subject, b"ping", timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(requester() for _ in range(parallel)))
    return Figures(quantiles[49], quantiles[98], concurrent / (time.perf_counter() - started))


async def main(sequential: int, concurrent: int, parallel: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0, jetstream=False)
        await server.start()
        options = ConnectOptions(servers=[server.url])
        echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, server.url,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        runtime = JavaScriptRuntime(RuntimeContext(node_id="BENCH", state_dir=Path(tmp),
                                                   connect_options=options))
        nc = await connect(options)
        try:
            assert echo.stdout is not None and await echo.stdout.readline() == b"ready\n"
            script = Path(tmp) / "hello.js"
            script.write_text("(subject, payload) => 'hello ' + subject")
            await runtime.start(WorkloadSpec(
                id="hello", name="hello", namespace="bench", type=WorkloadType.JAVASCRIPT,
                lifecycle=Lifecycle.FUNCTION, artifact_path=script, work_dir=Path(tmp),
                triggers=[Trigger(subject="bench.hello")]), lambda stream, line: None)
            bare = await measure(nc, "bench.echo", sequential, concurrent, parallel)
            function = await measure(nc, "bench.hello", sequential, concurrent, parallel)
        finally:
            await nc.close()
            await runtime.close()
            if echo.returncode is None:
                echo.stdin.close()  # type: ignore[union-attr]
                await echo.wait()
            await server.stop()
    print(f"{sequential} sequential requests, then {concurrent} with {parallel} in flight")
    print(f"{'':<18}{'p50 us':>10}{'p99 us':>10}{'req/s':>10}")
    for name, figures in (("nats-py echo", bare), ("javascript", function)):
        print(f"{name:<18}{figures.p50_us:>10.0f}{figures.p99_us:>10.0f}{figures.throughput:>10.0f}")
    print(f"{'ratio js/echo':<18}{function.p50_us / bare.p50_us:>10.2f}{function.p99_us / bare.p99_us:>10.2f}"
          f"{function.throughput / bare.throughput:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.sequential, args.concurrent, args.parallel))
