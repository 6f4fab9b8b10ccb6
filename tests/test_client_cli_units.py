"""nex.client and the nex CLI without a node: pure helpers, and a real nats-server where
one is needed (scripted responders stand in for nodes and functions)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from nats.js.errors import BucketNotFoundError

import nex.client
from nex.api import subjects
from nex.api.errors import (
    BadRequest,
    FunctionError,
    NodeNotFound,
    NotFound,
    Unavailable,
    UnknownWorkload,
    WorkloadNotFound,
)
from nex.api.events import EventType, make_event
from nex.api.models import NodeInfo, NodePing, Resources, WorkloadType
from nex.artifacts import parse_nats_uri
from nex.cli import cli
from nex.cli.options import GlobalOptions
from nex.cli.session import resolve_id
from nex.client import NexClient, guess_type, workload_name_for
from nex.connection import ConnectOptions, flush_subscriptions
from nex.natsserver import NatsServer

from helpers import eventually

NOWHERE = "nats://127.0.0.1:1"


def invoke_cli(args: list[str], env: dict[str, str] | None = None, input: bytes | None = None) -> Result:
    # The commands run their own event loop, so they go to a thread when a test has one.
    base = {"NATS_URL": None, "NEX_NAMESPACE": None}
    return CliRunner().invoke(cli, args, env={**base, **(env or {})}, input=input, catch_exceptions=False)


async def invoke_cli_async(args: list[str], **kwargs: Any) -> Result:
    return await asyncio.to_thread(invoke_cli, args, **kwargs)


def the_error_line(result: Result) -> str:
    """The one line of an expected failure (a hint may follow it)."""
    lines = result.stderr.splitlines()
    assert len(lines) in (1, 2), result.stderr
    assert lines[0].startswith("nex: error: ")
    return lines[0].removeprefix("nex: error: ")


# -- type guessing ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("server", b"\x7fELF\x02\x01\x01" + bytes(64), WorkloadType.NATIVE),
    ("server.js", b"\x7fELF\x02\x01\x01", WorkloadType.NATIVE),  # contents beat the name
    ("hello.js", b"export default () => 1\n", WorkloadType.JAVASCRIPT),
    ("hello.MJS", b"export default () => 1\n", WorkloadType.JAVASCRIPT),
    ("mod.wasm", b"\0asm\x01\0\0\0", WorkloadType.WASM),
    ("mod", b"\0asm\x01\0\0\0", WorkloadType.WASM),
])
def test_guess_type_by_contents_then_extension(tmp_path: Path, name: str, content: bytes, expected: WorkloadType):
    path = tmp_path / name
    path.write_bytes(content)
    assert guess_type(path) == expected


def test_guess_type_unknown_asks_for_type(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(BadRequest) as caught:
        guess_type(path)
    assert str(path) in caught.value.message
    assert "--type" in caught.value.message


def test_workload_name_from_file_name():
    assert workload_name_for("/x/hello world.js") == "hello-world"
    assert workload_name_for("/x/srv_1") == "srv_1"
    assert workload_name_for("/x/§§.js") == "workload"
    assert subjects.is_token(workload_name_for("/x/" + "a" * 100 + ".js"))


def test_client_exports_what_users_need():
    for name in nex.client.__all__:
        assert hasattr(nex.client, name), name
    assert {"NexClient", "LogLine"} <= set(nex.client.__all__)


# -- global options ---------------------------------------------------------------------


def test_merged_options_prefer_the_subcommand_value():
    group = GlobalOptions(server="nats://a:4222", namespace="ns1", timeout=5.0, json=True)
    merged = group.merged({"server": "nats://b:4222", "namespace": None, "timeout": 2.0, "json": False})
    assert merged.server == "nats://b:4222"
    assert merged.namespace == "ns1"
    assert merged.timeout == 2.0
    assert merged.json is True  # a flag given on either side stays on


def test_user_without_password_is_an_error_line():
    result = invoke_cli(["node", "ls", "--user", "me", "--server", NOWHERE])
    assert result.exit_code == 1
    assert "--user and --password go together" in the_error_line(result)


@pytest.mark.parametrize("args", [
    ["--server", NOWHERE, "node", "ls"],
    ["node", "ls", "--server", NOWHERE],
    ["--server", "nats://127.0.0.1:2", "node", "ls", "--server", NOWHERE],
])
def test_server_option_before_or_after_the_command(args: list[str]):
    result = invoke_cli(args)
    assert result.exit_code == 1
    assert the_error_line(result).startswith(f"cannot connect to NATS at {NOWHERE}")
    assert "Traceback" not in result.output


def test_environment_gives_the_default_server():
    result = invoke_cli(["workload", "ls"], env={"NATS_URL": NOWHERE})
    assert result.exit_code == 1
    assert the_error_line(result).startswith(f"cannot connect to NATS at {NOWHERE}")


async def test_options_after_the_command_win_over_environment(nats_server):
    result = await invoke_cli_async(
        ["node", "ls", "--json", "--server", nats_server.url], env={"NATS_URL": NOWHERE}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


async def test_namespace_before_the_command_reaches_the_client(nats_server):
    result = await invoke_cli_async(["--namespace", "bad.ns", "workload", "ls", "--server", nats_server.url])
    assert result.exit_code == 1
    assert the_error_line(result) == "invalid namespace 'bad.ns'"


def test_usage_errors_exit_2(tmp_path: Path):
    script = tmp_path / "f.js"
    script.write_text("export default () => 1")
    assert invoke_cli(["devrun"]).exit_code == 2
    assert invoke_cli(["devrun", str(tmp_path / "missing.js")]).exit_code == 2
    bad_env = invoke_cli(["devrun", str(script), "--env", "NOEQUALS"])
    assert bad_env.exit_code == 2
    assert "KEY=VALUE" in bad_env.stderr
    bad_argv = invoke_cli(["devrun", str(script), "--argv", "'unclosed"])
    assert bad_argv.exit_code == 2
    assert invoke_cli(["node", "ls", "--timeout", "0"]).exit_code == 2


def test_help_lists_global_options_apart():
    result = invoke_cli(["devrun", "--help"])
    assert result.exit_code == 0
    own, _, common = result.stdout.partition("Global options")
    assert "--trigger" in own and "--server" not in own
    assert "--server" in common and "--namespace" in common and "--json" in common


# -- ids, names and prefixes ------------------------------------------------------------------------

NODES = [("NAAAA1111", "alpha"), ("NAAAA2222", "beta"), ("NBBBB3333", "gamma"), ("NCCCC4444", "beta")]


def test_resolve_by_id_prefix_or_name():
    assert resolve_id("NBBB", NODES, "node") == "NBBBB3333"
    assert resolve_id("NAAAA2", NODES, "node") == "NAAAA2222"
    assert resolve_id("NAAAA1111", NODES, "node") == "NAAAA1111"
    assert resolve_id("gamma", NODES, "node") == "NBBBB3333"
    assert resolve_id("abc", [("abc", "x"), ("abcd", "y")], "workload") == "abc"  # exact id, even short


def test_resolve_name_used_twice():
    with pytest.raises(BadRequest) as caught:
        resolve_id("beta", NODES, "node")
    assert "2 nodes are named 'beta'" in caught.value.message
    assert "NAAAA2222" in caught.value.message and "NCCCC4444" in caught.value.message


def test_resolve_prefix_too_short():
    with pytest.raises(BadRequest) as caught:
        resolve_id("NBB", NODES, "node")
    assert "at least 4" in caught.value.message


def test_resolve_prefix_ambiguous_names_the_matches():
    with pytest.raises(BadRequest) as caught:
        resolve_id("NAAAA", NODES, "node")
    assert "ambiguous" in caught.value.message
    assert "NAAAA1111" in caught.value.message and "NAAAA2222" in caught.value.message


def test_resolve_without_match_is_not_found_of_its_kind():
    with pytest.raises(NodeNotFound) as node:
        resolve_id("NZZZZ", NODES, "node")
    with pytest.raises(WorkloadNotFound) as workload:
        resolve_id("wxyz", [("abcd", "w")], "workload")
    assert node.value.node_id == "NZZZZ" and node.value.code == 404
    assert workload.value.workload_id == "wxyz"


# -- the client on a real server without a node -----------------------------------------


@pytest.fixture
async def client(nc):
    yield NexClient(nc, namespace="default", timeout=2.0)


async def test_connect_to_nothing_is_unavailable():
    with pytest.raises(Unavailable) as caught:
        await NexClient.connect(ConnectOptions(servers=[NOWHERE]))
    assert caught.value.message.startswith(f"cannot connect to NATS at {NOWHERE}")


async def test_connect_owns_and_closes_the_connection(connect_options):
    async with await NexClient.connect(connect_options) as client:
        assert client.nc.is_connected
    assert client.nc.is_closed
    await client.close()  # closing twice is harmless


async def test_ping_without_nodes_is_empty_at_once(client):
    started = time.monotonic()
    nodes = await client.ping(wait=3.0)
    workloads = await client.workloads(wait=3.0)
    assert nodes == [] and workloads == []
    assert time.monotonic() - started < 1.0  # no-responders ends the gather early


async def test_unknown_targets_are_not_found(client):
    with pytest.raises(NodeNotFound) as node:
        await client.node_info("NODE1")
    with pytest.raises(NodeNotFound):
        await client.ping_node("NODE1")
    with pytest.raises(WorkloadNotFound) as undeploy:
        await client.undeploy("w1", grace_ms=10)
    with pytest.raises(WorkloadNotFound) as info:
        await client.workload_info("w2")
    assert node.value.node_id == "NODE1"
    assert undeploy.value.workload_id == "w1" and info.value.workload_id == "w2"


async def test_a_target_cannot_widen_the_subject(client):
    with pytest.raises(BadRequest) as caught:
        await client.node_info("*")
    assert caught.value.message == "invalid node id '*'"


async def test_a_silent_node_is_a_timeout_error(nc):
    await nc.subscribe(subjects.control("default", subjects.INFO, "NSILENT"), cb=_ignore)
    client = NexClient(nc, timeout=0.2)
    with pytest.raises(Unavailable) as caught:
        await client.node_info("NSILENT")
    assert "within 0.2s" in caught.value.message


async def test_pick_node_without_nodes(client):
    with pytest.raises(Unavailable) as caught:
        await client.pick_node(WorkloadType.NATIVE)
    assert caught.value.message == "no node is running in namespace 'default'"


async def test_pick_node_takes_the_least_busy_able_node(nc, client):
    await _scripted_node(nc, "NBUSY", workloads=5, runtimes=["native"])
    await _scripted_node(nc, "NIDLE", workloads=1, runtimes=["native"])
    await _scripted_node(nc, "NJSONLY", workloads=0, runtimes=["javascript"])
    await _scripted_node(nc, "NDRAINING", workloads=0, runtimes=["native"], state="lameduck")
    assert await client.pick_node("native") == "NIDLE"
    assert await client.pick_node("javascript") == "NJSONLY"
    with pytest.raises(Unavailable) as caught:
        await client.pick_node("wasm")
    assert "runs wasm" in caught.value.message
    started = time.monotonic()
    nodes = await client.ping(wait=5.0, expected=4)
    assert time.monotonic() - started < 1.0
    assert {n.node_id for n in nodes} == {"NBUSY", "NIDLE", "NJSONLY", "NDRAINING"}


async def test_devrun_checks_the_request_before_uploading(nc, client, tmp_path: Path):
    script = tmp_path / "fn.js"
    script.write_text("export default () => 1")
    with pytest.raises(BadRequest) as caught:
        await client.devrun(script)  # a function without a trigger
    assert "trigger" in caught.value.message
    with pytest.raises(BucketNotFoundError):
        await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)  # nothing was uploaded


# -- artifacts --------------------------------------------------------------------------


async def test_upload_artifact_stores_the_file_under_its_sha256(nc, client, tmp_path: Path):
    path = tmp_path / "blob.bin"
    content = os.urandom(300_000)  # several object store chunks
    path.write_bytes(content)
    seen: list[tuple[int, int]] = []

    artifact = await client.upload_artifact(path, progress=lambda done, total: seen.append((done, total)))
    await asyncio.sleep(0)  # progress reports hop threads through the loop

    sha = hashlib.sha256(content).hexdigest()
    assert artifact.sha256 == sha
    assert artifact.uri == f"nats://{subjects.ARTIFACT_BUCKET}/{sha}"
    store = await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    assert (await store.get(sha)).data == content
    assert seen[-1] == (len(content), len(content))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


async def test_upload_artifact_with_key_and_again_unchanged(nc, client, tmp_path: Path):
    path = tmp_path / "hello.js"
    path.write_bytes(b"export default () => 'hi'")
    first = await client.upload_artifact(path, key="hello world.js")
    seen: list[tuple[int, int]] = []
    again = await client.upload_artifact(path, key="hello world.js", progress=lambda d, t: seen.append((d, t)))
    assert first == again
    assert parse_nats_uri(first.uri) == (subjects.ARTIFACT_BUCKET, "hello world.js")  # as the node reads it
    assert seen == [(path.stat().st_size, path.stat().st_size)]
    store = await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    assert (await store.get("hello world.js")).data == path.read_bytes()


async def test_without_jetstream_artifacts_and_feeds_say_so(tmp_path: Path):
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False)
    await server.start()
    path = tmp_path / "f.js"
    path.write_text("x")
    try:
        async with await NexClient.connect(ConnectOptions(servers=[server.url])) as client:
            with pytest.raises(Unavailable) as upload:
                await client.upload_artifact(path)
            with pytest.raises(Unavailable) as logs:
                await anext(client.logs("w1"))
    finally:
        await server.stop()
    assert upload.value.message == logs.value.message == "JetStream is not enabled on this NATS server"


# -- feeds ------------------------------------------------------------------------------


async def test_logs_without_the_stream_say_so(client):
    with pytest.raises(NotFound) as caught:
        async for _ in client.logs("w1"):
            pass
    assert subjects.LOGS_STREAM in caught.value.message
    assert "no Nex node has started" in caught.value.message


async def test_cli_logs_without_the_stream_is_one_line(nats_server):
    result = await invoke_cli_async(["logs", "wxyz1", "--server", nats_server.url])
    assert result.exit_code == 1
    assert subjects.LOGS_STREAM in the_error_line(result)


async def test_logs_history_then_follow(nc, client):
    js = nc.jetstream()
    await js.add_stream(name=subjects.LOGS_STREAM, subjects=[subjects.logs_filter("*", "*")])
    await js.publish(subjects.logs("default", "w1", "stdout"), b"one")
    await js.publish(subjects.logs("default", "w2", "stdout"), b"other workload")
    await js.publish(subjects.logs("other", "w1", "stdout"), b"other namespace")
    await js.publish(subjects.logs("default", "w1", "stderr"), b"two")

    history = [line async for line in client.logs("w1")]
    assert [(line.stream, line.text) for line in history] == [("stdout", "one"), ("stderr", "two")]
    assert {line.workload_id for line in history} == {"w1"}
    with pytest.raises(UnknownWorkload) as unknown:  # no line kept, and no node runs it
        [line async for line in client.logs("w3")]
    assert (unknown.value.workload_id, unknown.value.namespace) == ("w3", "default")

    texts: list[str] = []

    async def follow_three() -> list[str]:
        lines = client.logs("w1", follow=True)
        async for line in lines:
            texts.append(line.text)
            if len(texts) == 3:
                break
        await lines.aclose()
        return texts

    follower = asyncio.create_task(follow_three())
    await eventually(lambda: len(texts) == 2, timeout=5)  # the history read: a line from now on is followed
    await js.publish(subjects.logs("default", "w1", "stdout"), "three ✓".encode())
    assert await asyncio.wait_for(follower, 5) == ["one", "two", "three ✓"]


async def test_events_history_filtered_by_type(nc, client):
    js = nc.jetstream()
    await js.add_stream(name=subjects.EVENTS_STREAM, subjects=[subjects.events_filter("*")])
    for event_type, workload in [
        (EventType.WORKLOAD_STARTED, "w1"), (EventType.HEARTBEAT, None), (EventType.WORKLOAD_STOPPED, "w1"),
    ]:
        event = make_event(event_type, "NODE1", {"n": 1}, subject=workload)
        await js.publish(subjects.events("default", event_type.value), event.model_dump_json().encode())

    everything = [e.event_type async for e in client.events()]
    some = [e.event_type async for e in client.events(types=["workload_started", "io.nats.nex.v1.workload_stopped"])]
    one = [e.subject async for e in client.events(types=["workload_stopped"])]
    assert everything == ["workload_started", "heartbeat", "workload_stopped"]
    assert some == ["workload_started", "workload_stopped"]
    assert one == ["w1"]


# -- functions --------------------------------------------------------------------------


async def test_invoke_returns_the_reply_and_raises_function_errors(nc, client):
    async def echo(msg):
        if msg.data == b"boom":
            error = FunctionError("it broke", kind="timeout")
            payload, headers = error.encode()
            await nc.publish(msg.reply, payload, headers=headers)
        else:
            await msg.respond(msg.data.upper())

    await nc.subscribe("fn.echo", cb=echo)
    assert await client.invoke("fn.echo", b"hi", timeout=2) == b"HI"
    with pytest.raises(FunctionError) as failed:
        await client.invoke("fn.echo", b"boom", timeout=2)
    with pytest.raises(NotFound) as nobody:
        await client.invoke("fn.nobody", b"", timeout=2)
    assert failed.value.kind == "timeout" and failed.value.message == "it broke"
    assert "fn.nobody" in nobody.value.message


async def test_cli_invoke_prints_the_reply_raw(nc, nats_server):
    async def reply(msg):
        await msg.respond(b"got:" + msg.data)

    await nc.subscribe("fn.raw", cb=reply)
    from_arg = await invoke_cli_async(["invoke", "fn.raw", "abc", "--server", nats_server.url])
    from_stdin = await invoke_cli_async(["invoke", "fn.raw", "-", "--server", nats_server.url], input=b"\x00\xff")
    function_error = await invoke_cli_async(["invoke", "fn.none", "--server", nats_server.url])
    assert from_arg.exit_code == 0 and from_arg.stdout_bytes == b"got:abc"
    assert from_stdin.exit_code == 0 and from_stdin.stdout_bytes == b"got:\x00\xff"
    assert function_error.exit_code == 1
    assert "fn.none" in the_error_line(function_error)


# -- scripted stand-ins -----------------------------------------------------------------


async def _ignore(msg) -> None:
    pass


async def _scripted_node(nc, node_id: str, workloads: int, runtimes: list[str], state: str = "running") -> None:
    """Answers PING and INFO like a node would, from the wire models."""
    ping = NodePing(
        node_id=node_id, name=node_id.lower(), version="0", api_version="v1", uptime_s=1.0,
        state=state, tags={}, workload_count=workloads,
    )
    info = NodeInfo(
        **ping.model_dump(), runtimes=runtimes, workloads=[],
        resources=Resources(cpus=1, memory_bytes=1, memory_available_bytes=1, load_1m=0.0),
    )

    async def answer_ping(msg) -> None:
        await msg.respond(ping.model_dump_json().encode())

    async def answer_info(msg) -> None:
        await msg.respond(info.model_dump_json().encode())

    await nc.subscribe(subjects.control("default", subjects.PING), cb=answer_ping)
    await nc.subscribe(subjects.control("default", subjects.INFO, node_id), cb=answer_info)
    await flush_subscriptions(nc)
