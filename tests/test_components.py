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
from pathlib import Path

import pytest
from nats.aio.client import Client

from helpers import (ARTIFACT_ROOTS, assemble, build_component, collect, control, deploy, eventually,
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


async def test_the_instance_is_kept_between_calls_and_made_again_after_a_failure(
        node: Node, nc: Client, components: dict[str, Path]):
    await deploy(nc, node, function_body(components["probe"], "probe", "probe.kept",
                                         limits={"timeout_ms": 300, "memory_mib": 4}))
    counts = [await call(nc, "probe.kept", "count") for _ in range(3)]
    refused = await request(nc, "probe.kept", b"error out of stock")
    after_error = await call(nc, "probe.kept", "count")  # an error result is no failure: same instance
    trapped = function_error(await request(nc, "probe.kept", b"trap"))
    after_trap = await call(nc, "probe.kept", "count")
    timed_out = function_error(await request(nc, "probe.kept", b"loop"))
    after_timeout = await call(nc, "probe.kept", "count")
    out_of_memory = function_error(await request(nc, "probe.kept", b"grow"))
    after_oom = await call(nc, "probe.kept", "count")
    await call(nc, "probe.kept", "count")
    said_oom = function_error(await request(nc, "probe.kept", b"error out of memory: a MemoryError"))
    after_said_oom = await call(nc, "probe.kept", "count")
    # A keyless client's payload larger than what the function may hold: the host cannot even pass it in.
    await deploy(nc, node, function_body(components["probe"], "small", "probe.small", limits={"memory_mib": 1}))
    too_big = function_error(await request(nc, "probe.small", b"x" * (1000 * 1024)))
    after_too_big = await call(nc, "probe.small", "hello")

    assert counts == ["1", "2", "3"]
    refusal = function_error(refused)
    assert (refusal.kind, refusal.message) == ("error", "out of stock")
    assert after_error == "5"
    assert trapped.kind == "error" and "unreachable" in trapped.message and "handle" in trapped.message
    assert (timed_out.kind, timed_out.message) == ("timeout", "timed out: ran longer than 300 ms")
    assert out_of_memory.kind == "out_of_memory" and "the limit is 4194304 bytes" in out_of_memory.message
    assert too_big.kind == "out_of_memory"
    assert (said_oom.kind, said_oom.message) == ("out_of_memory", "out of memory: a MemoryError")
    assert after_trap == after_timeout == after_oom == after_said_oom == "1"  # each a new instance
    assert after_too_big == "HELLO"


class Gate:
    """A responder that holds every request until opened."""

    def __init__(self, nc: Client, subject: str) -> None:
        self.nc, self.subject = nc, subject
        self.waiting: list = []
        self._open = asyncio.Event()
        self._held: set[asyncio.Task] = set()

    async def start(self) -> Gate:
        async def hold(msg):
            self.waiting.append(msg)
            await self._open.wait()
            await msg.respond(b"passed")
        async def on_msg(msg):
            self._held.add(asyncio.create_task(hold(msg)))
        await self.nc.subscribe(self.subject, cb=on_msg)
        await flush_subscriptions(self.nc)
        return self

    def open(self) -> None:
        self._open.set()


async def test_max_concurrency_runs_calls_at_once_each_on_an_instance_of_its_own(
        node: Node, nc: Client, components: dict[str, Path]):
    gate = await Gate(nc, "nex.default.gate").start()
    await deploy(nc, node, function_body(components["probe"], "probe", "probe.busy",
                                         limits={"timeout_ms": 20_000, "max_concurrency": 2}))
    calls = [asyncio.create_task(request(nc, "probe.busy", b"req nex.default.gate x 15000", timeout=25))
             for _ in range(3)]
    await eventually(lambda: len(gate.waiting) == 2 and sum(c.done() for c in calls) == 1, timeout=15)
    refused = [c.result() for c in calls if c.done()]
    pending = [c for c in calls if not c.done()]
    gate.open()
    answered = [(await c).data for c in pending]
    counts = sorted([await call(nc, "probe.busy", "count"), await call(nc, "probe.busy", "count")])

    assert refused[0].headers["Nats-Service-Error-Code"] == "429"
    assert answered == [b"passed", b"passed"]
    assert counts[-1] in ("2", "3")  # instances kept: each has answered a call already


# -- the compiled cache: a foreign or corrupt entry is never loaded --

def _cache(directory: Path):
    import wasmtime

    from nex.agent.wasm.module_cache import ModuleCache

    return ModuleCache(wasmtime.Engine(), directory)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_cache_loads_what_it_wrote(components: dict[str, Path], tmp_path: Path):
    probe = components["probe"]
    _cache(tmp_path / "cache").component(probe, _sha(probe))
    again = _cache(tmp_path / "cache")
    again.component(probe, _sha(probe))
    assert (again.loaded, again.compiled, again.refused) == (1, 0, 0)


@pytest.mark.parametrize("tampering", ["raw wasmtime output", "another cache's entry", "another artifact's entry",
                                       "a flipped byte", "truncated"])
def test_a_foreign_or_corrupt_entry_is_compiled_again_never_loaded(
        components: dict[str, Path], tmp_path: Path, tampering: str):
    """The attack: native code planted in the cache under the name of a function's artifact. Here the
    planted code is echo's, so loading it would answer the probe's calls with echo's replies."""
    import wasmtime
    from wasmtime import component

    probe, echo = components["probe"], components["echo"]
    cache = _cache(tmp_path / "cache")
    cache.component(probe, _sha(probe))
    entry = cache.path_for(_sha(probe))
    assert entry is not None
    if tampering == "raw wasmtime output":
        entry.write_bytes(component.Component.from_file(wasmtime.Engine(), str(echo)).serialize())
    elif tampering == "another cache's entry":
        other = _cache(tmp_path / "other")
        other.component(echo, _sha(echo))
        entry.write_bytes(other.path_for(_sha(echo)).read_bytes())  # type: ignore[union-attr]
    elif tampering == "another artifact's entry":
        cache.component(echo, _sha(echo))
        entry.write_bytes(cache.path_for(_sha(echo)).read_bytes())  # type: ignore[union-attr]
    elif tampering == "a flipped byte":
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0x01
        entry.write_bytes(bytes(data))
    else:
        entry.write_bytes(entry.read_bytes()[:1000])

    again = _cache(tmp_path / "cache")
    loaded = again.component(probe, _sha(probe))
    reloaded = _cache(tmp_path / "cache")
    reloaded.component(probe, _sha(probe))

    assert (again.loaded, again.compiled, again.refused) == (0, 1, 1)
    assert (reloaded.loaded, reloaded.refused) == (1, 0)  # the entry was replaced by a good one
    assert "nex:host/kv@0.1.0" in loaded.type.imports(wasmtime.Engine())  # the probe's, not echo's


def test_a_cache_directory_another_user_may_write_is_not_used(components: dict[str, Path], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cache = _cache(shared)
    cache.component(components["echo"], _sha(components["echo"]))
    assert cache.directory is None and cache.compiled == 1
    assert not list(shared.iterdir())
    assert "not private to this user" in caplog.text


def test_the_functions_of_one_artifact_share_its_compiled_code(components: dict[str, Path], tmp_path: Path):
    """Copies of a function load its component once between them, even when they load at once;
    once none holds it, the next load reads it from the disk again."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    probe = components["probe"]
    cache = _cache(tmp_path / "cache")
    with ThreadPoolExecutor(4) as pool:
        held = list(pool.map(lambda _: cache.component(probe, _sha(probe)), range(4)))
    assert all(compiled is held[0] for compiled in held)
    assert (cache.compiled, cache.loaded, cache.shared) == (1, 0, 3)

    del held
    gc.collect()
    cache.component(probe, _sha(probe))
    assert (cache.compiled, cache.loaded) == (1, 1)


async def test_bytes_cross_unchanged_both_ways(node: Node, nc: Client, components: dict[str, Path]):
    """Every byte value, in a payload of 256 KiB, through echo.wat and back (the payload and the
    reply are passed as a whole, not byte by byte: nex.agent.wasm.component_values)."""
    await deploy(nc, node, function_body(components["echo"], "echo", "echo.bytes"))
    payload = bytes(range(256)) * 1024
    assert (await request(nc, "echo.bytes", payload, timeout=20)).data == payload
    assert (await request(nc, "echo.bytes", b"")).data == b""


OTHER_WORLDS = [
    ("(component)", "the component exports no function handle: it is not of the world nex:function/function"),
    ('''(component
         (core module $m (func (export "h") (param i32) (result i32) local.get 0))
         (core instance $i (instantiate $m))
         (func (export "handle") (param "n" u32) (result u32) (canon lift (core func $i "h"))))''',
     "the component's handle is not the one of the world nex:function/function"),
    ('(component (import "acme:missiles/launch@1.0.0" (instance (export "fire" (func)))))',
     "the component cannot be linked (WASI 0.2 and the nex:host interfaces are all it may import)"),
    # A start function that never returns: bounded by the function's time limit, as its calls are.
    ('(component (core module $m (func $forever (loop (br 0))) (start $forever)) (core instance (instantiate $m)))',
     "cannot instantiate the component: its start-up ran longer than 300 ms"),
]


async def test_a_component_of_another_world_is_refused_at_deploy(node: Node, nc: Client, tmp_path: Path):
    refusals = []
    for number, (text, _) in enumerate(OTHER_WORLDS):
        source = tmp_path / f"other{number}.wat"
        source.write_text(text)
        component = assemble(source, tmp_path / f"other{number}.wasm")
        refusals.append(await control(nc, "DEPLOY", node.node_id, function_body(
            component, "other", "other.world", limits={"timeout_ms": 300})))
    for (code, refused), (_, words) in zip(refusals, OTHER_WORLDS):
        assert code == 400 and words in refused["error"]["message"], refused


def test_host_errors_reach_the_component_from_threads_at_once(components: dict[str, Path]):
    """The errors of nex:host calls, from four threads at once, each with its own instance (as with
    max_concurrency): wasmtime-py 51 alone could not return the err of kv.get at all, and chose the
    cases of a result by a set shared by every thread (nex.agent.wasm.component_values). Without
    host services (an agent not connected to NATS) every call is an ``unavailable`` error."""
    from nex.agent import protocol
    from nex.agent.wasm.wasmtime_engine import WasmEngine

    engine = WasmEngine(None)
    load = protocol.Load(workload_id="w", name="probe", namespace="default", artifact_path=str(components["probe"]),
                         triggers=[], timeout_ms=5000, memory_bytes=16 * 1024 * 1024)
    sandbox = engine.build(load)
    answers: list[bytes] = []

    def calls() -> None:
        for command in [b"get b k", b"keys b", b"del b k", b"olist b"] * 50:
            outcome = sandbox.invoke("probe.threads", command)
            answers.append(outcome.data if outcome.error is None else outcome.error.message.encode())
    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sandbox.close()
    engine.close()

    assert len(answers) == 800
    assert set(answers) == {b"error unavailable this agent has no host services (it is not connected to NATS)"}


async def test_a_component_is_compiled_once_per_digest_through_the_node(
        node: Node, nc: Client, components: dict[str, Path], caplog: pytest.LogCaptureFixture):
    import logging

    caplog.set_level(logging.INFO, logger="nex.runtimes.agent_process")
    sha = hashlib.sha256(components["echo"].read_bytes()).hexdigest()
    await deploy(nc, node, function_body(components["echo"], "first", "echo.first"))
    await deploy(nc, node, function_body(components["echo"], "second", "echo.second"))
    replies = [(await request(nc, subject, b"same code")).data for subject in ("echo.first", "echo.second")]
    lines = [r.getMessage() for r in caplog.records if r.name == "nex.runtimes.agent_process" and sha in r.getMessage()]

    assert replies == [b"same code", b"same code"]
    assert sum(f"component {sha} compiled in" in line for line in lines) == 1, lines
    assert sum(f"component {sha} shared with the other functions that run it" in line for line in lines) == 1, lines
