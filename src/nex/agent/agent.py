"""An agent process: runs a node's functions of one engine (:mod:`nex.agent.engine`).

The node starts one per engine, as ``python -m nex.agent.js`` or
``python -m nex.agent.wasm``, with the environment variables ``NEX_AGENT_CONNECT``
(:class:`nex.connection.ConnectOptions` as JSON), ``NEX_NODE_ID`` and, optionally,
``NEX_AGENT_HOST_SERVICES`` (:class:`nex.agent.protocol.HostSettings` as JSON; by
default no HTTP host is allowed), and talks :mod:`nex.agent.protocol` on its stdin
and stdout. The agent has its own NATS connection: it subscribes functions to
their triggers, answers requests, publishes log lines and function events
itself, and performs the host services of its functions
(:mod:`nex.agent.hostservices`).

It exits when its stdin ends (the node went away) or on SIGTERM, after unloading
its functions. It ignores SIGINT, so a Ctrl-C meant for the node does not take the
agent down before the node has stopped it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex.agent import cpus, protocol
from nex.agent.hostservices import HostServices
from nex.agent.protocol import ENV_CONNECT, ENV_HOST_SERVICES, ENV_NODE_ID
from nex.agent.startup import keep_reads_off_mmap
from nex.agent.engine import CompileError, Engine
from nex.agent.events import EventFeed
from nex.agent.function import LoadedFunction
from nex.api.errors import BadRequest
from nex.agent.tracing import Propagation, Tracing, for_agent
from nex.connection import ConnectOptions, connect
from nex.gctune import FreezeWhenQuiet, tune_for_service

EXIT_GRACE_S = 1.0  # for the calls in flight to be answered
THREAD_JOIN_S = 0.2  # a thread still in a call after that ends with the process

log = logging.getLogger("nex.agent")


class Agent:
    """The functions of one agent process, keyed by workload id."""

    def __init__(self, nc: Client, node_id: str, engine: Engine, tracing: Tracing | None = None,
                 settings: protocol.HostSettings | None = None) -> None:
        self._nc = nc
        self._tracing = tracing or Propagation()
        self._settings = settings or protocol.HostSettings()
        self._node_id = node_id
        self._engine = engine
        self._events = EventFeed(nc, self._settings.stats_interval_s)
        self._functions: dict[str, asyncio.Task[LoadedFunction]] = {}
        self._quiet_freeze = FreezeWhenQuiet()

    async def handle(self, request: protocol.Load | protocol.Unload | protocol.Stats) -> protocol.Reply:
        if isinstance(request, protocol.Load):
            return await self._load(request)
        if isinstance(request, protocol.Unload):
            await self._unload(request.workload_id, request.grace_ms / 1000)
            return protocol.ok(request.seq)
        return protocol.ok(request.seq, functions=await self._stats())

    async def close(self, grace: float) -> None:
        await asyncio.gather(*(self._unload(workload_id, grace) for workload_id in list(self._functions)))
        self._quiet_freeze.cancel()
        await self._events.close(timeout=grace)

    async def _load(self, request: protocol.Load) -> protocol.Reply:
        loading = self._functions.get(request.workload_id)
        if loading is None:  # a repeated load joins the first one
            loading = asyncio.create_task(LoadedFunction.load(self._nc, self._events, self._engine, request, self._node_id,
                                                              self._tracing, self._settings))
            loading.add_done_callback(lambda task: self._forget_failed(request.workload_id, task))
            self._functions[request.workload_id] = loading
            self._quiet_freeze.changed()
        try:
            await asyncio.shield(loading)
        except CompileError as exc:
            return protocol.failed(request.seq, str(exc), protocol.BAD_ARTIFACT)
        except BadRequest as exc:
            return protocol.failed(request.seq, exc.message, protocol.BAD_REQUEST)
        except (NatsError, ValueError) as exc:
            return protocol.failed(request.seq, f"cannot subscribe: {exc}")
        return protocol.ok(request.seq)

    def _forget_failed(self, workload_id: str, loading: asyncio.Task[LoadedFunction]) -> None:
        failed = loading.cancelled() or loading.exception() is not None
        if failed and self._functions.get(workload_id) is loading:
            del self._functions[workload_id]

    async def _unload(self, workload_id: str, grace: float) -> None:
        loading = self._functions.pop(workload_id, None)
        if loading is None:
            return
        try:
            function = await asyncio.shield(loading)
        except (CompileError, BadRequest, NatsError, ValueError):
            return  # never loaded; its load request reports why
        await function.unload(grace)
        self._quiet_freeze.changed(released=True)

    async def _stats(self) -> list[protocol.FunctionStats]:
        loaded = [task.result() for task in self._functions.values()
                  if task.done() and not task.cancelled() and task.exception() is None]
        # Only the functions called since their last reading wait for their thread, each in a task;
        # with 1,000 loaded, a task each would hold up the calls queued behind this request.
        await asyncio.gather(*(function.read_memory() for function in loaded if function.memory_stale))
        return [function.snapshot() for function in loaded]


EngineMaker = Callable[[HostServices], Engine]
"""Builds the agent's engine, given the host services of its functions."""


