"""WebAssembly functions through WasmRuntime, against a real nats-server, a real agent and wasmtime.

The modules are built here: tests/wasm/fn.c with clang for wasm32-wasi (Debian's
clang, lld, wasi-libc and libclang-rt-14-dev-wasm32; see WASM_DEBS in the
Makefile), and small WAT texts with wasmtime's own assembler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest
import wasmtime
from nats.aio.client import Client
from nats.errors import NoRespondersError

from helpers import build_wasm, control, file_artifact, function_error, request
from nex.agent import protocol
from nex.agent.protocol import ENV_CACHE_DIR, ENV_CONNECT, ENV_NODE_ID, HostSettings
from nex.api import subjects
from nex.api.errors import BadArtifact
from nex.api.events import CloudEvent
from nex.api.models import Lifecycle, Limits, Trigger, WorkloadType
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.runtimes.agent_process import AgentProcess
from nex.runtimes.base import Handle, RuntimeContext, WorkloadSpec
from nex.runtimes.wasm import WasmRuntime

NAMESPACE = "default"
SOURCES = Path(__file__).parent / "wasm"

# A library module: it exports a function but no _start.
REACTOR_WAT = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
# It imports something WASI preview 1 does not have.
FOREIGN_IMPORT_WAT = '(module (import "env" "launch_missiles" (func)) (func (export "_start") call 0))'

Deploy = Callable[..., Awaitable[tuple[Handle, str]]]


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fn.wasm from tests/wasm/fn.c, and the WAT modules, built once."""
    out = tmp_path_factory.mktemp("wasm")
    built = {"fn": build_wasm(SOURCES / "fn.c", out / "fn.wasm")}
    for name, text in (("reactor", REACTOR_WAT), ("foreign", FOREIGN_IMPORT_WAT)):
        built[name] = out / f"{name}.wasm"
        built[name].write_bytes(wasmtime.wat2wasm(text))
    built["garbage"] = out / "garbage.wasm"
    built["garbage"].write_bytes(b"\0asm\x01\0\0\0this is no section")
    return built


def make_runtime(connect_options: ConnectOptions, state_dir: Path) -> WasmRuntime:
    return WasmRuntime(RuntimeContext(node_id="NTEST", state_dir=state_dir, connect_options=connect_options,
                                      host_settings=HostSettings(live_call_events=True)))


@pytest.fixture
async def runtime(connect_options: ConnectOptions, tmp_path: Path):
    rt = make_runtime(connect_options, tmp_path / "state")
    yield rt
    await rt.close()


def make_spec(module: Path, *, name: str = "fn", subject: str | None = None, timeout_ms: int | None = None,
              memory_mib: int | None = None, env: dict[str, str] | None = None) -> WorkloadSpec:
    workload_id = uuid.uuid4().hex
    return WorkloadSpec(
        id=workload_id, name=name, namespace=NAMESPACE, type=WorkloadType.WASM, lifecycle=Lifecycle.FUNCTION,
        artifact_path=module, work_dir=module.parent, env=env or {},
        triggers=[Trigger(subject=subject or f"wasm.{workload_id}")],
        limits=Limits(timeout_ms=timeout_ms, memory_mib=memory_mib),
    )


@pytest.fixture
def deploy(runtime: WasmRuntime, modules: dict[str, Path]) -> Deploy:
    async def deploy(module: str = "fn", **options: object) -> tuple[Handle, str]:
        spec = make_spec(modules[module], **options)  # type: ignore[arg-type]
        await runtime.prepare(spec)
        handle = await runtime.start(spec, lambda stream, line: None)
        return handle, spec.triggers[0].subject
    return deploy


def test_runtime_declares_what_it_runs(runtime: WasmRuntime):
    assert runtime.capabilities.lifecycles == frozenset({Lifecycle.FUNCTION})
    assert runtime.capabilities.invocable


async def test_reply_is_stdout_of_the_payload(deploy: Deploy, nc: Client):
    _, subject = await deploy()
    reply = await request(nc, subject, b"hello wasm")
    assert reply.data == b"HELLO WASM" and not reply.headers
    assert (await request(nc, subject)).data == b""


