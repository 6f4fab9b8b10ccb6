"""1,000 functions on one node: deploy time, memory, and call latency with 1 against with 1,000.

    .venv/bin/python bench/function_scale.py [--count 1000] [--in-flight 16] [--calls 2000] [--wasm]

A `nex node up` process on a nats-server started here. One JavaScript function
(``--wasm``: a WASI module built from tests/wasm/fn.c with clang) is deployed and
timed; then ``count - 1`` more are deployed, each subscribed to its own subject,
with at most ``--in-flight`` DEPLOY requests outstanding, and the first function is
timed again. In the same run, in blocks that alternate with those calls: the bare
nats-py echo, in its own process, so that noise from the rest of the machine hits
both alike and the ratio function/echo can be compared. Also printed: the agent's
and the node's RSS and threads with 1 and with ``count`` deployed, the time of an
INFO and of a WPING with ``count`` deployed, whether every function answers, and
what one read of the process's CPU clock costs with 1 and with ``count`` threads
(in this process: the QuickJS agent has a thread per function and its time limit
reads that clock on every call).

Target (issue 6): the first function's p50 with ``count`` deployed at most 1.2x its
p50 with 1 deployed (read it on the ratios to the echo: the raw p50s move with the
machine's load).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

from nats.errors import Error as NatsError

from common import build_wasm, children_of, nats_and_node, report, rss_bytes
from roundtrip import ECHO_SUBJECT, echo_process, echo_ready

JS_SOURCE = "(subject, payload) => 'hello ' + subject\n"
TARGET_RATIO = 1.2
BLOCKS = 10


def artifact(path: Path) -> dict:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


AGENT_MODULES = {"javascript": "nex.agent.js", "wasm": "nex.agent.wasm"}


def agent_of(node_pid: int, engine: str) -> int:
    for pid in children_of(node_pid):
        if AGENT_MODULES[engine].encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError(f"no {engine} agent under node {node_pid}")


async def deploy(nc, node_id: str, body: dict) -> None:
    msg = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}", json.dumps(body).encode(), timeout=60)
    reply = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])


async def deploy_many(nc, node_id: str, kind: str, path: Path, indices: range, in_flight: int) -> list[float]:
    """Deploys function i on subject bench.scale.<i>; the seconds each DEPLOY took."""
    slots = asyncio.Semaphore(in_flight)
    samples: list[float] = []
    reference = artifact(path)

    async def one(i: int) -> None:
        async with slots:
            start = time.perf_counter()
            await deploy(nc, node_id, {"name": f"f{i}", "type": kind, "artifact": reference,
                                       "triggers": [{"subject": f"bench.scale.{i}"}]})
            samples.append(time.perf_counter() - start)
    await asyncio.gather(*(one(i) for i in indices))
    return samples


async def latencies(nc, subject: str, payload: bytes, calls: int) -> tuple[list[float], list[float]]:
    """Microseconds of ``calls`` sequential requests to ``subject`` and as many to the echo,
    in alternating blocks: noise from the rest of the machine hits both alike."""
    for target in (subject, ECHO_SUBJECT):
        for _ in range(min(200, calls)):  # warm up
            await nc.request(target, payload, timeout=5)
    samples: dict[str, list[float]] = {subject: [], ECHO_SUBJECT: []}
    block = max(1, calls // BLOCKS)
    for _ in range(BLOCKS):
        for target in (subject, ECHO_SUBJECT):
            for _ in range(block):
                start = time.perf_counter()
                await nc.request(target, payload, timeout=5)
                samples[target].append((time.perf_counter() - start) * 1e6)
    return samples[subject], samples[ECHO_SUBJECT]


def tenths(samples: list[float]) -> str:
    """Medians of the first and last tenth of the DEPLOY replies, in order: growth shows here."""
    tenth = max(1, len(samples) // 10)
    return f"{statistics.median(samples[:tenth]) * 1e3:.0f}, {statistics.median(samples[-tenth:]) * 1e3:.0f}"


def cpu_clock_us(threads: int, reads: int = 20000) -> float:
    """Microseconds of one read of the process's CPU time with ``threads`` idle threads about:
    the QuickJS time limit reads it on every call, and Linux adds it up over every thread."""
    idle = [queue.SimpleQueue() for _ in range(threads)]
    for q in idle:
        threading.Thread(target=q.get, daemon=True).start()
    try:
        start = time.perf_counter()
        for _ in range(reads):
            time.process_time()
        return (time.perf_counter() - start) / reads * 1e6
    finally:
        for q in idle:
            q.put(None)


def block_ratio(function: list[float], echo: list[float]) -> float:
    """The median over the blocks of latencies() of p50 function / p50 echo within a block:
    each ratio compares calls made a moment apart, so a slow spell of the machine cancels."""
    size = len(function) // BLOCKS
    return statistics.median(statistics.median(function[i * size:(i + 1) * size])
                             / statistics.median(echo[i * size:(i + 1) * size]) for i in range(BLOCKS))


def p50_p99(samples: list[float]) -> tuple[float, float]:
    quantiles = statistics.quantiles(samples, n=100)
    return quantiles[49], quantiles[98]


async def all_answer(nc, count: int, payload: bytes, in_flight: int) -> int:
    """How many of the functions answered one call each."""
    slots = asyncio.Semaphore(in_flight)

    async def one(i: int) -> bool:
        async with slots:
            try:
                await nc.request(f"bench.scale.{i}", payload, timeout=10)
                return True
            except NatsError:  # a timeout or no responders: counted as not answering
                return False
    return sum(await asyncio.gather(*(one(i) for i in range(count))))


async def timed_request(nc, subject: str) -> tuple[float, int]:
    """Seconds and bytes of a control request (the first reply)."""
    start = time.perf_counter()
    msg = await nc.request(subject, b"", timeout=30)
    return time.perf_counter() - start, len(msg.data)


async def main(count: int, in_flight: int, calls: int, wasm: bool) -> None:
    kind = "wasm" if wasm else "javascript"
    payload = b"ping"
    with tempfile.TemporaryDirectory() as tmp:
        if wasm:
            path = build_wasm("tests/wasm/fn.c", Path(tmp))
        else:
            path = Path(tmp) / "hello.js"
            path.write_text(JS_SOURCE)
        async with nats_and_node(["--sandbox", "none"], artifact_root=Path(tmp)) as (server, nc, node_id, node_pid):
            async with echo_process(server.url):
                await echo_ready(nc)
                first = await deploy_many(nc, node_id, kind, path, range(1), 1)
                agent_pid = agent_of(node_pid, kind)
                samples_one = await latencies(nc, "bench.scale.0", payload, calls)
                one, echo_one = map(p50_p99, samples_one)
                rss_one = rss_bytes(agent_pid), rss_bytes(node_pid)
                threads_one = threads_of(agent_pid)

                started = time.perf_counter()
                rest = await deploy_many(nc, node_id, kind, path, range(1, count), in_flight)
                deploy_s = time.perf_counter() - started
                await asyncio.sleep(2)  # not timed: the registry write and stats refresh after the burst
                samples_many = await latencies(nc, "bench.scale.0", payload, calls)
                many, echo_many = map(p50_p99, samples_many)
                rss_many = rss_bytes(agent_pid), rss_bytes(node_pid)
                threads_many = threads_of(agent_pid)
                info_s, info_bytes = await timed_request(nc, f"$NEX.SVC.default.control.INFO.{node_id}")
                wping_s, wping_bytes = await timed_request(nc, "$NEX.SVC.default.control.WPING")
                answered = await all_answer(nc, count, payload, in_flight)

    mib = 1024 * 1024
    report(f"{count} {kind} functions on one node ({calls} sequential calls of the first one)", {
        f"baseline: nats-py echo p50 us (with 1, with {count})": f"{echo_one[0]:.0f}, {echo_many[0]:.0f}",
        f"baseline: nats-py echo p99 us (with 1, with {count})": f"{echo_one[1]:.0f}, {echo_many[1]:.0f}",
        "first deploy (starts the agent) ms": first[0] * 1e3,
        f"deploy of {count - 1} more, {in_flight} in flight, s": deploy_s,
        "  per function ms (wall / count)": deploy_s / max(1, count - 1) * 1e3,
        "  one DEPLOY's reply p50 ms": statistics.median(rest) * 1e3 if rest else 0.0,
        "  p50 ms of the first tenth, of the last tenth": tenths(rest),
        "p50 us with 1 deployed": one[0],
        f"p50 us with {count} deployed": many[0],
        "p99 us with 1 deployed": one[1],
        f"p99 us with {count} deployed": many[1],
        f"p50 ratio {count}/1 (target <= {TARGET_RATIO})": many[0] / one[0],
        f"p99 ratio {count}/1": many[1] / one[1],
        "p50 ratio function/echo with 1 (median over blocks)": block_ratio(*samples_one),
        f"p50 ratio function/echo with {count} (median over blocks)": block_ratio(*samples_many),
        f"  {count}/1 of those ratios (target <= {TARGET_RATIO}, net of machine noise)":
            block_ratio(*samples_many) / block_ratio(*samples_one),
        "agent RSS MiB with 1": rss_one[0] / mib,
        f"agent RSS MiB with {count}": rss_many[0] / mib,
        "  per function KiB": (rss_many[0] - rss_one[0]) / max(1, count - 1) / 1024,
        "node RSS MiB with 1": rss_one[1] / mib,
        f"node RSS MiB with {count}": rss_many[1] / mib,
        "  per function KiB ": (rss_many[1] - rss_one[1]) / max(1, count - 1) / 1024,
        f"agent threads with 1, with {count}": f"{threads_one}, {threads_many}",
        f"INFO with {count} ms (bytes)": f"{info_s * 1e3:.1f} ({info_bytes})",
        f"WPING with {count} ms (bytes)": f"{wping_s * 1e3:.1f} ({wping_bytes})",
        "functions that answered": f"{answered} of {count}",
        f"process CPU clock read us, 1 thread / {count} threads": f"{cpu_clock_us(0):.2f} / {cpu_clock_us(count):.2f}",
    })
    if answered != count:
        raise SystemExit(f"{count - answered} functions did not answer")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--wasm", action="store_true", help="WebAssembly functions instead of JavaScript")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.in_flight, args.calls, args.wasm))
