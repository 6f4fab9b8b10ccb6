"""Attacks on signed control requests, bids and lame duck, by a keyless client on the bus.

Each test sends what an outsider with publish and subscribe rights can send: unsigned
requests, or signed ones it sniffed, changed or sent elsewhere. The nodes are real and
trust named issuers; the attacker is a plain nats-py connection.
"""

from __future__ import annotations

import json
import os
import time

import nkeys
import pytest

from nex.api import claims, subjects
from nex.api.errors import BidNotFound, Forbidden
from nex.api.models import AuctionRequest, DeployRequest
from nex.client import NexClient
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

from helpers import control, eventually, file_artifact, running_node


def user_keys() -> UserKeys:
    return UserKeys(nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)), XKey.create())


@pytest.fixture
def owner() -> UserKeys:
    return user_keys()


@pytest.fixture
def other() -> UserKeys:
    return user_keys()


@pytest.fixture
def admin() -> UserKeys:
    return user_keys()


def trusting(owner: UserKeys, other: UserKeys, admin: UserKeys) -> dict:
    return {"trusted_issuers": [owner.issuer_public, other.issuer_public], "admin_issuers": [admin.issuer_public]}


async def test_an_unsigned_lameduck_takes_nothing_down(nats_server, nc, tmp_path, programs, owner, other, admin):
    async with running_node(nats_server, tmp_path / "n1", "n1", **trusting(owner, other, admin)) as node:
        summary = await NexClient(nc, keys=owner).deploy(node.node_id, DeployRequest(
            name="ticker", type="native", artifact=file_artifact(programs["ticker"])))
        code, reply = await control(nc, "LAMEDUCK", node.node_id)
        assert code == 403 and "needs a claim" in reply["error"]["message"]
        code, reply = await control(nc, "LAMEDUCK", node.node_id, signer=owner.issuer)
        assert code == 403 and "only an admin issuer" in reply["error"]["message"]
        _, ping = await control(nc, "PING", node.node_id)
        assert ping["state"] == "running"
        _, found = await control(nc, "WPING", summary.id)
        assert found["workloads"][0]["state"] == "running"

        lameduck = await NexClient(nc, keys=admin).lameduck(node.node_id)
        assert lameduck.state == "lameduck"


async def test_a_sniffed_deploy_runs_nowhere_else_and_nothing_else(
        nats_server, nc, tmp_path, programs, owner, other, admin):
    trust = trusting(owner, other, admin)
    async with running_node(nats_server, tmp_path / "a", "a", **trust) as first, \
            running_node(nats_server, tmp_path / "b", "b", **trust) as second:
        body = json.dumps({"name": "job", "type": "native", "lifecycle": "job",
                           "artifact": file_artifact(programs["job"])}).encode()
        token = claims.sign_request(owner.issuer, subjects.control("default", "DEPLOY", first.node_id),
                                    body, time.time())
        sniffed = {claims.CLAIM_HEADER: token}
        # To a second node, as it is: the claim names the first.
        code, reply = await control(nc, "DEPLOY", second.node_id, body, headers=sniffed)
        assert code == 403 and "subject differs" in reply["error"]["message"]
        # To either node, with another argv, network or health check: the claim covers the body.
        for change in ({"argv": ["--evil"]}, {"network": "host"}, {"health": {"nats": "nex.default.evil"}}):
            changed = json.dumps({**json.loads(body), **change}).encode()
            for target in (first, second):
                code, reply = await control(nc, "DEPLOY", target.node_id, changed, headers=sniffed)
                assert code == 403, (change, reply)
        assert not first.supervisor.table.active() and not second.supervisor.table.active()
        # The genuine request runs once.
        code, _ = await control(nc, "DEPLOY", first.node_id, body, headers=sniffed)
        assert code is None
        code, reply = await control(nc, "DEPLOY", first.node_id, body, headers=sniffed)
        assert code == 403 and "already used" in reply["error"]["message"]


