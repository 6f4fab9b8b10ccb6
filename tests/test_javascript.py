"""JavaScript functions through JavaScriptRuntime, against a real nats-server and a real agent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from helpers import function_error, request
from nex.agent import protocol
from nex.agent.protocol import ENV_CONNECT, ENV_NODE_ID, HostSettings
from nex.api import subjects
from nex.api.errors import ERROR_CODE_HEADER, BadArtifact
from nex.api.events import CloudEvent, FunctionStatsData
from nex.api.models import Lifecycle, Limits, Trigger, WorkloadType
from nex.connection import ConnectOptions
from nex.runtimes.agent_process import AgentProcess
from nex.runtimes.base import Handle, RuntimeContext, WorkloadSpec
from nex.runtimes.javascript import JavaScriptRuntime

NAMESPACE = "default"

Deploy = Callable[..., Awaitable[tuple[Handle, str]]]

# Live call events on, function_stats every 0.3 s: what these tests look at comes soon.
EVENTS_SOON = HostSettings(live_call_events=True, stats_interval_s=0.3)


@pytest.fixture
async def runtime(connect_options: ConnectOptions, tmp_path: Path):
    rt = JavaScriptRuntime(RuntimeContext(node_id="NTEST", state_dir=tmp_path / "state",
                                          connect_options=connect_options, host_settings=EVENTS_SOON))
    yield rt
    await rt.close()


def make_spec(tmp_path: Path, source: str | bytes, *, name: str = "fn", subject: str | None = None,
              timeout_ms: int | None = None, memory_mib: int | None = None,
              env: dict[str, str] | None = None) -> WorkloadSpec:
    workload_id = uuid.uuid4().hex
    script = tmp_path / f"{workload_id}.js"
    script.write_bytes(source if isinstance(source, bytes) else source.encode())
    return WorkloadSpec(
        id=workload_id, name=name, namespace=NAMESPACE, type=WorkloadType.JAVASCRIPT,
        lifecycle=Lifecycle.FUNCTION, artifact_path=script, work_dir=tmp_path,
        env=env or {}, triggers=[Trigger(subject=subject or f"fn.{workload_id}")],
        limits=Limits(timeout_ms=timeout_ms, memory_mib=memory_mib),
    )


@pytest.fixture
def deploy(runtime: JavaScriptRuntime, tmp_path: Path) -> Deploy:
    async def deploy(source: str, **options: object) -> tuple[Handle, str]:
        spec = make_spec(tmp_path, source, **options)  # type: ignore[arg-type]
        await runtime.prepare(spec)
        handle = await runtime.start(spec, lambda stream, line: None)
        return handle, spec.triggers[0].subject
    return deploy


async def answers_again(nc: Client, subject: str, within: float) -> Msg:
    deadline = time.monotonic() + within
    while True:
        try:
            return await request(nc, subject, timeout=0.5)
        except (NoRespondersError, NatsTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_runtime_declares_what_it_runs(runtime: JavaScriptRuntime):
    assert runtime.capabilities.lifecycles == frozenset({Lifecycle.FUNCTION})
    assert runtime.capabilities.invocable


async def test_string_result_and_env(deploy: Deploy, nc: Client):
    _, subject = await deploy(
        "(subject, payload) => `hello ${subject} from ${env.WHO}, frozen: ${Object.isFrozen(env)}`",
        env={"WHO": "nex"})
    reply = await request(nc, subject)
    assert reply.data == f"hello {subject} from nex, frozen: true".encode()
    assert not reply.headers


async def test_bytes_round_trip(deploy: Deploy, nc: Client):
    _, subject = await deploy("""
        function (subject, payload) {
          const out = new Uint8Array(payload.length + 1);
          out.set(payload);
          out[payload.length] = 0;
          return out;
        }""")
    payload = bytes(range(256)) + "héllo wörld ✓".encode() + b"\x00\x00end"
    reply = await request(nc, subject, payload)
    assert reply.data == payload + b"\x00"


async def test_object_result_is_json_and_undefined_is_empty(deploy: Deploy, nc: Client):
    _, subject = await deploy("(subject, payload) => payload.length ? { subject, size: payload.length } : undefined")
    assert json.loads((await request(nc, subject, b"abc")).data) == {"subject": subject, "size": 3}
    assert (await request(nc, subject)).data == b""


async def test_async_function(deploy: Deploy, nc: Client):
    _, subject = await deploy("async (subject, payload) => { await null; return 'later' }")
    assert (await request(nc, subject)).data == b"later"


async def test_throw_is_an_error_reply_and_the_function_keeps_working(deploy: Deploy, nc: Client):
    handle, subject = await deploy("""(subject, payload) => {
      if (payload.length) throw new RangeError('too big: ' + payload.length);
      return 'fine';
    }""")
    failed_events = await nc.subscribe(subjects.events(NAMESPACE, "function_failed"))
    reply = await request(nc, subject, b"xyz")
    after = await request(nc, subject)
    event = CloudEvent.model_validate_json((await failed_events.next_msg(timeout=5)).data)

    assert reply.headers[ERROR_CODE_HEADER] == "500"
    assert json.loads(reply.data) == {"error": {"code": 500, "message": "RangeError: too big: 3 (line 2)",
                                                "kind": "error"}}
    assert after.data == b"fine" and not after.headers
    assert event.data["workload_id"] == handle.workload_id and event.data["kind"] == "error"


async def test_timeout_does_not_block_other_functions(deploy: Deploy, nc: Client):
    _, looping = await deploy("(subject, payload) => { if (payload.length) while (true) {} return 'ok' }",
                              name="loop", timeout_ms=200)
    _, other = await deploy("(subject, payload) => 'other'", name="other")
    started = time.monotonic()
    stuck = asyncio.create_task(request(nc, looping, b"spin"))
    answered_meanwhile = 0
    while not stuck.done():
        assert (await request(nc, other, timeout=1)).data == b"other"
        answered_meanwhile += 1
    elapsed = time.monotonic() - started
    error = function_error(await stuck)

    assert error.kind == "timeout"
    assert elapsed < 3
    assert answered_meanwhile >= 3
    assert (await request(nc, looping)).data == b"ok"


async def test_memory_hog_is_out_of_memory_and_the_function_keeps_working(deploy: Deploy, nc: Client):
    _, subject = await deploy("""
        const kept = [];
        (subject, payload) => {
          if (payload.length) while (true) kept.push(new Array(1000).fill(kept.length));
          return 'fine ' + kept.length;
        }""", memory_mib=8)
    errors = [function_error(await request(nc, subject, b"hog")) for _ in range(3)]
    assert [e.kind for e in errors] == ["out_of_memory"] * 3
    assert (await request(nc, subject)).data == b"fine 0"


async def test_a_map_that_outgrows_the_memory_limit_is_out_of_memory(deploy: Deploy, nc: Client):
    # The engine fails the Map's larger table with a quarter of the heap still free,
    # and throws null: no room was left for an error object.
    _, subject = await deploy("""
        const seen = new Map();
        (subject, payload) => {
          if (payload.length) while (true) seen.set('k' + seen.size, { n: seen.size });
          return 'entries ' + seen.size;
        }""", memory_mib=2)
    assert function_error(await request(nc, subject, b"grow")).kind == "out_of_memory"
    assert (await request(nc, subject)).data == b"entries 0"


# Ways to fill a heap, each run in a loop until the memory limit stops it.
HEAP_FILLERS = {
    "arrays": "kept.push(new Array(1000).fill(kept.length))",
    "strings": "kept.push('x'.repeat(1000) + kept.length)",
    "objects": "{ const o = {}; for (let i = 0; i < 100; i++) o['k' + i + kept.length] = i; kept.push(o); }",
    "promises": "kept.push(Promise.resolve(kept.length).then((n) => n))",
}


async def test_functions_running_out_of_memory_one_after_another_leave_the_agent_running(
        deploy: Deploy, nc: Client):
    # QuickJS 2021-03-27 (the `quickjs` package) crashed the agent on these within a few dozen functions.
    _, counter = await deploy("let n = 0; (subject, payload) => String(++n)")
    assert (await request(nc, counter)).data == b"1"
    for memory_mib in (1, 2, 4, 8):
        for fill in HEAP_FILLERS.values():
            _, subject = await deploy(f"""
                const kept = [];
                (subject, payload) => {{
                  if (payload.length) while (true) {fill};
                  return 'fine ' + kept.length;
                }}""", memory_mib=memory_mib)
            errors = [function_error(await request(nc, subject, b"fill")) for _ in range(2)]
            assert [e.kind for e in errors] == ["out_of_memory"] * 2
            assert (await request(nc, subject)).data == b"fine 0"
    # The first function kept its state: the agent was never restarted under it.
    assert (await request(nc, counter)).data == b"2"


async def test_a_result_nested_too_deep_to_encode_is_an_error(deploy: Deploy, nc: Client):
    _, subject = await deploy("""(subject, payload) => {
        let value = [];
        for (let i = 0; i < 100000; i++) value = [value];
        return value;
    }""")
    error = function_error(await request(nc, subject))
    assert error.kind == "error"
    assert "cannot encode the result" in error.message and "stack" in error.message


async def test_console_lines_go_to_the_logs_feed(deploy: Deploy, nc: Client):
    handle, subject = await deploy("""(subject, payload) => {
      console.log('hello', subject, { n: 1 });
      console.error('oops');
      return 'done';
    }""")
    logs = await nc.subscribe(subjects.logs_filter(NAMESPACE, handle.workload_id))
    await request(nc, subject)
    lines = [await logs.next_msg(timeout=5) for _ in range(2)]

    assert [(m.subject.rsplit(".", 1)[1], m.data) for m in lines] == [
        ("stdout", f'hello {subject} {{"n":1}}'.encode()), ("stderr", b"oops")]


async def test_function_invoked_event(deploy: Deploy, nc: Client):
    handle, subject = await deploy("(subject, payload) => 'x'", name="evented")
    events = await nc.subscribe(subjects.events(NAMESPACE, "function_invoked"))
    stats = await nc.subscribe(subjects.events(NAMESPACE, "function_stats"))
    await request(nc, subject)
    event = CloudEvent.model_validate_json((await events.next_msg(timeout=5)).data)

    assert event.event_type == "function_invoked"
    assert event.source == "nex/node/NTEST" and event.subject == handle.workload_id
    assert {k: event.data[k] for k in ("workload_id", "name", "subject")} == {
        "workload_id": handle.workload_id, "name": "evented", "subject": subject}
    assert event.data["duration_ms"] >= 0
    await request(nc, subject)
    windows = []
    while not windows or windows[-1].calls_total < 2:  # both calls, in one window or two
        windows.append(FunctionStatsData.model_validate(
            CloudEvent.model_validate_json((await stats.next_msg(timeout=5)).data).data))
    assert {w.workload_id for w in windows} == {handle.workload_id}
    assert sum(w.calls for w in windows) == 2 and windows[-1].errors_total == 0


async def test_syntax_error_is_a_bad_artifact_with_the_engines_message(runtime: JavaScriptRuntime,
                                                                       tmp_path: Path):
    spec = make_spec(tmp_path, "(subject, payload) => {\n  return (\n}\n")
    with pytest.raises(BadArtifact) as raised:
        await runtime.start(spec, lambda stream, line: None)
    assert str(raised.value) == "SyntaxError: unexpected token in expression: '}' at line 3"
    assert (await runtime.wait(Handle(spec.id, WorkloadType.JAVASCRIPT, {}))).error


async def test_script_that_is_not_a_function_is_a_bad_artifact(runtime: JavaScriptRuntime, tmp_path: Path):
    with pytest.raises(BadArtifact) as raised:
        await runtime.start(make_spec(tmp_path, "const answer = 42; answer"), lambda stream, line: None)
    assert "must evaluate to a function" in str(raised.value) and "number" in str(raised.value)


async def test_prepare_rejects_unreadable_scripts(runtime: JavaScriptRuntime, tmp_path: Path):
    with pytest.raises(BadArtifact) as not_utf8:
        await runtime.prepare(make_spec(tmp_path, b"\xff\xfe(s) => s"))
    with pytest.raises(BadArtifact) as empty:
        await runtime.prepare(make_spec(tmp_path, b"  \n"))
    assert "UTF-8" in str(not_utf8.value)
    assert "empty" in str(empty.value)


async def test_copies_share_their_queue_group(runtime: JavaScriptRuntime, deploy: Deploy, nc: Client):
    shared = f"shared.{uuid.uuid4().hex}"
    first, _ = await deploy("(subject, payload) => 'first'", name="twin", subject=shared)
    second, _ = await deploy("(subject, payload) => 'second'", name="twin", subject=shared)
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    for i in range(40):
        await nc.publish(shared, str(i).encode(), reply=inbox)
    answered = [(await replies.next_msg(timeout=5)).data for _ in range(40)]
    stats = await runtime.stats()

    assert set(answered) == {b"first", b"second"}
    assert stats[first.workload_id].invocations + stats[second.workload_id].invocations == 40


async def test_inspect_reports_counters(runtime: JavaScriptRuntime, deploy: Deploy, nc: Client):
    handle, subject = await deploy("(subject, payload) => { if (payload.length) throw new Error('no'); return 'ok' }")
    await request(nc, subject)
    await request(nc, subject, b"fail")
    await runtime.stats()
    info = runtime.inspect(handle)

    assert (info["invocations"], info["errors"], info["running"]) == (2, 1, True)
    assert info["agent_pid"] == handle.data["agent_pid"]
    assert info["memory_bytes"] > 0


async def test_functions_survive_an_agent_kill(runtime: JavaScriptRuntime, deploy: Deploy, nc: Client):
    handle, subject = await deploy("(subject, payload) => 'alive'")
    waiting = asyncio.create_task(runtime.wait(handle))
    old_pid = handle.data["agent_pid"]
    os.kill(old_pid, signal.SIGKILL)

    reply = await answers_again(nc, subject, within=15)
    assert reply.data == b"alive"
    assert runtime.agent_pid not in (None, old_pid)
    assert not waiting.done()
    waiting.cancel()


async def test_after_close_functions_end_with_the_reason_and_deploys_are_refused(runtime: JavaScriptRuntime,
                                                                                 deploy: Deploy):
    # That close leaves no agent is a case of tests/test_runtime_conformance.py.
    handle, _ = await deploy("(subject, payload) => 'x'")
    await runtime.close()

    assert (await runtime.wait(handle)).error == "the javascript runtime closed"
    with pytest.raises(Exception, match="closed"):
        await deploy("(subject, payload) => 'x'")


async def test_agent_exits_on_eof_and_sigterm_even_with_a_call_stuck(connect_options: ConnectOptions,
                                                                     nc: Client):
    env = {**os.environ, ENV_CONNECT: connect_options.to_json(), ENV_NODE_ID: "NTEST"}
    for ending in ("eof", "sigterm"):
        agent = await AgentProcess.start([sys.executable, "-m", "nex.agent.js"], env,
                                         name="javascript agent", ready_timeout=15)
        load = protocol.Load(workload_id=ending, name=ending, namespace=NAMESPACE,
                             source="(subject, payload) => { while (true) {} }",
                             triggers=[protocol.TriggerSubscription(subject=f"stuck.{ending}", queue="q")],
                             timeout_ms=60_000, memory_bytes=16 * 1024 * 1024)
        assert (await agent.request(load)).ok
        await nc.publish(f"stuck.{ending}", b"")
        await nc.flush()
        started = time.monotonic()
        if ending == "eof":
            returncode = await agent.stop(grace=10)
        else:
            os.kill(agent.pid, signal.SIGTERM)
            returncode = await asyncio.wait_for(agent.wait(), 10)
        assert (ending, returncode) == (ending, 0)
        assert time.monotonic() - started < 5


def test_protocol_lines_round_trip():
    load = protocol.Load(seq=7, workload_id="w", name="n", namespace="ns", source="x => x",
                         triggers=[protocol.TriggerSubscription(subject="a.>", queue="q")],
                         timeout_ms=100, memory_bytes=1 << 20, env={"K": "V"})
    line = protocol.encode(load)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode_request(line) == load
    assert protocol.decode_request(protocol.encode(protocol.Stats(seq=3))) == protocol.Stats(seq=3)
    reply = protocol.failed(7, "SyntaxError: bad\n  at line 2", protocol.BAD_ARTIFACT)
    assert protocol.decode_agent_message(protocol.encode(reply)) == reply
    assert reply.error == "SyntaxError: bad at line 2"
    assert protocol.decode_agent_message(b'{"event": "ready"}\n') == protocol.Ready()
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_request(b'{"op": "launch", "seq": 9}')
    assert protocol.request_seq(b'{"op": "launch", "seq": 9}') == 9


async def test_text_encoder_and_decoder_speak_utf8(deploy: Deploy, nc: Client):
    _, subject = await deploy("""
        (subject, payload) => {
          const text = new TextDecoder().decode(payload);
          const back = new TextEncoder().encode(text);
          return {text, bytes: back.length, same: back.every((b, i) => b === payload[i]),
                  broken: new TextDecoder("utf-8").decode(new Uint8Array([0x61, 0xff, 0xe2, 0x82]))};
        }""")
    payload = "héllo wörld ✓ 🚀".encode()
    reply = json.loads((await request(nc, subject, payload)).data)
    assert reply == {"text": "héllo wörld ✓ 🚀", "bytes": len(payload), "same": True, "broken": "a\ufffd\ufffd"}
