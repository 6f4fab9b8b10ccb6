"""Deploy latency: native deploy-to-running and JavaScript deploy-to-first-reply.

Baselines measured in the same run: a bare nats-py request/echo round trip, and a
bare asyncio spawn of the same executable. Run: .venv/bin/python bench/deploy_latency.py [N]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import build_static, echo_responder, nats_and_node, report, timed_requests

JS_SOURCE = b"(subject, payload) => 'ready'"


def artifact(path: Path) -> dict:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


async def deploy(nc, node_id: str, body: dict) -> dict:
    msg = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}", json.dumps(body).encode(), timeout=10)
    reply = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])
    return reply


async def undeploy(nc, workload_id: str) -> None:
    await nc.request(f"$NEX.SVC.default.control.UNDEPLOY.{workload_id}", b'{"grace_ms": 1000}', timeout=10)


async def native_deploys(nc, node_id: str, binary: Path, count: int) -> list[float]:
    """Seconds from DEPLOY sent to the reply (the process runs), each followed by an UNDEPLOY."""
    samples = []
    for i in range(count):
        start = time.perf_counter()
        workload = await deploy(nc, node_id, {"name": f"t{i}", "type": "native", "artifact": artifact(binary)})
        samples.append(time.perf_counter() - start)
        assert workload["state"] == "running"
        await undeploy(nc, workload["id"])
    return samples


async def bare_spawn(binary: Path, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(str(binary), stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
        process.terminate()
        await process.wait()
    return samples


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ticker = build_static("tests/programs/ticker.c", Path(tmp))
        js_file = Path(tmp) / "ready.js"
        js_file.write_bytes(JS_SOURCE)
        # Plain processes, as this figure has always measured; bench/sandbox_start.py has the sandboxed one.
        async with nats_and_node(["--sandbox", "none"], artifact_root=Path(tmp)) as (server, nc, node_id, _):
            await echo_responder(nc, "bench.echo")
            echo = await timed_requests(nc, "bench.echo", b"x", 1000)
            spawn = await bare_spawn(ticker, count)

            native = await native_deploys(nc, node_id, ticker, count)

            first_reply = []
            for i in range(count):
                subject = f"bench.ready.{i}"
                start = time.perf_counter()
                workload = await deploy(nc, node_id, {"name": f"f{i}", "type": "javascript",
                                                      "artifact": artifact(js_file), "triggers": [{"subject": subject}]})
                reply = await nc.request(subject, b"", timeout=5)
                first_reply.append(time.perf_counter() - start)
                assert reply.data == b"ready"
                await undeploy(nc, workload["id"])

    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    report("deploy latency (median of %d)" % count, {
        "baseline: bare nats-py echo round trip ms": ms(echo),
        "baseline: bare asyncio spawn of the binary ms": ms(spawn),
        "native deploy to running ms": ms(native),
        "native deploy / bare spawn": ms(native) / ms(spawn),
        "native deploy / echo round trip": ms(native) / ms(echo),
        "javascript deploy to first reply ms": ms(first_reply),
        "javascript deploy / echo round trip": ms(first_reply) / ms(echo),
        "target native ms": "< 50",
        "target javascript ms": "< 20",
    })


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