async def test_replay_memory_outlives_the_node(nats_server, nc, tmp_path, owner, other, admin):
    """A node restarted within a claim's lifetime does not accept that claim again (the memory is in JetStream)."""
    trust = trusting(owner, other, admin)
    async with running_node(nats_server, tmp_path / "n", "n", **trust) as node:
        node_id = node.node_id
        body = b""
        token = claims.sign_request(admin.issuer, subjects.control("default", "LAMEDUCK", node_id), body, time.time())
        code, reply = await control(nc, "LAMEDUCK", node_id, body, headers={claims.CLAIM_HEADER: token})
        assert code is None and reply["state"] == "lameduck"
    async with running_node(nats_server, tmp_path / "n", "n", **trust) as again:
        assert again.node_id == node_id
        code, reply = await control(nc, "LAMEDUCK", node_id, body, headers={claims.CLAIM_HEADER: token})
        assert code == 403 and "already used" in reply["error"]["message"]
        _, ping = await control(nc, "PING", node_id)
        assert ping["state"] == "running"


async def test_an_unsigned_auction_holds_nothing(nats_server, nc, tmp_path, owner, other, admin):
    async with running_node(nats_server, tmp_path / "n", "n", bid_ttl_s=60, **trusting(owner, other, admin)) as node:
        free_mib = node.bids._current_resources().memory_available_bytes >> 20
        for _ in range(3):  # as an attacker would, every few seconds
            code, reply = await control(nc, "AUCTION", body={"type": "native", "memory_mib": free_mib - 64})
            assert code is None and reply["bid"] is not None
        assert node.bids.held_mib == 0
        replies = await NexClient(nc, keys=owner).auction(AuctionRequest(type="native", memory_mib=256), wait=2,
                                                           expected=1)
        assert replies[0].bid is not None, replies[0].declined
        assert node.bids.held_mib == 256


async def test_one_issuer_holds_at_most_its_share(nats_server, nc, tmp_path, owner, other, admin):
    async with running_node(nats_server, tmp_path / "n", "n", bid_ttl_s=60, bid_hold_limit_mib=512,
                            **trusting(owner, other, admin)) as node:
        greedy = NexClient(nc, keys=owner)
        first = await greedy.auction(AuctionRequest(type="native", memory_mib=400), wait=2, expected=1)
        assert first[0].bid is not None
        second = await greedy.auction(AuctionRequest(type="native", memory_mib=400), wait=2, expected=1)
        assert second[0].bid is None and "limit of 512 MiB" in second[0].declined
        fair = await NexClient(nc, keys=other).auction(AuctionRequest(type="native", memory_mib=400), wait=2,
                                                        expected=1)
        assert fair[0].bid is not None
        assert node.bids.held_mib == 800


async def test_a_bid_belongs_to_whoever_asked_for_it(nats_server, nc, tmp_path, programs, owner, other, admin):
    async with running_node(nats_server, tmp_path / "n", "n", bid_ttl_s=60, **trusting(owner, other, admin)) as node:
        mine = NexClient(nc, keys=owner)
        [reply] = await mine.auction(AuctionRequest(type="native", memory_mib=64), wait=2, expected=1)
        bid = reply.bid
        # A keyless client that saw the bid tries to spend it with a malformed DEPLOY, then an unsigned one.
        code, refused = await control(nc, "DEPLOY", bid.bid_id, b"{not json")
        assert code == 400
        code, refused = await control(nc, "DEPLOY", bid.bid_id,
                                      {"name": "x", "type": "native", "artifact": file_artifact(programs["ticker"])})
        assert code == 403
        # Another trusted issuer may not spend it either.
        with pytest.raises(Forbidden) as theirs:
            await NexClient(nc, keys=other).deploy(bid.bid_id, DeployRequest(
                name="theirs", type="native", artifact=file_artifact(programs["ticker"])))
        assert "another issuer" in theirs.value.message
        assert node.bids.outstanding == 1
        # The owner's deploy through it still works, once.
        request = DeployRequest(name="mine", type="native", artifact=file_artifact(programs["ticker"]))
        summary = await mine.deploy(bid.bid_id, request)
        assert summary.state == "running" and node.bids.outstanding == 0
        with pytest.raises(BidNotFound):
            await mine.deploy(bid.bid_id, request)
        await eventually(lambda: len(node.supervisor.table.active()) == 1)
