"""The node's Prometheus endpoint: ``GET /metrics`` on ``--metrics-port``.

Every figure is read from the node at scrape time by one collector
(:class:`NodeCollector`) over a registry of the node's own, so that several
nodes in one process never share a metric: nothing is counted twice, and
nothing is kept here that the node does not already keep. Counters come from
what their owners count anyway: the function agents (invocations, errors,
rejections, a latency histogram over :data:`nex.agent.protocol.LATENCY_BOUNDS_MS`),
the bid book, the reconciler, and the control service (the same counts
``$SRV.STATS`` answers). The names and labels are listed in docs/observability.md.

The endpoint is served by aiohttp on the node's event loop, so the collector
reads the node's state on the loop that changes it; before each scrape it asks
the function agents for fresh counters (bounded by ``AGENT_STATS_WAIT_S``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from nex import __version__
from nex.agent.protocol import LATENCY_BOUNDS_MS
from nex.api.errors import NexError
from nex.api.models import Lifecycle, NodeState, WorkloadState, WorkloadType
from nex.node.resources import resources

if TYPE_CHECKING:
    from nex.fleet.reconciler import Reconciler
    from nex.node.bids import BidBook
    from nex.node.control import ControlService
    from nex.node.supervisor import Supervisor
    from nex.node.workloads import Workload

log = logging.getLogger(__name__)

PATH = "/metrics"
AGENT_STATS_WAIT_S = 1.0
WORKLOAD_LABELS = ("namespace", "name", "workload_id", "type")
FUNCTION_LABELS = ("namespace", "name", "workload_id")
RECONCILER_ACTIONS = ("place", "stop", "restart", "rollback")


class MeteredNode(Protocol):
    """What the collector reads of the node (nex.node.node.Node, which starts this endpoint)."""

    @property
    def node_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> NodeState: ...

    @property
    def started(self) -> float: ...

    @property
    def supervisor(self) -> Supervisor | None: ...

    @property
    def bids(self) -> BidBook | None: ...

    @property
    def reconciler(self) -> Reconciler | None: ...

    @property
    def control(self) -> ControlService | None: ...


class MetricsEndpointError(NexError):
    """The metrics endpoint cannot listen where it was told to."""

    code = 500


class NodeCollector(Collector):
    """Reads one node at scrape time; see the module docstring."""

    def __init__(self, node: MeteredNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        yield from self._node_gauges(node)
        supervisor = node.supervisor
        if supervisor is not None:
            workloads = [supervisor.refresh(w) for w in supervisor.table.active()]
            yield from _workload_counts(supervisor.table)
            yield from _agents(supervisor.agents_up())
            yield from _usage(workloads)
            yield from _functions([w for w in workloads if w.request.lifecycle == Lifecycle.FUNCTION])
        yield from self._placements(node)
        yield from _control(node)

    def _node_gauges(self, node: MeteredNode) -> Iterator[Metric]:
        info = GaugeMetricFamily("nex_node_info", "The node: always 1, its identity in the labels",
                                 labels=("node_id", "name", "version", "state"))
        info.add_metric((node.node_id, node.name, __version__, node.state.value), 1)
        yield info
        yield GaugeMetricFamily("nex_node_uptime_seconds", "Seconds since the node started",
                                value=round(time.monotonic() - node.started, 3))
        found = resources()
        yield GaugeMetricFamily("nex_node_cpus", "CPUs of the host", value=found.cpus)
        yield GaugeMetricFamily("nex_node_memory_bytes", "Memory of the host", value=found.memory_bytes)
        yield GaugeMetricFamily("nex_node_memory_available_bytes", "Memory available on the host",
                                value=found.memory_available_bytes)
        yield GaugeMetricFamily("nex_node_load1", "Load average of the host over one minute", value=found.load_1m)

    @staticmethod
    def _placements(node: MeteredNode) -> Iterator[Metric]:
        bids = node.bids
        if bids is not None:
            made = CounterMetricFamily("nex_bids", "Auctions this node answered", labels=("result",))
            made.add_metric(("bid",), bids.bids_made)
            made.add_metric(("declined",), bids.declined)
            yield made
            yield CounterMetricFamily("nex_bid_deploys", "Deploys that came through a bid of this node",
                                      value=bids.deploys)
            yield GaugeMetricFamily("nex_bids_outstanding", "Bids made and neither used nor expired",
                                    value=bids.outstanding)
        reconciler = node.reconciler
        if reconciler is not None:
            yield GaugeMetricFamily("nex_reconciler_leading", "1 while this node holds the reconciler lease",
                                    value=1 if reconciler.leading else 0)
            actions = CounterMetricFamily("nex_reconciler_actions", "Actions of this node's reconciler",
                                          labels=("action",))
            for action in RECONCILER_ACTIONS:
                actions.add_metric((action,), reconciler.actions[action])
            yield actions
            yield CounterMetricFamily("nex_reconciler_passes", "Passes this node's reconciler made as the lease holder",
                                      value=reconciler.passes)


def _workload_counts(table: Iterable[Workload]) -> Iterator[Metric]:
    counts: dict[tuple[str, str], int] = {(t.value, s.value): 0 for t in WorkloadType for s in WorkloadState}
    for workload in table:
        counts[(workload.request.type.value, workload.state.value)] += 1
    family = GaugeMetricFamily("nex_node_workloads", "Workloads the node lists, by type and state",
                               labels=("type", "state"))
    for labels, count in sorted(counts.items()):
        family.add_metric(labels, count)
    yield family


def _agents(up: dict[str, bool]) -> Iterator[Metric]:
    family = GaugeMetricFamily("nex_node_agent_up", "1 while the agent process of a function runtime runs",
                               labels=("engine",))
    for engine, running in sorted(up.items()):
        family.add_metric((engine,), 1 if running else 0)
    yield family


def _labels(workload: Workload, with_type: bool = True) -> tuple[str, ...]:
    labels = (workload.namespace, workload.request.name, workload.id)
    return (*labels, workload.request.type.value) if with_type else labels


def _usage(workloads: list[Workload]) -> Iterator[Metric]:
    cpu = CounterMetricFamily("nex_workload_cpu_seconds", "CPU time a workload used (processes and containers)",
                              labels=WORKLOAD_LABELS)
    memory = GaugeMetricFamily("nex_workload_memory_bytes",
                               "Memory a workload holds: resident set, cgroup, or engine memory of a function",
                               labels=WORKLOAD_LABELS)
    for workload in workloads:
        usage = workload.usage()
        if usage is None:
            continue
        if usage.cpu_seconds is not None:
            cpu.add_metric(_labels(workload), usage.cpu_seconds)
        if usage.memory_bytes is not None:
            memory.add_metric(_labels(workload), usage.memory_bytes)
    yield cpu
    yield memory


def _functions(functions: list[Workload]) -> Iterator[Metric]:
    invocations = CounterMetricFamily("nex_function_invocations", "Calls a function answered",
                                      labels=FUNCTION_LABELS)
    errors = CounterMetricFamily("nex_function_errors", "Calls a function answered with an error",
                                 labels=FUNCTION_LABELS)
    rejected = CounterMetricFamily("nex_function_rejected", "Calls refused with 429: max_concurrency reached",
                                   labels=FUNCTION_LABELS)
    latency = HistogramMetricFamily("nex_function_latency_seconds", "Time a function took to answer a call",
                                    labels=FUNCTION_LABELS)
    dropped = CounterMetricFamily("nex_function_failure_events_dropped",
                                  "Failure events the per-function rate limit did not publish", labels=FUNCTION_LABELS)
    rate = GaugeMetricFamily("nex_function_calls_per_second",
                             "Calls a second over the interval of the function's last function_stats",
                             labels=FUNCTION_LABELS)
    recent = GaugeMetricFamily("nex_function_recent_latency_seconds",
                               "Latency percentiles of the calls of the function's last function_stats",
                               labels=(*FUNCTION_LABELS, "quantile"))
    for workload in functions:
        stats, labels = workload.stats, _labels(workload, with_type=False)
        invocations.add_metric(labels, stats.get("invocations") or 0)
        errors.add_metric(labels, stats.get("errors") or 0)
        rejected.add_metric(labels, stats.get("rejected") or 0)
        dropped.add_metric(labels, stats.get("failure_events_dropped") or 0)
        last = stats.get("recent")
        if isinstance(last, dict):
            rate.add_metric(labels, last.get("calls_per_s") or 0.0)
            for quantile, key in (("0.5", "p50_ms"), ("0.9", "p90_ms"), ("0.99", "p99_ms")):
                if last.get(key) is not None:
                    recent.add_metric((*labels, quantile), last[key] / 1000)
        latency.add_metric(labels, histogram_buckets(stats.get("latency_buckets") or []),
                           (stats.get("latency_sum_ms") or 0.0) / 1000)
    yield from (invocations, errors, rejected, latency, dropped, rate, recent)


def histogram_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """An agent's calls per bucket as Prometheus wants them: cumulative, by upper bound in seconds."""
    counts = (list(counts) + [0] * (len(LATENCY_BOUNDS_MS) + 1))[:len(LATENCY_BOUNDS_MS) + 1]
    buckets, total = [], 0
    for bound, count in zip([*(f"{ms / 1000:g}" for ms in LATENCY_BOUNDS_MS), "+Inf"], counts):
        total += count
        buckets.append((bound, total))
    return buckets


