"""Stream a workload's logs and the namespace's events."""

import asyncio
from pathlib import Path

import nex

HELLO = Path(__file__).with_name("hello.js")


async def main() -> None:
    async with nex.connect() as client:
        hello = await client.devrun(HELLO, triggers=["demo.feeds"])
        await client.invoke("demo.feeds", b"logs")

        # follow=True: the lines kept in the logs stream, then new ones as they come.
        async for line in client.logs(hello.id, follow=True):
            print(f"[{line.stream}] {line.text}")  # [stdout] hello logs
            break

        await client.undeploy(hello.id)
        # Events are CloudEvents; types= keeps some of them.
        async for event in client.events(follow=True, types=["workload_stopped"]):
            if event.subject == hello.id:
                print(f"{event.event_type}: {event.data['name']}")  # workload_stopped: hello
                break


asyncio.run(main())
