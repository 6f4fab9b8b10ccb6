"""`nex monitor`: the fleet in a terminal, refreshed live (nodes, workloads, last events).

Made for a plain terminal over SSH: no mouse, no alternate screen (the last frame
stays when it exits), rows that fit 80 columns, ``q`` or Ctrl-C to quit. Everything
comes through :class:`nex.client.NexClient`: PING to find the nodes, INFO for each
node's resources and workloads; events from the event streams' recent history,
then live from ``$NEX.FEED.*.events.*``. A function's calls per second and p50 come
from its latest ``function_stats`` event (sent every few seconds while it has calls);
those and the live ``function_invoked`` events are not listed among the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterator

import click
import nats.errors
from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nex.api import subjects
from nex.api.errors import NexError, NodeNotFound
from nex.api.events import CloudEvent, EventType, FunctionStatsData
from nex.api.models import NodeInfo, WorkloadSummary
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, positive, with_global_options
from nex.cli.session import run
from nex.client import NexClient

SYSTEM_NAMESPACE = "system"
HISTORY_SCAN = 500  # how far back in the events stream the first frame looks
QUIT_KEYS = (b"q", b"Q")
# Counted, not listed: the stats feed the RATE column; a live function_invoked comes per call.
_NOT_LISTED = frozenset({EventType.FUNCTION_STATS.value, EventType.FUNCTION_INVOKED.value})
STATS_FRESH_INTERVALS = 2.5  # a function_stats older than this many of its intervals: the function went idle
ID_WIDTH = 8
_TYPES = {"javascript": "js"}  # the one type name that would crowd an 80-column row


@dataclass
class FleetView:
    """One frame: what the nodes of a namespace said at ``taken_at``."""

    namespace: str
    taken_at: datetime
    nodes: list[NodeInfo] = field(default_factory=list)
    events: list[CloudEvent] = field(default_factory=list)
    problem: str | None = None
    cpu_percent: dict[str, float] = field(default_factory=dict)  # workload id -> since the last frame
    call_rates: dict[str, CallRate] = field(default_factory=dict)  # workload id -> from its last function_stats

    @property
    def workloads(self) -> list[tuple[NodeInfo, WorkloadSummary]]:
        return [(n, w) for n in self.nodes for w in sorted(n.workloads, key=lambda w: (w.name, w.id))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace, "taken_at": self.taken_at.isoformat(), "problem": self.problem,
            "nodes": [n.model_dump(mode="json", exclude={"workloads"}) for n in self.nodes],
            "workloads": [w.model_dump(mode="json") for _, w in self.workloads],
            "events": [e.model_dump(mode="json") for e in self.events],
            "call_rates": {k: v.to_dict() for k, v in self.call_rates.items()},
        }


@dataclass(frozen=True)
class CallRate:
    """A function's calls per second and latency over the interval of its last function_stats."""

    calls_per_s: float
    errors_per_s: float
    p50_ms: float | None

    @classmethod
    def of(cls, stats: FunctionStatsData) -> CallRate:
        interval = max(stats.interval_s, 1e-3)
        return cls(stats.calls / interval, stats.errors / interval, stats.p50_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"calls_per_s": round(self.calls_per_s, 3), "errors_per_s": round(self.errors_per_s, 3),
                "p50_ms": self.p50_ms}


