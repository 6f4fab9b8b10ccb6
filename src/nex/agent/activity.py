"""What an agent keeps of its functions' calls: counts in windows, and failures one by one, limited.

A successful call stores nothing: it is counted in its function's :class:`CallWindow`,
and every ``stats_interval_s`` the agent's :class:`ActivityReporter` turns each window
that saw calls into one ``function_stats`` event (:class:`nex.api.events.FunctionStatsData`),
kept in the activity stream. A live ``function_invoked`` event per successful call may
still go out, on a subject no stream keeps, when the node is told to (``live_call_events``:
it costs each call a publish, about a tenth of a trivial call's time).

A failed call (an error, a time-out, memory exhausted, a 429, a loop past the hop limit)
is reported on its own, so that it can be read back, but through a :class:`~nex.ratelimit.TokenBucket`
per function: whoever may call a function could otherwise make one event per call and
fill the activity stream at the rate of its calls. What the limit drops is counted: in
the next failure event that goes out (``dropped_before``) and in the window's
``failures_dropped``.

Everything here runs on the agent's event loop: no locks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from nex.agent.engine import OUT_OF_MEMORY, TIMEOUT
from nex.api import subjects
from nex.api.events import EventEncoder, EventType
from nex.ratelimit import TokenBucket



class EventSink(Protocol):
    """Where events go: the agent's :class:`nex.agent.events.EventFeed`."""

    def emit(self, subject: str, encoder: EventEncoder, data: dict[str, Any]) -> None: ...

SAMPLE_CAP = 4096  # durations kept per window; past it a uniform sample (reservoir) of them
DEFAULT_STATS_INTERVAL_S = 5.0
DEFAULT_FAILURE_EVENTS_PER_S = 2.0
DEFAULT_FAILURE_EVENTS_BURST = 20


class CallWindow:
    """The calls of one function since the last :meth:`take`."""

    def __init__(self, sample_cap: int = SAMPLE_CAP, rng: random.Random | None = None) -> None:
        self._cap = sample_cap
        self._rng = rng or random.Random()
        self._reset()

    def _reset(self) -> None:
        self.calls = self.errors = self.rejected = self.timeouts = self.out_of_memory = 0
        self.failures_dropped = 0
        self._samples: list[float] = []
        self._seen = 0
        self._max = 0.0

    def record(self, duration_ms: float | None, error_kind: str | None = None) -> None:
        """One answered call; ``error_kind`` is the FunctionError.kind of a failed one. A call that
        did not run (None: a loop past the hop limit) counts, but not in the percentiles."""
        self.calls += 1
        if error_kind is not None:
            self.errors += 1
            if error_kind == TIMEOUT:
                self.timeouts += 1
            elif error_kind == OUT_OF_MEMORY:
                self.out_of_memory += 1
        if duration_ms is None:
            return
        if duration_ms > self._max:
            self._max = duration_ms
        self._seen += 1
        if len(self._samples) < self._cap:
            self._samples.append(duration_ms)
        else:  # reservoir sampling: every call had the same chance to be kept (random(): a third of randrange's cost)
            slot = int(self._rng.random() * self._seen)
            if slot < self._cap:
                self._samples[slot] = duration_ms

    def refuse(self) -> None:
        """One call refused with 429: not run, not a call."""
        self.rejected += 1

    @property
    def empty(self) -> bool:
        return not (self.calls or self.rejected or self.failures_dropped)

    def take(self) -> dict[str, Any] | None:
        """The window's figures (the changing fields of a function_stats event), and a new window;
        None when nothing happened in it."""
        if self.empty:
            return None
        figures: dict[str, Any] = {
            "calls": self.calls, "errors": self.errors, "rejected": self.rejected, "timeouts": self.timeouts,
            "out_of_memory": self.out_of_memory, "failures_dropped": self.failures_dropped,
        }
        if self._samples:
            ordered = sorted(self._samples)
            for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
                figures[name] = round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
            figures["max_ms"] = round(self._max, 3)
        self._reset()
        return figures


