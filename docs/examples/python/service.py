"""Deploy a service by auction, on a node that has the tags and memory it asks for."""

import asyncio
import sys
from pathlib import Path

import nex
from nex.api.models import Artifact, AuctionRequest, DeployRequest, Limits, WorkloadType

# A static executable: `make examples` builds examples/quickstart/ticker.
TICKER = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart/ticker")


async def main() -> None:
    async with nex.connect() as client:
        artifact: Artifact = await client.upload_artifact(TICKER)  # keyed by its sha256
        request = DeployRequest(name="ticker", type=WorkloadType.NATIVE, artifact=artifact,
                                argv=["--port", "8080"], limits=Limits(memory_mib=64, cpus=0.5))
        # Every node bids or says why not; the best bid among those tagged zone=a takes it.
        constraints = AuctionRequest(type=WorkloadType.NATIVE, tags={"zone": "a"}, memory_mib=64)
        ticker = await client.place(request, constraints)
        node = await client.node_info(ticker.node_id)
        print(f"service {ticker.name!r} is {ticker.state} on {node.name} (zone {node.tags['zone']})")

        stopped = await client.undeploy(ticker.id, grace_ms=2000)  # SIGTERM, then SIGKILL after 2 s
        print(f"service {ticker.name!r} is {stopped.state}")


asyncio.run(main())
