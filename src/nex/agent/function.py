"""One loaded function in the agent: its thread, its subscriptions, its counters.

Messages are pipelined: the subscription callback queues a call on the function's
thread and returns, and one task per function answers the calls in order. At most
``MAX_IN_FLIGHT`` calls wait on the thread; past that the callback waits, and NATS
buffers (and, past its limits, drops) what arrives, as for any slow subscriber.

With ``max_concurrency`` (:mod:`nex.agent.admission`) the limit replaces
``MAX_IN_FLIGHT``: a call past it is answered 429 at once instead of waiting. An
engine whose sandboxes may be called from several threads (wasm) then runs up to
that many calls at once on threads of the function (at most ``MAX_CALL_THREADS``),
each answered as soon as it ends.

Unloading drains: the subscriptions are unsubscribed, and every message the
server delivered before it saw the unsubscribe is still answered. With copies of
a function in one queue group, undeploying one of them loses no call: what the
server routed to it is answered by it, and the rest goes to the others.

Async triggers (``mode: async``, schedules) are not subscribed: a
:class:`nex.agent.durable.runner.DurableRunner` pulls them from the function's stream and
runs them through :meth:`LoadedFunction.run_async`, and a
:class:`nex.agent.schedule.Schedule` per scheduled trigger publishes its fire times.
Unloading stops both first, letting the invocations they hold finish within the grace.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from nex.agent import cpus, hops, protocol
from nex.agent.activity import FunctionActivity
from nex.agent.admission import OVERLOADED, ConcurrencyLimit
from nex.agent.durable.runner import DurableRunner
from nex.agent.events import EventFeed
from nex.agent.engine import Engine, Outcome, Sandbox
from nex.agent.schedule import Schedule
from nex.agent.tracing import Propagation, Tracing
from nex.agent.worker import ContextThread
from nex.api import subjects
from nex.api.errors import FunctionError, NexError
from nex.api.events import EventEncoder, EventType
from nex.api.hops import hop_of, loop_error, past_limit
from nex.api.tracecontext import TRACEPARENT
from nex.connection import flush_subscriptions

log = logging.getLogger(__name__)
# How long an unload waits for the server to confirm its unsubscribes (one PING's PONG).
UNSUBSCRIBE_CONFIRM_S = 5.0

MAX_IN_FLIGHT = 64
MAX_CALL_THREADS = 64  # threads of one function that runs calls in parallel (wasm, max_concurrency)
STATS_WAIT_S = 0.5
# The loop blocks for a call (nex.agent.worker) when the function's last call took at most
# QUICK_CALL_MS and nothing else is in flight (see quick_wait_s).
QUICK_CALL_MS = 1.0
QUICK_WAIT_FACTOR = 4
MIN_QUICK_WAIT_S = 0.0005
MAX_QUICK_WAIT_S = 0.002
LONE_STREAK = 8


def quick_wait_s(last_call_ms: float, lone_calls: int) -> float:
    """How long the loop may block for a call (0: not at all), given its function's last call and
    how many calls in a row (this one included) found nothing else in flight in the agent.

    Only when calls come one at a time: otherwise the loop pipelines them (reads the next,
    hands it over, answers the last) while one runs. One call that finds another in flight
    is enough to stop waiting, and it takes LONE_STREAK lone calls in a row to start again:
    clients with many requests in flight leave gaps between bursts, where a call may find the
    agent idle while the next ones are already in its socket, unread. Only for a function whose
    last call was quick (QUICK_CALL_MS), for QUICK_WAIT_FACTOR times that call, within
    [MIN_QUICK_WAIT_S, MAX_QUICK_WAIT_S]: the loop never waits longer than the call runs,
    and a function that turns slow holds it once, for at most MAX_QUICK_WAIT_S, before the
    loop stops waiting for it. So a message for another function that comes while the loop
    waits is read at most MAX_QUICK_WAIT_S late (tests/test_call_handover.py)."""
    if lone_calls < LONE_STREAK or last_call_ms > QUICK_CALL_MS:
        return 0.0
    return min(MAX_QUICK_WAIT_S, max(MIN_QUICK_WAIT_S, QUICK_WAIT_FACTOR * last_call_ms / 1000))


class LoadedFunction:
    """Subscribed to its triggers until :meth:`unload`."""

    # Sync calls handed to a sandbox and not yet answered, across the agent's functions (the
    # process's one loop): the loop blocks for a quick call only when this is 0 (_quick_wait).
    calls_in_flight = 0
    lone_calls = 0  # calls in a row that found none of them in flight (quick_wait_s)

    def __init__(self, nc: Client, events: EventFeed, spec: protocol.Load, thread: ContextThread,
                 engine: Engine, sandbox: Sandbox, node_id: str, tracing: Tracing | None = None,
                 settings: protocol.HostSettings | None = None) -> None:
        self.spec = spec
        self.invocations = 0
        self.errors = 0
        # Cumulative: the node reads them as a Prometheus histogram (nex.node.metrics).
        self.latency_buckets = [0] * (len(protocol.LATENCY_BOUNDS_MS) + 1)
        self.latency_sum_ms = 0.0
        self._tracing = tracing or Propagation()
        self._span_name = f"invoke {spec.name}"
        self._span_attributes = {"nex.workload_id": spec.workload_id, "nex.namespace": spec.namespace,
                                 "nex.function": spec.name}
        self._nc = nc
        self._events = events
        self._thread = thread
        self._engine = engine
        self._sandbox = sandbox
        self._memory_bytes = 0
        self._memory_read_after = -1  # self.invocations when _memory_bytes was read
        self._subscriptions: list[Subscription] = []
        self._scope = subjects.WorkloadScope.of(spec.namespace, (t.subject for t in spec.triggers))
        self._unloaded = False  # past the grace period of unload: what still arrives is dropped
        self._late_drains: set[asyncio.Future] = set()
        self._durable: DurableRunner | None = None  # async triggers (nex.agent.durable)
        self._schedules: list[Schedule] = []
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._last_call_ms = 0.0
        self._calls_in_flight = 0  # of this function, in LoadedFunction.calls_in_flight
        # With max_concurrency, the limit replaces MAX_IN_FLIGHT: past it a call is refused, not queued.
        self._limit = ConcurrencyLimit(spec.name, spec.max_concurrency) if spec.max_concurrency else None
        # Sandboxes that may be called from several threads (wasm) run up to max_concurrency calls at
        # once on threads of their own; the others run calls one at a time on the function's thread.
        self._parallel: ThreadPoolExecutor | None = None
        if engine.parallel_calls and spec.max_concurrency and spec.max_concurrency > 1:
            self._parallel = ThreadPoolExecutor(min(spec.max_concurrency, MAX_CALL_THREADS),
                                                f"{engine.name} calls of {spec.name}",
                                                initializer=cpus.spread_this_thread)  # in parallel: anywhere
        self._in_flight: asyncio.Queue[tuple[Msg, asyncio.Future[Outcome]] | tuple[None, asyncio.Future[None]] | None]
        self._in_flight = asyncio.Queue()
        self._answering = asyncio.create_task(self._answer(), name=f"answer {spec.workload_id}")
        self._settings = settings or protocol.HostSettings()
        self._max_hops = self._settings.max_hops
        # What a call leaves behind: counted, not stored; failures one by one, limited (nex.agent.activity).
        self.activity = FunctionActivity(
            events, node_id, spec.workload_id, spec.name, spec.namespace, self._totals,
            live_calls=self._settings.live_call_events,
            failure_events_per_s=self._settings.failure_events_per_s,
            failure_events_burst=self._settings.failure_events_burst)
        events.reporter.add(self.activity)
        self._log_subjects = {stream: subjects.logs(spec.namespace, spec.workload_id, stream)
                              for stream in subjects.LOG_STREAMS}

    @classmethod
    async def load(cls, nc: Client, events: EventFeed, engine: Engine, spec: protocol.Load,
                   node_id: str, tracing: Tracing | None = None,
                   settings: protocol.HostSettings | None = None) -> LoadedFunction:
        """Compile, subscribe, flush; raises CompileError for an artifact that cannot run."""
        thread = ContextThread(f"{engine.name}-{spec.name}")
        built = False
        try:
            sandbox = await thread.call(engine.build, spec)
            built = True
        finally:
            if not built:
                thread.stop()
        function = cls(nc, events, spec, thread, engine, sandbox, node_id, tracing, settings)
        subscribed = False
        try:
            await function._publish_logs(await thread.call(sandbox.startup_logs))
            for trigger in (t for t in spec.triggers if t.mode == "sync"):  # async ones: _start_async
                function._subscriptions.append(
                    await nc.subscribe(trigger.subject, queue=trigger.queue, cb=function._on_message))
            # Answer load only once the server has the subscriptions: a request sent
            # right after the deploy reply is then served.
            await flush_subscriptions(nc)
            await function._start_async(node_id)
            subscribed = True
        finally:
            if not subscribed:
                await function.unload(grace=0)
        return function

    async def stats(self) -> protocol.FunctionStats:
        if self.memory_stale:
            await self.read_memory()
        return self.snapshot()

    @property
    def failure_events_dropped(self) -> int:
        """Failure events the rate limit did not publish, since the function loaded."""
        return self.activity.failures_dropped_total

    @property
    def memory_stale(self) -> bool:
        """Called since its memory was last read. Only calls change the memory a function holds:
        a stats request need not wake (or make a task for) each of 1,000 idle functions."""
        return self._memory_read_after != self.invocations

    async def read_memory(self) -> None:
        """Ask the function's thread; queued behind in-flight calls, a busy function keeps its last figure."""
        read_after = self.invocations
        try:
            self._memory_bytes = await asyncio.wait_for(self._thread.call(self._sandbox.memory_used), STATS_WAIT_S)
        except asyncio.TimeoutError:
            return
        self._memory_read_after = read_after

    def _recent(self) -> dict[str, float] | None:
        last = self.activity.last_report
        if not last:
            return None
        recent = {"calls_per_s": round(last["calls"] / max(last["interval_s"], 1e-3), 3)}
        recent.update({k: last[k] for k in ("p50_ms", "p90_ms", "p99_ms") if last.get(k) is not None})
        return recent

    def _totals(self) -> dict[str, int]:
        return {"calls": self.invocations, "errors": self.errors,
                "rejected": self._limit.rejected if self._limit is not None else 0}

    def snapshot(self) -> protocol.FunctionStats:
        """The counters as they are, with the memory last read."""
        return protocol.FunctionStats(workload_id=self.spec.workload_id, invocations=self.invocations,
                                      errors=self.errors, memory_bytes=self._memory_bytes,
                                      rejected=self._limit.rejected if self._limit is not None else 0,
                                      failure_events_dropped=self.failure_events_dropped,
                                      recent=self._recent(),
                                      latency_buckets=list(self.latency_buckets), latency_sum_ms=self.latency_sum_ms)

    async def unload(self, grace: float) -> None:
        """Drain the subscriptions and answer every call they delivered, for up to ``grace`` seconds
        in all; then free the context. Calls still unanswered by then get no reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._drain_subscriptions(grace)
        await self._stop_async(max(0.0, deadline - loop.time()))
        self._in_flight.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._answering), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            log.warning("function %s: calls still running after %.1fs, not answered", self.spec.workload_id, grace)
            self._answering.cancel()
            self._cancel_parallel_calls()
        self._unloaded = True
        self._call_ended(self._calls_in_flight)  # calls left unanswered no longer count
        self._slots.release()  # a message may wait for a slot that no answer frees any more
        if self._parallel is not None:
            self._thread.call(self._parallel.shutdown)  # waits for the calls still running on them
        self._thread.call(self._sandbox.close)
        self._thread.stop()
        self._events.reporter.remove(self.activity)

    async def _start_async(self, node_id: str) -> None:
        """The durable consumer of the async triggers and the schedules (nex.agent.durable, .schedule)."""
        triggers = [t for t in self.spec.triggers if t.mode == "async"]
        if not triggers:
            return
        replicas = self._settings.replicas
        static = {"workload_id": self.spec.workload_id, "name": self.spec.name, "namespace": self.spec.namespace}
        kind = EventType.FUNCTION_DEAD_LETTERED
        self._dead_lettered = (subjects.events(self.spec.namespace, kind.value),
                               EventEncoder(kind, node_id, self.spec.workload_id, static))
        self._durable = await DurableRunner.start(self._nc, self, self.spec, triggers, replicas)
        js = self._nc.jetstream()
        self._schedules = [Schedule(js, self.spec.namespace, self.spec.name, t.subject, t.schedule).start()
                           for t in triggers if t.schedule]

    async def _stop_async(self, grace: float) -> None:
        schedules, self._schedules = self._schedules, []
        await asyncio.gather(*(schedule.stop() for schedule in schedules))
        durable, self._durable = self._durable, None
        if durable is not None:
            await durable.stop(grace)

    async def run_async(self, subject: str, payload: bytes, traceparent: str | None = None,
                        hop: int = 0) -> Outcome:
        """One async invocation (nex.agent.durable), down the sync calls' path: counted, logged and
        reported the same way; the durable runner acks it and publishes any reply."""
        if past_limit(hop, self._max_hops):
            return Outcome(error=self._refuse_loop(subject, hop))
        self._call_started()
        try:
            if self._parallel is not None:
                pending = asyncio.wrap_future(self._parallel.submit(self._invoke, subject, payload, traceparent, hop))
            else:
                pending = self._thread.call(self._invoke, subject, payload, traceparent, hop, a_call=True)
            outcome = await pending
        except Exception as exc:  # a bug of the agent: a failed attempt, retried
            log.exception("function %s: async call failed in the agent", self.spec.workload_id)
            outcome = Outcome(error=FunctionError(f"internal error of the {self._engine.name} agent: {exc}"))
        finally:
            self._call_ended()
        await self._respond(Msg(self._nc, subject=subject), outcome)  # no reply subject: nothing is sent
        return outcome

    def emit_dead_lettered(self, data: dict[str, object]) -> None:
        self._events.emit(*self._dead_lettered, data)

    async def _drain_subscriptions(self, grace: float) -> None:
        """Unsubscribe, and hand on what the server sent before it saw that (nats-py's drain).

        Whatever the grace, this returns only once the server has the unsubscribes (a flush:
        they were written before its PING): the node answers the undeploy when this returns,
        and a request sent after that answer, on another connection, must find no responder
        rather than a subscription that drops it (it would wait out its timeout)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        if grace <= 0:
            for subscription in subscriptions:
                try:
                    await subscription.unsubscribe()
                except NatsError as exc:
                    log.warning("unsubscribing %s from %s: %s", self.spec.workload_id, subscription.subject, exc)
            await self._confirm_unsubscribed()
            return
        drains = [asyncio.ensure_future(subscription.drain()) for subscription in subscriptions]
        if not drains:
            return
        done, pending = await asyncio.wait(drains, timeout=grace)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("draining %s: %s", self.spec.workload_id, task.exception())
        if pending:
            # Let them finish in the background: from now on _on_message drops what is left.
            log.warning("function %s: messages still queued after %.1fs, dropped", self.spec.workload_id, grace)
            self._unloaded = True
            self._late_drains = pending  # held: the loop keeps only weak references to tasks
            for task in pending:
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            await self._confirm_unsubscribed()  # the drains' own flush may be what is late

    async def _confirm_unsubscribed(self) -> None:
        try:
            await self._nc.flush(timeout=UNSUBSCRIBE_CONFIRM_S)
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("function %s: the server did not confirm its unsubscribes: %s", self.spec.workload_id,
                        exc or type(exc).__name__)

    async def _on_message(self, msg: Msg) -> None:
        if self._unloaded:
            return
        if msg.reply and not self._scope.may_answer(msg.reply):
            # The agent's connection may publish anywhere: a reply on $JS.API... would be its request.
            log.warning("function %s: call on %s dropped: it asks for a reply on %r, where no workload"
                        " may answer", self.spec.workload_id, msg.subject, msg.reply)
            return
        hop = hop_of(msg.headers)
        if past_limit(hop, self._max_hops):
            await self._send_refusal(msg, self._refuse_loop(msg.subject, hop))
            return
        if self._limit is not None:
            if not self._limit.try_enter():
                await self._refuse(msg)
                return
        else:
            await self._slots.acquire()
            if self._unloaded:
                self._slots.release()  # wakes the next message waiting for a slot, which is dropped too
                return
        traceparent = msg.headers.get(TRACEPARENT) if msg.headers else None
        if self._parallel is not None:
            # Answered by its own task as soon as it ends; _answer only waits for it (see unload).
            cpus.loop_waits(False)
            self._call_started()
            pending = asyncio.wrap_future(self._parallel.submit(self._invoke, msg.subject, msg.data, traceparent, hop))
            self._in_flight.put_nowait((None, asyncio.ensure_future(self._complete(msg, pending))))
            return
        wait_s = self._quick_wait()
        cpus.loop_waits(wait_s > 0)
        self._call_started()
        pending = self._thread.call(self._invoke, msg.subject, msg.data, traceparent, hop, wait_s=wait_s, a_call=True)
        if pending.done():  # it ended while the loop waited: answered now, no task switch
            await self._complete(msg, pending)
            return
        self._in_flight.put_nowait((msg, pending))

    def _call_started(self) -> None:
        self._calls_in_flight += 1
        LoadedFunction.calls_in_flight += 1

    def _call_ended(self, calls: int = 1) -> None:
        calls = min(calls, self._calls_in_flight)  # after unload let go of them, a cancelled call ends again
        self._calls_in_flight -= calls
        LoadedFunction.calls_in_flight -= calls

    def _quick_wait(self) -> float:
        if LoadedFunction.calls_in_flight or any(subscription.pending_msgs for subscription in self._subscriptions):
            LoadedFunction.lone_calls = 0
            return 0.0
        LoadedFunction.lone_calls += 1
        return quick_wait_s(self._last_call_ms, LoadedFunction.lone_calls)

    async def _send_refusal(self, msg: Msg, error: NexError) -> None:
        if not msg.reply:
            return
        payload, headers = error.encode()
        try:
            await self._nc.publish(msg.reply, payload, headers=headers)
        except NatsError as exc:
            log.warning("function %s: could not refuse on %s: %s", self.spec.workload_id, msg.subject, exc)

    def _refuse_loop(self, subject: str, hop: int) -> FunctionError:
        """A message past the hop limit (nex.api.hops): not run, counted as a failed call, reported."""
        self.invocations += 1
        self.errors += 1
        self.activity.looped(subject, hop, self._max_hops)
        return loop_error(hop, self._max_hops)

    async def _refuse(self, msg: Msg) -> None:
        """Answer a call past max_concurrency with a 429 at once: it never reaches the sandbox."""
        assert self._limit is not None
        error = self._limit.refusal()
        await self._send_refusal(msg, error)
        self.activity.refused(msg.subject, error.message, OVERLOADED)

    def _invoke(self, subject: str, payload: bytes, traceparent: str | None = None, hop: int = 0) -> Outcome:
        # On the function's thread: the host calls of the invocation see its span and hop there.
        self._tracing.begin(traceparent, self._span_name, self._span_attributes)
        hops.begin(hop)
        outcome: Outcome | None = None
        try:
            outcome = self._sandbox.invoke(subject, payload)
        finally:
            hops.end()
            error = outcome.error if outcome is not None else FunctionError("the call failed in the agent")
            self._tracing.end(error.message if error is not None else None)
        return outcome

    async def _answer(self) -> None:
        # Calls of the function's thread are answered here, in order; a parallel call is
        # (None, the task that answers it), waited for so that unload knows when all are done.
        while (item := await self._in_flight.get()) is not None:
            msg, pending = item
            if msg is None:
                await pending
            else:
                await self._complete(msg, pending)

    async def _complete(self, msg: Msg, pending: asyncio.Future[Outcome]) -> None:
        """Wait for one call's outcome, answer it, and give its place to the next call."""
        try:
            try:
                outcome = await pending
            except Exception as exc:  # a bug of the agent: answer, log and keep serving
                log.exception("function %s: call failed in the agent", self.spec.workload_id)
                outcome = Outcome(error=FunctionError(f"internal error of the {self._engine.name} agent: {exc}"))
            self._last_call_ms = outcome.duration_ms
            try:
                await self._respond(msg, outcome)
            except NatsError as exc:
                log.warning("function %s: could not answer on %s: %s", self.spec.workload_id, msg.subject, exc)
        finally:
            self._call_ended()
            if self._limit is not None:
                self._limit.leave()
            else:
                self._slots.release()

    def _cancel_parallel_calls(self) -> None:
        """Past the grace of unload: the parallel calls still queued are not answered."""
        while not self._in_flight.empty():
            item = self._in_flight.get_nowait()
            if item is not None and item[0] is None:
                item[1].cancel()

    async def _respond(self, msg: Msg, outcome: Outcome) -> None:
        await self._publish_logs(outcome.logs)
        self.invocations += 1
        self.latency_buckets[bisect.bisect_left(protocol.LATENCY_BOUNDS_MS, outcome.duration_ms)] += 1
        self.latency_sum_ms += outcome.duration_ms
        if outcome.error is None and msg.reply and len(outcome.data) > self._nc.max_payload:
            # Sent as it is, the publish fails here and the caller waits for its time-out.
            outcome = dataclasses.replace(outcome, data=b"", error=FunctionError(
                f"the result is {len(outcome.data)} bytes, over the NATS server's max_payload of"
                f" {self._nc.max_payload}"))
        if outcome.error is None:
            if msg.reply:
                await self._nc.publish(msg.reply, outcome.data)
            self.activity.succeeded(msg.subject, outcome.duration_ms)
            return
        self.errors += 1
        if msg.reply:
            payload, headers = outcome.error.encode()
            await self._nc.publish(msg.reply, payload, headers=headers)
        self.activity.failed(msg.subject, outcome.duration_ms, outcome.error.message, outcome.error.kind)

    async def _publish_logs(self, logs: list[tuple[str, str]]) -> None:
        for stream, line in logs:
            await self._nc.publish(self._log_subjects[stream], line.encode(errors="replace"))
