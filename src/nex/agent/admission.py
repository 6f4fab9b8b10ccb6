"""The concurrency limit of one function copy: admit a call, or refuse it at once.

A function deployed with ``limits.max_concurrency`` takes at most that many calls
at a time, counting those running and those queued on it. A call past the limit is
not queued (where it would wait, and the caller would see a time-out): it is
answered at once with a 429 error, so the caller can back off or try another copy.
The count is per copy: copies of a function on several nodes each have the limit.

Everything here runs on the agent's event loop: no locks.
"""

from __future__ import annotations

from nex.api.errors import TooManyRequests

# FunctionError.kind-like label of a refused call in the function_failed event
OVERLOADED = "overloaded"


class ConcurrencyLimit:
    """Counts the calls in progress on one function copy against its ``limit``."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {limit}")
        self.limit = limit
        self.in_progress = 0
        self.rejected = 0
        self._name = name

    def try_enter(self) -> bool:
        """Admit one call (True), or count it as rejected (False) when ``limit`` are in progress."""
        if self.in_progress >= self.limit:
            self.rejected += 1
            return False
        self.in_progress += 1
        return True

    def leave(self) -> None:
        """An admitted call was answered (or dropped)."""
        if self.in_progress > 0:
            self.in_progress -= 1

    def refusal(self) -> TooManyRequests:
        """The error a refused call is answered with."""
        return TooManyRequests(
            f"function {self._name!r} is busy: it already runs its limit of {self.limit} concurrent"
            f" call{'s' if self.limit != 1 else ''} (max_concurrency); try again later")
