"""One loaded function in the agent: its thread, its subscriptions, its counters.

Messages are pipelined: the subscription callback queues a call on the function's
thread and returns, and one task per function answers the calls in order. At most
``MAX_IN_FLIGHT`` calls wait on the thread; past that the callback waits, and NATS
buffers (and, past its limits, drops) what arrives, as for any slow subscriber.

Unloading drains: the subscriptions are unsubscribed, and every message the
server delivered before it saw the unsubscribe is still answered. With copies of
a function in one queue group, undeploying one of them loses no call: what the
server routed to it is answered by it, and the rest goes to the others.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from nex.agent import protocol
from nex.agent.events import EventFeed
from nex.agent.engine import OUT_OF_MEMORY, Engine, Outcome, Sandbox
from nex.agent.worker import ContextThread
from nex.api import subjects
from nex.api.errors import FunctionError
from nex.api.events import EventEncoder, EventType
from nex.connection import flush_subscriptions

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
STATS_WAIT_S = 0.5


class LoadedFunction:
    """Subscribed to its triggers until :meth:`unload`."""

    def __init__(self, nc: Client, events: EventFeed, spec: protocol.Load, thread: ContextThread,
                 engine: Engine, sandbox: Sandbox, node_id: str) -> None:
        self.spec = spec
        self.invocations = 0
        self.errors = 0
        self._nc = nc
        self._events = events
        self._thread = thread
        self._engine = engine
        self._sandbox = sandbox
        self._memory_bytes = 0
        self._subscriptions: list[Subscription] = []
        self._unloaded = False  # past the grace period of unload: what still arrives is dropped
        self._late_drains: set[asyncio.Future] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._in_flight: asyncio.Queue[tuple[Msg, asyncio.Future[Outcome]] | None] = asyncio.Queue()
        self._answering = asyncio.create_task(self._answer(), name=f"answer {spec.workload_id}")
        static = {"workload_id": spec.workload_id, "name": spec.name, "namespace": spec.namespace}
        self._invoked = (subjects.events(spec.namespace, EventType.FUNCTION_INVOKED.value),
                         EventEncoder(EventType.FUNCTION_INVOKED, node_id, spec.workload_id, static))
        self._failed = (subjects.events(spec.namespace, EventType.FUNCTION_FAILED.value),
                        EventEncoder(EventType.FUNCTION_FAILED, node_id, spec.workload_id, static))
        self._log_subjects = {stream: subjects.logs(spec.namespace, spec.workload_id, stream)
                              for stream in subjects.LOG_STREAMS}

    @classmethod
    async def load(cls, nc: Client, events: EventFeed, engine: Engine, spec: protocol.Load,
                   node_id: str) -> LoadedFunction:
        """Compile, subscribe, flush; raises CompileError for an artifact that cannot run."""
        thread = ContextThread(f"{engine.name}-{spec.name}")
        built = False
        try:
            sandbox = await thread.call(engine.build, spec)
            built = True
        finally:
            if not built:
                thread.stop()
        function = cls(nc, events, spec, thread, engine, sandbox, node_id)
        subscribed = False
        try:
            await function._publish_logs(await thread.call(sandbox.startup_logs))
            for trigger in spec.triggers:
                function._subscriptions.append(
                    await nc.subscribe(trigger.subject, queue=trigger.queue, cb=function._on_message))
            # Answer load only once the server has the subscriptions: a request sent
            # right after the deploy reply is then served.
            await flush_subscriptions(nc)
            subscribed = True
        finally:
            if not subscribed:
                await function.unload(grace=0)
        return function

    async def stats(self) -> protocol.FunctionStats:
        try:
            # Queued behind in-flight calls; a busy function reports its last figure.
            self._memory_bytes = await asyncio.wait_for(self._thread.call(self._sandbox.memory_used), STATS_WAIT_S)
        except asyncio.TimeoutError:
            pass
        return protocol.FunctionStats(workload_id=self.spec.workload_id, invocations=self.invocations,
                                      errors=self.errors, memory_bytes=self._memory_bytes)

    async def unload(self, grace: float) -> None:
        """Drain the subscriptions and answer every call they delivered, for up to ``grace`` seconds
        in all; then free the context. Calls still unanswered by then get no reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._drain_subscriptions(grace)
        self._in_flight.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._answering), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            log.warning("function %s: calls still running after %.1fs, not answered", self.spec.workload_id, grace)
            self._answering.cancel()
        self._unloaded = True
        self._slots.release()  # a message may wait for a slot that no answer frees any more
        self._thread.call(self._sandbox.close)
        self._thread.stop()

    async def _drain_subscriptions(self, grace: float) -> None:
        """Unsubscribe, and hand on what the server sent before it saw that (nats-py's drain)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        if grace <= 0:
            for subscription in subscriptions:
                try:
                    await subscription.unsubscribe()
                except NatsError as exc:
                    log.warning("unsubscribing %s from %s: %s", self.spec.workload_id, subscription.subject, exc)
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

    async def _on_message(self, msg: Msg) -> None:
        if self._unloaded:
            return
        await self._slots.acquire()
        if self._unloaded:
            self._slots.release()  # wakes the next message waiting for a slot, which is dropped too
            return
        self._in_flight.put_nowait((msg, self._thread.call(self._invoke, msg.subject, msg.data)))

    def _invoke(self, subject: str, payload: bytes) -> Outcome:
        # On the function's thread.
        outcome = self._sandbox.invoke(subject, payload)
        if (outcome.error is not None and outcome.error.kind == OUT_OF_MEMORY
                and self._engine.fresh_thread_after_out_of_memory):
            self._thread.hand_over()
        return outcome

    async def _answer(self) -> None:
        while (item := await self._in_flight.get()) is not None:
            msg, pending = item
            try:
                outcome = await pending
            except Exception as exc:  # a bug of the agent: answer, log and keep serving
                log.exception("function %s: call failed in the agent", self.spec.workload_id)
                outcome = Outcome(error=FunctionError(f"internal error of the {self._engine.name} agent: {exc}"))
            try:
                await self._respond(msg, outcome)
            except NatsError as exc:
                log.warning("function %s: could not answer on %s: %s", self.spec.workload_id, msg.subject, exc)
            finally:
                self._slots.release()

    async def _respond(self, msg: Msg, outcome: Outcome) -> None:
        await self._publish_logs(outcome.logs)
        self.invocations += 1
        data = {"subject": msg.subject, "duration_ms": outcome.duration_ms}
        if outcome.error is None:
            if msg.reply:
                await self._nc.publish(msg.reply, outcome.data)
            self._events.emit(*self._invoked, data)
            return
        self.errors += 1
        if msg.reply:
            payload, headers = outcome.error.encode()
            await self._nc.publish(msg.reply, payload, headers=headers)
        data.update(error=outcome.error.message, kind=outcome.error.kind)
        self._events.emit(*self._failed, data)

    async def _publish_logs(self, logs: list[tuple[str, str]]) -> None:
        for stream, line in logs:
            await self._nc.publish(self._log_subjects[stream], line.encode(errors="replace"))
