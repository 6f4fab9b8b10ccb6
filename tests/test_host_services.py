"""Host services of functions (docs/functions.md): KV, object store, messaging and HTTP from
JavaScript and from C compiled to Wasm, against a real nats-server and a real node.

cart.js and counter.c are the examples of docs/functions.md (docs/examples/functions);
tests/functions/hostprobe.js and tests/wasm/hostcalls.c make one host call per
request, named in the payload.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from helpers import ARTIFACT_ROOTS, build_wasm, collect, deploy, eventually, function_body, function_error, request
from nex.agent.hostservices import MAX_VALUE_BYTES, host_allowed, kv_bucket
from nex.api.subjects import subjects_overlap as subject_matches
from nex.natsserver import NatsServer
from nex.node.config import ConfigError, NodeConfig, load_config
from nex.node.node import Node
from nex.connection import flush_subscriptions

FUNCTIONS = Path(__file__).parent / "functions"
WASM_SOURCES = Path(__file__).parent / "wasm"
# The examples of docs/functions.md (tests/test_functions_guide.py checks the guide shows them as they are).
EXAMPLES = Path(__file__).parent.parent / "docs" / "examples" / "functions"

NEX_ERR_INVALID, NEX_ERR_DENIED, NEX_ERR_NOT_FOUND, NEX_ERR_TIMEOUT = -1, -2, -3, -4
NEX_ERR_UNAVAILABLE, NEX_ERR_MEMORY = -6, -8


@pytest.fixture
async def node(nats_server: NatsServer, tmp_path: Path):
    """A node that lets functions call 127.0.0.1 over HTTP with GET and POST, and deploys the
    examples of the docs from where they are."""
    config = NodeConfig(artifact_roots=[*ARTIFACT_ROOTS, EXAMPLES],
                        server=nats_server.url, state_dir=tmp_path / "node", name="host-node", sandbox="none",
                        stop_grace_s=2.0, lameduck_s=0.2, reconciler=False,
                        http_allow_hosts=["127.0.0.1"], http_allow_methods=["GET", "POST"])
    started = Node(config)
    await started.start()
    yield started
    await started.shutdown()


@pytest.fixture(scope="session")
def wasm_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tests/wasm/hostcalls.c and the guide's counter.c, built against the shipped nex.h."""
    out = tmp_path_factory.mktemp("hostwasm")
    return {source.stem: build_wasm(source, out / f"{source.stem}.wasm")
            for source in (WASM_SOURCES / "hostcalls.c", EXAMPLES / "counter.c")}


async def probe(nc: Client, subject: str, op: str, *args: object, timeout: float = 10.0) -> dict:
    """One host call through hostprobe.js: {"ok": result} or {"error", "code"}."""
    msg = await request(nc, subject, json.dumps({"op": op, "args": list(args)}).encode(), timeout=timeout)
    return json.loads(msg.data)


async def wasm_call(nc: Client, subject: str, command: str, timeout: float = 10.0) -> str:
    return (await request(nc, subject, command.encode(), timeout=timeout)).data.decode()


# -- JavaScript --

async def test_js_key_value(node: Node, nc: Client):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.shop"), namespace="shop")

    put = await probe(nc, "probe.shop", "kv.put", "carts", "alice", "two apples")
    text = await probe(nc, "probe.shop", "kv.get", "carts", "alice")
    await probe(nc, "probe.shop", "kv.put", "carts", "bob", {"items": ["pear"]})
    as_json = await probe(nc, "probe.shop", "kv.get", "carts", "bob", "json")
    await probe(nc, "probe.shop", "kv.putBytes", "carts", "raw", [0, 1, 255])
    as_bytes = await probe(nc, "probe.shop", "kv.getBytes", "carts", "raw")
    keys = await probe(nc, "probe.shop", "kv.keys", "carts")
    deleted = await probe(nc, "probe.shop", "kv.delete", "carts", "alice")
    gone = await probe(nc, "probe.shop", "kv.get", "carts", "alice")
    keys_after = await probe(nc, "probe.shop", "kv.keys", "carts")
    never = await probe(nc, "probe.shop", "kv.get", "never-written", "alice")
    # What the function stored is plain JetStream KV, in the namespace's bucket.
    outside = await (await nc.jetstream().key_value("NEXKV_shop_carts")).get("bob")

    assert put == {"ok": None} and deleted == {"ok": None}
    assert text == {"ok": "two apples"}
    assert as_json == {"ok": {"items": ["pear"]}}
    assert as_bytes == {"ok": [0, 1, 255]}
    assert keys == {"ok": ["alice", "bob", "raw"]}
    assert gone == {"ok": None} and never == {"ok": None}
    assert keys_after == {"ok": ["bob", "raw"]}
    assert json.loads(outside.value) == {"items": ["pear"]}


