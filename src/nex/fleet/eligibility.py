"""Whether a node may bid for a workload: the rule a node applies to itself in an auction
(nex.node.bids), and that a sampled auction applies to the registry's records
(nex.fleet.sampling) to know whom to ask. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from nex.api.models import FUNCTION_TYPES, AuctionRequest, Lifecycle, NodeState, WorkloadType


@dataclass(frozen=True)
class Bidder:
    """What the node is at the moment of an auction."""

    node_id: str
    name: str
    state: NodeState
    tags: dict[str, str]
    xkey: str | None
    runtimes: frozenset[WorkloadType]
    workload_count: int


def lifecycle_of(request: AuctionRequest) -> Lifecycle:
    """The lifecycle the workload will have: as given, or the type's default (as for a deploy)."""
    if request.lifecycle is not None:
        return request.lifecycle
    return Lifecycle.FUNCTION if request.type in FUNCTION_TYPES else Lifecycle.SERVICE


def decline_reason(request: AuctionRequest, bidder: Bidder, free_mib: int, held_mib: int) -> str | None:
    """Why ``bidder`` cannot take the workload, or None when it can. The text names the node."""
    node = f"node {bidder.name}"
    if bidder.state != NodeState.RUNNING:
        return f"{node} is {'in lame duck mode' if bidder.state == NodeState.LAMEDUCK else 'stopping'}"
    if bidder.node_id in request.exclude_nodes:
        return f"{node} is excluded by the request"
    if request.type not in bidder.runtimes:
        return f"{node} has no {request.type.value} runtime"
    lifecycle = lifecycle_of(request)
    if (request.type in FUNCTION_TYPES) != (lifecycle == Lifecycle.FUNCTION):
        return f"{node} cannot run a {request.type.value} workload with lifecycle {lifecycle.value}"
    for key, wanted in sorted(request.tags.items()):
        have = bidder.tags.get(key)
        if have is None:
            return f"{node} lacks tag {key}={wanted}"
        if have != wanted:
            return f"{node} lacks tag {key}={wanted} (has {key}={have})"
    if request.memory_mib is not None and request.memory_mib > free_mib:
        held = f", {held_mib} MiB of it held by other bids" if held_mib else ""
        return f"{node} has {max(free_mib, 0)} MiB free{held}, needs {request.memory_mib} MiB"
    return None