async def serve(options: ConnectOptions, node_id: str, name: str, make_engine: EngineMaker, requests: BinaryIO,
                replies: BinaryIO, host_settings: protocol.HostSettings | None = None) -> Engine | None:
    """Run until ``requests`` ends or SIGTERM. Returns the engine it built, for the caller to close
    once the function threads have ended; None when it stopped before it connected."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    stop = asyncio.create_task(stopping.wait())
    # nats-py retries the first connection for ever: SIGTERM must still end the agent.
    connecting = asyncio.create_task(connect(options.with_name(f"nex-agent-{name}-{node_id}")))
    await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        log.info("stopped before it connected to NATS")
        return None
    nc = connecting.result()
    host_settings = host_settings or protocol.HostSettings()
    tracing = for_agent(host_settings.otel_endpoint, name, node_id)
    # Every sandbox the engine builds gets its function's scope of the host services.
    engine = make_engine(HostServices(nc, host_settings, loop, tracing))
    reader = asyncio.StreamReader(limit=protocol.MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), requests)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, replies)
    agent = Agent(nc, node_id, engine, tracing, host_settings)
    rebalancing = _colocate(loop) if host_settings.colocate_calls else None
    transport.write(protocol.encode(protocol.Ready()))
    reading = asyncio.create_task(_read_requests(reader, agent, transport.write))
    try:
        await asyncio.wait({reading, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reading.cancel()
        stop.cancel()
        await agent.close(EXIT_GRACE_S)
        if rebalancing is not None:
            rebalancing.cancel()
            cpus.spread()
        try:
            await nc.flush(timeout=1)
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("flushing before exit: %s", exc)
        await nc.close()
        transport.close()
        tracing.close()
    return engine


def _colocate(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Let the loop pin itself to its CPU while it waits for quick calls, for their threads to join it
    (nex.agent.cpus)."""
    # Threads the loop starts from now on inherit its pin: the executor of host calls runs anywhere.
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="host calls",
                                                 initializer=cpus.spread_this_thread))
    if not cpus.colocate():
        return None
    return asyncio.create_task(cpus.Rebalancer().run(), name="cpu rebalancer")


async def _read_requests(reader: asyncio.StreamReader, agent: Agent, write: Callable[[bytes], None]) -> None:
    handling: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            if line.strip():
                task = asyncio.create_task(_handle_line(line, agent, write))
                handling.add(task)
                task.add_done_callback(handling.discard)
    finally:
        for task in handling:
            task.cancel()


async def _handle_line(line: bytes, agent: Agent, write: Callable[[bytes], None]) -> None:
    try:
        request = protocol.decode_request(line)
    except protocol.ProtocolError as exc:
        seq = protocol.request_seq(line)
        log.error("%s", exc)
        if seq is not None:
            write(protocol.encode(protocol.failed(seq, str(exc))))
        return
    try:
        reply = await agent.handle(request)
    except Exception as exc:  # a bug of the agent: log it, answer, keep serving
        log.exception("request %s failed", request.op)
        reply = protocol.failed(request.seq, f"agent error: {exc}")
    write(protocol.encode(reply))


def run(name: str, make_engine: EngineMaker, thread_stack_bytes: int) -> int:
    """The agent's main(): serve until the node lets go, then exit with a status for the shell.

    ``name`` is the engine's (:attr:`nex.agent.engine.Engine.name`): the agent's connection and
    traces carry it before the engine is built, once connected, with the host services.

    ``thread_stack_bytes`` is the stack of every function thread: it must hold the
    engine's own stack limit plus the Python and C frames below it. Only the pages
    a thread touches count in its RSS; this bounds the address space.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.stack_size(thread_stack_bytes)
    try:
        options = ConnectOptions.from_json(os.environ[ENV_CONNECT])
    except (KeyError, ValueError, TypeError) as exc:
        log.error("%s must hold the NATS connect options as JSON: %s", ENV_CONNECT, exc)
        return 2
    node_id = os.environ.get(ENV_NODE_ID, "unknown")
    try:
        host_settings = protocol.HostSettings.model_validate_json(os.environ.get(ENV_HOST_SERVICES) or "{}")
    except ValueError as exc:
        log.error("%s must hold the host services settings as JSON: %s", ENV_HOST_SERVICES, exc)
        return 2
    # The protocol owns fd 1: anything else printed goes to stderr.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    tune_for_service()
    keep_reads_off_mmap()
    try:
        engine = asyncio.run(serve(options, node_id, name, make_engine, sys.stdin.buffer, replies, host_settings))
    except (OSError, NatsError) as exc:
        log.error("%s agent stopped: %s", name, exc)
        return 1
    if engine is not None and _join_function_threads(f"{engine.name}-", THREAD_JOIN_S):
        engine.close()
    return 0


def _join_function_threads(prefix: str, timeout: float) -> bool:
    """True once every function thread ended; one still in a call ends with the process."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.daemon and thread.name.startswith(prefix):
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.daemon and t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate())