class EventFeed:
    """The last ``limit`` events of a namespace and of the nodes (``system``, without heartbeats)."""

    def __init__(self, namespace: str, limit: int) -> None:
        self.namespace = namespace
        self._events: deque[CloudEvent] = deque(maxlen=limit)
        self._seen: deque[str] = deque(maxlen=4 * limit + 16)
        self._stats: dict[str, tuple[datetime, FunctionStatsData]] = {}

    @property
    def events(self) -> list[CloudEvent]:
        return list(self._events)

    def wanted(self, subject: str) -> bool:
        tokens = subject.split(".")
        if len(tokens) != 5:
            return False
        namespace, event_type = tokens[2], tokens[4]
        if namespace == SYSTEM_NAMESPACE:
            return event_type != EventType.HEARTBEAT.value
        return namespace == self.namespace

    def call_rates(self, now: datetime) -> dict[str, CallRate]:
        """Per workload, the rates of its last function_stats, while fresh (idle functions send none)."""
        return {workload_id: CallRate.of(stats) for workload_id, (at, stats) in self._stats.items()
                if (now - at).total_seconds() <= STATS_FRESH_INTERVALS * stats.interval_s + 1}

    def add(self, subject: str, data: bytes) -> None:
        if not self.wanted(subject):
            return
        event_type = subject.rsplit(".", 1)[-1]
        if event_type == EventType.FUNCTION_INVOKED.value:
            return  # before parsing: one comes per call
        if event_type != EventType.FUNCTION_STATS.value and self._events.maxlen == 0:
            return
        try:
            event = CloudEvent.model_validate_json(data)
        except ValidationError:
            return  # not ours to judge here: `nex events` reports malformed events
        if event_type in _NOT_LISTED:
            self._take_stats(event)
            return
        if event.id in self._seen:
            return  # seen live and in the history both
        self._seen.append(event.id)
        self._events.append(event)
        if len(self._events) > 1 and self._events[-2].time > event.time:
            ordered = sorted(self._events, key=lambda e: e.time)
            self._events.clear()
            self._events.extend(ordered)

    def _take_stats(self, event: CloudEvent) -> None:
        try:
            stats = FunctionStatsData.model_validate(event.data)
        except ValidationError:
            return
        last = self._stats.get(stats.workload_id)
        if last is None or last[0] <= event.time:
            self._stats[stats.workload_id] = (event.time, stats)

    async def follow(self, client: NexClient) -> None:
        """Live events from now on (subscribed before the history is read: nothing falls between)."""

        async def on_msg(msg: Msg) -> None:
            self.add(msg.subject, msg.data)

        await client.nc.subscribe(subjects.events_filter("*"), cb=on_msg)

    async def load_history(self, client: NexClient) -> None:
        """The recent events kept in the event streams, oldest first."""
        async with aclosing(client.recent_event_messages(HISTORY_SCAN)) as history:
            async for msg in history:
                self.add(msg.subject, msg.data)


async def take_view(client: NexClient, feed: EventFeed) -> FleetView:
    """Ask every node of the namespace for its INFO (nodes that stop meanwhile are left out)."""
    view = FleetView(client.namespace, datetime.now(timezone.utc))
    pings = await client.ping(expected=await client.live_node_count())
    infos = await asyncio.gather(*(client.node_info(p.node_id) for p in pings), return_exceptions=True)
    for info in infos:
        if isinstance(info, NodeNotFound):
            continue
        if isinstance(info, BaseException):
            raise info
        view.nodes.append(info)
    view.nodes.sort(key=lambda n: (n.name, n.node_id))
    view.events = feed.events
    view.call_rates = feed.call_rates(view.taken_at)
    return view


def cpu_rates(previous: FleetView | None, current: FleetView) -> dict[str, float]:
    """Per workload, CPU use between two frames in percent of one core."""
    if previous is None:
        return {}
    elapsed = (current.taken_at - previous.taken_at).total_seconds()
    before = {w.id: w.usage.cpu_seconds for _, w in previous.workloads if w.usage}
    rates = {}
    for _, w in current.workloads:
        was = before.get(w.id)
        if elapsed > 0 and was is not None and w.usage and w.usage.cpu_seconds is not None:
            rates[w.id] = max(0.0, (w.usage.cpu_seconds - was) / elapsed * 100)
    return rates


# -- rendering --------------------------------------------------------------------------


def _table(title: str, columns: list[tuple[str, dict[str, Any]]]) -> Table:
    # One space between columns: the workloads' ten columns fit 80 columns of terminal.
    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                  padding=(0, 1, 0, 0), header_style="bold", expand=False)
    for name, options in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis", **options)
    return table


