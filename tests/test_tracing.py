"""Trace context (docs/observability.md): a ``traceparent`` on the message that triggers a
function flows into the function's host calls, and spans go out over OTLP/HTTP when an
endpoint is configured. Real node, real QuickJS agent, a real local OTLP receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers import build_wasm, control, eventually, file_artifact, running_node
from nex.agent.tracing import Propagation, traces_url
from nex.api.errors import BadRequest
from nex.api.tracecontext import TRACEPARENT, TraceParent
from nex.client import NexClient
from nex.connection import flush_subscriptions
from nex.node.config import ConfigError, load_config

WASM_SOURCES = Path(__file__).parent / "wasm"

# Calls the backend over NATS (request and publish) and over HTTP, then answers.
TRACED_JS = """
async (subject, payload) => {
  const { url } = JSON.parse(new TextDecoder().decode(payload));
  const reply = await nex.request("nex.default.backend", "ping");
  await nex.publish("nex.default.audit", "called");
  const response = await nex.http.get(url);
  return `${reply.text()} ${response.status}`;
}
"""


def test_traceparent_parses_formats_and_makes_children():
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parent = TraceParent.parse(header)
    assert parent is not None and str(parent) == header and parent.sampled
    child = parent.child()
    assert child.trace_id == parent.trace_id and child.span_id != parent.span_id
    assert TraceParent.parse(str(TraceParent.new())) is not None
    for bad in ("", "junk", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"):
        assert TraceParent.parse(bad) is None, bad


def test_propagation_gives_host_calls_a_child_span_only_inside_a_trace():
    tracing = Propagation()
    with tracing.host_call("request x", {}) as headers:
        assert headers == {}
    invoker = TraceParent.new()
    tracing.begin(str(invoker), "invoke f", {})
    with tracing.host_call("request x", {}) as first, tracing.host_call("request y", {}) as second:
        one, two = TraceParent.parse(first[TRACEPARENT]), TraceParent.parse(second[TRACEPARENT])
    tracing.end()
    assert one.trace_id == two.trace_id == invoker.trace_id
    assert len({one.span_id, two.span_id, invoker.span_id}) == 3
    with tracing.host_call("request x", {}) as after:
        assert after == {}, "the trace ended with the invocation"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"


def test_a_bad_otel_endpoint_is_refused(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"otel_endpoint": "collector:4318"})
    assert "http://" in str(caught.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert load_config(None, {}).otel_endpoint == "http://127.0.0.1:4318"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get(TRACEPARENT))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_backend():
    """A local HTTP server that records the traceparent of each GET."""
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", handler.seen
    server.shutdown()
    server.server_close()


async def _backend(nc) -> tuple[list, list]:
    """A responder on nex.default.backend and a listener on nex.default.audit; their messages' headers."""
    requests, published = [], []

    async def answer(msg):
        requests.append(dict(msg.headers or {}))
        await msg.respond(b"pong")

    async def note(msg):
        published.append(dict(msg.headers or {}))

    await nc.subscribe("nex.default.backend", cb=answer)
    await nc.subscribe("nex.default.audit", cb=note)
    await flush_subscriptions(nc)
    return requests, published


async def _deploy(nc, node, tmp_path: Path) -> None:
    script = tmp_path / "traced.js"
    script.write_text(TRACED_JS)
    code, summary = await control(nc, "DEPLOY", node.node_id, body={
        "name": "traced", "type": "javascript", "artifact": file_artifact(script),
        "triggers": [{"subject": "nex.default.traced"}]})
    assert code is None, summary


async def test_the_invokers_trace_reaches_every_host_call(nats_server, nc, tmp_path, http_backend, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    url, http_seen = http_backend
    requests, published = await _backend(nc)
    async with running_node(nats_server, tmp_path / "node", "tracer", reconciler=False,
                            http_allow_hosts=["127.0.0.1"]) as node:
        await _deploy(nc, node, tmp_path)
        client = NexClient(nc, timeout=10)
        invoker = TraceParent.new()
        reply = await client.invoke("nex.default.traced", json.dumps({"url": url}).encode(), traceparent=invoker)
        assert reply == b"pong 200"
        await eventually(lambda: published)
        headers = [requests[0].get(TRACEPARENT), published[0].get(TRACEPARENT), http_seen[0]]
        spans = [TraceParent.parse(h) for h in headers]
        assert all(spans), headers
        assert {span.trace_id for span in spans} == {invoker.trace_id}
        assert len({span.span_id for span in spans} | {invoker.span_id}) == 4, "a span id of its own per call"

        # Without a traceparent there is no trace to carry on.
        assert await client.invoke("nex.default.traced", json.dumps({"url": url}).encode()) == b"pong 200"
        await eventually(lambda: len(published) == 2)
        assert TRACEPARENT not in requests[1] and TRACEPARENT not in published[1] and http_seen[1] is None

        # A bad traceparent is refused before anything is sent.
        with pytest.raises(BadRequest) as caught:
            await client.invoke("nex.default.traced", b"{}", traceparent="00-nothex-01")
        assert "traceparent" in caught.value.message
        assert len(requests) == 2

        # `nex invoke --trace` starts a trace and says which.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nex", "--server", nats_server.url, "invoke", "--trace", "nex.default.traced",
            json.dumps({"url": url}), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0 and out == b"pong 200", err
        trace_id = err.decode().split("trace id ")[1].split()[0]
        assert TraceParent.parse(requests[2][TRACEPARENT]).trace_id == trace_id


async def test_a_wasm_functions_request_carries_the_trace(nats_server, nc, tmp_path, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    module = build_wasm(WASM_SOURCES / "hostcalls.c", tmp_path / "hostcalls.wasm")
    requests, _ = await _backend(nc)
    async with running_node(nats_server, tmp_path / "node", "wasm-tracer", reconciler=False) as node:
        code, summary = await control(nc, "DEPLOY", node.node_id, body={
            "name": "hostcalls", "type": "wasm", "artifact": file_artifact(module),
            "triggers": [{"subject": "nex.default.hostcalls"}]})
        assert code is None, summary
        invoker = TraceParent.new()
        reply = await NexClient(nc, timeout=10).invoke(
            "nex.default.hostcalls", b"req nex.default.backend ping 2000", traceparent=invoker)
    assert reply == b"pong"
    span = TraceParent.parse(requests[0].get(TRACEPARENT))
    assert span is not None and span.trace_id == invoker.trace_id and span.span_id != invoker.span_id


async def test_an_async_invocation_carries_the_trace_through_the_stream(nats_server, nc, tmp_path, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    script = tmp_path / "later.js"
    script.write_text('async () => (await nex.request("nex.default.backend", "ping")).text()')
    requests, _ = await _backend(nc)
    async with running_node(nats_server, tmp_path / "node", "async-tracer", reconciler=False) as node:
        code, summary = await control(nc, "DEPLOY", node.node_id, body={
            "name": "later", "type": "javascript", "artifact": file_artifact(script),
            "triggers": [{"subject": "nex.default.later", "mode": "async"}]})
        assert code is None, summary
        invoker = TraceParent.new()
        await NexClient(nc, timeout=10).invoke_async("nex.default.later", b"", traceparent=invoker)
        await eventually(lambda: requests, timeout=15)
    span = TraceParent.parse(requests[0].get(TRACEPARENT))
    assert span is not None and span.trace_id == invoker.trace_id and span.span_id != invoker.span_id


class _OtlpReceiver:
    """A tiny OTLP/HTTP collector: decodes every POST to /v1/traces into spans."""

    def __init__(self) -> None:
        self.spans: list = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_spans_are_exported_to_an_otlp_endpoint(nats_server, nc, tmp_path, http_backend, monkeypatch):
    receiver = _OtlpReceiver()
    await receiver.start()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the agent's batch processor posts every 0.1 s
    url, _ = http_backend
    requests, _ = await _backend(nc)
    try:
        async with running_node(nats_server, tmp_path / "node", "exporter", reconciler=False,
                                http_allow_hosts=["127.0.0.1"], otel_endpoint=receiver.url) as node:
            await _deploy(nc, node, tmp_path)
            invoker = TraceParent.new()
            reply = await NexClient(nc, timeout=10).invoke(
                "nex.default.traced", json.dumps({"url": url}).encode(), traceparent=invoker)
            assert reply == b"pong 200"
            await eventually(lambda: len(receiver.spans) >= 4, timeout=15)
    finally:
        await receiver.stop()
    by_name = {span.name: span for span in receiver.spans}
    invocation = by_name["invoke traced"]
    assert invocation.trace_id.hex() == invoker.trace_id
    assert invocation.parent_span_id.hex() == invoker.span_id
    children = [by_name[name] for name in ("request nex.default.backend", "publish nex.default.audit", "http GET")]
    assert all(child.trace_id == invocation.trace_id for child in children)
    assert all(child.parent_span_id == invocation.span_id for child in children)
    # The responder saw the request's own span as its parent.
    assert TraceParent.parse(requests[0][TRACEPARENT]).span_id == by_name["request nex.default.backend"].span_id.hex()
