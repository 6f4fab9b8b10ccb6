"""Round-trip plumbing shared by the function benchmarks: the bare echo baseline and the figures.

The baseline is the smallest nats-py echo responder, in its own process like a
function's agent; ``measure`` takes p50/p99 of sequential requests and the
throughput of a concurrent phase.

Through a node (``node_process``, ``interleaved``): a real `nex node up` process with
its embedded nats-server and JetStream, the function deployed through the control API,
and the function and the echo measured in alternating blocks of one run, so that the
machine's slow spells hit both alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex.api import subjects
from nex.natsserver import free_port

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

    return Figures(quantiles[49], quantiles[98], concurrent / await in_flight(nc, subject, payload, concurrent, parallel))


async def in_flight(nc: Client, subject: str, payload: bytes, count: int, parallel: int) -> float:
    """Seconds that ``count`` requests took, ``parallel`` of them in flight at a time."""
    remaining = count

    async def requester() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await nc.request(subject, payload, timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(requester() for _ in range(parallel)))
    return time.perf_counter() - started


@asynccontextmanager
async def echo_process(url: str) -> AsyncIterator[int]:
    """The baseline responder on ``ECHO_SUBJECT``, in a process of its own; yields its pid."""
    echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, url,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert echo.stdout is not None and await echo.stdout.readline() == b"ready\n"
        yield echo.pid
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


# -- through a node ----------------------------------------------------------------------

# getattr: the benches also measure a release from before the audit stream, for a before-and-after figure.
KEPT_STREAMS = tuple(s for s in (subjects.LOGS_STREAM, subjects.EVENTS_STREAM, getattr(subjects, "AUDIT_STREAM", None)) if s)


@dataclass
class NodeProcess:
    url: str
    node_id: str
    pid: int


async def _quiet(exc: Exception) -> None:
    pass  # a refused connection while the node starts its server: tried again


@asynccontextmanager
async def node_process(state_dir: Path, artifact_root: Path, extra_args: list[str] | None = None
                       ) -> AsyncIterator[NodeProcess]:
    """`nex node up` with its embedded nats-server (JetStream on) on a free port, as users start it;
    file:// artifacts from ``artifact_root``."""
    port = free_port("127.0.0.1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "node", "up", "--port", str(port), "--state-dir", str(state_dir),
        "--name", "bench", "--sandbox", "none", "--artifact-root", str(artifact_root), "--log-level", "warning",
        *(extra_args or []), stdout=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    import nats
    try:
        node_id = None
        deadline = time.monotonic() + 60
        while node_id is None:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the node did not come up")
            try:
                nc = await nats.connect(url, connect_timeout=0.5, max_reconnect_attempts=0, allow_reconnect=False,
                                        error_cb=_quiet)
            except Exception:  # the embedded server is not listening yet
                await asyncio.sleep(0.1)
                continue
            try:
                msg = await nc.request(subjects.control("default", "PING"), b"", timeout=0.5)
                node_id = json.loads(msg.data)["node_id"]
            except NatsError:
                await asyncio.sleep(0.1)
            finally:
                await nc.close()
        yield NodeProcess(url, node_id, process.pid)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def deploy_function(nc: Client, node_id: str, kind: str, path: Path, subject: str, name: str) -> str:
    """A function deployed through the control API (a DEPLOY of a file:// artifact); its workload id."""
    body = {"name": name, "type": kind, "triggers": [{"subject": subject}],
            "artifact": {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    msg = await nc.request(subjects.control("default", "DEPLOY", node_id), json.dumps(body).encode(), timeout=60)
    reply = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])
    return reply["id"]


async def echo_ready(nc: Client, timeout: float = 10.0) -> None:
    """Until the echo process answers: its "ready" can overtake its SUB in nats-py."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(ECHO_SUBJECT, b"", timeout=1)
            return
        except NatsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def kept_messages(nc: Client) -> int:
    """Messages the node's feed streams hold (JetStream's writes, while nothing is evicted)."""
    js = nc.jetstream()
    total = 0
    for name in KEPT_STREAMS:
        try:
            total += (await js.stream_info(name)).state.last_seq
        except NatsError:
            pass
    return total


async def interleaved(nc: Client, subject: str, sequential: int, concurrent: int, parallel: int,
                      blocks: int = 10, payload: bytes = b"ping") -> tuple[Figures, Figures]:
    """(echo, function): p50/p99 of sequential requests and the throughput of ``parallel`` in flight,
    each phase in ``blocks`` blocks that alternate between the echo and the function."""
    for target in (ECHO_SUBJECT, subject):
        for _ in range(200):
            await nc.request(target, payload, timeout=5)
    latencies: dict[str, list[float]] = {ECHO_SUBJECT: [], subject: []}
    per_block = max(1, sequential // blocks)
    for _ in range(blocks):
        for target in (ECHO_SUBJECT, subject):
            for _ in range(per_block):
                started = time.perf_counter()
                await nc.request(target, payload, timeout=5)
                latencies[target].append((time.perf_counter() - started) * 1e6)
    spent = {ECHO_SUBJECT: 0.0, subject: 0.0}
    concurrent_block = max(parallel, concurrent // blocks)
    for _ in range(blocks):
        for target in (ECHO_SUBJECT, subject):
            spent[target] += await in_flight(nc, target, payload, concurrent_block, parallel)

    def figures(target: str) -> Figures:
        quantiles = statistics.quantiles(latencies[target], n=100)
        return Figures(quantiles[49], quantiles[98], concurrent_block * blocks / spent[target])
    return figures(ECHO_SUBJECT), figures(subject)


def print_runs(name: str, runs: list[tuple[Figures, Figures]], writes_per_1000: float, sequential: int,
               concurrent: int, parallel: int) -> None:
    """Each run's figures, and the medians of the ratios function/echo over the runs."""
    print(f"through a `nex node up` (embedded nats-server, JetStream); {len(runs)} runs of {sequential} sequential"
          f" requests, then {concurrent} with {parallel} in flight, function and echo in alternating blocks")
    print(f"{'':<22}{'p50 us':>10}{'p99 us':>10}{'req/s':>10}{'p50 x':>8}{'p99 x':>8}{'tput':>7}")
    ratios = []
    for i, (bare, function) in enumerate(runs, 1):
        ratio = (function.p50_us / bare.p50_us, function.p99_us / bare.p99_us, function.throughput / bare.throughput)
        ratios.append(ratio)
        print(f"{f'run {i} nats-py echo':<22}{bare.p50_us:>10.0f}{bare.p99_us:>10.0f}{bare.throughput:>10.0f}")
        print(f"{f'run {i} {name}':<22}{function.p50_us:>10.0f}{function.p99_us:>10.0f}{function.throughput:>10.0f}"
              f"{ratio[0]:>8.2f}{ratio[1]:>8.2f}{ratio[2]:>6.0%}")
    medians = [statistics.median(r[i] for r in ratios) for i in range(3)]
    print(f"{'median of the runs':<22}{'':>30}{medians[0]:>8.2f}{medians[1]:>8.2f}{medians[2]:>6.0%}")
    print(f"messages JetStream stored per 1,000 calls: {writes_per_1000:.1f}")


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / 100  # clock ticks (USER_HZ is 100 on Linux)


