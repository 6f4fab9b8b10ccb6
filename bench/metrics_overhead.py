"""Observability overhead: JavaScript invocation latency with the node's metrics endpoint scraped
every second, and with a traceparent on every call, against neither (docs/observability.md).

    .venv/bin/python bench/metrics_overhead.py [--requests 3000] [--rounds 3] [--scrape-interval 1.0]

One `nex node up --metrics-port` process on a nats-server started here runs a trivial
JavaScript function. Each round measures sequential requests three ways, one after the
other on the same node: plain; plain while a task scrapes /metrics every
``--scrape-interval`` seconds; and with a W3C traceparent header on each request (no
OTLP endpoint: propagation only). Prints p50/p99 of each, the ratios against plain,
and the bare nats-py echo of the same run for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from common import echo_responder, nats_and_node, percentile, report, timed_requests

from nex.api.tracecontext import TRACEPARENT, TraceParent

SUBJECT = "bench.metrics.hello"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def traced_requests(nc, subject: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        headers = {TRACEPARENT: str(TraceParent.new())}
        start = time.perf_counter()
        await nc.request(subject, b"x", timeout=5, headers=headers)
        samples.append(time.perf_counter() - start)
    return samples


async def scraping(url: str, interval: float, scrapes: list[float]) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            start = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            scrapes.append(time.perf_counter() - start)
            await asyncio.sleep(interval)


async def main(requests: int, rounds: int, interval: float) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "hello.js"
        script.write_text("(subject, payload) => 'hello'")
        async with nats_and_node(["--metrics-port", str(port), "--no-reconciler"],
                                 artifact_root=Path(tmp)) as (_, nc, node_id, _pid):
            body = {"name": "hello", "type": "javascript", "triggers": [{"subject": SUBJECT}],
                    "artifact": {"uri": f"file://{script}", "sha256": hashlib.sha256(script.read_bytes()).hexdigest()}}
            reply = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}", json.dumps(body).encode(),
                                     timeout=30)
            assert not (reply.headers or {}).get("Nats-Service-Error-Code"), reply.data
            await echo_responder(nc, "bench.metrics.echo")
            await timed_requests(nc, SUBJECT, b"x", 200)  # warm up
            plain, scraped, traced, scrapes = [], [], [], []
            bare = await timed_requests(nc, "bench.metrics.echo", b"x", requests)
            for _ in range(rounds):
                plain += await timed_requests(nc, SUBJECT, b"x", requests)
                scraper = asyncio.create_task(scraping(f"http://127.0.0.1:{port}/metrics", interval, scrapes))
                scraped += await timed_requests(nc, SUBJECT, b"x", requests)
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
                traced += await traced_requests(nc, SUBJECT, requests)

    def us(samples: list[float], q: float | None = None) -> float:
        return (statistics.median(samples) if q is None else percentile(samples, q)) * 1e6
    report("JavaScript invocation with metrics scraped and with trace context", {
        "bare echo p50 (us)": us(bare),
        "plain p50 (us)": us(plain), "plain p99 (us)": us(plain, 0.99),
        "scraped p50 (us)": us(scraped), "scraped p99 (us)": us(scraped, 0.99),
        "traced p50 (us)": us(traced), "traced p99 (us)": us(traced, 0.99),
        "scraped/plain p50": us(scraped) / us(plain), "scraped/plain p99": us(scraped, 0.99) / us(plain, 0.99),
        "traced/plain p50": us(traced) / us(plain),
        "plain/bare echo p50": us(plain) / us(bare),
        "scrapes": len(scrapes), "scrape p50 (ms)": statistics.median(scrapes) * 1e3 if scrapes else 0.0,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.scrape_interval))
