"""Garbage collector settings for the node process.

Its hot paths (a NATS message in, a reply out) allocate many short-lived
containers: futures, tasks, dicts, pydantic models. With CPython's default
thresholds (700, 10, 10) the young generations were collected several hundred
times during a placement burst and took a fifth of the nodes' CPU (measured with
gc.callbacks in bench/placement.py: 1.2 s of 5.5 s). Collecting young objects
every YOUNG_THRESHOLD allocations instead, after freezing what start-up built
(modules, pydantic schemas: objects that live as long as the process), cut that
to 0.3 s. Reference counting still frees everything that is not in a cycle at
once; only cycles wait a little longer.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLD = 20


def tune_for_service() -> None:
    """Call once, after start-up imports and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


# Not for the function agents: with these settings (and with freezing what a burst of
# loads built) the JavaScript agent crashed more often in QuickJS's out-of-memory bug
# (SIGSEGV in 1-2 of 25 runs of the out-of-memory test under load, none of 25 with the
# defaults): cyclic garbage holding a QuickJS object is then more often freed by a
# collection on another thread than the one that made it.
