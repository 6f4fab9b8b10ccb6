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


def test_only_nodes_whose_key_fell_behind_are_asked_whether_they_are_there():
    liveness = Liveness("ME", grace_s=1.0)
    me, fresh, stale, found_gone = node("ME"), node("N1"), node("N2"), node("N3")
    behind = {"ME": 9.0, "N1": 0.5, "N2": 3.5, "N3": 4.0}  # the own node is never asked, however behind
    liveness.gone(found_gone)
    assert [r.node.node_id for r in liveness.silent([me, fresh, stale, found_gone], behind, after_s=3.0)] == ["N2"]
    assert liveness.silent([me, fresh, stale], {}, after_s=3.0) == [], "no times read: nobody is asked"


def test_a_node_found_gone_leaves_the_view_at_once_and_comes_back_when_it_writes_again():
    liveness = Liveness("ME", grace_s=10.0)
    me, other = node("ME"), node("N1")
    liveness.view([me, other], now=0.0)
    assert liveness.writing(now=0.0, within_s=5.0) == 2
    liveness.gone(other)
    # Its last record is still listed (the key's TTL has not run out), yet it is out: no grace.
    assert [r.node.node_id for r in liveness.view([me, other], now=0.1)] == ["ME"]
    assert liveness.writing(now=0.1, within_s=5.0) == 1, "no auction waits for its bid"
    assert [r.node.node_id for r in liveness.view([me], now=0.2)] == ["ME"], "its key expired: still out"
    back = other.model_copy(update={"seq": 1})  # a restarted node: a record of its own
    assert {r.node.node_id for r in liveness.view([me, back], now=0.3)} == {"ME", "N1"}


def test_a_node_found_gone_that_writes_a_new_record_is_back_at_once():
    liveness = Liveness("ME", grace_s=10.0)
    me, other = node("ME"), node("N1")
    liveness.view([me, other], now=0.0)
    liveness.gone(other)
    assert [r.node.node_id for r in liveness.view([me, other], now=0.1)] == ["ME"]
    wrote = other.model_copy(update={"seq": other.seq + 1})
    assert {r.node.node_id for r in liveness.view([me, wrote], now=0.2)} == {"ME", "N1"}
