"""Whom a sampled auction asks (nex.placement.sampling): pure, from registry records."""

from __future__ import annotations

import random
from collections import Counter

from nex.api.models import AuctionRequest, NodePing, NodeState, Resources
from nex.api.records import NodeRecord
from nex.placement.sampling import SAMPLE_SIZE, eligible, samples, whom_to_ask


def node(node_id: str, zone: str = "a", state: str = "running", runtimes=("native",),
         free_mib: int = 512) -> NodeRecord:
    return NodeRecord(
        node=NodePing(node_id=node_id, name=node_id, version="0", api_version="1", uptime_s=1,
                      state=NodeState(state), tags={"zone": zone}, workload_count=0),
        resources=Resources(cpus=2, memory_bytes=1 << 30, memory_available_bytes=free_mib << 20, load_1m=0),
        runtimes=list(runtimes), workloads=[], seq=1)


def test_eligibility_is_the_nodes_own_rule_read_from_the_registry():
    nodes = [node("ok"), node("lameduck", state="lameduck"), node("no-wasm", runtimes=("javascript",)),
             node("zone-b", zone="b"), node("small", free_mib=100), node("excluded")]
    request = AuctionRequest(type="native", tags={"zone": "a"}, memory_mib=256, exclude_nodes=["excluded"])
    assert [r.node.node_id for r in eligible(nodes, request)] == ["ok"]


def test_a_sample_asks_a_few_distinct_nodes():
    nodes = [node(f"n{i}") for i in range(20)]
    [asked] = samples(nodes, 1, rng=random.Random(1))
    assert len(asked) == SAMPLE_SIZE == len(set(asked))


def test_a_batch_spread_over_nodes_asks_the_emptiest_first():
    nodes = [node(f"n{i}") for i in range(10)]
    drawn = samples(nodes, 20, counts={"node:n0": 5}, rng=random.Random(2))
    firsts = Counter(asked[0] for asked in drawn)
    assert "n0" not in firsts and sum(firsts.values()) == 20  # it holds 5 already; the others get to 3 at most
    assert max(firsts.values()) - min(firsts.values()) <= 1
    assert all(len(asked) == SAMPLE_SIZE for asked in drawn)


def test_a_batch_spread_over_a_tag_asks_each_value_in_turn():
    nodes = [node(f"{zone}{i}", zone=zone) for zone in "abc" for i in range(4)]
    drawn = samples(nodes, 6, spread="zone", counts={"a": 1}, rng=random.Random(3))
    zones = [{node_id[0] for node_id in asked} for asked in drawn]
    assert all(len(z) == 1 for z in zones)  # each replica asks within one zone, the emptiest
    chosen = [z.pop() for z in zones]
    assert set(chosen[:2]) == {"b", "c"}  # zone a already holds one
    totals = Counter(chosen) + Counter({"a": 1})
    assert max(totals.values()) - min(totals.values()) <= 1


def test_whom_to_ask_every_node_the_eligible_ones_or_a_sample():
    small = [node(f"n{i}") for i in range(4)]
    request = AuctionRequest(type="native")
    assert whom_to_ask(small, request, 2, threshold=4) == [None, None]  # a small fleet: the broadcast
    big = small + [node(f"z{i}", zone="z") for i in range(2)] + [node("lameduck", zone="z", state="lameduck")]
    assert whom_to_ask(big, AuctionRequest(type="native", tags={"zone": "z"}), threshold=4) == [["z0", "z1"]]
    assert whom_to_ask(big, AuctionRequest(type="native", tags={"zone": "q"}), threshold=4) == [None]  # reasons
    [asked] = whom_to_ask(big, request, threshold=4)
    assert len(asked) == SAMPLE_SIZE and "lameduck" not in asked
