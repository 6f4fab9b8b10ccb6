"""Sign with your keys: requests carry a claim signed by your issuer key, env is sealed."""

import asyncio
from pathlib import Path

import nex
from nex.api.errors import Forbidden
from nex.client import UserKeys

HELLO = Path(__file__).with_name("hello.js")


async def main() -> None:
    keys = UserKeys.load(create=True)  # ~/.nex (or $NEX_HOME): made on first use, as nex devrun does
    print(f"your issuer: {keys.issuer_public}")  # what an operator passes to --trusted-issuer

    async with nex.connect(keys=keys) as client:
        # The env travels sealed to the node's xkey; the deploy and the stop are signed.
        hello = await client.devrun(HELLO, triggers=["demo.signed"], env={"GREETING": "hi"})
        print(f"deployed {hello.name!r}, signed by {hello.issuer}")
        await client.undeploy(hello.id)  # only its issuer (or an admin) may stop it

    async with nex.connect(keys=None) as unsigned:  # sign nothing
        try:
            await unsigned.devrun(HELLO, triggers=["demo.unsigned"])
        except Forbidden as exc:  # a node that trusts issuers runs signed deploys only
            print(f"unsigned: {exc.message}")


asyncio.run(main())
