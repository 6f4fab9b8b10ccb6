"""The collector settings of the node and the agents (nex.gctune)."""

from __future__ import annotations

import gc

from nex.gctune import FreezeWhenQuiet

from helpers import eventually


class Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_what_a_burst_built_is_frozen_once_quiet_and_an_unload_lets_it_go():
    gc.collect()
    gc.unfreeze()
    quiet = FreezeWhenQuiet(quiet_s=0.05)
    try:
        kept = [Cycle() for _ in range(100)]  # what loaded functions hold
        quiet.changed()
        quiet.changed()  # a burst: one freeze, after the last change
        await eventually(lambda: gc.get_freeze_count() >= 100, timeout=5)

        # An unload: what it leaves in cycles must be collectable again, at once and later.
        del kept
        quiet.changed(released=True)
        assert gc.get_freeze_count() == 0
        freed = gc.collect()
        assert freed >= 100, "the unloaded objects' cycles were collected"
        await eventually(lambda: gc.get_freeze_count() > 0, timeout=5)
    finally:
        quiet.cancel()
        gc.unfreeze()
