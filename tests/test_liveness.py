"""The reconciler's view of which nodes live: short registry reads are not node deaths."""

from __future__ import annotations

from nex.fleet.liveness import Liveness

from test_planner import node


def test_a_read_without_the_reconcilers_own_node_is_not_acted_on():
    liveness = Liveness("ME", grace_s=1.0)
    assert not liveness.trustworthy([])
    assert not liveness.trustworthy([node("N1"), node("N2")])
    assert liveness.trustworthy([node("N1"), node("ME")])


def test_a_missing_node_counts_for_one_grace_period_then_is_gone():
    liveness = Liveness("ME", grace_s=1.0)
    me, other = node("ME"), node("N1")
    assert {r.node.node_id for r in liveness.view([me, other], now=0.0)} == {"ME", "N1"}
    assert {r.node.node_id for r in liveness.view([me], now=0.5)} == {"ME", "N1"}, "kept, as last seen"
    assert {r.node.node_id for r in liveness.view([me], now=0.9)} == {"ME", "N1"}
    assert {r.node.node_id for r in liveness.view([me], now=1.5)} == {"ME"}, "missing for the grace period: gone"
    assert {r.node.node_id for r in liveness.view([me, other], now=2.0)} == {"ME", "N1"}, "back"


def test_a_node_seen_again_within_the_grace_period_starts_a_fresh_one():
    liveness = Liveness("ME", grace_s=1.0)
    me, other = node("ME"), node("N1")
    liveness.view([me, other], now=0.0)
    liveness.view([me], now=0.8)
    liveness.view([me, other], now=0.9)
    assert {r.node.node_id for r in liveness.view([me], now=1.5)} == {"ME", "N1"}, "missing only since 1.5"
    liveness.forget()
    assert [r.node.node_id for r in liveness.view([me], now=1.6)] == ["ME"]


def test_an_auction_waits_only_for_nodes_that_still_write_their_entry():
    liveness = Liveness("ME", grace_s=1.0)
    me, dead = node("ME"), node("N1")
    liveness.view([me, dead], now=0.0)
    assert liveness.writing(now=0.0, within_s=1.0) == 2
    me_later = me.model_copy(update={"seq": 2})
    liveness.view([me_later, dead], now=0.8)  # N1's key has not expired yet, but it stopped writing
    assert liveness.writing(now=1.5, within_s=1.0) == 1
