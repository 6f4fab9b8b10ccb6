"""Names and id prefixes, docker-style: what ``nex workload stop ticker`` or ``stop 4f2a`` means.

Pure: the ids and names come from the caller (:meth:`nex.client.NexClient.resolve_workload`
and :meth:`~nex.client.NexClient.resolve_node` ask the nodes for them).
"""

from __future__ import annotations

from typing import Iterable

from nex.api.errors import BadRequest, NodeNotFound, NotFound, WorkloadNotFound

__all__ = ["MIN_PREFIX", "NODE_ID_LENGTH", "resolve_id"]

MIN_PREFIX = 4
NODE_ID_LENGTH = 56  # an nkey public key


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


def _listed(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
