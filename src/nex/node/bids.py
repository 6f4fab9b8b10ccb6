"""Bids: how a node answers an AUCTION, and holds what it offered until it is used or expires.

Every node answers every auction, with a bid or with the reason it declines, so a
client that knows how many nodes there are stops waiting when all have answered,
and a user who gets no bid is told why ("node n2 lacks tag zone=a"). The same
auction may be asked of one node, on ``AUCTION.<node id>`` (a sampled auction,
nex.placement.sampling, which applies the node's own rule to the registry's records).

A bid is a promise with a deadline. Its id is the node's id and a secret token,
``<node id>.<token>``, so a deploy through it goes to
``$NEX.SVC.<ns>.control.DEPLOY.<node id>.<token>``, which the node listens to with
one subscription for all its bids (``DEPLOY.<node id>.*``): a subscription per bid
was a SUB, an UNSUB and a task on every node for every auction, and every server
of a cluster passing them along its routes. The first deploy through a bid uses
it; a later one, one after ``bid_ttl_s``, or one in another namespace is answered
404 "bid ... expired or already used" by the node, and one after the node stopped
finds no responder, which the client reports the same way. Until then the memory
the auction asked for counts as held, so a burst of auctions does not promise the
same free memory twice.

On a node that trusts issuers a bid holds memory only when the auction was signed
(a ``Nex-Claim`` header, as for any control request, though not used up: every
node checks the same claim), and an issuer's bids together hold at most
``hold_limit_mib`` of one node: an unsigned auction gets an answer, never a
reservation. A bid belongs to whoever asked for it: a deploy through a bid of a
signed auction must be signed by that issuer. The bid is used up only once the
deploy passed every check; a malformed or refused deploy leaves it as it was.

Who may bid (``decline_reason``) and what a bid is worth (``score``, its weights) are
placement's rules, shared with the client and the reconciler: ``nex.placement.scoring``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from nex.api import subjects
from nex.api.errors import BidNotFound, Conflict
from nex.api.models import AuctionReply, AuctionRequest, Bid, Resources
from nex.node.resources import resources
from nex.placement.scoring import Bidder, decline_reason, score

log = logging.getLogger(__name__)

RESOURCES_MAX_AGE_S = 0.25  # /proc readings are shared by the auctions of a burst


@dataclass
class _Outstanding:
    bid_id: str
    namespace: str
    memory_mib: int
    timer: asyncio.TimerHandle
    issuer: str | None = None  # who asked, when the auction was signed
    deploying: bool = False  # a deploy through it is being checked


class BidTicket:
    """A deploy's hold on a bid while the node checks it: :meth:`use` spends the bid,
    :meth:`release_unless_used` hands it back when the deploy was refused."""

    def __init__(self, book: BidBook, bid: _Outstanding) -> None:
        self._book = book
        self._bid = bid
        self.used = False

    @property
    def bid_id(self) -> str:
        return self._bid.bid_id

    @property
    def issuer(self) -> str | None:
        return self._bid.issuer

    def use(self) -> None:
        if not self.used:
            self.used = True
            self._book._spend(self._bid)

    def release_unless_used(self) -> None:
        if not self.used:
            self._bid.deploying = False


class BidBook:
    """The bids a node has made and not yet seen used or expired."""

    def __init__(self, nc: Client, node_id: str, ttl_s: float, serve_deploy: Callable[[Msg, BidTicket], Awaitable[None]],
                 read_resources: Callable[[], Resources] = resources, hold_limit_mib: int | None = None) -> None:
        self._nc = nc
        self._node_id = node_id
        self._ttl_s = ttl_s
        self._serve_deploy = serve_deploy
        self._read_resources = read_resources
        self._outstanding: dict[str, _Outstanding] = {}
        self._held_mib = 0
        self._hold_limit_mib = hold_limit_mib
        self._subscription: Subscription | None = None
        self._deploying: set[asyncio.Task[None]] = set()
        self._resources: Resources | None = None
        self._read_at = 0.0
        self._closed = False
        # Counters since the node started, for its metrics (nex.node.metrics).
        self.bids_made = 0
        self.declined = 0
        self.deploys = 0  # bids used by a deploy

    async def start(self) -> None:
        """Listen for the deploys through this node's bids, in every namespace."""
        self._subscription = await self._nc.subscribe(
            subjects.control("*", subjects.DEPLOY, f"{self._node_id}.*"), cb=self._on_deploy)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def held_mib(self) -> int:
        return self._held_mib

    def held_by(self, issuer: str) -> int:
        return sum(bid.memory_mib for bid in self._outstanding.values() if bid.issuer == issuer)

    async def auction(self, namespace: str, request: AuctionRequest, bidder: Bidder,
                      issuer: str | None = None, holds: bool = True) -> AuctionReply:
        """A bid for the workload, or a decline. ``issuer``: who signed the auction; ``holds``:
        whether the bid holds the memory asked for (False for an unsigned auction on a node
        that trusts issuers)."""
        found = self._current_resources()
        held = self.held_mib
        free_mib = (found.memory_available_bytes >> 20) - held
        wanted = (request.memory_mib or 0) if holds else 0
        if self._closed:
            reason: str | None = f"node {bidder.name} is stopping"
        else:
            reason = decline_reason(request, bidder, free_mib, held)
        if reason is None and issuer is not None and wanted:
            limit = self._hold_limit_mib if self._hold_limit_mib is not None else (found.memory_bytes >> 20) // 2
            already = self.held_by(issuer)
            if already + wanted > limit:
                reason = (f"node {bidder.name}: issuer {issuer} already holds {already} MiB in bids here;"
                          f" {wanted} MiB more would pass its limit of {limit} MiB")
        if reason is not None:
            self.declined += 1
            return AuctionReply(node_id=bidder.node_id, declined=reason)
        # The node's id and 16 characters of [A-Za-z0-9_-]: two subject tokens.
        bid_id = f"{self._node_id}.{secrets.token_urlsafe(12)}"
        bid = Bid(
            bid_id=bid_id, node_id=bidder.node_id, name=bidder.name, tags=bidder.tags, xkey=bidder.xkey,
            score=score(found, held, bidder.workload_count, self.outstanding),
            expires_in_ms=round(self._ttl_s * 1000), resources=found, workload_count=bidder.workload_count,
        )
        timer = asyncio.get_running_loop().call_later(self._ttl_s, self._release, bid_id)
        self._hold(_Outstanding(bid_id, namespace, wanted, timer, issuer))
        self.bids_made += 1
        return AuctionReply(node_id=bidder.node_id, bid=bid)

    def _hold(self, bid: _Outstanding) -> None:
        self._outstanding[bid.bid_id] = bid
        self._held_mib += bid.memory_mib

    def _release(self, bid_id: str) -> _Outstanding | None:
        bid = self._outstanding.pop(bid_id, None)
        if bid is not None:
            bid.timer.cancel()
            self._held_mib -= bid.memory_mib
        return bid

    async def _on_deploy(self, msg: Msg) -> None:
        # One subscription for every bid: nats-py awaits this callback before it hands on the
        # next message, so each deploy runs in a task of its own, as through the node's endpoint.
        bid_id = f"{self._node_id}.{msg.subject.rpartition('.')[2]}"
        bid = self._outstanding.get(bid_id)
        refusal: BidNotFound | Conflict | None = None
        if bid is None or bid.namespace != subjects.namespace_of(msg.subject):
            refusal = BidNotFound(bid_id)
        elif bid.deploying:
            refusal = Conflict(f"a deploy through bid {bid_id} is under way")
        if refusal is not None:
            if msg.reply:
                payload, headers = refusal.encode()
                await self._nc.publish(msg.reply, payload, headers=headers)
            return
        bid.deploying = True
        task = asyncio.get_running_loop().create_task(self._serve_deploy(msg, BidTicket(self, bid)))
        self._deploying.add(task)
        task.add_done_callback(self._deploying.discard)

    def _spend(self, bid: _Outstanding) -> None:
        self._release(bid.bid_id)
        self.deploys += 1

    def _current_resources(self) -> Resources:
        now = time.monotonic()
        if self._resources is None or now - self._read_at > RESOURCES_MAX_AGE_S:
            self._resources = self._read_resources()
            self._read_at = now
        return self._resources

    async def close(self) -> None:
        """Withdraw every outstanding bid: a deploy to one of them finds no responder."""
        self._closed = True
        for bid_id in list(self._outstanding):
            self._release(bid_id)
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            if not (self._nc.is_closed or self._nc.is_draining):
                try:
                    await subscription.unsubscribe()
                except NatsError as exc:  # e.g. the connection closed meanwhile
                    log.debug("unsubscribing from the deploys through bids failed: %s", exc)
