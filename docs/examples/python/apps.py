"""Apply an app, wait until it runs, scale it from Python, delete it."""

import asyncio
from pathlib import Path

import nex

SHOP = Path(__file__).with_name("shop.yaml")


async def main() -> None:
    async with nex.connect() as client:
        change = await client.apply_app(SHOP)  # the file's artifacts uploaded, the record signed
        print(f"app {change.name!r} {change.action}, version {change.version}")

        view = await client.wait_app("shop", timeout=30)  # every replica running and healthy
        print(f"{view.running}/{view.desired} replicas running")
        print((await client.invoke("shop.hello", b"shop")).decode())

        # The stored spec is an AppSpec: change it and apply it again.
        spec = await client.app_spec("shop")
        hello = spec.workloads[0].model_copy(update={"replicas": 1})
        scaled = spec.model_copy(update={"workloads": [hello]})
        change = await client.apply_app(scaled)
        print(f"version {change.version}: hello {change.workloads[0].change}")  # scaled

        await client.delete_app("shop", wait=True, timeout=30)  # a signed tombstone
        print("deleted; apps left:", [app.name for app in await client.apps()])


asyncio.run(main())
