"""Placement that scales with the fleet: past a threshold an auction asks a sample of the eligible
nodes (each on AUCTION.<node id>), widens to every node when none of them bids, and the reconciler
decides a batch of replicas at once before it deploys them."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import AsyncExitStack

import nkeys
import pytest

from nex.api import subjects
from nex.api.apps import AppSpec
from nex.api.errors import Unavailable
from nex.api.models import AuctionRequest, NodeState
from nex.client import NexClient
from nex.placement.sampling import SAMPLE_SIZE
from nex.fleet.store import AppStore
from nex.node.node import Node
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

from helpers import collect, eventually, running_node, ticker, ticker_request

THRESHOLD = 2  # so that four nodes are past it
ZONES = {"n1": "a", "n2": "a", "n3": "a", "n4": "z"}
FAST_FLEET = {"registry_interval_s": 0.5, "node_timeout_s": 2.0, "lease_s": 2.0, "reconcile_interval_s": 0.3,
              "sample_threshold": THRESHOLD}


@pytest.fixture
async def fleet(nats_server, tmp_path) -> list[Node]:
    """Four nodes on one server: n1-n3 in zone a, n4 alone in zone z."""
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(running_node(
            nats_server, tmp_path / name, name, tags={"zone": zone}, **FAST_FLEET)) for name, zone in ZONES.items()]
        yield nodes


@pytest.fixture
async def listed(fleet, nc) -> list[Node]:
    """The fleet, once the registry lists every node of it."""
    store = AppStore(nc)

    async def all_listed():
        return len(await store.nodes()) == len(fleet)
    await eventually(all_listed, timeout=10)
    return fleet


def auctions_seen(fleet: list[Node]) -> dict[str, int]:
    """The auctions each node answered so far, with a bid or a decline."""
    return {n.name: n.bids.bids_made + n.bids.declined for n in fleet}


def asked_since(before: dict[str, int], fleet: list[Node]) -> set[str]:
    return {name for name, seen in auctions_seen(fleet).items() if seen > before[name]}


async def test_a_placement_past_the_threshold_asks_only_a_sample(listed, nc, programs):
    client = NexClient(nc, sample_threshold=THRESHOLD)
    broadcast = await collect(nc, subjects.control("default", subjects.AUCTION))
    before = auctions_seen(listed)
    summary = await client.place(ticker_request(programs), wait=5)
    asked = asked_since(before, listed)
    assert len(asked) == SAMPLE_SIZE and summary.node_id in {n.node_id for n in listed if n.name in asked}
    await nc.flush()
    assert not broadcast  # nothing went to every node


async def test_at_or_below_the_threshold_every_node_is_asked(listed, nc, programs):
    client = NexClient(nc, sample_threshold=len(listed))
    before = auctions_seen(listed)
    await client.place(ticker_request(programs), wait=5)
    assert asked_since(before, listed) == set(ZONES)


async def test_a_tag_only_one_node_has_is_found_by_asking_that_node(listed, nc, programs):
    client = NexClient(nc, sample_threshold=THRESHOLD)
    before = auctions_seen(listed)
    summary = await client.place(ticker_request(programs), AuctionRequest(type="native", tags={"zone": "z"}), wait=5)
    assert summary.node_id == listed[3].node_id
    assert asked_since(before, listed) == {"n4"}


async def test_a_sample_without_a_bid_widens_to_every_node(listed, nc):
    n1, n2, n3, n4 = listed
    client = NexClient(nc)
    request = AuctionRequest(type="native", tags={"zone": "z"})
    # The sample as a stale registry would draw it: nodes that no longer fit (here, lack the tag).
    before = auctions_seen(listed)
    replies = await client.sampled_auction(request, [n1.node_id, n2.node_id], wait=5, expected=4)
    assert [r.bid.node_id for r in replies if r.bid] == [n4.node_id]
    assert asked_since(before, listed) == set(ZONES)

    # A sample that bids: only its nodes answer, and only they were asked.
    before = auctions_seen(listed)
    replies = await client.sampled_auction(AuctionRequest(type="native", tags={"zone": "a"}),
                                           [n1.node_id, n4.node_id], wait=5, expected=4)
    assert {r.node_id for r in replies} == {n1.node_id, n4.node_id} and asked_since(before, listed) == {"n1", "n4"}
    assert [r.declined for r in replies if r.node_id == n4.node_id] == ["node n4 lacks tag zone=a (has zone=z)"]


async def test_when_no_node_fits_the_declines_are_those_of_the_nodes_asked(listed, nc, programs):
    client = NexClient(nc, sample_threshold=THRESHOLD)
    await listed[3].lameduck()  # the one node of zone z
    with pytest.raises(Unavailable) as caught:
        await client.place(ticker_request(programs), AuctionRequest(type="native", tags={"zone": "z"}), wait=5)
    reasons = caught.value.message
    assert "node n4 is in lame duck mode" in reasons
    assert all(f"node {name} lacks tag zone=z (has zone=a)" in reasons for name in ("n1", "n2", "n3"))


async def test_a_per_node_auction_is_signed_for_its_own_subject(nats_server, tmp_path, nc):
    issuer = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    keys = UserKeys(issuer, XKey.create())
    async with running_node(nats_server, tmp_path / "secure", "secure", trusted_issuers=[keys.issuer_public]) as node:
        client = NexClient(nc, keys=keys)
        [reply] = await client.auction(AuctionRequest(type="native", memory_mib=64), wait=5, nodes=[node.node_id])
        assert reply.bid is not None and node.bids.held_mib == 64  # a verified claim: the bid holds memory


async def test_the_reconciler_decides_a_batch_before_it_deploys(listed, nc, programs):
    replicas = 6
    wire = await collect(nc, subjects.control("default", ">"))
    await nc.flush()
    store = AppStore(nc)
    await store.ensure()
    spec = AppSpec.model_validate({"name": "shop", "workloads": [ticker(programs, replicas=replicas)]})
    await store.apply(spec, None)

    async def running():
        placed = [(node.node.name, r) for node in await store.nodes() for r in node.workloads
                  if r.app is not None and r.app.name == "shop" and r.state == "running"]
        return placed if len(placed) == replicas else None
    placed = await eventually(running, timeout=20)
    # Spread over the four nodes as one placement after the other would: two, two, one, one.
    assert sorted(Counter(name for name, _ in placed).values()) == [1, 1, 2, 2]

    verbs = [m.subject.split(".")[4:] for m in wire]
    deploys = [i for i, verb in enumerate(verbs) if verb[0] == subjects.DEPLOY]
    auctions = [i for i, verb in enumerate(verbs) if verb[0] == subjects.AUCTION]
    assert len(deploys) == replicas
    # Every auction of the batch went out before the first deploy, each to the nodes of a sample
    # (three of the four), not to every node.
    assert auctions and max(auctions) < min(deploys)
    assert len(auctions) == replicas * SAMPLE_SIZE and all(len(verbs[i]) == 2 for i in auctions)
    assert all(n.state == NodeState.RUNNING for n in listed)