def processes_of(node_pid: int) -> dict[str, int]:
    """The node's children by role: its embedded nats-server and its function agents."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if parent != node_pid:
            continue
        if "nats-server" in cmdline:
            found["nats-server"] = int(entry.name)
        for module in ("nex.agent.js", "nex.agent.wasm"):
            if module in cmdline:
                found[module.rsplit(".", 1)[-1] + " agent"] = int(entry.name)
    return found


async def cpu_per_call(nc: Client, subject: str, calls: int, pids: dict[str, int]) -> dict[str, float]:
    """CPU microseconds per sequential call that each process spent (this one included)."""
    import os
    pids = {**pids, "this client": os.getpid()}
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    for _ in range(calls):
        await nc.request(subject, b"ping", timeout=5)
    return {name: (_cpu_s(pid) - before[name]) / calls * 1e6 for name, pid in pids.items()}


def print_cpu(name: str, echo: dict[str, float], function: dict[str, float]) -> None:
    print(f"CPU us per sequential call, by process (echo calls, then {name} calls):")
    for process in function:
        print(f"  {process:<14}{echo.get(process, 0.0):>8.0f}{function[process]:>8.0f}")


async def function_through_node(kind: str, artifact: Callable[[Path], Path], runs: int, sequential: int,
                                concurrent: int, parallel: int, node_args: list[str]) -> None:
    """The round trip of one function through a `nex node up`, against the echo, and what it costs:
    ``artifact`` writes the function's file into a directory and returns its path."""
    import tempfile

    from nex.connection import ConnectOptions, connect

    subject = f"bench.{kind}"
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        path = artifact(Path(tmp))
        async with node_process(Path(tmp) / "node", Path(tmp), node_args) as node:
            nc = await connect(ConnectOptions(servers=[node.url]))
            try:
                async with echo_process(node.url) as echo_pid:
                    await echo_ready(nc)
                    await deploy_function(nc, node.node_id, kind, path, subject, kind)
                    stored = await kept_messages(nc)
                    results = [await interleaved(nc, subject, sequential, concurrent, parallel) for _ in range(runs)]
                    await asyncio.sleep(6)  # the last function_stats (every 5 s) is part of the cost
                    stored = await kept_messages(nc) - stored
                    pids = {"node": node.pid, **processes_of(node.pid), "echo": echo_pid}
                    cpu_echo = await cpu_per_call(nc, ECHO_SUBJECT, sequential, pids)
                    cpu_function = await cpu_per_call(nc, subject, sequential, pids)
            finally:
                await nc.close()
    calls = runs * (sequential + concurrent + 200)
    label = {"javascript": "js"}.get(kind, kind)
    print_runs(label, results, stored / calls * 1000, sequential, concurrent, parallel)
    print_cpu(label, cpu_echo, cpu_function)