async def test_argv_is_name_and_subject_and_env_is_the_deploy_requests(deploy: Deploy, nc: Client):
    _, subject = await deploy(name="shouter", env={"GREETING": "bonjour"})
    assert (await request(nc, subject, b"argv")).data == f"2 shouter {subject}".encode()
    assert (await request(nc, subject, b"env GREETING")).data == b"bonjour"
    assert (await request(nc, subject, b"env PATH")).data == b"(unset)"


async def test_stderr_lines_go_to_the_log_feed(deploy: Deploy, nc: Client):
    handle, subject = await deploy()
    logs = await nc.subscribe(subjects.logs(NAMESPACE, handle.workload_id, "stderr"))
    assert (await request(nc, subject, b"log")).data == b"logged"
    lines = [(await logs.next_msg(timeout=5)).data for _ in range(3)]
    assert lines == [b"first line", b"second line", b"no newline at the end"]


async def test_trap_is_an_error_reply_and_the_function_keeps_answering(deploy: Deploy, nc: Client):
    handle, subject = await deploy()
    failed_events = await nc.subscribe(subjects.events(NAMESPACE, "function_failed"))
    error = function_error(await request(nc, subject, b"trap"))
    after = await request(nc, subject, b"still here")
    event = CloudEvent.model_validate_json((await failed_events.next_msg(timeout=5)).data)

    assert error.kind == "error" and "unreachable" in error.message
    assert after.data == b"STILL HERE" and not after.headers
    assert event.data["workload_id"] == handle.workload_id and event.data["kind"] == "error"


async def test_non_zero_exit_is_an_error_with_the_code(deploy: Deploy, nc: Client):
    _, subject = await deploy()
    error = function_error(await request(nc, subject, b"exit"))
    assert (error.kind, error.message) == ("exit", "exited with code 3")
    assert (await request(nc, subject, b"ok")).data == b"OK"


async def test_function_invoked_event(deploy: Deploy, nc: Client):
    handle, subject = await deploy(name="evented")
    events = await nc.subscribe(subjects.events(NAMESPACE, "function_invoked"))
    await request(nc, subject, b"x")
    event = CloudEvent.model_validate_json((await events.next_msg(timeout=5)).data)
    assert (event.subject, event.data["name"], event.data["subject"]) == (handle.workload_id, "evented", subject)


async def test_timeout_does_not_block_other_functions(deploy: Deploy, nc: Client):
    _, looping = await deploy(name="loop", timeout_ms=200)
    _, other = await deploy(name="other")
    started = time.monotonic()
    stuck = asyncio.create_task(request(nc, looping, b"loop"))
    answered_meanwhile = 0
    while not stuck.done():
        assert (await request(nc, other, b"other", timeout=1)).data == b"OTHER"
        answered_meanwhile += 1
    elapsed = time.monotonic() - started
    error = function_error(await stuck)

    assert (error.kind, error.message) == ("timeout", "timed out: ran longer than 200 ms")
    assert 0.2 <= elapsed < 2
    assert answered_meanwhile >= 3
    assert (await request(nc, looping, b"ok")).data == b"OK"


async def test_memory_hog_is_out_of_memory_and_the_function_keeps_answering(deploy: Deploy, nc: Client):
    _, subject = await deploy(memory_mib=4)
    errors = [function_error(await request(nc, subject, b"hog")) for _ in range(2)]
    assert [e.kind for e in errors] == ["out_of_memory"] * 2
    assert "the limit is 4194304 bytes" in errors[0].message
    assert (await request(nc, subject, b"fine")).data == b"FINE"


@pytest.mark.parametrize("module, words", [
    ("garbage", "the module does not compile"),
    ("reactor", "exports no _start function: it is not a WASI command"),
    ("foreign", "cannot be linked"),
])
async def test_a_module_that_cannot_run_is_refused_at_start(runtime: WasmRuntime, modules: dict[str, Path],
                                                            module: str, words: str):
    spec = make_spec(modules[module])
    await runtime.prepare(spec)
    with pytest.raises(BadArtifact) as raised:
        await runtime.start(spec, lambda stream, line: None)
    assert words in str(raised.value)


