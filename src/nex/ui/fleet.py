"""What the dashboard shows, kept current: the fleet, recent events, function rates.

A :class:`FleetWatcher` polls the nodes (PING, then INFO for resources) and the
workloads (WPING, one scatter per namespace) every ``refresh_s`` seconds, and at
once after an action or a workload event; it listens to the event feed of each
namespace it watches (and ``system``, where node events go) over plain NATS
subscriptions. Every change goes out through a :class:`~nex.ui.sse.Broadcaster`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Any, Iterable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nex.api import subjects
from nex.api.errors import BadRequest, NexError, NodeNotFound
from nex.api.events import EventType
from nex.api.models import NodeInfo, NodePing, WorkloadSummary
from nex.client import NexClient
from nex.ui import sse
from nex.ui.rates import RateWindow

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 2.0
RECENT_EVENTS = 200
HISTORY_SCAN = 1000  # events read back from the stream at start, of every namespace
SYSTEM_NAMESPACE = "system"  # node-wide events (nex.node.feeds)
RATES_INTERVAL_S = 1.0
# Events that change what the nodes would answer: the lists are fetched again at once.
_CHANGES = frozenset({
    EventType.NODE_STARTED, EventType.NODE_STOPPED, EventType.NODE_LAMEDUCK, EventType.WORKLOAD_STARTED,
    EventType.WORKLOAD_STOPPED, EventType.WORKLOAD_FAILED, EventType.WORKLOAD_HEALTH,
})
# Counted into the rates, and not listed: one per function with calls every few seconds.
_STATS = EventType.FUNCTION_STATS.value
# Not listed, not counted (function_stats counts those calls): one per successful call, on a live feed.
_SKIPPED = frozenset({EventType.FUNCTION_INVOKED.value})


class FleetWatcher:
    """The fleet as the page sees it, over one NATS connection shared by one client per namespace."""

    def __init__(self, clients: Iterable[NexClient], broadcaster: sse.Broadcaster,
                 refresh_s: float = DEFAULT_REFRESH_S, rate_window_s: int = 60) -> None:
        self.clients = {c.namespace: c for c in clients}
        if not self.clients:
            raise ValueError("a dashboard needs at least one namespace")
        self.primary = next(iter(self.clients.values()))
        self.broadcaster = broadcaster
        self.refresh_s = refresh_s
        self.rates = RateWindow(rate_window_s)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._fleet: dict[str, Any] = {"namespaces": list(self.clients), "nodes": [], "workloads": [],
                                       "error": None, "time": None}
        self._cpu: dict[str, tuple[float, float]] = {}  # workload id -> (cpu seconds, monotonic time)
        self._wake = asyncio.Event()
        self._refreshes = asyncio.Condition()
        self._started = 0  # refreshes begun; one that began after an action shows what it did
        self._finished = 0
        self._subscriptions: list[Subscription] = []
        self._held: list[Msg] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def namespaces(self) -> list[str]:
        return list(self.clients)

    def client_for(self, namespace: str) -> NexClient:
        """The client of a namespace this dashboard watches; NexError otherwise."""
        client = self.clients.get(namespace)
        if client is None:
            raise BadRequest(f"this dashboard does not watch namespace {namespace!r} "
                             f"(it watches {', '.join(self.clients)})")
        return client

    async def start(self) -> None:
        nc = self.primary.nc
        watched = list(dict.fromkeys([*self.clients, SYSTEM_NAMESPACE]))
        self._held = []  # live events wait while the history is read
        for namespace in watched:
            self._subscriptions.append(await nc.subscribe(subjects.events_filter(namespace), cb=self._on_event))
        try:
            await self._load_history(set(watched))
        finally:
            held, self._held = self._held, None
            seen = {e.get("id") for e in self.recent}
            for msg in held:
                if _event_id(msg) not in seen:
                    self._take(msg, live=True)
        await self.refresh()
        self._tasks = [asyncio.create_task(self._refresh_loop(), name="dashboard refresh"),
                       asyncio.create_task(self._rates_loop(), name="dashboard rates")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for sub in self._subscriptions:
            if not self.primary.nc.is_closed:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error:
                    pass  # the connection went meanwhile: the subscription went with it
        self._subscriptions = []

    def opening(self) -> list[bytes]:
        """What a page that just connected needs before the live messages."""
        return [sse.retry(), sse.encode("fleet", self._fleet), sse.encode("events", list(self.recent)),
                sse.encode("rates", self._rates())]

    def snapshot(self) -> dict[str, Any]:
        return {**self._fleet, "events": list(self.recent), "rates": self._rates()}

    def poke(self) -> None:
        """Fetch the lists again now (after an action), not at the next tick."""
        self._wake.set()

    async def refreshed(self, timeout: float) -> None:
        """Wait for the next refresh to end (bounded): actions answer with what they changed."""
        wanted = self._started + 1
        self.poke()
        try:
            async with self._refreshes:
                await asyncio.wait_for(self._refreshes.wait_for(lambda: self._finished >= wanted), timeout)
        except asyncio.TimeoutError:
            pass

    # -- polling -------------------------------------------------------------------------

    async def refresh(self) -> dict[str, Any]:
        self._started += 1
        number = self._started
        try:
            nodes, infos = await self._nodes()
            workloads = await self._workloads(len(nodes))
            error = None
        except NexError as exc:
            nodes, infos, workloads, error = [], {}, [], str(exc)
        names = {n.node_id: n.name for n in nodes}
        listed = {w.id for w in workloads}
        self._cpu = {k: v for k, v in self._cpu.items() if k in listed}  # forget the workloads nodes forgot
        self._fleet = {
            "namespaces": self.namespaces,
            "time": datetime.now(timezone.utc).isoformat(),
            "error": error,
            "nodes": [_node_view(n, infos.get(n.node_id)) for n in sorted(nodes, key=lambda n: n.name)],
            "workloads": [self._workload_view(w, names) for w in
                          sorted(workloads, key=lambda w: (w.namespace, w.name, w.id))],
        }
        self.broadcaster.publish("fleet", self._fleet)
        async with self._refreshes:
            self._finished = max(self._finished, number)
            self._refreshes.notify_all()
        return self._fleet

    async def _nodes(self) -> tuple[list[NodePing], dict[str, NodeInfo]]:
        expected = await self.primary.live_node_count()
        pings = await self.primary.ping(expected=expected)
        answers = await asyncio.gather(*(self.primary.node_info(p.node_id) for p in pings), return_exceptions=True)
        infos: dict[str, NodeInfo] = {}
        for answer in answers:
            if isinstance(answer, NodeInfo):
                infos[answer.node_id] = answer
            elif isinstance(answer, NodeNotFound):
                continue  # stopped between the PING and the INFO
            elif isinstance(answer, NexError):
                log.warning("INFO failed: %s", answer)
            elif isinstance(answer, BaseException):
                raise answer
        return pings, infos

    async def _workloads(self, node_count: int) -> list[WorkloadSummary]:
        expected = node_count or None
        lists = await asyncio.gather(*(c.workloads(expected_nodes=expected) for c in self.clients.values()))
        return [w for found in lists for w in found]

    def _workload_view(self, w: WorkloadSummary, node_names: dict[str, str]) -> dict[str, Any]:
        view = json.loads(w.model_dump_json(exclude={"artifact", "env_keys", "argv", "issuer"}))
        view["node_name"] = node_names.get(w.node_id)
        view["cpu_percent"] = self._cpu_percent(w)
        return view

    def _cpu_percent(self, w: WorkloadSummary) -> float | None:
        """CPU use since the last poll, from the cumulative seconds the node reports."""
        if w.usage is None or w.usage.cpu_seconds is None:
            return None
        now = time.monotonic()
        previous = self._cpu.get(w.id)
        self._cpu[w.id] = (w.usage.cpu_seconds, now)
        if previous is None or now - previous[1] < 0.05:
            return None
        return round(max(0.0, w.usage.cpu_seconds - previous[0]) / (now - previous[1]) * 100, 1)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.refresh_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except (nats.errors.Error, OSError) as exc:
                log.warning("could not refresh the fleet: %s", exc)

    # -- events and rates --------------------------------------------------------------

    async def _load_history(self, namespaces: set[str]) -> None:
        """The recent events the events stream keeps, put before the live ones (the live
        subscriptions are made first, so nothing falls between; one seen in both is kept once)."""
        async with aclosing(self.primary.recent_event_messages(HISTORY_SCAN)) as history:
            async for msg in history:
                if subjects.namespace_of(msg.subject) in namespaces:
                    self._take(msg, live=False)

    async def _on_event(self, msg: Msg) -> None:
        if self._held is not None:
            self._held.append(msg)
        else:
            self._take(msg, live=True)

    def _take(self, msg: Msg, live: bool) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            log.warning("skipped a malformed event on %s", msg.subject)
            return
        if not isinstance(event, dict):
            return
        event_type = msg.subject.rsplit(".", 1)[-1]
        data = event.get("data")
        if not isinstance(data, dict):
            data = {}
        if event_type in _SKIPPED:
            return
        if event_type == _STATS:
            self.rates.record(str(data.get("workload_id") or event.get("subject")), str(data.get("name") or ""),
                              _count(data.get("calls")), _count(data.get("errors")),
                              time.time() if live else _timestamp(event.get("time")),
                              _ms(data.get("p50_ms")), _ms(data.get("p99_ms")))
            return
        view = {"type": event_type, "namespace": subjects.namespace_of(msg.subject), "time": event.get("time"),
                "source": str(event.get("source", "")).removeprefix("nex/node/"), "subject": event.get("subject"),
                "data": data, "id": event.get("id")}
        self.recent.append(view)
        if live:
            self.broadcaster.publish("event", view)
            if event_type in _CHANGES:
                self.poke()

    def _rates(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rates.rates(time.time())]

    async def _rates_loop(self) -> None:
        last: list[dict[str, Any]] | None = None
        while True:
            await asyncio.sleep(RATES_INTERVAL_S)
            current = self._rates()
            if current != last:
                self.broadcaster.publish("rates", current)
                last = current


def _event_id(msg: Msg) -> Any:
    try:
        return json.loads(msg.data).get("id")
    except (ValueError, AttributeError):
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _ms(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _timestamp(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0  # long out of any rate window


def _node_view(ping: NodePing, info: NodeInfo | None) -> dict[str, Any]:
    view = json.loads(ping.model_dump_json(exclude={"xkey"}))
    if info is not None:
        view["resources"] = info.resources.model_dump()
        view["runtimes"] = [r.value for r in info.runtimes]
    return view
