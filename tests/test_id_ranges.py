"""Host uid ranges of containers: never two live containers on one range, across nodes of a host."""

from __future__ import annotations

from nex.sandbox.idranges import HOST_ID_BASE, ID_RANGE, IdRanges, NoFreeRange

import pytest


def test_two_holders_never_get_one_slot_and_a_released_slot_is_taken_again(tmp_path):
    one, other = IdRanges(tmp_path, slots=3), IdRanges(tmp_path, slots=3)  # two nodes of one host
    taken = [one.allocate("a"), other.allocate("b"), one.allocate("c")]
    assert sorted(r.slot for r in taken) == [0, 1, 2]
    assert taken[1].base == HOST_ID_BASE + taken[1].slot * ID_RANGE
    with pytest.raises(NoFreeRange) as caught:
        other.allocate("d")
    assert "3 uid ranges" in str(caught.value)

    other.release(taken[1].slot)
    assert one.allocate("e").slot == taken[1].slot
    assert (tmp_path / str(taken[1].slot)).read_text() == "e\n", "the slot's file names its holder"


def test_a_restarted_node_claims_the_slots_of_its_handles(tmp_path):
    dead, live = IdRanges(tmp_path, slots=4), IdRanges(tmp_path, slots=4)
    held = live.allocate("a live workload of another node")
    leftover = dead.allocate("a workload of a node that died")
    dead.release(leftover.slot)  # the node died: its lock went with it

    restarted = IdRanges(tmp_path, slots=4)
    assert restarted.claim(leftover.slot, "cleaning up")
    assert not restarted.claim(held.slot, "cleaning up"), "a slot another node holds is not taken"
    assert live.allocate("next").slot not in (held.slot, leftover.slot)
    assert not restarted.claim(99, "out of range")