async def test_prepare_refuses_what_is_not_a_module_or_a_component(runtime: WasmRuntime, tmp_path: Path):
    script = tmp_path / "hello.wasm"
    script.write_text("(subject, payload) => 'not wasm'")
    future = tmp_path / "future.wasm"
    future.write_bytes(b"\0asm\x0e\x00\x01\x00")
    component = tmp_path / "component.wasm"
    component.write_bytes(b"\0asm\x0d\x00\x01\x00")
    with pytest.raises(BadArtifact) as not_wasm:
        await runtime.prepare(make_spec(script))
    with pytest.raises(BadArtifact) as unknown_version:
        await runtime.prepare(make_spec(future))
    await runtime.prepare(make_spec(component))  # a component: its header passes
    with pytest.raises(BadArtifact) as empty_component:
        await runtime.start(make_spec(component), lambda stream, line: None)
    assert "not a WebAssembly module" in str(not_wasm.value)
    assert "a version this node cannot run (0e000100)" in str(unknown_version.value)
    assert "the component exports no function handle" in str(empty_component.value)


async def upper_case_once(connect_options: ConnectOptions, state_dir: Path, module: Path, nc: Client,
                          word: bytes) -> bytes:
    """Start a runtime (and its agent) on ``state_dir``, call a function of ``module`` once, close it all."""
    runtime = make_runtime(connect_options, state_dir)
    spec = make_spec(module)
    try:
        await runtime.start(spec, lambda stream, line: None)
        return (await request(nc, spec.triggers[0].subject, word)).data
    finally:
        await runtime.close()


async def test_a_second_runtime_loads_the_compiled_module_from_the_cache(
        connect_options: ConnectOptions, modules: dict[str, Path], tmp_path: Path, nc: Client,
        caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="nex.runtimes.agent_process")
    state_dir = tmp_path / "node-state"
    assert await upper_case_once(connect_options, state_dir, modules["fn"], nc, b"one") == b"ONE"
    cache_dir = make_runtime(connect_options, state_dir).cache_dir
    cached = list(cache_dir.glob(f"{file_artifact(modules['fn'])['sha256']}-wasmtime-*.cwasm"))
    assert len(cached) == 1
    written_at = cached[0].stat().st_mtime_ns

    assert await upper_case_once(connect_options, state_dir, modules["fn"], nc, b"two") == b"TWO"
    agent_lines = [r.getMessage() for r in caplog.records if r.name == "nex.runtimes.agent_process"]

    assert sum("compiled in" in line for line in agent_lines) == 1
    assert sum("loaded compiled from the cache" in line for line in agent_lines) == 1
    assert cached[0].stat().st_mtime_ns == written_at


async def test_copies_share_their_queue_group(runtime: WasmRuntime, deploy: Deploy, nc: Client):
    shared = f"shared.{uuid.uuid4().hex}"
    first, _ = await deploy(name="twin", subject=shared, env={"WHO": "first"})
    second, _ = await deploy(name="twin", subject=shared, env={"WHO": "second"})
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    for _ in range(40):
        await nc.publish(shared, b"env WHO", reply=inbox)
    answered = [(await replies.next_msg(timeout=5)).data for _ in range(40)]
    stats = await runtime.stats()

    assert set(answered) == {b"first", b"second"}
    assert stats[first.workload_id].invocations + stats[second.workload_id].invocations == 40


