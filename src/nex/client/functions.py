"""Functions: a call through a trigger subject, an async invocation into the function's stream,
and its dead letters (docs/functions.md, "Triggers")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors

from nex.api import subjects
from nex.api.errors import BadRequest, NotFound, Unavailable, from_reply
from nex.api.models import DeadLetter
from nex.api.tracecontext import TRACEPARENT, TraceParent
from nex.client.transport import Transport, target_token


@dataclass(frozen=True)
class AsyncReceipt:
    """JetStream's acknowledgement of an async invocation: where it is kept, under which key."""

    stream: str
    seq: int
    key: str
    duplicate: bool  # the key was published within the duplicate window: this one was dropped


class Functions(Transport):
    """Calls, async invocations and dead letters."""

    async def invoke(self, subject: str, payload: bytes = b"", timeout: float | None = None, *,
                     traceparent: TraceParent | str | None = None) -> bytes:
        """Call a function through one of its trigger subjects; returns the reply payload.

        ``traceparent`` (W3C; ``TraceParent.new()`` starts a trace) makes the call a span of that
        trace: the function's host calls carry it on (docs/observability.md).

        Raises:
            NotFound: no function is triggered by ``subject``.
            FunctionError: the function threw, timed out or ran out of memory (its ``kind``).
            TooManyRequests: every copy of the function is at its concurrency limit.
            Unavailable: no reply within ``timeout`` (the client's by default).
            BadRequest: ``subject`` or ``traceparent`` is not valid.

        Example:
            ```python
            reply = await client.invoke("demo.hello", b"world", timeout=2.0)
            ```

        """
        timeout = self.timeout if timeout is None else timeout
        headers = _trace_headers(traceparent) or None
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NotFound(f"no function is triggered by {subject!r}") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no reply from {subject!r} within {timeout:g}s") from None
        except nats.errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject!r}") from None
        error = from_reply(msg.data, msg.headers)
        if error is not None:
            raise error
        return msg.data

    async def invoke_async(self, subject: str, payload: bytes = b"", key: str | None = None,
                           reply_to: str | None = None, *,
                           traceparent: TraceParent | str | None = None) -> AsyncReceipt:
        """Publish an async invocation into the function's stream (a plain JetStream publish).

        ``key`` is the idempotency key (``Nats-Msg-Id``): a re-publish within the stream's
        duplicate window is dropped, and a key that completed is not run again. The result
        goes to ``reply_to`` when given (a subject of the namespace or of the function).

        Raises:
            NotFound: no async function is triggered by ``subject`` (no stream captures it).
            Unavailable: JetStream did not acknowledge within the client's timeout.
            BadRequest: ``subject`` is not valid, or JetStream refused the message.

        Example:
            ```python
            receipt = await client.invoke_async("orders.new", b'{"id": 42}', key="order-42")
            if receipt.duplicate:
                print("already sent")
            ```

        """
        headers = {subjects.MSG_ID_HEADER: key} if key else {}
        if reply_to:
            headers[subjects.REPLY_TO_HEADER] = reply_to
        headers.update(_trace_headers(traceparent))  # the run, however late, is a span of this trace
        try:
            ack = await self.nc.jetstream().publish(subject, payload, timeout=self.timeout, headers=headers or None)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise NotFound(f"no async function is triggered by {subject!r}: no stream captures it") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no JetStream acknowledgement for {subject!r} within {self.timeout:g}s") from None
        except nats.errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject!r}") from None
        except nats.js.errors.APIError as exc:
            raise BadRequest(f"JetStream refused the invocation on {subject!r}: {exc.description}") from None
        return AsyncReceipt(stream=ack.stream, seq=ack.seq, key=key or f"seq-{ack.seq}", duplicate=bool(ack.duplicate))

    @property
    def _dead_letters(self) -> str:
        """NEX_DLQ, or for a confined client its namespace's copy of its part (nex creds makes it)."""
        return subjects.dead_letter_stream(self.namespace) if self.confined else subjects.DLQ_STREAM

    async def dlq_list(self, function: str | None = None) -> list[DeadLetter]:
        """The dead letters of the namespace (of one function), oldest first.

        Raises:
            Unavailable: JetStream did not answer.

        """
        if function is not None:
            target_token(function, "function")
        js = self.nc.jetstream()
        wanted = subjects.dead_letters_filter(self.namespace, function or "*")
        letters: list[DeadLetter] = []
        seq = 1
        while True:
            try:
                raw = await js.get_msg(self._dead_letters, seq=seq, subject=wanted, next=True)
            except nats.js.errors.NotFoundError:
                return letters  # no stream yet, or nothing past seq
            except nats.errors.TimeoutError:
                raise Unavailable(f"no answer from JetStream about {self._dead_letters}") from None
            letters.append(_dead_letter(raw))
            seq = (raw.seq or seq) + 1

    async def dlq_replay(self, seq: int) -> AsyncReceipt:
        """Publish dead letter ``seq`` again on its subject, with its idempotency key; then delete it.

        Raises:
            NotFound: no dead letter ``seq`` in the namespace, or its function is gone.
            Unavailable: JetStream did not acknowledge the new invocation.

        """
        js = self.nc.jetstream()
        try:
            raw = await js.get_msg(self._dead_letters, seq=seq)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"no dead letter {seq}") from None
        letter = _dead_letter(raw)
        if letter.namespace != self.namespace:
            raise NotFound(f"no dead letter {seq} in namespace {self.namespace!r}")
        headers = {
            # A new message id (the key's own would be dropped as a duplicate within the window);
            # Nex-Key keeps the idempotency key, so a key that completed meanwhile is not run twice.
            subjects.MSG_ID_HEADER: f"replay:{letter.namespace}:{letter.function}:{seq}",
            subjects.KEY_HEADER: letter.key,
        }
        if letter.reply_to:
            headers[subjects.REPLY_TO_HEADER] = letter.reply_to
        try:
            ack = await js.publish(letter.subject, raw.data or b"", timeout=self.timeout, headers=headers)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise NotFound(f"no async function is triggered by {letter.subject!r} any more") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no JetStream acknowledgement for {letter.subject!r} within {self.timeout:g}s") from None
        await js.delete_msg(self._dead_letters, seq)
        return AsyncReceipt(stream=ack.stream, seq=ack.seq, key=letter.key, duplicate=bool(ack.duplicate))


