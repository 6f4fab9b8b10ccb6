"""Whom an auction asks: a sample of the eligible nodes, once the fleet is past a threshold.

Pure. An auction of every node costs a reply from every node, so placement would
cost more as the fleet grows. Past :data:`SAMPLE_THRESHOLD` nodes in the registry,
an auction asks only the eligible nodes, each on its own subject
(``AUCTION.<node id>``): all of them when they are few, else :data:`SAMPLE_SIZE` of
them, and the best of their bids wins: the power of d choices, with the bids' own
scores (``nex.placement.scoring``: ``rank_bids``, ``choose_bid``) deciding, so the
sample adds no scoring of its own. When no node asked bids, the caller widens the
auction to every node before it fails (``NexClient.sampled_auction``), so a node the
registry shows out of date still gets its chance.

Eligibility is read from the registry (NEX_NODES) with the rule each node applies
to itself (:func:`nex.placement.scoring.decline_reason`): running, the runtime, the tags,
the free memory of the record, not excluded.

For the replicas of one workload placed together, each replica's sample is drawn
from the spread buckets (a tag's values, or nodes) that hold the fewest replicas,
counting those the batch already sent there, so a batch decided at once spreads as
one placed replica after replica would.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from nex.api.models import AuctionRequest
from nex.api.records import NodeRecord
from nex.placement.scoring import Bidder, decline_reason, spread_bucket

SAMPLE_THRESHOLD = 8
"""Up to this many nodes in the registry, an auction asks every node (the broadcast); past it, the
eligible nodes when there are at most this many of them, else a sample of them."""

SAMPLE_SIZE = 3
"""How many eligible nodes a sampled auction asks."""


def eligible(nodes: Sequence[NodeRecord], request: AuctionRequest) -> list[NodeRecord]:
    """The nodes whose registry record says they would bid for ``request``."""
    found = []
    for record in nodes:
        node = record.node
        bidder = Bidder(node_id=node.node_id, name=node.name, state=node.state, tags=node.tags, xkey=node.xkey,
                        runtimes=frozenset(record.runtimes), workload_count=node.workload_count)
        if decline_reason(request, bidder, record.resources.memory_available_bytes >> 20, 0) is None:
            found.append(record)
    return found


def bucket_of(record: NodeRecord, spread: str | None) -> str:
    """The spread bucket of a node, as a bid's (``nex.placement.scoring.bid_bucket``)."""
    return spread_bucket(record.node.node_id, record.node.tags, spread)


def samples(candidates: Sequence[NodeRecord], replicas: int, size: int = SAMPLE_SIZE,
            spread: str | None = None, counts: Mapping[str, int] | None = None,
            rng: random.Random | None = None) -> list[list[str]]:
    """For each of ``replicas`` placements, the ids of at most ``size`` nodes to ask.

    Nodes come from the buckets with the fewest replicas first (``counts``: bucket →
    replicas already there), in a random order within a bucket; each placement then
    counts one more replica in the first bucket of its sample, for the next one's draw.
    """
    rng = rng or random.Random()
    buckets: dict[str, list[str]] = {}
    for record in candidates:
        buckets.setdefault(bucket_of(record, spread), []).append(record.node.node_id)
    projected = {bucket: (counts or {}).get(bucket, 0) for bucket in buckets}
    drawn: list[list[str]] = []
    for _ in range(replicas):
        order = list(buckets)
        rng.shuffle(order)  # ties in a random order; the sort is stable
        order.sort(key=lambda b: projected[b])
        asked: list[str] = []
        for bucket in order:
            nodes = list(buckets[bucket])
            rng.shuffle(nodes)
            asked.extend(nodes[:size - len(asked)])
            if len(asked) >= size:
                break
        if order:
            projected[order[0]] += 1
        drawn.append(asked)
    return drawn


def whom_to_ask(nodes: Sequence[NodeRecord], request: AuctionRequest, replicas: int = 1,
                threshold: int = SAMPLE_THRESHOLD, size: int = SAMPLE_SIZE, spread: str | None = None,
                counts: Mapping[str, int] | None = None, rng: random.Random | None = None) -> list[list[str] | None]:
    """For each of ``replicas`` placements, the ids of the nodes its auction asks, or None for every
    node: up to ``threshold`` nodes in the registry, and when the registry shows no eligible node
    (the broadcast then gathers every node's reason); else the eligible nodes when they are at most
    ``threshold``, else a sample of ``size`` of them (:func:`samples`)."""
    able = eligible(nodes, request) if len(nodes) > threshold else []
    if not able:
        return [None] * replicas
    if len(able) <= threshold:
        every = [record.node.node_id for record in able]
        return [list(every) for _ in range(replicas)]
    return list(samples(able, replicas, size, spread, counts, rng))
