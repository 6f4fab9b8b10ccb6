"""Round-trip plumbing shared by the function benchmarks: the bare echo baseline and the figures.

The baseline is the smallest nats-py echo responder, in its own process like a
function's agent; ``measure`` takes p50/p99 of sequential requests and the
throughput of a concurrent phase.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from nats.aio.client import Client

ECHO_SUBJECT = "bench.echo"

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


async def measure(nc: Client, subject: str, sequential: int, concurrent: int, parallel: int,
                  payload: bytes = b"ping") -> Figures:
    for _ in range(200):
        await nc.request(subject, payload, timeout=5)
    latencies = []
    for _ in range(sequential):
        started = time.perf_counter()
        await nc.request(subject, payload, timeout=5)
        latencies.append((time.perf_counter() - started) * 1e6)
    quantiles = statistics.quantiles(latencies, n=100)

    remaining = concurrent

    async def requester() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await nc.request(subject, payload, timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(requester() for _ in range(parallel)))
    return Figures(quantiles[49], quantiles[98], concurrent / (time.perf_counter() - started))


@asynccontextmanager
async def echo_process(url: str) -> AsyncIterator[None]:
    """The baseline responder on ``ECHO_SUBJECT``, in a process of its own."""
    echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, url,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert echo.stdout is not None and await echo.stdout.readline() == b"ready\n"
        yield
    finally:
        if echo.returncode is None:
            echo.stdin.close()  # type: ignore[union-attr]
            await echo.wait()


def print_comparison(name: str, bare: Figures, function: Figures, sequential: int, concurrent: int,
                     parallel: int) -> None:
    print(f"{sequential} sequential requests, then {concurrent} with {parallel} in flight")
    print(f"{'':<18}{'p50 us':>10}{'p99 us':>10}{'req/s':>10}")
    for label, figures in (("nats-py echo", bare), (name, function)):
        print(f"{label:<18}{figures.p50_us:>10.0f}{figures.p99_us:>10.0f}{figures.throughput:>10.0f}")
    print(f"{'ratio ' + name + '/echo':<18}{function.p50_us / bare.p50_us:>10.2f}"
          f"{function.p99_us / bare.p99_us:>10.2f}{function.throughput / bare.throughput:>10.2f}")
