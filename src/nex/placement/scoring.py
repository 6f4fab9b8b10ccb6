"""Placement scoring: who may bid for a workload, what a bid is worth, and which bid wins.

Pure, and the one place of these rules: the node applies :func:`decline_reason` and
:func:`score` to itself when it answers an AUCTION (``nex.node.bids``), the sampled
auction applies :func:`decline_reason` to the registry's records (``nex.placement.sampling``),
the client takes bids in the order of :func:`rank_bids`, and the reconciler picks a
replica's bid with :func:`choose_bid`.

Scoring (higher is better; 100 for an idle node with all its memory free)::

    memory = (available memory - memory held by outstanding bids) / total memory
    cpu    = max(0, 1 - load_1m / cpus)
    busy   = running workloads + 0.5 * outstanding bids
    score  = 100 * (0.4 * memory + 0.3 * cpu + 0.3 * (1 - busy / 100))

Each workload costs 0.3 points and each outstanding bid 0.15, without a floor (the
score goes below zero on a very busy node), so two nodes alike in memory and CPU
always differ by their load, however many workloads they run. An outstanding bid
weighs half a workload: while a burst of auctions is under way every node holds
about as many bids as the others, and once one bid turns into a workload on the
winner, the winner weighs half a workload more than the nodes that lost.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from nex.api.models import (
    FUNCTION_TYPES, AuctionRequest, Bid, Lifecycle, NodeState, Resources, WorkloadType, node_isolation,
)

MEMORY_WEIGHT = 0.4
CPU_WEIGHT = 0.3
LOAD_WEIGHT = 0.3
FULL_LOAD = 100  # workloads at which the load term reaches zero
BID_WEIGHT = 0.5  # an outstanding bid counts as half a running workload

WORKLOAD_POINTS = round(100 * LOAD_WEIGHT / FULL_LOAD, 9)
"""What one more workload takes off a node's score (0.3): a placement of a client under way on
a node counts that much against the node's next bids."""

SCORE_TIE = 0.1
"""Bids this close to the best count as equal (less than one workload apart): one of them is
taken at random, so that equal nodes share the work instead of one taking all of it."""


# -- who may bid ---------------------------------------------------------------------------------


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
    tier = node_isolation(bidder.tags)
    if not tier.meets(request.isolation):
        return (f"{node} isolates workloads as {tier.value}, the workload needs at least "
                f"{request.isolation.value if request.isolation else ''}")
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


# -- what a bid is worth -------------------------------------------------------------------------


def score(found: Resources, held_mib: int, workload_count: int, outstanding: int) -> float:
    """The bid's score; see the module docstring."""
    total = max(found.memory_bytes, 1)
    memory = max(0.0, (found.memory_available_bytes - (held_mib << 20)) / total)
    cpu = max(0.0, 1.0 - found.load_1m / max(found.cpus, 1))
    busy = workload_count + BID_WEIGHT * outstanding
    return round(100 * (MEMORY_WEIGHT * memory + CPU_WEIGHT * cpu + LOAD_WEIGHT * (1 - busy / FULL_LOAD)), 3)


# -- which bid wins ------------------------------------------------------------------------------


def rank_bids(bids: list[Bid], placing: Mapping[str, int] | None = None) -> list[Bid]:
    """Best first, each score lowered by the placements under way on its node (``placing``);
    among bids within :data:`SCORE_TIE` of the best, a random order."""
    if not bids:
        return []
    placing = placing or {}
    scored = [(b.score - WORKLOAD_POINTS * placing.get(b.node_id, 0), b) for b in bids]
    random.shuffle(scored)  # ties in a random order; the sort below is stable
    best = max(s for s, _ in scored)
    scored.sort(key=lambda sb: (best - sb[0] > SCORE_TIE, -sb[0] if best - sb[0] > SCORE_TIE else 0))
    return [b for _, b in scored]


def spread_bucket(node_id: str, tags: Mapping[str, str], spread: str | None) -> str:
    """The spread bucket of a node: its value of the ``spread`` tag, or the node itself when None."""
    return f"node:{node_id}" if spread is None else tags.get(spread, "")


def bid_bucket(bid: Bid, spread: str | None) -> str:
    return spread_bucket(bid.node_id, bid.tags, spread)


def choose_bid(bids: list[Bid], spread: str | None, counts: Mapping[str, int]) -> Bid | None:
    """The bid on the node whose spread bucket holds the fewest replicas; then the best score."""
    if not bids:
        return None
    return min(bids, key=lambda b: (counts.get(bid_bucket(b, spread), 0), -b.score, b.node_id))