async def test_js_object_store(node: Node, nc: Client):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.shop"), namespace="shop")

    put = await probe(nc, "probe.shop", "objects.put", "images", "logo.svg", "<svg/>")
    got = await probe(nc, "probe.shop", "objects.get", "images", "logo.svg")
    listed = await probe(nc, "probe.shop", "objects.list", "images")
    deleted = await probe(nc, "probe.shop", "objects.delete", "images", "logo.svg")
    gone = await probe(nc, "probe.shop", "objects.get", "images", "logo.svg")
    listed_after = await probe(nc, "probe.shop", "objects.list", "images")
    outside = await nc.jetstream().object_store("NEXOBJ_shop_images")

    assert put == {"ok": None} and deleted == {"ok": None}
    assert got == {"ok": "<svg/>"}
    assert listed == {"ok": [{"name": "logo.svg", "size": 6}]}
    assert gone == {"ok": None} and listed_after == {"ok": []}
    assert outside is not None


async def test_js_publish_and_request_within_the_namespace(node: Node, nc: Client):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.shop"), namespace="shop")
    received = await collect(nc, "nex.shop.orders.>")

    async def echo(msg):
        await msg.respond(b"echo: " + msg.data)
    await nc.subscribe("nex.shop.echo", cb=echo)
    await flush_subscriptions(nc)

    sent = await probe(nc, "probe.shop", "publish", "nex.shop.orders.new", "order 7")
    answered = await probe(nc, "probe.shop", "request", "nex.shop.echo", "ping", {"timeout": 2000})
    to_own_trigger = await probe(nc, "probe.shop", "publish", "probe.shop", '{"op": "none"}')
    outside = await probe(nc, "probe.shop", "publish", "nex.other.orders", "order 8")
    reserved = await probe(nc, "probe.shop", "publish", "$JS.API.STREAM.LIST", "")
    wildcard = await probe(nc, "probe.shop", "publish", "nex.shop.*", "x")
    nobody = await probe(nc, "probe.shop", "request", "nex.shop.nobody", "hello?")

    published = lambda: [(msg.subject, msg.data) for msg in received]  # noqa: E731
    await eventually(lambda: ("nex.shop.orders.new", b"order 7") in published())
    assert sent == {"ok": None} and to_own_trigger == {"ok": None}
    assert answered == {"ok": "echo: ping"}
    assert outside["code"] == "denied" and "nex.other.orders is outside the function's subjects" in outside["error"]
    assert reserved["code"] == "denied" and "reserved" in reserved["error"]
    assert wildcard["code"] == "invalid" and "wildcards" in wildcard["error"]
    assert nobody["code"] == "unavailable" and "no responders on nex.shop.nobody" in nobody["error"]
    assert not any(subject == "nex.other.orders" for subject, _ in published())


