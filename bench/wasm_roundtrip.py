"""Request round trip: a trivial WebAssembly function vs a bare nats-py echo responder; and cold start.

    .venv/bin/python bench/wasm_roundtrip.py [--mode node|runtime] [--runs 3] [--sequential 5000]
                                             [--concurrent 20000] [--parallel 64] [--starts 20]

The function is tests/wasm/fn.c built with clang for wasm32-wasi: it upper-cases
its payload (stdin to stdout), a fresh wasmtime instance per call (WASI preview 1).

``--mode node`` (the default) measures what users get: a `nex node up` process with its
embedded nats-server and JetStream, the function deployed through the control API, the
echo in a process of its own, both measured in alternating blocks of each of ``--runs``
runs (as bench/js_roundtrip.py). ``--mode runtime``: both responders in their own
process on one nats-server started here without JetStream, the function in the wasm
agent through WasmRuntime; then the cold start, start() to the first reply, with the
agent running: compiling the module, and loading it compiled from the cache.
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
from roundtrip import ECHO_SUBJECT, echo_process, function_through_node, measure, print_comparison

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


def write_module(directory: Path) -> Path:
    return build_wasm(SOURCE, directory)


async def runtime_alone(sequential: int, concurrent: int, parallel: int, starts: int) -> None:
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
    print("the runtime alone, on a nats-server without JetStream:")
    print_comparison("wasm", bare, function, sequential, concurrent, parallel)
    print(f"cold start, start() to first reply (median of {starts}, agent running):")
    print(f"  compiling the module ({module_bytes} bytes)  {compiling:7.1f} ms")
    print(f"  loaded compiled from the cache         {cached:7.1f} ms")
    print(f"  bare nats-py echo p50                  {bare.p50_us / 1000:7.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["node", "runtime"], default="node")
    parser.add_argument("--runs", type=int, default=3, help="node mode: runs, each interleaved")
    parser.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                        help="node mode: an argument for `nex node up` (repeat it)")
    parser.add_argument("--sequential", type=int, default=5000)
    parser.add_argument("--concurrent", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--starts", type=int, default=20, help="runtime mode: cold starts")
    args = parser.parse_args()
    if args.mode == "node":
        asyncio.run(function_through_node("wasm", write_module, args.runs, args.sequential, args.concurrent,
                                          args.parallel, args.node_arg))
    else:
        asyncio.run(runtime_alone(args.sequential, args.concurrent, args.parallel, args.starts))
