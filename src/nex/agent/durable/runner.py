"""The runner of durable async invocation (:mod:`nex.agent.durable`): pulls one copy's share of
a function's stream, runs each message at least once through the function's call path, with
retries, the done record, the dead letter and the ``Nex-Reply-To`` reply. What it pulls from
is made by :mod:`nex.agent.durable.streams`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError, TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from nex.agent import protocol
from nex.agent.durable.streams import SharedStores, bind_function_consumer, done_key, shared_stores
from nex.agent.engine import Outcome
from nex.api import subjects
from nex.api.errors import FunctionError
from nex.api.hops import LOOP, hop_of, onward

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 16
ACK_MARGIN_S = 2.0
FETCH_WAIT_S = 1.0
RETRY_PAUSE_S = 0.5  # after a failed fetch (JetStream away)


class RunsCalls(Protocol):
    """What the runner needs of a loaded function."""

    async def run_async(self, subject: str, payload: bytes, traceparent: str | None = None,
                        hop: int = 0) -> Outcome: ...

    def emit_dead_lettered(self, data: dict[str, Any]) -> None: ...


def backoff_s(retry: protocol.RetrySettings, attempt: int) -> float:
    """The wait after failed attempt ``attempt`` (1-based): doubling from backoff_ms, capped."""
    delay_ms = retry.backoff_ms * 2 ** max(0, attempt - 1)
    return min(delay_ms, retry.max_backoff_ms) / 1000


def reply_allowed(namespace: str, triggers: list[str], subject: str) -> bool:
    """Whether a Nex-Reply-To may be published on: only where the function itself may publish
    (:meth:`nex.api.subjects.WorkloadScope.may_publish`). Not an inbox: an async message is not
    a request the function received, and a reply-to under ``_INBOX.>`` could answer anyone's
    pending request (a control request's, say) in the function's name."""
    return subjects.WorkloadScope.of(namespace, triggers).may_publish(subject)


class DurableRunner:
    """Pulls one copy's share of a function's async invocations and runs them. :meth:`start`, :meth:`stop`."""

    def __init__(self, nc: Client, function: RunsCalls, spec: protocol.Load,
                 triggers: list[protocol.TriggerSubscription], shared: SharedStores, subscription: Any) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._function = function
        self._spec = spec
        self._scope = subjects.WorkloadScope.of(spec.namespace, (t.subject for t in spec.triggers))
        self._retry = {t.subject: t.retry or protocol.RetrySettings() for t in triggers}
        self._done = shared.done
        self._subscription = subscription
        self._capacity = spec.max_concurrency or DEFAULT_CAPACITY
        self._held: dict[int, tuple[Msg, asyncio.Task[None]]] = {}  # Msg is not hashable
        self._tokens = itertools.count()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self.ack_wait_s = spec.timeout_ms / 1000 + ACK_MARGIN_S
        self._pulling = asyncio.create_task(self._pull(), name=f"pull {spec.workload_id}")
        self._pulling.add_done_callback(self._pull_ended)
        self._touching = asyncio.create_task(self._touch(), name=f"in progress {spec.workload_id}")

    @classmethod
    async def start(cls, nc: Client, function: RunsCalls, spec: protocol.Load,
                    triggers: list[protocol.TriggerSubscription], replicas: int) -> DurableRunner:
        shared = await shared_stores(nc, replicas)
        subscription = await bind_function_consumer(
            nc.jetstream(), spec, [t.subject for t in triggers], replicas,
            capacity=spec.max_concurrency or DEFAULT_CAPACITY, ack_wait_s=spec.timeout_ms / 1000 + ACK_MARGIN_S)
        return cls(nc, function, spec, triggers, shared, subscription)

    async def stop(self, grace: float) -> None:
        """Stop fetching; let the messages held finish for up to ``grace`` seconds. What is left
        unanswered comes back to another copy after the ack wait."""
        self._stopping = True
        self._room.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # The fetch under way ends within FETCH_WAIT_S; what it brings is still run.
        await asyncio.wait({self._pulling}, timeout=max(0.0, min(grace, FETCH_WAIT_S + 0.5)))
        self._pulling.cancel()
        held = [task for _, task in self._held.values()]
        if held:
            _, pending = await asyncio.wait(held, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
        self._touching.cancel()
        try:
            await self._subscription.unsubscribe()
        except NatsError as exc:
            log.debug("unsubscribing the pull of %s: %s", self._spec.workload_id, exc)

    async def _pull(self) -> None:
        while not self._stopping:
            await self._room.wait()
            if self._stopping:
                return
            free = self._capacity - len(self._held)
            try:
                messages = await self._subscription.fetch(free, timeout=FETCH_WAIT_S)
            except (asyncio.TimeoutError, NatsTimeoutError):
                continue
            except NatsError as exc:
                log.warning("function %s: fetching async invocations: %s", self._spec.workload_id, exc)
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            for msg in messages:
                token = next(self._tokens)
                task = asyncio.create_task(self._handle(msg))
                self._held[token] = (msg, task)
                task.add_done_callback(lambda _, t=token: self._release(t))
            if len(self._held) >= self._capacity:
                self._room.clear()

    def _pull_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, the copy stops pulling
            log.error("function %s: pulling async invocations failed", self._spec.workload_id,
                      exc_info=task.exception())

    def _release(self, token: int) -> None:
        self._held.pop(token, None)
        self._room.set()

    async def _touch(self) -> None:
        """Tell JetStream the held messages are in progress, so that only a dead copy's come back."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            for msg, _ in list(self._held.values()):
                try:
                    await msg.in_progress()
                except NatsError:
                    pass

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._run(msg)
        except NatsError as exc:  # NATS away: the message comes back after the ack wait
            log.warning("function %s: async invocation on %s: %s", self._spec.workload_id, msg.subject, exc)

    async def _run(self, msg: Msg) -> None:
        headers = msg.headers or {}
        meta = msg.metadata
        attempt = meta.num_delivered
        given = headers.get(subjects.KEY_HEADER) or headers.get(subjects.MSG_ID_HEADER)
        key = given or f"seq-{meta.sequence.stream}"
        record = done_key(self._spec.namespace, self._spec.name, key)
        retry = self._retry.get(msg.subject, protocol.RetrySettings())
        # A sequence key delivered for the first time cannot have completed: no lookup.
        if (given or attempt > 1) and await self._completed(record):
            await msg.ack()
            return
        if attempt > retry.max_attempts:
            error = FunctionError(f"delivered {attempt} times: the copy running attempt {attempt - 1}"
                                  " stopped before it answered", "lost")
            await self._dead_letter(msg, key, attempt - 1, error)
            return
        outcome = await self._function.run_async(msg.subject, msg.data, headers.get("traceparent"), hop_of(headers))
        if outcome.error is None:
            try:
                await self._done.create(record, str(meta.sequence.stream).encode())
            except KeyWrongLastSequenceError:
                log.info("function %s: key %r completed twice (copies raced)", self._spec.workload_id, key)
            except NatsError as exc:
                log.warning("function %s: recording key %r: %s", self._spec.workload_id, key, exc)
            await self._reply(headers, outcome.data, None)
            await msg.ack()
        elif attempt >= retry.max_attempts or outcome.error.kind == LOOP:  # a loop fails the same way again
            await self._dead_letter(msg, key, attempt, outcome.error)
        else:
            await msg.nak(delay=backoff_s(retry, attempt))

    async def _completed(self, record: str) -> bool:
        try:
            await self._done.get(record)
        except KeyNotFoundError:
            return False
        return True

    async def _dead_letter(self, msg: Msg, key: str, attempts: int, error: FunctionError) -> None:
        headers = msg.headers or {}
        kept = {name: value for name, value in headers.items()
                if name in (subjects.REPLY_TO_HEADER, "traceparent", "tracestate")}
        seq = msg.metadata.sequence.stream
        dead = {
            **kept,
            # Dedupe by the work-queue sequence: a copy that dies between here and the ack
            # dead-letters the message again, and JetStream keeps one.
            subjects.MSG_ID_HEADER: f"dlq:{self._spec.namespace}:{self._spec.name}:{seq}",
            subjects.DLQ_SUBJECT_HEADER: msg.subject,
            subjects.DLQ_KEY_HEADER: key,
            subjects.DLQ_ATTEMPTS_HEADER: str(attempts),
            subjects.DLQ_ERROR_HEADER: " ".join(error.message.split())[:512],
            subjects.DLQ_WORKLOAD_HEADER: self._spec.workload_id,
        }
        ack = await self._js.publish(subjects.dead_letters(self._spec.namespace, self._spec.name), msg.data,
                                     headers=dead)
        await self._reply(headers, *error.encode())
        await msg.ack()
        self._function.emit_dead_lettered({
            "subject": msg.subject, "key": key, "attempts": attempts, "error": error.message,
            "dlq_sequence": ack.seq})

    async def _reply(self, headers: dict[str, str], data: bytes, reply_headers: dict[str, str] | None) -> None:
        reply_to = headers.get(subjects.REPLY_TO_HEADER)
        if not reply_to:
            return
        problem = self._scope.publish_problem(reply_to, "function")
        if problem is not None:
            log.warning("function %s: no reply on %s %r: %s", self._spec.workload_id,
                        subjects.REPLY_TO_HEADER, reply_to, problem)
            return
        await self._nc.publish(reply_to, data, headers=onward(reply_headers, hop_of(headers)))
