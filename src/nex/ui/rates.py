"""Invocation and error rates per function over a sliding window: pure, no I/O.

The dashboard adds up the ``function_stats`` events it sees on the event feed (one per
function with calls every few seconds, :class:`nex.api.events.FunctionStatsData`):
a rate moves at each of them, and a busy function costs the dashboard one event per
interval, not one per call. Counts go into one-second buckets, so memory stays bounded;
the latest latency percentiles of each function are shown beside its rates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_WINDOW_S = 60


@dataclass
class _Latency:
    p50_ms: float | None = None
    p99_ms: float | None = None


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
    p50_ms: float | None = None
    p99_ms: float | None = None

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
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
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
        self._latency: dict[str, _Latency] = {}

    def record(self, workload_id: str, name: str, calls: int, errors: int, now: float,
               p50_ms: float | None = None, p99_ms: float | None = None) -> None:
        """``calls`` (``errors`` of them failed) of one function, counted at ``now``."""
        if calls <= 0 and errors <= 0:
            return
        second = int(now)
        buckets = self._buckets.setdefault(workload_id, deque())
        self._names[workload_id] = name
        if not buckets or buckets[-1].second < second:
            buckets.append(_Bucket(second))
        # An event a little late (clocks, delivery order) lands in the newest bucket.
        bucket = buckets[-1]
        bucket.calls += max(0, calls)
        bucket.errors += max(0, errors)
        if p50_ms is not None or p99_ms is not None:
            self._latency[workload_id] = _Latency(p50_ms, p99_ms)
        self._expire(workload_id, second)

    def rates(self, now: float) -> list[FunctionRate]:
        """Every function with a call in the window, busiest first."""
        second = int(now)
        result = []
        for workload_id in list(self._buckets):
            buckets = self._expire(workload_id, second)
            if buckets is None:
                continue
            latency = self._latency.get(workload_id, _Latency())
            result.append(FunctionRate(
                workload_id, self._names[workload_id], sum(b.calls for b in buckets),
                sum(b.errors for b in buckets), self.window_s, latency.p50_ms, latency.p99_ms))
        result.sort(key=lambda r: (-r.calls, r.name, r.workload_id))
        return result

    def _expire(self, workload_id: str, second: int) -> deque[_Bucket] | None:
        buckets = self._buckets[workload_id]
        while buckets and buckets[0].second <= second - self.window_s:
            buckets.popleft()
        if not buckets:
            del self._buckets[workload_id]
            del self._names[workload_id]
            self._latency.pop(workload_id, None)
            return None
        return buckets
