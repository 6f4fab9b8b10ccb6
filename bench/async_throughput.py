"""Async invocation throughput: a trivial JavaScript function on an async trigger vs bare JetStream.

    .venv/bin/python bench/async_throughput.py [--count 5000] [--capacity 16]

One nats-server (JetStream on) started here. The baseline publishes COUNT messages
into a work-queue stream and a nats-py pull consumer on its own connection fetches
them CAPACITY at a time and acks each, in a process of its own (as the function's
agent is): the least any durable, at-least-once invocation
can cost. The function run is the same count through a function's
stream (nex.agent.durable): fetch, the idempotency check, the call on the function's
thread, the completion record, the ack. Both are timed from the first publish to the
last ack; prints invocations/s of each and the ratio function/bare.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from common import report
from nats.js import api

from nex.api import subjects
from nex.api.models import Lifecycle, Limits, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime

BARE_STREAM = "BENCH_BARE"
BARE_SUBJECT = "bench.bare"
FUNCTION_SUBJECT = "bench.async"


async def publish_all(js, subject: str, count: int) -> None:
    for start in range(0, count, 500):
        await asyncio.gather(*(js.publish(subject, b"{}") for _ in range(min(500, count - start))))


async def until_empty(js, stream: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while (await js.stream_info(stream)).state.messages > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stream} still holds messages after {timeout:.0f}s")
        await asyncio.sleep(0.01)


# The baseline's consumer, in a process of its own like the function's agent.
BARE_CONSUMER = """
import asyncio, sys
import nats

async def main(url, count, capacity):
    nc = await nats.connect(url)
    pull = await nc.jetstream().pull_subscribe_bind(durable="bare", stream="%s")
    print("ready", flush=True)
    acked = 0
    while acked < count:
        try:
            messages = await pull.fetch(capacity, timeout=1)
        except asyncio.TimeoutError:
            continue
        for msg in messages:
            await msg.ack()
        acked += len(messages)
    await nc.flush()
    await nc.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
""" % BARE_STREAM


async def bare(url: str, options: ConnectOptions, count: int, capacity: int) -> float:
    """Invocations/s of a bare publish + pull consume + ack of ``count`` messages."""
    nc = await connect(options)
    try:
        js = nc.jetstream()
        await js.add_stream(name=BARE_STREAM, subjects=[BARE_SUBJECT], retention=api.RetentionPolicy.WORK_QUEUE)
        await js.add_consumer(BARE_STREAM, durable_name="bare", ack_policy=api.AckPolicy.EXPLICIT)
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BARE_CONSUMER, url, str(count), str(capacity), stdout=asyncio.subprocess.PIPE)
        try:
            assert consumer.stdout is not None
            await asyncio.wait_for(consumer.stdout.readline(), 30)  # connected: start the clock
            start = time.perf_counter()
            await publish_all(js, BARE_SUBJECT, count)
            await until_empty(js, BARE_STREAM)
            elapsed = time.perf_counter() - start
        finally:
            await asyncio.wait_for(consumer.wait(), 30)
        return count / elapsed
    finally:
        await nc.close()


async def function(options: ConnectOptions, tmp: Path, count: int, capacity: int) -> float:
    """Invocations/s of ``count`` async invocations of a trivial JavaScript function."""
    runtime = JavaScriptRuntime(RuntimeContext(node_id="BENCH", state_dir=tmp, connect_options=options))
    nc = await connect(options)
    try:
        script = tmp / "noop.js"
        script.write_text("(subject, payload) => 'done'")
        await runtime.start(WorkloadSpec(
            id="noop", name="noop", namespace="bench", type=WorkloadType.JAVASCRIPT,
            lifecycle=Lifecycle.FUNCTION, artifact_path=script, work_dir=tmp,
            triggers=[Trigger(subject=FUNCTION_SUBJECT, mode="async")],
            limits=Limits(max_concurrency=capacity)), lambda stream, line: None)
        js = nc.jetstream()
        start = time.perf_counter()
        await publish_all(js, FUNCTION_SUBJECT, count)
        await until_empty(js, subjects.function_stream("bench", "noop"))
        return count / (time.perf_counter() - start)
    finally:
        await nc.close()
        await runtime.close()


async def main(count: int, capacity: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0)
        await server.start()
        options = ConnectOptions(servers=[server.url])
        try:
            baseline = await bare(server.url, options, count, capacity)
            measured = await function(options, Path(tmp), count, capacity)
        finally:
            await server.stop()
    report(f"async invocations: {count} messages, {capacity} held at a time", {
        "bare JetStream publish + pull + ack (/s)": baseline,
        "async function invocations (/s)": measured,
        "ratio function/bare": measured / baseline,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--capacity", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.capacity))
