"""Event types and their CloudEvents envelope (JSON format, spec 1.0)."""

from __future__ import annotations

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
    FUNCTION_INVOKED = "function_invoked"
    FUNCTION_FAILED = "function_failed"


class CloudEvent(BaseModel):
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
        return self.type.removeprefix(EVENT_TYPE_PREFIX)


def make_event(
    event_type: EventType, node_id: str, data: dict[str, Any], subject: str | None = None
) -> CloudEvent:
    return CloudEvent(
        source=f"nex/node/{node_id}", type=EVENT_TYPE_PREFIX + event_type.value,
        subject=subject, data=data,
    )
