"""Run a JavaScript function with devrun, call it, stop it."""

import asyncio
from pathlib import Path

import nex

HELLO = Path(__file__).with_name("hello.js")


async def main() -> None:
    async with nex.connect() as client:
        # Uploads the file to the namespace's object store, holds an auction, deploys on the best bid.
        workload = await client.devrun(HELLO, triggers=["demo.hello"])
        print(f"{workload.type} function {workload.name!r} is {workload.state}")
        reply = await client.invoke("demo.hello", b"python")
        print(reply.decode())  # {"hello":"python","on":"demo.hello"}
        await client.undeploy(workload.id)


asyncio.run(main())