async def test_js_http_to_allowed_hosts_only(node: Node, nc: Client, http_url: str):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.shop"), namespace="shop")

    got = await probe(nc, "probe.shop", "http", "get", f"{http_url}/hello")
    posted = await probe(nc, "probe.shop", "http", "post", f"{http_url}/echo", {"body": "a parcel"})
    method_refused = await probe(nc, "probe.shop", "http", "put", f"{http_url}/echo", {"body": "x"})
    host_refused = await probe(nc, "probe.shop", "http", "get", http_url.replace("127.0.0.1", "localhost"))
    not_http = await probe(nc, "probe.shop", "http", "get", "file:///etc/passwd")

    assert got == {"ok": {"status": 200, "ok": True, "body": "hello from http", "type": "text/plain"}}
    assert posted["ok"]["status"] == 201 and posted["ok"]["body"] == "got a parcel"
    assert method_refused["code"] == "denied" and "does not allow PUT" in method_refused["error"]
    assert host_refused["code"] == "denied" and "does not allow requests to localhost" in host_refused["error"]
    assert not_http["code"] == "invalid"


async def test_calls_not_awaited_are_made_before_the_reply(node: Node, nc: Client, tmp_path: Path):
    script = tmp_path / "noted.js"
    script.write_text('(subject, payload) => { nex.kv("log").put("last", subject); return "noted"; }\n')
    await deploy(nc, node, function_body(script, "noted", "noted.shop"), namespace="shop")

    reply = await request(nc, "noted.shop")
    stored = await (await nc.jetstream().key_value("NEXKV_shop_log")).get("last")

    assert reply.data == b"noted"
    assert stored.value == b"noted.shop"


async def test_a_namespace_cannot_see_another_namespaces_buckets(node: Node, nc: Client):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.a"), namespace="a")
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.b"), namespace="b")

    await probe(nc, "probe.a", "kv.put", "secrets", "token", "only for a")
    from_b = await probe(nc, "probe.b", "kv.get", "secrets", "token")
    keys_from_b = await probe(nc, "probe.b", "kv.keys", "secrets")
    # A bucket name cannot spell another namespace's stream.
    spelled = await probe(nc, "probe.b", "kv.get", "NEXKV_a_secrets", "token")
    from_a = await probe(nc, "probe.a", "kv.get", "secrets", "token")
    publish_into_a = await probe(nc, "probe.b", "publish", "nex.a.anything", "hi")

    assert from_a == {"ok": "only for a"}
    assert from_b == {"ok": None} and keys_from_b == {"ok": []}
    assert spelled["code"] == "invalid"
    assert publish_into_a["code"] == "denied"


async def test_a_request_nobody_answers_fails_with_a_timeout_in_the_function(node: Node, nc: Client):
    silent = await collect(nc, "nex.a.silent")
    await nc.flush()
    await deploy(nc, node, function_body(FUNCTIONS / "unanswered.js", "unanswered", "unanswered.a"), namespace="a")

    started = time.monotonic()
    reply = await request(nc, "unanswered.a", b"", timeout=10)
    took = time.monotonic() - started

    error = function_error(reply)
    assert "NexError: request: no reply on nex.a.silent within 300 ms" in error.message
    assert silent and 0.25 < took < 5


async def test_host_calls_end_with_the_invocation(node: Node, nc: Client):
    """A call may not outlive its invocation: a 5 s request in a function limited to 600 ms."""
    await collect(nc, "nex.a.silent")
    await nc.flush()
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.a", limits={"timeout_ms": 600}),
                 namespace="a")

    started = time.monotonic()
    reply = await request(nc, "probe.a", json.dumps({"op": "request", "args": ["nex.a.silent", "x", {"timeout": 5000}]}).encode())
    took = time.monotonic() - started

    error = function_error(reply)
    assert error.kind == "timeout" and "ran longer than 600 ms" in error.message
    assert took < 3


