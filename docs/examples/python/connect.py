"""Connect to NATS and list the nodes of the namespace."""

import asyncio

import nex


async def main() -> None:
    # No argument: $NATS_URL (else nats://127.0.0.1:4222), $NEX_NAMESPACE (else "default"),
    # and your keys in ~/.nex when there are any: the same as the nex command.
    async with nex.connect() as client:
        for node in await client.ping():
            print(f"node {node.name} ({node.node_id[:8]}), {node.workload_count} workloads")


asyncio.run(main())
