"""max_concurrency, 429 backpressure and the warm Wasm pool: a real node, real agents, real engines.

The slow calls are held at a gate, not timed: the function makes a host request on a
subject the test answers only when it lets the calls go on (tests/wasm/slow.c, and
GATE_JS below). So "two calls in progress, four refused" is a state the test waits
for, not a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from helpers import build_wasm, collect, control, deploy, eventually, file_artifact, function_body, nex
from nex.agent import protocol
from nex.agent.wasm.wasmtime_engine import WARM_INSTANCES, WasmEngine
from nex.api import subjects
from nex.api.errors import TooManyRequests, error_code, from_reply
from nex.api.events import CloudEvent
from nex.client import NexClient
from nex.connection import flush_subscriptions
from nex.node.node import Node

NAMESPACE = "default"
SOURCES = Path(__file__).parent / "wasm"

# Replies with the answer of a request on env.GATE: the call lasts until the test answers.
GATE_JS = """
async (subject, payload) => {
  const answer = await nex.request(env.GATE, new TextDecoder().decode(payload), { timeout: 20000 });
  return answer.text();
}
"""


@pytest.fixture(scope="session")
def slow_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wasm(SOURCES / "slow.c", tmp_path_factory.mktemp("slow") / "slow.wasm")


@pytest.fixture(scope="session")
def echo_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/wasm/fn.c: no host imports, so it links without a NATS connection."""
    return build_wasm(SOURCES / "fn.c", tmp_path_factory.mktemp("echo") / "fn.wasm")


@pytest.fixture
def gate_js(tmp_path: Path) -> Path:
    script = tmp_path / "gate.js"
    script.write_text(GATE_JS)
    return script


class Gate:
    """The subject the slow calls wait on: it records their requests and answers them once opened."""

    def __init__(self, nc: Client, subject: str) -> None:
        self.subject = subject
        self.waiting: list[str] = []
        self._nc = nc
        self._open = asyncio.Event()
        self._answering: set[asyncio.Task] = set()

    async def start(self) -> Gate:
        await self._nc.subscribe(self.subject, cb=self._on_request)
        await flush_subscriptions(self._nc)
        return self

    def open(self) -> None:
        self._open.set()

    async def _on_request(self, msg) -> None:
        self.waiting.append(msg.data.decode())
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg) -> None:
        await self._open.wait()
        await msg.respond(f"passed {msg.data.decode()}".encode())


def busy(artifact: Path, subject: str, *, max_concurrency: int | None, env: dict[str, str] | None = None,
         timeout_ms: int = 30_000) -> dict:
    """The function at ``artifact`` (JavaScript or Wasm) as ``busy-<engine>``, with these limits."""
    limits: dict = {"timeout_ms": timeout_ms}
    if max_concurrency is not None:
        limits["max_concurrency"] = max_concurrency
    kind = "wasm" if artifact.suffix == ".wasm" else "javascript"
    return function_body(artifact, f"busy-{kind}", subject, env=env or {}, limits=limits)


async def timed_request(nc: Client, subject: str, payload: bytes) -> tuple[float, object]:
    """(seconds until the reply, the reply)."""
    started = time.monotonic()
    msg = await nc.request(subject, payload, timeout=25)
    return time.monotonic() - started, msg


async def workload_summary(nc: Client, workload_id: str) -> dict:
    """The workload as WPING (and `nex workload info`) shows it."""
    code, ping = await control(nc, "WPING", workload_id)
    assert code is None, ping
    return ping["workloads"][0]


