"""Run one command's coroutine with a connected client, and resolve id prefixes."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypeVar

from nex.api.errors import BadRequest, NodeNotFound, NotFound, WorkloadNotFound
from nex.cli.options import GlobalOptions
from nex.client import NexClient
from nex.security.keystore import UserKeys

T = TypeVar("T")

MIN_PREFIX = 4
NODE_ID_LENGTH = 56  # an nkey public key


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


def resolve_id(given: str, entries: Iterable[tuple[str, str]], what: str) -> str:
    """The id that ``given`` names, docker-style: an id, a unique name, or a unique id prefix.

    ``entries`` are (id, name) pairs. Raises NotFound (NodeNotFound/WorkloadNotFound
    for those kinds) when nothing matches and BadRequest when the prefix is too short
    or several match.
    """
    entries = sorted(set(entries))
    ids = [entry_id for entry_id, _ in entries]
    if given in ids:
        return given
    named = [entry_id for entry_id, name in entries if name == given]
    if len(named) == 1:
        return named[0]
    if named:
        raise BadRequest(f"{len(named)} {what}s are named {given!r}: use an id ({_listed(named)})")
    if len(given) < MIN_PREFIX:
        raise BadRequest(f"{what} id {given!r} is too short: give at least {MIN_PREFIX} characters")
    matches = [entry_id for entry_id in ids if entry_id.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise BadRequest(f"{what} id prefix {given!r} is ambiguous: it matches {_listed(matches)}")
    if what == "node":
        raise NodeNotFound(given)
    if what == "workload":
        raise WorkloadNotFound(given)
    raise NotFound(f"no {what} {given!r}")


async def resolve_node(client: NexClient, given: str) -> str:
    if len(given) == NODE_ID_LENGTH:
        return given
    return resolve_id(given, ((n.node_id, n.name) for n in await client.ping()), "node")


async def resolve_workload(client: NexClient, given: str) -> str:
    try:
        return (await client.workload_info(given)).id
    except WorkloadNotFound:
        pass  # not a full id: a name, a prefix, or nothing
    return resolve_id(given, ((w.id, w.name) for w in await client.workloads()), "workload")


def _listed(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
