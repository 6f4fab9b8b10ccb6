"""Placement by auction: every node answers, bids hold for a while, a deploy goes through a bid."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import click
import nkeys
import pytest

from nex.api import subjects
from nex.api.errors import BidNotFound, Unavailable
from nex.api.models import AuctionReply, AuctionRequest, Bid, WorkloadType
from nex.cli.devrun import parse_placement_tags
from nex.client import NexClient, rank_bids
from nex.node.node import Node
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

from helpers import collect, control, eventually, running_node, ticker_request

DOCS = Path(__file__).parent.parent / "docs"




@pytest.fixture
async def fleet(nats_server, tmp_path) -> list[Node]:
    """Three nodes on one server: n1 in zone a, n2 and n3 in zone b."""
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(running_node(nats_server, tmp_path / name, name, tags={"zone": zone}))
            for name, zone in (("n1", "a"), ("n2", "b"), ("n3", "b"))
        ]
        yield nodes


@pytest.fixture
def client(nc) -> NexClient:
    return NexClient(nc)


def by_node(replies: list[AuctionReply]) -> dict[str, AuctionReply]:
    return {r.node_id: r for r in replies}


async def test_every_node_answers_with_a_bid(fleet, client):
    replies = await client.auction(AuctionRequest(type="native"), wait=5, expected=3)
    assert {r.node_id for r in replies} == {n.node_id for n in fleet}
    for node in fleet:
        bid = by_node(replies)[node.node_id].bid
        assert bid is not None and bid.node_id == node.node_id and bid.name == node.name
        assert bid.xkey == node.xkey.public and bid.tags["zone"] == node.tags["zone"]
        assert bid.tags["nex.os"] == "linux" and 0 < bid.score <= 100
        node_part, _, secret = bid.bid_id.partition(".")
        assert bid.expires_in_ms == 10_000 and node_part == node.node_id and subjects.is_token(secret)
    assert len({r.bid.bid_id for r in replies}) == 3


async def test_declines_say_why(fleet, client):
    n1, n2, n3 = fleet
    await n3.lameduck()
    replies = by_node(await client.auction(
        AuctionRequest(type="native", tags={"zone": "b"}, exclude_nodes=[n2.node_id]), wait=5, expected=3))
    assert replies[n1.node_id].declined == "node n1 lacks tag zone=b (has zone=a)"
    assert replies[n2.node_id].declined == "node n2 is excluded by the request"
    assert replies[n3.node_id].declined == "node n3 is in lame duck mode"
    assert all(r.bid is None for r in replies.values())

    replies = by_node(await client.auction(
        AuctionRequest(type="native", tags={"gpu": "yes"}, memory_mib=1024 * 1024), wait=5, expected=3))
    assert replies[n1.node_id].declined == "node n1 lacks tag gpu=yes"
    replies = by_node(await client.auction(AuctionRequest(type="native", memory_mib=1024 * 1024),
                                           wait=5, expected=3))
    assert re.fullmatch(r"node n1 has \d+ MiB free, needs 1048576 MiB", replies[n1.node_id].declined)
    replies = by_node(await client.auction(AuctionRequest(type="javascript", lifecycle="service"),
                                           wait=5, expected=3))
    assert replies[n2.node_id].declined == "node n2 cannot run a javascript workload with lifecycle service"


async def test_held_memory_is_not_promised_twice(fleet, client):
    n1 = fleet[0]
    free_mib = n1.bids._current_resources().memory_available_bytes >> 20
    want = free_mib * 2 // 3  # one such bid fits, a second does not while the first holds
    first = by_node(await client.auction(AuctionRequest(type="native", memory_mib=want), wait=5, expected=3))
    assert first[n1.node_id].bid is not None
    second = by_node(await client.auction(AuctionRequest(type="native", memory_mib=want), wait=5, expected=3))
    assert "held by other bids" in second[n1.node_id].declined


async def test_place_without_a_fitting_node_lists_the_reasons(fleet, client, programs):
    with pytest.raises(Unavailable) as caught:
        await client.place(ticker_request(programs), AuctionRequest(type="native", tags={"zone": "c"}), wait=5,
                           expected=3)
    assert caught.value.message == (
        "no node can take the workload: node n1 lacks tag zone=c (has zone=a); "
        "node n2 lacks tag zone=c (has zone=b); node n3 lacks tag zone=c (has zone=b)")


async def test_no_node_at_all(client, programs):
    with pytest.raises(Unavailable) as caught:
        await client.place(ticker_request(programs))
    assert caught.value.message == "no node is running in namespace 'default'"


async def test_deploy_through_a_bid_runs_on_the_bidding_node(fleet, client, programs):
    n1 = fleet[0]
    replies = await client.auction(AuctionRequest(type="native", tags={"zone": "a"}), wait=5, expected=3)
    bid = by_node(replies)[n1.node_id].bid
    summary = await client.deploy(bid.bid_id, ticker_request(programs))
    assert summary.node_id == n1.node_id and summary.state == "running"
    assert [w.id for w in n1.supervisor.table.active()] == [summary.id]
    assert n1.bids.outstanding == 0, "the used bid is gone"

    # The same bid again: the node refuses it.
    with pytest.raises(BidNotFound) as caught:
        await client.deploy(bid.bid_id, ticker_request(programs, name="again"))
    assert caught.value.code == 404 and caught.value.message == f"bid {bid.bid_id!r} expired or already used"
    assert len(n1.supervisor.table.active()) == 1


async def test_a_bid_is_good_in_its_own_namespace_only(fleet, nc, client, programs):
    n1 = fleet[0]
    replies = await client.auction(AuctionRequest(type="native", tags={"zone": "a"}), wait=5, expected=3)
    bid = by_node(replies)[n1.node_id].bid
    with pytest.raises(BidNotFound):
        await NexClient(nc, namespace="other").deploy(bid.bid_id, ticker_request(programs))
    assert n1.supervisor.table.active() == [] and n1.bids.outstanding == 1, "the bid still holds in its namespace"
    summary = await client.deploy(bid.bid_id, ticker_request(programs))
    assert summary.node_id == n1.node_id


async def test_a_bid_expires(nats_server, tmp_path, client, programs):
    async with running_node(nats_server, tmp_path / "short", "short", bid_ttl_s=0.3) as node:
        [reply] = await client.auction(AuctionRequest(type="native"), wait=5, expected=1)
        assert reply.bid.expires_in_ms == 300
        await eventually(lambda: node.bids.outstanding == 0, timeout=5)
        with pytest.raises(BidNotFound):
            await client.deploy(reply.bid.bid_id, ticker_request(programs))
        assert node.supervisor.table.active() == []


async def test_bids_go_away_with_the_node(nats_server, tmp_path, client, programs):
    async with running_node(nats_server, tmp_path / "brief", "brief") as node:
        [reply] = await client.auction(AuctionRequest(type="native"), wait=5, expected=1)
    assert node.bids.outstanding == 0
    with pytest.raises(BidNotFound):
        await client.deploy(reply.bid.bid_id, ticker_request(programs))


async def test_a_burst_of_placements_spreads(fleet, client, programs):
    summaries = await asyncio.gather(*(
        client.place(ticker_request(programs, name=f"t{i}"), wait=5, expected=3) for i in range(12)))
    counts = Counter(s.node_id for s in summaries)
    assert set(counts) == {n.node_id for n in fleet}, counts
    assert max(counts.values()) <= 6, counts
    # Placed one at a time, each on the least busy node: the fleet evens out.
    for i in range(6):
        await client.place(ticker_request(programs, name=f"s{i}"), wait=5, expected=3)
    totals = sorted(len(n.supervisor.table.active()) for n in fleet)
    assert sum(totals) == 18 and totals[-1] - totals[0] <= 3, totals


async def test_place_honours_tags_and_the_request_memory(fleet, client, programs):
    n1 = fleet[0]
    for i in range(3):
        summary = await client.place(ticker_request(programs, name=f"a{i}"),
                                     AuctionRequest(type="native", tags={"zone": "a"}), wait=5, expected=3)
        assert summary.node_id == n1.node_id
    with pytest.raises(Unavailable) as caught:
        await client.place(ticker_request(programs, limits={"memory_mib": 1024 * 1024}), wait=5, expected=3)
    assert "needs 1048576 MiB" in caught.value.message


async def test_live_node_count_reads_the_registry(client, nc):
    assert await client.live_node_count() is None  # no NEX_NODES bucket: wait the whole window
    kv = await nc.jetstream().create_key_value(bucket=subjects.NODES_BUCKET)
    assert await client.live_node_count() is None  # nobody listed: the same
    for node_id in ("NONE", "NTWO"):
        await kv.put(node_id, b"{}")
    assert await client.live_node_count() == 2


async def test_placement_stops_waiting_once_every_listed_node_answered(fleet, client, nc, programs):
    try:
        kv = await nc.jetstream().key_value(subjects.NODES_BUCKET)  # the nodes' own registry
    except Exception:
        kv = await nc.jetstream().create_key_value(bucket=subjects.NODES_BUCKET)
    for node in fleet:
        await kv.put(node.node_id, b"{}")
    assert await client.live_node_count() == 3
    loop = asyncio.get_running_loop()
    started = loop.time()
    summary = await client.place(ticker_request(programs), wait=5)
    assert summary.state == "running" and loop.time() - started < 2.5, "stopped once every node had answered"


async def test_malformed_auctions_are_400(fleet, nc):
    for body in (b"{not json", b'{"type": "cobol"}', b'{"type": "native", "memory_mib": -1}',
                 b'{"type": "native", "colour": "red"}', b"[]"):
        code, reply = await control(nc, "AUCTION", body=body)
        assert code == 400, (body, reply)
        assert reply["error"]["message"].startswith("invalid request"), reply
    # The nodes still bid afterwards, and held nothing for the bad requests.
    assert all(n.bids.outstanding == 0 for n in fleet)
    code, reply = await control(nc, "AUCTION", body={"type": "native"})
    assert code is None and reply["bid"]["bid_id"]


async def test_signed_deploy_through_a_bid_seals_env_to_the_bidder(nats_server, tmp_path, nc, programs):
    issuer = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    keys = UserKeys(issuer, XKey.create())
    async with running_node(nats_server, tmp_path / "secure", "secure",
                            trusted_issuers=[keys.issuer_public]) as node:
        logs = await collect(nc, subjects.logs_filter("default"))
        wire = await collect(nc, subjects.control("default", subjects.DEPLOY, ">"))
        client = NexClient(nc, keys=keys)
        summary = await client.place(ticker_request(programs, env={"GREETING": "sealed-hello"}), wait=5, expected=1)
        assert summary.node_id == node.node_id and summary.issuer == keys.issuer_public
        assert summary.env_keys == ["GREETING"]
        await eventually(lambda: any(m.data == b"started sealed-hello with 0 args" for m in logs), timeout=10)
        await nc.flush()
        assert wire and all(b"sealed-hello" not in m.data and b"sealed_env" in m.data for m in wire)


async def test_devrun_tag_lands_on_the_matching_node(fleet, nats_server, tmp_path, programs):
    n1, n2, n3 = fleet
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "--server", nats_server.url, "devrun", str(programs["ticker"]),
        "--tag", "zone=b", "--tag", "nex.os=linux", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["node_id"] in {n2.node_id, n3.node_id}

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "--server", nats_server.url, "devrun", str(programs["ticker"]),
        "--tag", "zone=c", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert "lacks tag zone=c" in err.decode()


async def test_devrun_without_a_node_places_by_auction(fleet, client, programs):
    summary = await client.devrun(programs["ticker"], name="dev", tags={"zone": "a"})
    assert summary.node_id == fleet[0].node_id


def test_ranking_prefers_the_best_and_shuffles_ties():
    def bid(name: str, score: float):
        return {"bid_id": f"{name}.x", "node_id": name, "name": name, "tags": {}, "score": score,
                "expires_in_ms": 1000, "workload_count": 0,
                "resources": {"cpus": 1, "memory_bytes": 1, "memory_available_bytes": 1, "load_1m": 0}}
    bids = [Bid.model_validate(bid(n, s)) for n, s in (("low", 10), ("top", 80), ("tie", 79.95), ("mid", 60))]
    seen_first = {rank_bids(bids)[0].name for _ in range(50)}
    assert seen_first == {"top", "tie"}
    assert [b.name for b in rank_bids(bids)[2:]] == ["mid", "low"]
    # A placement of this client under way on "top" counts as one more workload there.
    assert [b.name for b in rank_bids(bids, {"top": 1})] == ["tie", "top", "mid", "low"]


def test_auction_examples_in_the_docs_are_valid():
    text = (DOCS / "control-api.md").read_text()
    section = text.split("## AUCTION", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert len(blocks) >= 3
    for block in blocks:
        model = AuctionReply if "node_id" in block else AuctionRequest
        model.model_validate(block)
    assert WorkloadType.NATIVE.value in section


def test_devrun_tags_parse_repeated_and_comma_separated():
    assert parse_placement_tags(("zone=a,gpu=yes", "nex.arch=x86_64")) == {
        "zone": "a", "gpu": "yes", "nex.arch": "x86_64"}
    assert parse_placement_tags(()) == {}
    with pytest.raises(click.BadParameter) as caught:
        parse_placement_tags(("zone",))
    assert "invalid tag 'zone': use key=value" in caught.value.message


async def test_devrun_refuses_tags_with_a_node(nats_server, programs):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "--server", nats_server.url, "devrun", str(programs["ticker"]),
        "--tag", "zone=a", "--node", "NX", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2 and "--tag places by auction" in err.decode()
