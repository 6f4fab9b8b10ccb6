"""Request round trip: a trivial WebAssembly function vs a bare nats-py echo responder; and cold start.

    .venv/bin/python bench/wasm_roundtrip.py [--sequential 5000] [--concurrent 20000] [--parallel 64] [--starts 20]

Both responders run in their own process on one nats-server started here: the
function in the wasm agent (through WasmRuntime), the echo in a small nats-py
script. The function is tests/wasm/fn.c built with clang for wasm32-wasi: it
upper-cases its payload (stdin to stdout), a fresh wasmtime instance per call.
Prints p50/p99 of sequential requests, the throughput of a concurrent phase and
the ratios function/echo; then the cold start, start() to the first reply, with
the agent running: compiling the module, and loading it compiled from the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from common import build_wasm
from roundtrip import ECHO_SUBJECT, echo_process, measure, print_comparison

from nats.aio.client import Client

from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.wasm import WasmRuntime

SOURCE = "tests/wasm/fn.c"


def spec_for(module: Path, subject: str) -> WorkloadSpec:
    return WorkloadSpec(id=uuid.uuid4().hex, name="upper", namespace="bench", type=WorkloadType.WASM,
                        lifecycle=Lifecycle.FUNCTION, artifact_path=module, work_dir=module.parent,
                        triggers=[Trigger(subject=subject)])


async def cold_start_ms(runtime: WasmRuntime, nc: Client, module: Path, compile_each_time: bool,
                        starts: int) -> float:
    """Median ms from start() to the first reply, on a running agent."""
    samples = []
    for _ in range(starts):
        if compile_each_time:
            for cached in runtime.cache_dir.glob("*.cwasm"):
                cached.unlink()
        spec = spec_for(module, f"bench.cold.{uuid.uuid4().hex}")
        started = time.perf_counter()
        handle = await runtime.start(spec, lambda stream, line: None)
        await nc.request(spec.triggers[0].subject, b"x", timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
        await runtime.stop(handle, grace=1)
    return statistics.median(samples)


async def main(sequential: int, concurrent: int, parallel: int, starts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        module = build_wasm(SOURCE, Path(tmp))
        module_bytes = module.stat().st_size
        server = NatsServer(store_dir=Path(tmp) / "js", port=0, jetstream=False)
        await server.start()
        options = ConnectOptions(servers=[server.url])
        runtime = WasmRuntime(RuntimeContext(node_id="BENCH", state_dir=Path(tmp) / "state",
                                             connect_options=options))
        nc = await connect(options)
        try:
            async with echo_process(server.url):
                await runtime.start(spec_for(module, "bench.upper"), lambda stream, line: None)
                bare = await measure(nc, ECHO_SUBJECT, sequential, concurrent, parallel)
                function = await measure(nc, "bench.upper", sequential, concurrent, parallel)
            compiling = await cold_start_ms(runtime, nc, module, True, starts)
            cached = await cold_start_ms(runtime, nc, module, False, starts)
        finally:
            await nc.close()
            await runtime.close()
            await server.stop()
    print_comparison("wasm", bare, function, sequential, concurrent, parallel)
    print(f"cold start, start() to first reply (median of {starts}, agent running):")
    print(f"  compiling the module ({module_bytes} bytes)  {compiling:7.1f} ms")
    print(f"  loaded compiled from the cache         {cached:7.1f} ms")
    print(f"  bare nats-py echo p50                  {bare.p50_us / 1000:7.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.sequential, args.concurrent, args.parallel, args.starts))