async def test_devrun_through_the_node(node, nc: Client, modules: dict[str, Path], tmp_path: Path):
    """As `nex devrun fn.wasm --trigger S` does it: type guessed, uploaded, deployed through the control API."""
    module = tmp_path / "shout.wasm"
    shutil.copy(modules["fn"], module)
    client = NexClient(nc)
    summary = await client.devrun(module, triggers=["demo.shout"], env={"WHO": "node"})
    reply = await client.invoke("demo.shout", b"env WHO")
    code, refused = await control(nc, "DEPLOY", node.node_id, {
        "name": "reactor", "type": "wasm", "triggers": [{"subject": "demo.reactor"}],
        "artifact": file_artifact(modules["reactor"])})
    undeploy_code, _ = await control(nc, "UNDEPLOY", summary.id)

    assert (summary.type, summary.lifecycle, summary.state.value) == (WorkloadType.WASM, Lifecycle.FUNCTION,
                                                                       "running")
    assert reply == b"node"
    assert code == 400 and "not a WASI command" in refused["error"]["message"]
    assert undeploy_code is None
    with pytest.raises(NoRespondersError):
        await request(nc, "demo.shout")
    assert json.loads((await nc.request(subjects.control(NAMESPACE, "PING"), b"{}", timeout=5)).data)["node_id"]


async def test_agent_exits_cleanly_on_eof_even_with_a_call_stuck(connect_options: ConnectOptions,
                                                                 modules: dict[str, Path], nc: Client,
                                                                 tmp_path: Path):
    env = {**os.environ, ENV_CONNECT: connect_options.to_json(), ENV_NODE_ID: "NTEST",
           ENV_CACHE_DIR: str(tmp_path / "cache")}
    agent = await AgentProcess.start([sys.executable, "-m", "nex.agent.wasm"], env,
                                     name="wasm agent", ready_timeout=15)
    load = protocol.Load(workload_id="stuck", name="stuck", namespace=NAMESPACE,
                         artifact_path=str(modules["fn"]), artifact_sha256=file_artifact(modules["fn"])["sha256"],
                         triggers=[protocol.TriggerSubscription(subject="stuck.wasm", queue="q")],
                         timeout_ms=60_000, memory_bytes=16 * 1024 * 1024)
    assert (await agent.request(load)).ok
    await nc.publish("stuck.wasm", b"loop")
    await nc.flush()
    started = time.monotonic()
    returncode = await agent.stop(grace=10)

    assert returncode == 0
    assert time.monotonic() - started < 5


def test_a_late_ticker_owes_its_ticks_to_a_deadline_set_meanwhile():
    """A deadline set while the ticker thread is late (a busy host) counts the ticks it has not
    added yet: its catch-up would otherwise end the call early (a 200 ms limit at 198 ms)."""
    from nex.agent.wasm.epoch import EpochTicker

    ticker = EpochTicker(wasmtime.Engine(wasmtime.Config()), 0.01)
    ticker.begin()  # a call runs
    ticker.stop()  # as late as a thread can be: it adds nothing from now on
    owed = [ticker.lag()]
    deadline = time.monotonic() + 2
    while owed[-1] < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
        owed.append(ticker.lag())
    assert owed[-1] >= 5 and owed == sorted(owed), owed


def _ticker_wakeups() -> int:
    """Voluntary context switches of this process's epoch ticker thread: one per wake-up."""
    import threading

    [thread] = [t for t in threading.enumerate() if t.name == "wasm epoch ticker"]
    for line in Path(f"/proc/self/task/{thread.native_id}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no context switch count")


def test_the_epoch_ticker_sleeps_while_no_call_runs():
    """An idle wasm agent (started with the node, before any function) costs no CPU: its ticker
    thread wakes 100 times a second only while a call runs."""
    from nex.agent.wasm.epoch import EpochTicker

    ticker = EpochTicker(wasmtime.Engine(wasmtime.Config()), 0.01)
    try:
        time.sleep(0.05)
        idle = _ticker_wakeups()
        time.sleep(0.5)
        assert _ticker_wakeups() - idle <= 2, "woke with no call running"

        ticker.begin()
        running = _ticker_wakeups()
        time.sleep(0.3)
        ticker.end()
        assert _ticker_wakeups() - running >= 10, "a running call's deadline needs the ticks"

        time.sleep(0.05)
        quiet = _ticker_wakeups()
        time.sleep(0.5)
        assert _ticker_wakeups() - quiet <= 2, "the last call ended: asleep again"
    finally:
        ticker.stop()

