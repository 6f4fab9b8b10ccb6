"""Handle errors: every failure is a NexError subclass, with a code and a message."""

import asyncio

import nex
from nex.api.errors import AppNotFound, NatsUnavailable, NexError, NotFound, WorkloadNotFound


async def main() -> None:
    try:
        async with nex.connect("nats://127.0.0.1:1", timeout=1):
            pass
    except NatsUnavailable as exc:
        print(f"{type(exc).__name__}: {exc.message}")
        print(f"  hint: {exc.hint}")

    async with nex.connect() as client:
        try:
            await client.invoke("nobody.listens", b"")
        except NotFound as exc:  # the server says at once that nothing is subscribed
            print(f"{exc.code} {exc.message}")
        try:
            await client.undeploy("no-such-workload")
        except WorkloadNotFound as exc:
            print(f"{exc.code} {exc.message} (workload_id={exc.workload_id})")
        try:
            await client.app_status("nothing")
        except AppNotFound as exc:
            print(f"{exc.code} {exc.message}")
        try:
            await client.devrun("missing.js")
        except NexError as exc:  # anything else Nex raises
            print(f"{type(exc).__name__} {exc.code}: {exc.message}")


asyncio.run(main())
