"""A token bucket that counts what it refuses: how the events an outsider can cause are bounded.

Whoever may call a function can make it fail on every call, and whoever may publish on
``$NEX.SVC.>`` can have every request refused; each would otherwise be one stored event.
A :class:`TokenBucket` lets ``burst`` events through at once, then ``per_s`` a second,
and counts the rest, so that the next event that goes out can say how many were not
sent (the agents' failures, :mod:`nex.agent.activity`; the node's rejections). Pure:
the clock is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``burst`` at once, then ``per_s`` a second; :attr:`dropped` counts the refused since the last let through."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_s < 0 or burst < 0:
            raise ValueError("a rate limit cannot be negative")
        self._per_s = per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.dropped = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def take_dropped(self) -> int:
        """The refused since the last call; the count starts again."""
        dropped, self.dropped = self.dropped, 0
        return dropped