@pytest.mark.parametrize("language", ["javascript", "wasm"])
async def test_calls_past_max_concurrency_are_refused_at_once_with_429(
        language: str, node: Node, nc: Client, gate_js: Path, slow_wasm: Path):
    gate = await Gate(nc, f"nex.{NAMESPACE}.gate.{language}").start()
    artifact = gate_js if language == "javascript" else slow_wasm
    summary = await deploy(nc, node, busy(artifact, f"busy.{language}", max_concurrency=2, env={"GATE": gate.subject}))
    failed = await collect(nc, subjects.events(NAMESPACE, "function_failed"))
    await flush_subscriptions(nc)
    payload = b"gate call" if language == "wasm" else b"call"

    calls = [asyncio.create_task(timed_request(nc, f"busy.{language}", payload)) for _ in range(6)]
    # Four refusals come back while the two admitted calls are still held at the gate: wasm
    # runs both (two requests at the gate), JavaScript one, the other queued behind it.
    await eventually(lambda: sum(call.done() for call in calls) == 4, timeout=15)
    await eventually(lambda: len(gate.waiting) == (2 if language == "wasm" else 1), timeout=15)
    refused = [call.result() for call in calls if call.done()]
    pending = [call for call in calls if not call.done()]
    held_at_gate = list(gate.waiting)
    gate.open()
    answered = [await call for call in pending]
    after = await nc.request(f"busy.{language}", payload, timeout=25)

    assert all(error_code(msg.headers) == 429 for _, msg in refused)
    errors = [from_reply(msg.data, msg.headers) for _, msg in refused]
    assert all(isinstance(error, TooManyRequests) for error in errors)
    assert "'busy-" in errors[0].message and "limit of 2 concurrent calls" in errors[0].message
    # Refused long before any call could end: the admitted ones were still waiting at the gate.
    assert all(seconds < 10 for seconds, _ in refused)
    assert len(held_at_gate) == (2 if language == "wasm" else 1)
    assert len(answered) == 2
    assert all(error_code(msg.headers) is None and msg.data.startswith(b"passed") for _, msg in answered)
    assert error_code(after.headers) is None and after.data.startswith(b"passed")

    def overloaded_events() -> list[CloudEvent]:
        events = [CloudEvent.model_validate_json(m.data) for m in failed]
        return [e for e in events if e.data.get("kind") == "overloaded"]
    await eventually(lambda: len(overloaded_events()) == 4)
    overloaded = overloaded_events()
    assert overloaded[0].data["workload_id"] == summary["id"]
    assert "limit of 2" in overloaded[0].data["error"]

    async def counted():
        workload = await workload_summary(nc, summary["id"])
        return workload if workload.get("rejected") == 4 and workload.get("invocations") == 3 else None
    workload = await eventually(counted, timeout=10, interval=0.2)
    assert workload["errors"] == 0  # a refused call is not a failed one: it never ran


async def test_without_max_concurrency_calls_queue_instead_of_being_refused(node: Node, nc: Client,
                                                                           gate_js: Path):
    gate = await Gate(nc, f"nex.{NAMESPACE}.gate.queue").start()
    await deploy(nc, node, busy(gate_js, "queue.js", max_concurrency=None, env={"GATE": gate.subject}))

    calls = [asyncio.create_task(nc.request("queue.js", b"call", timeout=25)) for _ in range(5)]
    await eventually(lambda: len(gate.waiting) == 1)
    early = [call for call in calls if call.done()]
    gate.open()
    replies = await asyncio.gather(*calls)

    assert early == []
    assert all(error_code(msg.headers) is None for msg in replies)


async def test_wasm_runs_max_concurrency_calls_in_parallel(node: Node, nc: Client, slow_wasm: Path):
    await deploy(nc, node, busy(slow_wasm, "parallel.wasm", max_concurrency=4))
    await nc.request("parallel.wasm", b"sleep 1", timeout=25)  # compiled and warm

    started = time.monotonic()
    replies = await asyncio.gather(*(nc.request("parallel.wasm", b"sleep 800", timeout=25) for _ in range(4)))
    elapsed = time.monotonic() - started

    assert [msg.data for msg in replies] == [b"slept 800"] * 4
    # One after the other they take 3.2 s; side by side about one call's 0.8 s.
    assert elapsed < 2.0, f"4 calls of 0.8 s took {elapsed:.2f} s"


@pytest.mark.parametrize("max_concurrency", [None, 3])
async def test_no_state_leaks_from_one_wasm_call_to_the_next(max_concurrency: int | None, node: Node,
                                                             nc: Client, slow_wasm: Path):
    """Every call gets an instance no call has touched, also from the warm pool and after a trap."""
    await deploy(nc, node, busy(slow_wasm, "fresh.wasm", max_concurrency=max_concurrency))

    counts = []
    for _ in range(WARM_INSTANCES + 2):
        dirty = await nc.request("fresh.wasm", b"dirty", timeout=25)
        counts.append((await nc.request("fresh.wasm", b"count", timeout=25)).data)
    together = await asyncio.gather(*(nc.request("fresh.wasm", b"count", timeout=25) for _ in range(3)))

    assert error_code(dirty.headers) == 500 and "unreachable" in from_reply(dirty.data, dirty.headers).message
    assert counts == [b"1"] * (WARM_INSTANCES + 2)
    assert [msg.data for msg in together] == [b"1"] * 3


