"""Run one command's coroutine with a connected client, and resolve id prefixes."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypeVar

from nex.api.errors import BadRequest, NodeNotFound, NotFound, WorkloadNotFound
from nex.cli.options import GlobalOptions
from nex.client import NexClient

T = TypeVar("T")

MIN_PREFIX = 4
NODE_ID_LENGTH = 56  # an nkey public key


def run(opts: GlobalOptions, action: Callable[[NexClient], Awaitable[T]]) -> T:
    """Connect with ``opts``, run ``action(client)``, close; errors propagate to the group."""
    connect_options = opts.connect_options()

    async def session() -> T:
        client = await NexClient.connect(connect_options, namespace=opts.namespace, timeout=opts.timeout)
        async with client:
            return await action(client)

    return asyncio.run(session())


def resolve_prefix(given: str, candidates: Iterable[str], what: str) -> str:
    """The one candidate equal to ``given`` or starting with it, docker-style.

    Raises NotFound (NodeNotFound/WorkloadNotFound for those kinds) when none
    matches and BadRequest when the prefix is too short or matches several.
    """
    unique = sorted(set(candidates))
    if given in unique:
        return given
    if len(given) < MIN_PREFIX:
        raise BadRequest(f"{what} id {given!r} is too short: give at least {MIN_PREFIX} characters")
    matches = [c for c in unique if c.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if what == "node":
            raise NodeNotFound(given)
        if what == "workload":
            raise WorkloadNotFound(given)
        raise NotFound(f"no {what} {given!r}")
    listed = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise BadRequest(f"{what} id prefix {given!r} is ambiguous: it matches {listed}")


async def resolve_node(client: NexClient, given: str) -> str:
    if len(given) == NODE_ID_LENGTH:
        return given
    return resolve_prefix(given, (n.node_id for n in await client.ping()), "node")


async def resolve_workload(client: NexClient, given: str) -> str:
    try:
        return (await client.workload_info(given)).id
    except WorkloadNotFound:
        pass  # not a full id: a prefix, or nothing
    return resolve_prefix(given, (w.id for w in await client.workloads()), "workload")
