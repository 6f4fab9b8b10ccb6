"""Trace context for functions: the invocation's span, and the ``traceparent`` of its host calls.

An invocation runs on its function's thread (:mod:`nex.agent.worker`), and the
host calls it makes run on that same thread until they hand the operation to
the loop (:mod:`nex.agent.hostservices`). So the span of the invocation in
progress is kept per thread: :meth:`Tracing.begin` sets it before the call,
:meth:`Tracing.host_call` reads it to give each host call a ``traceparent`` of
the same trace with a span id of its own (its parent: the invocation's span),
and :meth:`Tracing.end` clears it.

Two kinds, chosen once per agent by :func:`for_agent`:

- :class:`Propagation`, without an OTLP endpoint: nothing is recorded or
  exported. An invocation triggered without a ``traceparent`` costs one header
  lookup; with one, a span id is drawn for it and for each host call.
- :class:`Export`, with an endpoint: OpenTelemetry's SDK records one span per
  invocation (a root span when the trigger carried no ``traceparent``) and one
  child span per host call, and a batch processor posts them over OTLP/HTTP
  from its own thread. The SDK reads the batch settings (``OTEL_BSP_*``) from
  the environment.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from nex.api.tracecontext import TRACEPARENT, TraceParent

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 2.0  # one post of a batch; a collector that is away must not hold the agent
SHUTDOWN_FLUSH_MS = 2000
TRACES_PATH = "/v1/traces"

Attributes = Mapping[str, str | int | float | bool]


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a base endpoint, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` means it."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class Tracing:
    """What the agent's functions and host services call; see the module docstring."""

    def begin(self, traceparent: str | None, name: str, attributes: Attributes) -> None:
        """On the function's thread, before the call: the invocation's span starts."""
        raise NotImplementedError

    def end(self, error: str | None = None) -> None:
        """On the function's thread, after the call (``error``: why it failed)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def host_call(self, name: str, attributes: Attributes) -> Iterator[dict[str, str]]:
        """Around a host call on the function's thread: yields the headers to send (none outside a trace)."""
        raise NotImplementedError
        yield {}

    def close(self) -> None:
        """Send what is left; once, when the agent stops."""


class Propagation(Tracing):
    """Carries the trace context along, records nothing."""

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self, traceparent: str | None, name: str, attributes: Attributes) -> None:
        parent = TraceParent.parse(traceparent) if traceparent else None
        self._local.span = parent.child() if parent is not None else None

    def end(self, error: str | None = None) -> None:
        self._local.span = None

    @contextlib.contextmanager
    def host_call(self, name: str, attributes: Attributes) -> Iterator[dict[str, str]]:
        span: TraceParent | None = getattr(self._local, "span", None)
        yield {} if span is None else {TRACEPARENT: str(span.child())}


class Export(Tracing):
    """Records spans with OpenTelemetry's SDK and exports them over OTLP/HTTP."""

    def __init__(self, endpoint: str, service_name: str, resource_attributes: Attributes) -> None:
        # Imported here: an agent without an endpoint never loads the SDK.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._trace = trace
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name,
                                                                  **resource_attributes}))
        self._provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_TIMEOUT_S)))
        self._tracer = self._provider.get_tracer("nex.agent")
        self._local = threading.local()

    def begin(self, traceparent: str | None, name: str, attributes: Attributes) -> None:
        trace = self._trace
        parent = TraceParent.parse(traceparent) if traceparent else None
        context = None
        if parent is not None:
            remote = trace.SpanContext(trace_id=int(parent.trace_id, 16), span_id=int(parent.span_id, 16),
                                       is_remote=True, trace_flags=trace.TraceFlags(parent.flags))
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        self._local.span = self._tracer.start_span(name, context=context, kind=trace.SpanKind.SERVER,
                                                   attributes=dict(attributes))

    def end(self, error: str | None = None) -> None:
        span = getattr(self._local, "span", None)
        self._local.span = None
        if span is None:
            return
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()

    @contextlib.contextmanager
    def host_call(self, name: str, attributes: Attributes) -> Iterator[dict[str, str]]:
        trace = self._trace
        span = getattr(self._local, "span", None)
        if span is None:
            yield {}
            return
        child = self._tracer.start_span(name, context=trace.set_span_in_context(span), kind=trace.SpanKind.CLIENT,
                                        attributes=dict(attributes))
        try:
            yield {TRACEPARENT: _header(child.get_span_context())}
        except Exception as exc:
            child.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            child.end()

    def close(self) -> None:
        self._provider.force_flush(SHUTDOWN_FLUSH_MS)
        self._provider.shutdown()


def _header(context: Any) -> str:
    return str(TraceParent(f"{context.trace_id:032x}", f"{context.span_id:016x}", int(context.trace_flags)))


def for_agent(endpoint: str | None, engine: str, node_id: str) -> Tracing:
    """The agent's tracing: exporting to ``endpoint`` when there is one, else propagation only."""
    if not endpoint:
        return Propagation()
    log.info("exporting spans of invocations to %s", traces_url(endpoint))
    return Export(endpoint, f"nex-agent-{engine}", {"nex.node_id": node_id, "nex.engine": engine})
