"""Event types and their CloudEvents envelope (JSON format, spec 1.0), and where each is kept.

Every event is published on ``$NEX.FEED.<ns>.events.<TYPE>``. Two streams keep them,
by type, so that invocation traffic never evicts the audit trail:

- :data:`AUDIT_EVENTS` (``NEX_AUDIT``): what an operator must be able to read back after
  an incident: nodes starting, stopping, going lame duck; workloads started, stopped,
  failed; rejected requests; the reconciler's and apps' actions. Its retention is an
  operator setting (age and bytes), and nothing a caller of a function does adds to it.
- :data:`ACTIVITY_EVENTS` (``NEX_EVENTS``): what traffic and time make: per-function
  ``function_stats`` every few seconds, failed calls (rate-limited per function, with a
  count of those dropped), loops, dead letters, heartbeats.
- :data:`LIVE_EVENTS` are published but kept by no stream: ``function_invoked``, one per
  successful call, for ``nex events -f`` and tracing, on nodes with ``live_call_events``
  on; a successful call stores nothing.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVENT_TYPE_PREFIX = "io.nats.nex.v1."
HEARTBEAT_INTERVAL_S = 10.0


class EventType(StrEnum):
    """The last token of ``$NEX.FEED.<ns>.events.<TYPE>``."""

    NODE_STARTED = "node_started"
    NODE_STOPPED = "node_stopped"
    NODE_LAMEDUCK = "node_lameduck"
    HEARTBEAT = "heartbeat"
    WORKLOAD_STARTED = "workload_started"
    WORKLOAD_STOPPED = "workload_stopped"
    WORKLOAD_FAILED = "workload_failed"
    WORKLOAD_HEALTH = "workload_health"
    FUNCTION_INVOKED = "function_invoked"  # live only: kept by no stream
    FUNCTION_STATS = "function_stats"  # per function, every few seconds with calls: FunctionStatsData
    FUNCTION_FAILED = "function_failed"
    FUNCTION_DEAD_LETTERED = "function_dead_lettered"  # an async invocation failed max_attempts times
    INVOCATION_LOOP = "invocation_loop"  # a message past the hop limit (nex.api.hops) was not run
    REQUEST_REJECTED = "request_rejected"
    APP_APPLIED = "app_applied"
    APP_DELETED = "app_deleted"
    APP_REFUSED = "app_refused"  # an app record the reconciler does not act on, and why
    REPLICA_PLACED = "replica_placed"
    REPLICA_STOPPED = "replica_stopped"
    ROLLOUT_COMPLETED = "rollout_completed"
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
    RECONCILER_ELECTED = "reconciler_elected"


AUDIT_EVENTS = frozenset({
    EventType.NODE_STARTED, EventType.NODE_STOPPED, EventType.NODE_LAMEDUCK, EventType.WORKLOAD_STARTED,
    EventType.WORKLOAD_STOPPED, EventType.WORKLOAD_FAILED, EventType.WORKLOAD_HEALTH, EventType.REQUEST_REJECTED,
    EventType.APP_APPLIED, EventType.APP_DELETED, EventType.APP_REFUSED, EventType.REPLICA_PLACED,
    EventType.REPLICA_STOPPED, EventType.ROLLOUT_COMPLETED, EventType.ROLLOUT_ROLLED_BACK,
    EventType.RECONCILER_ELECTED,
})
"""Kept in the audit stream (``NEX_AUDIT``): security and lifecycle, out of traffic's reach."""

ACTIVITY_EVENTS = frozenset({
    EventType.HEARTBEAT, EventType.FUNCTION_STATS, EventType.FUNCTION_FAILED, EventType.FUNCTION_DEAD_LETTERED,
    EventType.INVOCATION_LOOP,
})
"""Kept in the activity stream (``NEX_EVENTS``): what traffic and time make, bounded per function."""

LIVE_EVENTS = frozenset({EventType.FUNCTION_INVOKED})
"""Published, kept by no stream."""


def kept_subjects(types: frozenset[EventType]) -> list[str]:
    """The subjects a stream keeping ``types`` (of every namespace) captures, in a stable order."""
    return [f"$NEX.FEED.*.events.{t.value}" for t in sorted(types)]


class FunctionStatsData(BaseModel):
    """The data of a ``function_stats`` event: one function's calls since its last one.

    An agent sends one per function that had calls (or refusals) in an interval of
    ``interval_s`` seconds; an idle function sends none. ``calls`` counts answered calls,
    failed ones included; ``rejected`` the calls refused with 429 (max_concurrency), which
    never ran. The percentiles are of the calls' time in their engine, in milliseconds; above
    a few thousand calls an interval they are read from a uniform sample of them. The
    ``*_total`` fields are the function copy's counters since it loaded, so a reader that
    missed an event loses nothing of the totals.
    """

    model_config = ConfigDict(extra="allow")

    workload_id: str
    name: str
    namespace: str
    interval_s: float = Field(description="seconds this event covers")
    calls: int = 0
    errors: int = 0
    rejected: int = 0
    timeouts: int = 0
    out_of_memory: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    failures_dropped: int = Field(default=0, description="function_failed events not published in the interval "
                                  "(past the per-function rate limit)")
    calls_total: int = 0
    errors_total: int = 0
    rejected_total: int = 0


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event, as Nex publishes it on ``$NEX.FEED.<ns>.events.<TYPE>``."""

    model_config = ConfigDict(extra="allow")

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str = Field(description="nex/node/<node id>")
    type: str = Field(description="io.nats.nex.v1.<event type>")
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    subject: str | None = Field(default=None, description="the workload id, for workload events")
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def event_type(self) -> str:
        """The event's type without the Nex prefix: ``workload_started``..."""
        return self.type.removeprefix(EVENT_TYPE_PREFIX)


def make_event(
    event_type: EventType, node_id: str, data: dict[str, Any], subject: str | None = None
) -> CloudEvent:
    """A CloudEvent of ``event_type`` from ``source`` about ``subject``, with ``data``, stamped now."""
    return CloudEvent(
        source=f"nex/node/{node_id}", type=EVENT_TYPE_PREFIX + event_type.value,
        subject=subject, data=data,
    )


class EventEncoder:
    """Encodes one source's events of one type and subject fast, for hot paths.

    A function answers thousands of calls a second, each with an event; building a
    pydantic model for each costs as much as the call. This writes the same
    CloudEvent JSON from a prefix made once, a sequence id and the changing data.
    """

    def __init__(self, event_type: EventType, node_id: str, subject: str | None, static: dict[str, Any]) -> None:
        self._prefix = json.dumps({
            "specversion": "1.0", "source": f"nex/node/{node_id}", "type": EVENT_TYPE_PREFIX + event_type.value,
            "subject": subject, "datacontenttype": "application/json",
        }, separators=(",", ":"))[:-1]
        self._static = json.dumps(static, separators=(",", ":"))[1:-1]
        self._id_base = uuid.uuid4().hex[:16]
        self._sequence = itertools.count()
        self._second = -1
        self._second_text = ""

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1e6):06d}+00:00"

    def encode(self, data: dict[str, Any]) -> bytes:
        """The JSON of an event carrying ``data``, stamped now."""
        now = self._now()
        changing = json.dumps(data, separators=(",", ":"))[1:-1]
        joined = f"{self._static},{changing}" if changing else self._static
        return (f'{self._prefix},"id":"{self._id_base}{next(self._sequence):x}","time":"{now}",'
                f'"data":{{{joined}}}}}').encode()
