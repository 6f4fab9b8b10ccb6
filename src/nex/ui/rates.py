"""Invocation and error rates per function over a sliding window: pure, no I/O.

The dashboard counts the ``function_invoked`` and ``function_failed`` events it sees
on the event feed, so a rate moves the second a call is answered, without waiting
for the next poll of the nodes' counters. Counts go into one-second buckets, so a
burst of thousands of calls costs a dictionary update each and memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_WINDOW_S = 60


@dataclass
class _Bucket:
    second: int
    calls: int = 0
    errors: int = 0


@dataclass(frozen=True)
class FunctionRate:
    """The calls of one function in the window, and what they make per second."""

    workload_id: str
    name: str
    calls: int
    errors: int
    window_s: int

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.window_s

    @property
    def errors_per_s(self) -> float:
        return self.errors / self.window_s

    @property
    def error_ratio(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "workload_id": self.workload_id, "name": self.name, "calls": self.calls, "errors": self.errors,
            "window_s": self.window_s, "calls_per_s": round(self.calls_per_s, 3),
            "errors_per_s": round(self.errors_per_s, 3), "error_ratio": round(self.error_ratio, 4),
        }


class RateWindow:
    """Calls and errors of each function in the last ``window_s`` seconds.

    A failed call counts as a call and as an error: a function's error rate is the
    share of its calls that failed.
    """

    def __init__(self, window_s: int = DEFAULT_WINDOW_S) -> None:
        if window_s < 1:
            raise ValueError(f"a rate window of {window_s}s is too short: at least 1s")
        self.window_s = window_s
        self._buckets: dict[str, deque[_Bucket]] = {}
        self._names: dict[str, str] = {}

    def record(self, workload_id: str, name: str, failed: bool, now: float) -> None:
        second = int(now)
        buckets = self._buckets.setdefault(workload_id, deque())
        self._names[workload_id] = name
        if not buckets or buckets[-1].second < second:
            buckets.append(_Bucket(second))
        # An event a little late (clocks, delivery order) lands in the newest bucket.
        bucket = buckets[-1]
        bucket.calls += 1
        if failed:
            bucket.errors += 1
        self._expire(workload_id, second)

    def rates(self, now: float) -> list[FunctionRate]:
        """Every function with a call in the window, busiest first."""
        second = int(now)
        result = []
        for workload_id in list(self._buckets):
            buckets = self._expire(workload_id, second)
            if buckets is None:
                continue
            result.append(FunctionRate(
                workload_id, self._names[workload_id], sum(b.calls for b in buckets),
                sum(b.errors for b in buckets), self.window_s))
        result.sort(key=lambda r: (-r.calls, r.name, r.workload_id))
        return result

    def _expire(self, workload_id: str, second: int) -> deque[_Bucket] | None:
        buckets = self._buckets[workload_id]
        while buckets and buckets[0].second <= second - self.window_s:
            buckets.popleft()
        if not buckets:
            del self._buckets[workload_id]
            del self._names[workload_id]
            return None
        return buckets