async def test_the_client_and_the_cli_report_429(node: Node, nc: Client, gate_js: Path, nats_server):
    gate = await Gate(nc, f"nex.{NAMESPACE}.gate.cli").start()
    summary = await deploy(nc, node, busy(gate_js, "single.js", max_concurrency=1, env={"GATE": gate.subject}))
    held = asyncio.create_task(nc.request("single.js", b"held", timeout=25))
    await eventually(lambda: gate.waiting == ["held"])

    client = NexClient(nc)
    with pytest.raises(TooManyRequests) as refused:
        await client.invoke("single.js", b"one more")
    code, out, err = await nex("invoke", "single.js", "from the shell", "--server", nats_server.url)
    gate.open()
    await held

    async def info_counts_two_rejected():
        info = await nex("workload", "info", summary["id"], "--server", nats_server.url)
        return info if "(0 failed, 2 rejected: busy)" in info[1] else None
    info_code, info_out, _ = await eventually(info_counts_two_rejected, timeout=30, interval=0.5)

    assert refused.value.code == 429
    assert "'busy-javascript' is busy" in refused.value.message
    assert code == 1 and out == ""
    assert info_code == 0 and "Invocations" in info_out
    assert err.startswith("nex: error: function 'busy-javascript' is busy: it already runs its limit"
                                   " of 1 concurrent call (max_concurrency)")


async def test_max_concurrency_zero_is_refused_and_nothing_is_deployed(node: Node, nc: Client, gate_js: Path):
    code, refused = await control(nc, "DEPLOY", node.node_id, body={
        "name": "zero", "type": "javascript", "artifact": file_artifact(gate_js),
        "triggers": [{"subject": "zero.js"}], "limits": {"max_concurrency": 0}})

    assert code == 400 and "limits.max_concurrency" in refused["error"]["message"]
    info_code, info = await control(nc, "INFO", node.node_id)
    assert info_code is None and all(w["name"] != "zero" for w in info["workloads"])


# -- the warm pool itself, on a real wasmtime engine in this process --

def _load(module: Path, name: str = "pooled") -> protocol.Load:
    return protocol.Load(workload_id=name, name=name, namespace=NAMESPACE, artifact_path=str(module),
                         artifact_sha256=file_artifact(module)["sha256"],
                         triggers=[protocol.TriggerSubscription(subject="pool.test", queue="q")],
                         timeout_ms=2000, memory_bytes=16 * 1024 * 1024)


async def test_the_warm_pool_is_filled_off_the_call_and_bounded(echo_wasm: Path, tmp_path: Path):
    engine = WasmEngine(tmp_path / "cache")
    sandbox = engine.build(_load(echo_wasm))
    try:
        await eventually(lambda: sandbox.warm_count() == WARM_INSTANCES)
        outcome = sandbox.invoke("pool.test", b"warm")
        cold = sandbox.cold_instances
        await eventually(lambda: sandbox.warm_count() == WARM_INSTANCES)
        for _ in range(5):
            sandbox.invoke("pool.test", b"again")
        at_most = max(sandbox.warm_count() for _ in range(50))
    finally:
        sandbox.close()
        engine.close()

    assert outcome.error is None and outcome.data == b"WARM"
    assert cold == 0  # served by an instance of the pool
    assert at_most <= WARM_INSTANCES
    assert sandbox.warm_count() == 0  # closed: nothing held


async def test_a_module_that_cannot_warm_still_reports_its_error_per_call(tmp_path: Path):
    """Initial memory over the limit: warming fails quietly, and each call says why it cannot run."""
    import wasmtime

    module = tmp_path / "big.wasm"
    module.write_bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1000) (func (export "_start")))'))
    engine = WasmEngine(tmp_path / "cache")
    sandbox = engine.build(_load(module, "big"))
    try:
        outcomes = [sandbox.invoke("pool.test", b"") for _ in range(3)]
        warm, cold = sandbox.warm_count(), sandbox.cold_instances
    finally:
        sandbox.close()
        engine.close()

    assert all(o.error is not None and o.error.kind == "out_of_memory" for o in outcomes)
    assert all("cannot instantiate the module" in o.error.message for o in outcomes)
    assert warm == 0 and cold == 3