async def test_bad_arguments_get_clear_errors_and_change_nothing(node: Node, nc: Client):
    await deploy(nc, node, function_body(FUNCTIONS / "hostprobe.js", "probe", "probe.shop"), namespace="shop")

    bad_bucket = await probe(nc, "probe.shop", "kv.put", "my_bucket", "k", "v")
    bad_key = await probe(nc, "probe.shop", "kv.put", "carts", "a key with spaces", "v")
    bad_type = await probe(nc, "probe.shop", "kv.get", "carts", "k", "xml")
    too_large = await probe(nc, "probe.shop", "kv.putRepeated", "carts", "big", MAX_VALUE_BYTES + 1)
    bad_timeout = await probe(nc, "probe.shop", "request", "nex.shop.echo", "x", {"timeout": "soon"})
    keys = await probe(nc, "probe.shop", "kv.keys", "carts")
    hidden = await probe(nc, "probe.shop", "nexIsFrozen")

    assert bad_bucket["code"] == "invalid" and "invalid bucket name 'my_bucket'" in bad_bucket["error"]
    assert bad_key["code"] == "invalid" and "invalid key" in bad_key["error"]
    assert bad_type["code"] == "invalid" and "unknown type" in bad_type["error"]
    assert too_large["code"] == "too_large" and "the limit is 1048576" in too_large["error"]
    assert bad_timeout["code"] == "invalid" and "milliseconds" in bad_timeout["error"]
    assert keys == {"ok": []}
    assert hidden == {"ok": True}  # nex and its buckets are frozen


async def test_the_cart_example_of_the_docs(node: Node, nc: Client):
    changes = await collect(nc, "nex.shop.cart.changed")
    await nc.flush()
    await deploy(nc, node, function_body(EXAMPLES / "cart.js", "cart", "shop.cart"), namespace="shop")

    await request(nc, "shop.cart", b'{"user": "alice", "add": "apple"}')
    reply = await request(nc, "shop.cart", b'{"user": "alice", "add": "pear"}')
    looked = await request(nc, "shop.cart", b'{"user": "alice"}')

    assert json.loads(reply.data) == ["apple", "pear"] == json.loads(looked.data)
    await eventually(lambda: len(changes) == 2)
    assert json.loads(changes[-1].data) == {"user": "alice", "items": 2}


# -- Wasm --

async def test_wasm_key_value_and_objects(node: Node, nc: Client, wasm_modules: dict[str, Path]):
    await deploy(nc, node, function_body(wasm_modules["hostcalls"], "calls", "calls.shop"), namespace="shop")

    put = await wasm_call(nc, "calls.shop", "put carts alice two apples")
    got = await wasm_call(nc, "calls.shop", "get carts alice")
    await wasm_call(nc, "calls.shop", "put carts bob a pear")
    keys = await wasm_call(nc, "calls.shop", "keys carts")
    deleted = await wasm_call(nc, "calls.shop", "del carts alice")
    missing = await wasm_call(nc, "calls.shop", "get carts alice")
    bad_bucket = await wasm_call(nc, "calls.shop", "get my_carts alice")
    bad_pointer = await wasm_call(nc, "calls.shop", "badptr carts bob")
    oput = await wasm_call(nc, "calls.shop", "oput images logo.svg <svg/>")
    oget = await wasm_call(nc, "calls.shop", "oget images logo.svg")
    olist = await wasm_call(nc, "calls.shop", "olist images")
    odel = await wasm_call(nc, "calls.shop", "odel images logo.svg")
    olist_after = await wasm_call(nc, "calls.shop", "olist images")
    # The same bucket as JavaScript's nex.kv("carts") in the namespace.
    outside = await (await nc.jetstream().key_value(kv_bucket("shop", "carts"))).get("bob")

    assert put == deleted == oput == odel == "ok"
    assert got == "two apples"
    assert keys == "alice\nbob\n"
    assert missing == f"error {NEX_ERR_NOT_FOUND} no such key"
    assert bad_bucket.startswith(f"error {NEX_ERR_INVALID} invalid bucket name 'my_carts'")
    assert bad_pointer.startswith(f"error {NEX_ERR_MEMORY} kv_get: ") and "outside the module's memory" in bad_pointer
    assert oget == "<svg/>" and olist == "logo.svg\n" and olist_after == ""
    assert outside.value == b"a pear"


