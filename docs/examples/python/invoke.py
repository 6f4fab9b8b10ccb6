"""Call a function: a request and its reply, then async invocations with idempotency keys."""

import asyncio
from pathlib import Path

import nex
from nex.api.models import Trigger, TriggerMode

HELLO = Path(__file__).with_name("hello.js")


async def main() -> None:
    async with nex.connect() as client:
        sync = await client.devrun(HELLO, name="hello", triggers=["demo.hello"])
        # An async trigger: calls are kept in a JetStream stream and run at least once.
        durable = await client.devrun(HELLO, name="orders", triggers=[
            Trigger(subject="orders.new", mode=TriggerMode.ASYNC)])

        reply = await client.invoke("demo.hello", b"sync", timeout=2.0)  # waits for the reply
        print(reply.decode())

        first = await client.invoke_async("orders.new", b"order 42", key="order-42")
        again = await client.invoke_async("orders.new", b"order 42", key="order-42")
        print(f"kept as {first.stream} #{first.seq}; sent again: duplicate={again.duplicate}")

        for workload in (sync, durable):
            await client.undeploy(workload.id)


asyncio.run(main())
