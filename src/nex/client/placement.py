"""Placement by auction: the bids of every node or of a sample of them (nex.placement.sampling),
and a deploy through the best bid that still holds (nex.placement.scoring.rank_bids)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from nex.api import subjects
from nex.api.errors import BidNotFound, Conflict, NexError, Unavailable
from nex.api.models import AuctionReply, AuctionRequest, Bid, DeployRequest, WorkloadSummary
from nex.api.records import NodeRecord
from nex.client.registry import read_registry
from nex.client.transport import DEFAULT_GATHER_S, target_token
from nex.client.workloads import Workloads
from nex.placement import sampling
from nex.placement.scoring import rank_bids
from nex.security.keystore import UserKeys

REGISTRY_MAX_AGE_S = 1.0  # how long a read of NEX_NODES chooses whom a placement's auction asks


class Placement(Workloads):
    """Auctions, and deploys through their bids."""

    def __init__(self, nc: Client, namespace: str, timeout: float, keys: UserKeys | None, confined: bool,
                 sample_threshold: int) -> None:
        super().__init__(nc, namespace, timeout, keys, confined)
        # Past this many eligible nodes in the registry, place() asks a sample of them (nex.placement.sampling).
        self.sample_threshold = sample_threshold
        self._placing: Counter[str] = Counter()  # node id -> placements of this client under way there
        self._registry: tuple[float, list[NodeRecord]] | None = None  # (when read, the records)
        self._registry_lock = asyncio.Lock()

    async def auction(self, request: AuctionRequest, wait: float = DEFAULT_GATHER_S,
                      expected: int | None = None, nodes: Sequence[str] | None = None) -> list[AuctionReply]:
        """Every node's answer to an auction, a bid or a decline, within ``wait`` seconds
        (or as soon as ``expected`` nodes have answered). With ``nodes``, only those nodes are
        asked, each on its own subject (``AUCTION.<node id>``, with a claim for that subject),
        and the wait ends once each has answered."""
        body = request.model_dump_json(exclude_none=True).encode()
        if nodes is None:
            subject = self._subject(subjects.AUCTION)
            return await self._gather(subjects.AUCTION, AuctionReply, wait, expected, body,
                                      headers=self._claim_header(subject, body))
        asked = [self._subject(subjects.AUCTION, target_token(node_id, "node id")) for node_id in dict.fromkeys(nodes)]
        if not asked:
            return []
        return await self._gather(subjects.AUCTION, AuctionReply, wait, len(asked), body,
                                  to=[(subject, self._claim_header(subject, body)) for subject in asked])

    async def sampled_auction(self, request: AuctionRequest, nodes: Sequence[str] | None,
                              wait: float = DEFAULT_GATHER_S, expected: int | None = None) -> list[AuctionReply]:
        """The answers of ``nodes`` (a sample, nex.placement.sampling), or, when none of them bids
        (or ``nodes`` is None), of every node: a workload only an unsampled node can take still
        finds it. The declines returned are those of the nodes asked last."""
        if nodes:
            replies = await self.auction(request, wait, nodes=nodes)
            if any(r.bid is not None for r in replies):
                return replies
        return await self.auction(request, wait, expected)

    async def registry(self) -> list[NodeRecord] | None:
        """Every node's record in NEX_NODES; None when it cannot be read (no registry, or a
        client confined to a namespace, which may not read it with a consumer). A read serves
        the placements of the next :data:`REGISTRY_MAX_AGE_S` too: a burst reads it once."""
        if self.confined:
            return None
        async with self._registry_lock:
            now = time.monotonic()
            if self._registry is not None and now - self._registry[0] < REGISTRY_MAX_AGE_S:
                return self._registry[1]
            try:
                records = (await read_registry(self.nc.jetstream(timeout=self.timeout), self.timeout)).records
            except (NexError, nats.errors.Error, asyncio.TimeoutError):
                return None
            self._registry = (now, records)
            return records

    async def live_node_count(self) -> int | None:
        """How many nodes the NEX_NODES registry lists now; None without a registry (or an empty one)."""
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            if self.confined:  # no consumer, so no watch: the keys the stream holds (a node that left may count)
                info = await js.stream_info(f"KV_{subjects.NODES_BUCKET}",
                                            subjects_filter=f"$KV.{subjects.NODES_BUCKET}.*")
                return len(info.state.subjects or {}) or None
            kv = await js.key_value(subjects.NODES_BUCKET)
            # A key per node; <node id>.<part> keys hold the rest of a large record (nex.api.paging).
            return len([key for key in await kv.keys() if "." not in key]) or None
        except nats.js.errors.NoKeysError:
            return None
        except (nats.js.errors.BucketNotFoundError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            return None  # no registry (or no JetStream): the auction waits its whole window

    async def place(self, request: DeployRequest, constraints: AuctionRequest | None = None,
                    wait: float = DEFAULT_GATHER_S, expected: int | None = None,
                    timeout: float | None = None) -> WorkloadSummary:
        """Deploy on the node with the best bid; ``constraints`` default to the request's type,
        lifecycle and memory limit. Raises :class:`Unavailable` naming each node's reason
        when no node bids. ``timeout`` is the deploy's (default: the client's)."""
        bids = await self._bids(constraints or constraints_of(request), wait, expected)
        return await self._deploy_to_best(bids, request, timeout)

    async def _bids(self, constraints: AuctionRequest, wait: float, expected: int | None) -> list[Bid]:
        """The bids of an auction, of the eligible nodes or a sample of them once the registry lists
        more than ``sample_threshold`` (nex.placement.sampling.whom_to_ask); Unavailable, with every
        decline of the nodes asked, when there is none."""
        if expected is None:
            expected = await self.live_node_count()
        asked = None
        if expected is not None and expected > self.sample_threshold:
            records = await self.registry()
            [asked] = sampling.whom_to_ask(records or [], constraints, threshold=self.sample_threshold)
        replies = await self.sampled_auction(constraints, asked, wait, expected)
        if not replies:
            raise Unavailable(f"no node is running in namespace {self.namespace!r}")
        bids = [r.bid for r in replies if r.bid is not None]
        if not bids:
            reasons = "; ".join(sorted(r.declined or f"node {r.node_id} made no bid" for r in replies))
            raise Unavailable(f"no node can take the workload: {reasons}")
        return bids

    async def _deploy_to_best(self, bids: list[Bid], request: DeployRequest,
                              timeout: float | None = None) -> WorkloadSummary:
        """Deploy through the best bid that still holds; a bid that expired or a node gone
        lame duck meanwhile passes the turn to the next bid.

        The placements this client has under way count against their nodes' bids (as
        workloads would), so a burst of concurrent placements spreads at once.
        """
        last: NexError | None = None
        for bid in rank_bids(bids, self._placing):
            self._placing[bid.node_id] += 1  # before any await: the next placement sees it
            try:
                return await self.deploy(bid.bid_id, request, xkey=bid.xkey, timeout=timeout)
            except (BidNotFound, Conflict) as exc:  # not e.g. a missing artifact: any node would say so
                last = exc
            finally:
                self._placing[bid.node_id] -= 1
                if self._placing[bid.node_id] <= 0:
                    del self._placing[bid.node_id]
        assert last is not None
        raise last


def constraints_of(request: DeployRequest) -> AuctionRequest:
    """The auction a deploy request implies: its type, lifecycle, memory limit and isolation tier."""
    return AuctionRequest(type=request.type, lifecycle=request.lifecycle, memory_mib=request.limits.memory_mib,
                          isolation=request.isolation)