class FunctionActivity:
    """The events of one function copy: counted calls, live successes, limited failures."""

    def __init__(self, events: EventSink, node_id: str, workload_id: str, name: str, namespace: str,
                 totals: Callable[[], dict[str, int]], live_calls: bool = False,
                 failure_events_per_s: float = DEFAULT_FAILURE_EVENTS_PER_S,
                 failure_events_burst: int = DEFAULT_FAILURE_EVENTS_BURST) -> None:
        self.window = CallWindow()
        self.limit = TokenBucket(failure_events_per_s, failure_events_burst)
        self._events = events
        self._totals = totals
        self._live_calls = live_calls
        self.failures_dropped_total = 0
        self.last_report: dict[str, Any] = {}  # the figures of the last function_stats sent
        self._last_report = time.monotonic()
        static = {"workload_id": workload_id, "name": name, "namespace": namespace}

        def feed(kind: EventType) -> tuple[str, EventEncoder]:
            return subjects.events(namespace, kind.value), EventEncoder(kind, node_id, workload_id, static)
        self._invoked = feed(EventType.FUNCTION_INVOKED)
        self._failed = feed(EventType.FUNCTION_FAILED)
        self._loop = feed(EventType.INVOCATION_LOOP)
        self._stats = feed(EventType.FUNCTION_STATS)

    def succeeded(self, subject: str, duration_ms: float) -> None:
        self.window.record(duration_ms)
        if self._live_calls:
            self._events.emit(*self._invoked, {"subject": subject, "duration_ms": duration_ms})

    def failed(self, subject: str, duration_ms: float, message: str, kind: str) -> None:
        self.window.record(duration_ms, kind)
        self._limited(self._failed, {"subject": subject, "duration_ms": duration_ms, "error": message, "kind": kind})

    def refused(self, subject: str, message: str, kind: str) -> None:
        """A call answered 429 before it ran."""
        self.window.refuse()
        self._limited(self._failed, {"subject": subject, "duration_ms": 0.0, "error": message, "kind": kind})

    def looped(self, subject: str, hop: int, limit: int) -> None:
        """A message past the hop limit: a failed call that did not run."""
        self.window.record(None, "loop")
        self._limited(self._loop, {"subject": subject, "hop": hop, "limit": limit})

    def _limited(self, feed: tuple[str, EventEncoder], data: dict[str, Any]) -> None:
        if not self.limit.allow():
            self.window.failures_dropped += 1
            self.failures_dropped_total += 1
            return
        dropped = self.limit.take_dropped()
        if dropped:
            data["dropped_before"] = dropped
        self._events.emit(*feed, data)

    def report(self) -> bool:
        """One function_stats event for the window now ending, if it saw anything; True if sent."""
        now = time.monotonic()
        figures = self.window.take()
        if figures is None:
            if self.last_report:  # went idle: its recent rate is none, not its last busy one
                self.last_report = {"calls": 0, "interval_s": round(now - self._last_report, 3)}
            self._last_report = now
            return False
        totals = self._totals()
        data = {"interval_s": round(now - self._last_report, 3), **figures,
                "calls_total": totals.get("calls", 0), "errors_total": totals.get("errors", 0),
                "rejected_total": totals.get("rejected", 0)}
        self._last_report = now
        self.last_report = data
        self._events.emit(*self._stats, data)
        return True


class ActivityReporter:
    """One task per agent: every ``interval_s``, :meth:`FunctionActivity.report` of each function.

    One task for all, not one per function: 1,000 idle functions cost one wake-up an
    interval, and an idle function sends nothing."""

    def __init__(self, interval_s: float = DEFAULT_STATS_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"a stats interval of {interval_s}s: it must be positive")
        self.interval_s = interval_s
        self._functions: set[FunctionActivity] = set()
        self._task = asyncio.create_task(self._run(), name="function stats")

    def add(self, activity: FunctionActivity) -> None:
        self._functions.add(activity)

    def remove(self, activity: FunctionActivity) -> None:
        """The function unloads: what its window holds goes out now, not lost."""
        self._functions.discard(activity)
        activity.report()

    def close(self) -> None:
        for activity in list(self._functions):
            self.remove(activity)
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for activity in list(self._functions):
                activity.report()
