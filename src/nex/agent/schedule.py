"""Schedules: a cron trigger that fires once across the fleet, however many copies run it.

Every copy of a function with ``trigger.schedule`` computes the fire times itself
(croniter, in UTC) and, at each, publishes one message on the trigger subject into
the function's stream (:mod:`nex.agent.durable`) with
``Nats-Msg-Id: sched:<ns>:<name>:<fire time>``. JetStream keeps the first of those
publishes and drops the others as duplicates (within the stream's duplicate window),
so the fire time runs once, with the async retries and dead letters. Fire times that
pass while no copy runs are not made up for.

The payload is JSON: ``{"schedule": "<cron>", "time": "<fire time, ISO 8601 UTC>"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from croniter import croniter
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from nex.api import subjects

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 2.0
MAX_SLEEP_S = 1.0


def fire_id(namespace: str, name: str, fire_time: datetime) -> str:
    """The Nats-Msg-Id of one fire time: the same on every copy, so JetStream keeps one."""
    return f"sched:{namespace}:{name}:{fire_time.isoformat()}"


class Schedule:
    """Publishes one function trigger's fire times until :meth:`stop`. ``clock`` returns epoch
    seconds (injectable for tests)."""

    def __init__(self, js: JetStreamContext, namespace: str, name: str, subject: str, expression: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.subject = subject
        self.expression = expression
        self._js = js
        self._namespace = namespace
        self._name = name
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Schedule:
        self._task = asyncio.create_task(self._run(), name=f"schedule {self._namespace}/{self._name} {self.subject}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        times = croniter(" ".join(self.expression.split()), datetime.fromtimestamp(self._clock(), timezone.utc))
        while True:
            fire_time: datetime = times.get_next(datetime)
            # asyncio's clock is not the wall clock (which may be set meanwhile): sleep a little,
            # then look again, until it is time.
            while (left := fire_time.timestamp() - self._clock()) > 0:
                await asyncio.sleep(min(left, MAX_SLEEP_S))
            await self._fire(fire_time)

    async def _fire(self, fire_time: datetime) -> None:
        payload = json.dumps({"schedule": self.expression, "time": fire_time.isoformat()}).encode()
        try:
            await self._js.publish(self.subject, payload, timeout=PUBLISH_TIMEOUT_S,
                                   headers={subjects.MSG_ID_HEADER: fire_id(self._namespace, self._name, fire_time)})
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("schedule %r of %s/%s: the fire time %s was not published: %s",
                        self.expression, self._namespace, self._name, fire_time.isoformat(), exc)