async def test_wasm_messaging(node: Node, nc: Client, wasm_modules: dict[str, Path]):
    published = await collect(nc, "nex.shop.orders")

    async def echo(msg):
        await msg.respond(b"echo: " + msg.data)
    await nc.subscribe("nex.shop.echo", cb=echo)
    await collect(nc, "nex.shop.silent")
    await nc.flush()
    await deploy(nc, node, function_body(wasm_modules["hostcalls"], "calls", "calls.shop"), namespace="shop")

    sent = await wasm_call(nc, "calls.shop", "pub nex.shop.orders order 7")
    outside = await wasm_call(nc, "calls.shop", "pub nex.other.orders order 8")
    answered = await wasm_call(nc, "calls.shop", "req nex.shop.echo ping 2000")
    nobody = await wasm_call(nc, "calls.shop", "req nex.shop.nobody ping 2000")
    silent = await wasm_call(nc, "calls.shop", "req nex.shop.silent ping 300")

    assert sent == "ok"
    await eventually(lambda: [msg.data for msg in published] == [b"order 7"])
    assert outside.startswith(f"error {NEX_ERR_DENIED} nex.other.orders is outside the function's subjects")
    assert answered == "echo: ping"
    assert nobody == f"error {NEX_ERR_UNAVAILABLE} request: no responders on nex.shop.nobody"
    assert silent == f"error {NEX_ERR_TIMEOUT} request: no reply on nex.shop.silent within 300 ms"


async def test_wasm_http(node: Node, nc: Client, wasm_modules: dict[str, Path], http_url: str):
    await deploy(nc, node, function_body(wasm_modules["hostcalls"], "calls", "calls.shop"), namespace="shop")

    got = await wasm_call(nc, "calls.shop", f"http GET {http_url}/hello")
    posted = await wasm_call(nc, "calls.shop", f"http POST {http_url}/echo a parcel")
    refused = await wasm_call(nc, "calls.shop", f"http DELETE {http_url}/echo")

    assert got == "200 hello from http"
    assert posted == "201 got a parcel"
    assert refused.startswith(f"error {NEX_ERR_DENIED} http: the node does not allow DELETE")


async def test_the_wasm_counter_example_of_the_docs(node: Node, nc: Client, wasm_modules: dict[str, Path]):
    counts = await collect(nc, "nex.shop.counted")
    await nc.flush()
    await deploy(nc, node, function_body(wasm_modules["counter"], "counter", "shop.count",
                                         env={"NOTIFY": "nex.shop.counted"}), namespace="shop")

    replies = [(await request(nc, "shop.count", b"visits")).data for _ in range(3)]

    assert replies == [b"1", b"2", b"3"]
    await eventually(lambda: [msg.data for msg in counts] == [b"1", b"2", b"3"])


# -- the rules, without a server --

def test_subject_matching_and_host_allow_list():
    assert subject_matches("nex.a.>", "nex.a.b.c") and not subject_matches("nex.a.>", "nex.a")
    assert subject_matches("orders.*", "orders.new") and not subject_matches("orders.*", "orders.new.x")
    assert host_allowed("api.example.com", ["*.example.com"]) and not host_allowed("example.com", ["*.example.com"])
    assert host_allowed("EXAMPLE.org", ["example.org"]) and not host_allowed("evil-example.org", ["example.org"])
    assert not host_allowed("badexample.com", ["*.example.com"])


def test_the_node_config_checks_its_http_allow_lists(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text('http_allow_hosts = ["API.example.com", "*.internal.example.com"]\nhttp_allow_methods = ["get"]\n')
    loaded = load_config(config, {})
    config.write_text('http_allow_methods = ["GET", "PATCH"]\n')
    with pytest.raises(ConfigError) as bad_method:
        load_config(config, {})
    config.write_text('http_allow_hosts = ["http://example.com/"]\n')
    with pytest.raises(ConfigError) as bad_host:
        load_config(config, {})

    assert loaded.http_allow_hosts == ["api.example.com", "*.internal.example.com"]
    assert loaded.http_allow_methods == ["GET"]
    assert NodeConfig().http_allow_hosts == []  # no HTTP unless the operator allows a host
    assert "not PATCH" in str(bad_method.value)
    assert "invalid HTTP host 'http://example.com/'" in str(bad_host.value)