def _mib(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1 << 30:
        return f"{value / (1 << 30):.1f}G"
    if value >= 1 << 20:
        return f"{value / (1 << 20):.0f}M"
    return f"{value / 1024:.0f}K"


def _per_s(rate: CallRate | None) -> str:
    """Calls a second, short: 0.4/s, 37/s, 1.2k/s; '-' for a function without recent calls."""
    if rate is None:
        return "-"
    value = rate.calls_per_s
    if value >= 1000:
        return f"{value / 1000:.1f}k/s"
    return f"{value:.0f}/s" if value >= 10 else f"{value:.1f}/s"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _tags(tags: dict[str, str]) -> str:
    # The automatic nex.* tags say little at a glance; the operator's own come first.
    own = [f"{k}={v}" for k, v in sorted(tags.items()) if not k.startswith("nex.")]
    auto = [f"{k.removeprefix('nex.')}={v}" for k, v in sorted(tags.items()) if k.startswith("nex.")]
    return ",".join(own + auto) or "-"


def render(view: FleetView, live: bool = False) -> RenderableType:
    """The frame: a header, the nodes, the workloads, the last events."""
    total = sum(len(n.workloads) for n in view.nodes)
    header = Text.assemble(
        ("nex monitor", "bold"), f" · ns {view.namespace} · {_count(len(view.nodes), 'node')}, "
        f"{_count(total, 'workload')} · {view.taken_at.astimezone():%H:%M:%S}",
        " · q quits" if live else "", no_wrap=True, overflow="ellipsis")
    parts: list[RenderableType] = [header]
    if view.problem:
        parts.append(Text(view.problem, style="bold red"))

    nodes = _table("NODES", [("NAME", {"max_width": 16}), ("ID", {}), ("STATE", {}), ("WL", {"justify": "right"}),
                             ("MEM FREE", {"justify": "right"}), ("LOAD", {"justify": "right"}),
                             ("TAGS", {"max_width": 24})])
    for n in view.nodes:
        state_style = "green" if n.state.value == "running" else "yellow"
        nodes.add_row(n.name, n.node_id[:ID_WIDTH], Text(n.state.value, style=state_style),
                      str(len(n.workloads)), _mib(n.resources.memory_available_bytes),
                      f"{n.resources.load_1m:.2f}", _tags(n.tags))
    parts.append(nodes if view.nodes else Text("no node answered", style="yellow"))

    workloads = _table("WORKLOADS", [
        ("NS", {"max_width": 10}), ("NAME", {"max_width": 16}), ("ID", {}), ("TYPE", {}),
        ("STATE", {}), ("NODE", {"max_width": 10}), ("HEALTH", {}), ("CALLS/ERR", {"justify": "right"}),
        ("RATE", {"justify": "right"}), ("CPU", {"justify": "right"}), ("MEM", {"justify": "right"})])
    for n, w in view.workloads:
        state_style = {"running": "green", "failed": "red", "stopped": "dim"}.get(w.state.value, "yellow")
        calls = f"{w.invocations or 0}/{w.errors or 0}" if w.lifecycle.value == "function" else "-"
        cpu = "-"
        if w.id in view.cpu_percent:
            cpu = f"{view.cpu_percent[w.id]:.0f}%"
        elif w.usage and w.usage.cpu_seconds is not None:
            cpu = f"{w.usage.cpu_seconds:.1f}s"
        rate = view.call_rates.get(w.id)
        workloads.add_row(w.namespace, w.name, w.id[:ID_WIDTH], _TYPES.get(w.type.value, w.type.value),
                          Text(w.state.value, style=state_style),
                          n.name, w.health.value if w.health else "-", calls, _per_s(rate), cpu,
                          _mib(w.usage.memory_bytes if w.usage else None))
    parts.append(workloads if view.workloads else Text("no workload", style="dim"))

    events = _table("EVENTS", [("TIME", {}), ("TYPE", {}), ("ABOUT", {"max_width": 50})])
    for e in reversed(view.events):
        about = e.data.get("name") or e.subject or e.source.rsplit("/", 1)[-1][:ID_WIDTH]
        events.add_row(e.time.astimezone().strftime("%H:%M:%S"), e.event_type, str(about))
    parts.append(events if view.events else Text("no event yet", style="dim"))
    return Group(*_spaced(parts))


def _spaced(parts: list[RenderableType]) -> Iterator[RenderableType]:
    for i, part in enumerate(parts):
        if i > 1:
            yield Text("")
        yield part


# -- the live loop ------------------------------------------------------------------------


@contextlib.contextmanager
def _keys(on_quit: Callable[[], None]) -> Iterator[None]:
    """Read single keys from a terminal (cbreak: no echo, Ctrl-C still signals); q calls ``on_quit``."""
    fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    if fd is None:
        yield
        return
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd)

    def on_key() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data or any(k in data for k in QUIT_KEYS):
            on_quit()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _watch(client: NexClient, feed: EventFeed, interval: float) -> None:
    """Refresh every ``interval`` seconds until q, SIGINT or SIGTERM.

    On a terminal each frame replaces the last; piped, frames follow each other
    (as ``top -b`` does), since there is no screen to redraw.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    console = output.stdout()
    try:
        if not console.is_terminal:
            async for view in _views(client, feed, interval, stopping):
                console.print(render(view), "")
            return
        with _keys(stop.set), Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
            async for view in _views(client, feed, interval, stopping):
                live.update(render(view, live=True), refresh=True)
    finally:
        stopping.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _views(client: NexClient, feed: EventFeed, interval: float,
                 stopping: asyncio.Future[Any]) -> AsyncIterator[FleetView]:
    """A view every ``interval`` seconds until ``stopping`` is done, even in the middle of a request."""
    previous: FleetView | None = None
    while not stopping.done():
        taking = asyncio.ensure_future(take_view(client, feed))
        await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done():
            taking.cancel()
            return
        try:
            view = taking.result()
        except (NexError, nats.errors.Error, asyncio.TimeoutError) as exc:
            # Shown in the frame, not fatal: the server may come back, and the view with it.
            view = FleetView(client.namespace, datetime.now(timezone.utc), events=feed.events,
                             problem=f"cannot read the fleet: {output.describe_error(exc) or exc}")
        else:
            view.cpu_percent = cpu_rates(previous, view)
            previous = view
        yield view
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stopping), interval)


@click.command("monitor", cls=NexCommand)
@click.option("--interval", type=float, default=2.0, show_default=True, callback=positive, metavar="SECONDS",
              help="seconds between refreshes")
@click.option("--events", "event_count", type=click.IntRange(0, 1000), default=10, show_default=True,
              metavar="N", help="how many of the last events to show")
@click.option("--once", is_flag=True, help="print one snapshot and exit (for scripts and pipes)")
@with_global_options
def monitor(opts: GlobalOptions, interval: float, event_count: int, once: bool) -> None:
    """Watch the fleet live: nodes, workloads and the last events. q or Ctrl-C quits.

    \b
    nex monitor                 # refreshes every 2 s
    nex monitor --once          # one snapshot (add --json for JSON)
    """

    if opts.json and not once:
        raise click.UsageError("--json goes with --once (a live view is for people)")

    async def action(client: NexClient) -> FleetView | None:
        feed = EventFeed(client.namespace, event_count)
        if once:
            await feed.load_history(client)
            return await take_view(client, feed)
        await feed.follow(client)
        await feed.load_history(client)
        await _watch(client, feed, interval)
        return None

    view = run(opts, action)
    if view is None:
        return
    if opts.json:
        output.print_json(view.to_dict())
    else:
        output.stdout().print(render(view))