def _control(node: MeteredNode) -> Iterator[Metric]:
    stats = node.control.stats() if node.control is not None else None
    if stats is None:
        return
    requests = CounterMetricFamily("nex_control_requests", "Control requests the node received, by endpoint",
                                   labels=("endpoint",))
    errors = CounterMetricFamily("nex_control_errors", "Control requests answered with an error, by endpoint",
                                 labels=("endpoint",))
    seconds = CounterMetricFamily("nex_control_processing_seconds", "Time spent answering control requests",
                                  labels=("endpoint",))
    for endpoint in stats.endpoints:
        if endpoint.name.startswith("function-"):
            continue  # the functions' own entries: nex_function_*
        requests.add_metric((endpoint.name,), endpoint.num_requests)
        errors.add_metric((endpoint.name,), endpoint.num_errors)
        seconds.add_metric((endpoint.name,), endpoint.processing_time / 1e9)
    yield from (requests, errors, seconds)


class MetricsServer:
    """``GET /metrics`` of one node, on its event loop."""

    def __init__(self, node: MeteredNode, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self._node = node
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the port it listens on, once started (port 0 picks one)

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Listen, or raise MetricsEndpointError (port in use, address not here) having changed nothing."""
        app = web.Application()
        app.router.add_get(PATH, self._scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsEndpointError(_why_not(self._host, self._port, exc)) from None
        self._runner = runner
        self.port = _bound_port(runner, self._port)
        log.info("metrics on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        supervisor = self._node.supervisor
        if supervisor is not None:
            try:
                await asyncio.wait_for(supervisor.refresh_function_stats(), AGENT_STATS_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("function agents slow to send their counters: the scrape has the last ones")
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _why_not(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"metrics endpoint: {where} is already in use: give another --metrics-port"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return f"metrics endpoint: cannot listen on {where}: no such address here (--metrics-host)"
    if exc.errno == errno.EACCES:
        return f"metrics endpoint: not allowed to listen on {where} (ports below 1024 need privileges)"
    return f"metrics endpoint: cannot listen on {where}: {exc.strerror or exc}"


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked

