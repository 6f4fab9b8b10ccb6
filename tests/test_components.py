"""WebAssembly components (WASI 0.2) as functions, against a real nats-server, a real node and agent,
and wasmtime: the world nex:function/function (src/nex/wit), its host services nex:host, kept
instances, limits and the compiled cache.

tests/components/probe.c is a component in C with the canonical ABI by hand (built with clang and
wasm-tools, no libc, no bindings generator); echo.wat is the smallest component, in the component
text format.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats.aio.client import Client

from helpers import (ARTIFACT_ROOTS, assemble, build_component, collect, control, deploy, eventually, file_artifact,
                     function_body, function_error, request)
from nex.connection import flush_subscriptions
from nex.natsserver import NatsServer
from nex.node.config import NodeConfig
from nex.node.node import Node

SOURCES = Path(__file__).parent / "components"


@pytest.fixture(scope="session")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """probe.wasm (tests/components/probe.c) and echo.wasm (echo.wat), built once."""
    out = tmp_path_factory.mktemp("components")
    return {"probe": build_component(SOURCES / "probe.c", out / "probe.wasm"),
            "echo": assemble(SOURCES / "echo.wat", out / "echo.wasm")}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from http"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def node(nats_server: NatsServer, tmp_path: Path):
    """A node that lets functions GET from 127.0.0.1."""
    config = NodeConfig(artifact_roots=ARTIFACT_ROOTS, server=nats_server.url, state_dir=tmp_path / "node",
                        name="component-node", sandbox="none", stop_grace_s=2.0, lameduck_s=0.2, reconciler=False,
                        http_allow_hosts=["127.0.0.1"], http_allow_methods=["GET"])
    started = Node(config)
    await started.start()
    yield started
    await started.shutdown()


async def call(nc: Client, subject: str, command: str, timeout: float = 10.0) -> str:
    return (await request(nc, subject, command.encode(), timeout=timeout)).data.decode()


async def test_a_component_answers_through_the_node_with_its_host_services(
        node: Node, nc: Client, components: dict[str, Path], http_url: str):
    summary = await deploy(nc, node, function_body(components["probe"], "probe", "probe.shop"), namespace="shop")
    received = await collect(nc, "nex.shop.orders.>")

    async def echo(msg):
        await msg.respond(b"echo: " + msg.data)
    await nc.subscribe("nex.shop.echo", cb=echo)
    await flush_subscriptions(nc)

    shouted = await call(nc, "probe.shop", "hello component")
    put = await call(nc, "probe.shop", "put carts alice two apples")
    got = await call(nc, "probe.shop", "get carts alice")
    missing = await call(nc, "probe.shop", "get carts nobody")
    keys = await call(nc, "probe.shop", "keys carts")
    bad_bucket = await call(nc, "probe.shop", "get bad_bucket alice")
    oput = await call(nc, "probe.shop", "oput images logo.svg <svg/>")
    oget = await call(nc, "probe.shop", "oget images logo.svg")
    olist = await call(nc, "probe.shop", "olist images")
    published = await call(nc, "probe.shop", "pub nex.shop.orders.new order-7")
    answered = await call(nc, "probe.shop", "req nex.shop.echo ping 2000")
    nobody = await call(nc, "probe.shop", "req nex.shop.nobody ping 500")
    outside = await call(nc, "probe.shop", "pub nex.other.orders order-8")
    http = await call(nc, "probe.shop", f"http GET {http_url}/hello")
    http_refused = await call(nc, "probe.shop", "http GET http://example.com/")
    stored = await (await nc.jetstream().key_value("NEXKV_shop_carts")).get("alice")

    assert summary["type"] == "wasm" and summary["state"] == "running"
    assert shouted == "HELLO COMPONENT"
    assert put == "ok" and got == "two apples" and missing == "(none)" and keys == "alice\n"
    assert stored.value == b"two apples"
    assert bad_bucket.startswith("error invalid invalid bucket name 'bad_bucket'")
    assert oput == "ok" and oget == "<svg/>" and olist == "logo.svg 6\n"
    await eventually(lambda: [(m.subject, m.data, m.headers.get("from")) for m in received]
                     == [("nex.shop.orders.new", b"order-7", "probe")])
    assert published == "ok" and answered == "echo: ping"
    assert nobody == "error unavailable request: no responders on nex.shop.nobody"
    assert outside.startswith("error denied") and "nex.other.orders is outside the function's subjects" in outside
    assert http == "200 hello from http"
    assert http_refused.startswith("error denied") and "does not allow requests to example.com" in http_refused
