"""Run one command's coroutine with a connected client, and resolve id prefixes."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

from nex.cli.options import GlobalOptions
from nex.client import NexClient
from nex.client.naming import resolve_id
from nex.security.keystore import UserKeys

T = TypeVar("T")

__all__ = ["resolve_id", "resolve_node", "resolve_workload", "run"]


def run(opts: GlobalOptions, action: Callable[[NexClient], Awaitable[T]], create_keys: bool = False) -> T:
    """Connect with ``opts``, run ``action(client)``, close; errors propagate to the group.

    The client signs and seals with the user's keys in ``$NEX_HOME`` (``~/.nex``) when
    they exist; ``create_keys`` makes them on first use.
    """
    connect_options = opts.connect_options()
    keys = UserKeys.load(create=create_keys)

    async def session() -> T:
        client = await NexClient.connect(connect_options, namespace=opts.namespace, timeout=opts.timeout,
                                         keys=keys)
        async with client:
            return await action(client)

    return asyncio.run(session())


async def resolve_node(client: NexClient, given: str) -> str:
    """The node id ``given`` names (:meth:`NexClient.resolve_node`)."""
    return await client.resolve_node(given)


async def resolve_workload(client: NexClient, given: str) -> str:
    """The workload id ``given`` names (:meth:`NexClient.resolve_workload`)."""
    return await client.resolve_workload(given)
