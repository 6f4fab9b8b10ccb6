"""Functions run by an agent process: the node side shared by the javascript and wasm runtimes.

:class:`AgentRuntime` starts its agent (``python -m <agent_module>``, see
:mod:`nex.agent.agent`) on the first ``start()``. The agent has its own NATS
connection: it subscribes each function to its triggers (queue group
``trigger.queue`` or ``nex.<namespace>.<name>``), answers requests, and publishes
log lines and function events (``function_stats``, ``function_failed``; nex.agent.activity) itself; the ``logs``
sink given to ``start()`` only receives the runtime's own notices about the function.

If the agent dies, the runtime starts a new one and loads every function again:
functions survive an agent restart and their ``wait()`` does not complete (their
state and their counters start over; a warning is logged and written to the
function's stderr). The calls in flight in the dead agent get no reply. A function
ends, with the error in its ExitResult, only if loading it again fails, or if the
agent dies twice while loading it (code that crashes the engine must not
crash-loop the agent). An agent that dies within ``CRASH_WINDOW_S`` of its start is
restarted after a delay that doubles each time, up to ``MAX_RESTART_DELAY_S``: the
culprit of a crash during a call is unknown, and ending every function for it would
let one bad function take the others down. If no agent can be started at all,
every function ends with the error.

Compiling happens in the agent, at ``start()``, which raises :class:`BadArtifact`
with the engine's message. ``cleanup()`` has nothing to do: the agent dies with its
node. ``inspect()`` answers from the last stats the agent sent, refreshing them in
the background when they are older than ``STATS_MAX_AGE_S``.

A subclass names its engine and agent module, checks its artifact in
``prepare()``, and says what its load request carries (``_artifact_fields``).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nex.agent import protocol
from nex.agent.protocol import ENV_CONNECT, ENV_HOST_SERVICES, ENV_NODE_ID
from nex.api.errors import BadArtifact, BadRequest, InternalError, Unavailable
from nex.api.models import DEFAULT_FUNCTION_MEMORY_MIB, DEFAULT_FUNCTION_TIMEOUT_MS, Lifecycle, Trigger, WorkloadType
from nex.runtimes.agent_process import AgentExited, AgentProcess, AgentStartError, describe_exit
from nex.runtimes.base import Capabilities, ExitResult, Handle, LogSink, RuntimeContext, WorkloadSpec

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0
CRASH_WINDOW_S = 10.0
FIRST_RESTART_DELAY_S = 0.1
MAX_RESTART_DELAY_S = 5.0
STATS_MAX_AGE_S = 1.0
_KEPT_EXITS = 1024


@dataclass
class _Function:
    load: protocol.Load
    logs: LogSink
    ended: asyncio.Future[ExitResult]
    crashes_while_loading: int = 0


class AgentRuntime(ABC):
    """Runs the functions of one engine in one agent process; see the module docstring."""

    type: WorkloadType
    engine_name: str  # in messages: "the javascript runtime is closed"
    agent_module: str
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.FUNCTION}), invocable=True, sandboxed=True,
                                outlives_node=False)

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self._functions: dict[str, _Function] = {}
        self._exits: OrderedDict[str, ExitResult] = OrderedDict()
        self._agent: AgentProcess | None = None
        self._agent_lock = asyncio.Lock()  # held while an agent starts and gets its functions
        self._watchers: set[asyncio.Task[None]] = set()
        self._quick_restarts = 0
        self._stats: dict[str, protocol.FunctionStats] = {}
        self._stats_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def agent_pid(self) -> int | None:
        agent = self._agent
        return agent.pid if agent is not None and agent.returncode is None else None

    @abstractmethod
    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        """Check the artifact without the agent; raises BadArtifact, returns warnings."""

    def _agent_environment(self) -> dict[str, str]:
        """Variables the agent needs beside the connection and node id."""
        return {}

    @abstractmethod
    async def _artifact_fields(self, spec: WorkloadSpec) -> dict[str, str]:
        """The fields of the load request that carry the artifact (protocol.Load)."""

    async def warm(self) -> None:
        """Start the agent now, before any function needs it (NodeConfig.warm_agents). One that
        fails to start is reported here and tried again by the first deploy."""
        try:
            await self._running_agent()
        except (InternalError, Unavailable) as exc:
            log.warning("%s (the first function tries again)", exc)

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        if self._closed:
            raise Unavailable(f"the {self.engine_name} runtime is closed")
        if spec.id in self._functions:
            raise InternalError(f"function {spec.id} is already running")
        load = self._load_request(spec, await self._artifact_fields(spec))
        # Registered first: an agent restart from now on loads it too (loading twice is harmless).
        self._functions[spec.id] = _Function(load, logs, asyncio.get_running_loop().create_future())
        started = False
        try:
            reply = await self._load(load)
            if not reply.ok:
                error = reply.error or "load failed"
                if reply.error_kind == protocol.BAD_REQUEST:
                    raise BadRequest(error)
                raise BadArtifact(error) if reply.error_kind == protocol.BAD_ARTIFACT else InternalError(error)
            started = True
        finally:
            if not started:
                self._functions.pop(spec.id, None)
                self._unload_in_background(spec.id)
        return Handle(spec.id, self.type, {"agent_pid": self.agent_pid})

    async def wait(self, handle: Handle) -> ExitResult:
        function = self._functions.get(handle.workload_id)
        if function is None:
            return self._exits.get(handle.workload_id) or ExitResult(error="function is not loaded")
        return await asyncio.shield(function.ended)

    async def stop(self, handle: Handle, grace: float) -> None:
        function = self._functions.pop(handle.workload_id, None)
        if function is None:
            return
        async with self._agent_lock:  # a restart in progress has loaded it, or will not
            agent = self._agent
        if agent is not None and agent.returncode is None:
            try:
                await agent.request(protocol.Unload(workload_id=handle.workload_id, grace_ms=int(grace * 1000)))
            except AgentExited:
                pass  # gone with the agent
        self._end(handle.workload_id, function, ExitResult(exit_code=0))

    async def cleanup(self, handle: Handle) -> None:
        """Nothing to clean: functions live in the agent, which dies with its node."""
        handle.require_current()

    async def sweep(self, workload_id: str) -> None:
        """Nothing to sweep, for the same reason."""

    async def refresh_stats(self) -> None:
        await self.stats()

    def agents_up(self) -> dict[str, bool]:
        return {self.engine_name: self.agent_pid is not None}

    def inspect(self, handle: Handle) -> dict[str, Any]:
        self._refresh_stats_soon()
        stats = self._stats.get(handle.workload_id)
        return {
            "agent_pid": self.agent_pid,
            "running": handle.workload_id in self._functions,
            "invocations": stats.invocations if stats else 0,
            "errors": stats.errors if stats else 0,
            "rejected": stats.rejected if stats else 0,
            "memory_bytes": stats.memory_bytes if stats else 0,
            # the latency histogram, for nex.node.metrics
            "latency_buckets": stats.latency_buckets if stats else [],
            "latency_sum_ms": stats.latency_sum_ms if stats else 0.0,
            "failure_events_dropped": stats.failure_events_dropped if stats else 0,
            "recent": stats.recent if stats else None,  # the last function_stats: rate and percentiles
        }

    async def stats(self) -> dict[str, protocol.FunctionStats]:
        """Fresh counters of every loaded function, from the agent."""
        agent = self._agent
        if agent is None or agent.returncode is not None:
            return {}
        try:
            reply = await agent.request(protocol.Stats())
        except AgentExited:
            return {}
        self._stats = {stats.workload_id: stats for stats in reply.functions or []}
        self._stats_at = time.monotonic()
        return dict(self._stats)

    async def close(self) -> None:
        self._closed = True
        for watcher in self._watchers:
            watcher.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        async with self._agent_lock:
            agent, self._agent = self._agent, None
        if agent is not None:
            await agent.stop(STOP_GRACE_S)
        for workload_id, function in list(self._functions.items()):
            self._end(workload_id, function, ExitResult(error=f"the {self.engine_name} runtime closed"))
        self._functions.clear()

    async def _load(self, load: protocol.Load) -> protocol.Reply:
        agent = await self._running_agent()
        try:
            return await agent.request(load)
        except AgentExited as exc:
            raise InternalError(f"the {self.engine_name} {exc} while loading the function") from None

    async def _running_agent(self) -> AgentProcess:
        async with self._agent_lock:
            if self._closed:
                raise Unavailable(f"the {self.engine_name} runtime is closed")
            if self._agent is None or self._agent.returncode is not None:
                self._agent = await self._start_agent()
            return self._agent

    async def _start_agent(self) -> AgentProcess:
        env = {**os.environ, ENV_CONNECT: self.context.connect_options.to_json(),
               ENV_NODE_ID: self.context.node_id, ENV_HOST_SERVICES: self.context.host_settings.model_dump_json(),
               **self._agent_environment()}
        name = f"{self.engine_name} agent"
        try:
            agent = await AgentProcess.start([sys.executable, "-m", self.agent_module], env,
                                             name=name, ready_timeout=READY_TIMEOUT_S)
        except (AgentStartError, OSError) as exc:
            raise InternalError(f"cannot start the {name}: {exc}") from None
        log.info("%s started, pid %d", name, agent.pid)
        watcher = asyncio.create_task(self._watch(agent, time.monotonic()), name=f"watch {name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return agent

    async def _watch(self, agent: AgentProcess, started_at: float) -> None:
        returncode = await agent.wait()
        if self._closed or agent is not self._agent:
            return
        cause = describe_exit(returncode)
        quick = time.monotonic() - started_at < CRASH_WINDOW_S
        self._quick_restarts = self._quick_restarts + 1 if quick else 0
        delay = min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2 ** self._quick_restarts)
        log.warning("%s %s unexpectedly; restarting it in %.1fs to load %d functions again",
                    self.engine_name, cause, delay, len(self._functions))
        async with self._agent_lock:
            if self._closed or agent is not self._agent:
                return
            self._agent = None
            await asyncio.sleep(delay)
            try:
                self._agent = await self._start_agent()
            except InternalError as exc:
                self._end_all(ExitResult(error=f"{cause} and could not be restarted: {exc}"))
                return
            await self._reload(self._agent, cause)

    async def _reload(self, agent: AgentProcess, cause: str) -> None:
        for workload_id, function in list(self._functions.items()):
            if self._functions.get(workload_id) is not function:
                continue  # stopped meanwhile
            try:
                reply = await agent.request(function.load)
            except AgentExited as exc:
                # It may have crashed the agent (or another function did, meanwhile): twice, it is out.
                function.crashes_while_loading += 1
                if function.crashes_while_loading >= 2:
                    self._forget(workload_id, ExitResult(error=f"{cause}; then the {exc} while loading it again"))
                return  # the next watch reloads the others
            if reply.ok:
                function.logs("stderr", f"nex: the {self.engine_name} {cause}; the function was loaded again".encode())
            else:
                self._forget(workload_id, ExitResult(error=f"{cause}; loading it again failed: {reply.error}"))

    def _forget(self, workload_id: str, result: ExitResult) -> None:
        function = self._functions.pop(workload_id, None)
        if function is not None:
            self._end(workload_id, function, result)

    def _end_all(self, result: ExitResult) -> None:
        functions, self._functions = self._functions, {}
        for workload_id, function in functions.items():
            self._end(workload_id, function, result)

    def _end(self, workload_id: str, function: _Function, result: ExitResult) -> None:
        if not function.ended.done():
            function.ended.set_result(result)
        self._exits[workload_id] = result
        while len(self._exits) > _KEPT_EXITS:
            self._exits.popitem(last=False)
        self._stats.pop(workload_id, None)

    def _unload_in_background(self, workload_id: str) -> None:
        # A failed or cancelled start may still have loaded the function (a restart, a late reply).
        agent = self._agent
        if agent is not None and agent.returncode is None:
            asyncio.get_running_loop().create_task(self._unload_quietly(agent, workload_id))

    @staticmethod
    async def _unload_quietly(agent: AgentProcess, workload_id: str) -> None:
        try:
            await agent.request(protocol.Unload(workload_id=workload_id, grace_ms=0))
        except AgentExited:
            pass

    def _refresh_stats_soon(self) -> None:
        stale = time.monotonic() - self._stats_at > STATS_MAX_AGE_S
        if not stale or self._closed or (self._refreshing is not None and not self._refreshing.done()):
            return
        try:
            self._refreshing = asyncio.get_running_loop().create_task(self.stats())
        except RuntimeError:
            pass  # called outside the event loop: the figures stay as they are


    def _load_request(self, spec: WorkloadSpec, artifact: dict[str, str]) -> protocol.Load:
        if spec.type != self.type or spec.lifecycle != Lifecycle.FUNCTION:
            raise BadArtifact(f"the {self.engine_name} runtime runs {self.type} functions, not {spec.type} {spec.lifecycle}")
        if not spec.triggers:
            raise BadArtifact("a function needs at least one trigger subject")
        memory_mib = spec.limits.memory_mib or DEFAULT_FUNCTION_MEMORY_MIB
        return protocol.Load(
            workload_id=spec.id, name=spec.name, namespace=spec.namespace, **artifact,
            triggers=[_subscription(t, spec.queue_group(t)) for t in spec.triggers],
            timeout_ms=spec.limits.timeout_ms or DEFAULT_FUNCTION_TIMEOUT_MS,
            memory_bytes=memory_mib * 1024 * 1024, env=dict(spec.env),
            max_concurrency=spec.limits.max_concurrency,
        )


def _subscription(trigger: Trigger, queue: str) -> protocol.TriggerSubscription:
    retry = trigger.retry
    return protocol.TriggerSubscription(
        subject=trigger.subject, queue=queue, mode=trigger.mode.value, schedule=trigger.schedule,
        retry=protocol.RetrySettings(**retry.model_dump()) if retry is not None else None)