def _dead_letter(raw: Any) -> DeadLetter:
    headers = raw.headers or {}
    parts = (raw.subject or "").split(".")
    namespace, function = (parts[2], parts[3]) if len(parts) == 4 else ("?", "?")
    try:
        attempts = int(headers.get(subjects.DLQ_ATTEMPTS_HEADER, "0"))
    except ValueError:
        attempts = 0
    return DeadLetter(
        seq=raw.seq or 0, namespace=namespace, function=function,
        subject=headers.get(subjects.DLQ_SUBJECT_HEADER, ""), key=headers.get(subjects.DLQ_KEY_HEADER, ""),
        attempts=attempts, error=headers.get(subjects.DLQ_ERROR_HEADER, ""),
        time=raw.time or datetime.fromtimestamp(0).astimezone(),
        workload_id=headers.get(subjects.DLQ_WORKLOAD_HEADER), reply_to=headers.get(subjects.REPLY_TO_HEADER),
        size=len(raw.data or b""))


def _trace_headers(traceparent: TraceParent | str | None) -> dict[str, str]:
    """The traceparent header of an invocation; BadRequest for one that is not W3C's format."""
    if traceparent is None:
        return {}
    if TraceParent.parse(str(traceparent)) is None:
        raise BadRequest(f"invalid traceparent {str(traceparent)!r}: want 00-<32 hex>-<16 hex>-<2 hex>")
    return {TRACEPARENT: str(traceparent)}
