"""A Python function through a real node (issue 17, items 3 and 4): tests/functions/probe.py,
built with componentize-py and deployed by ``client.devrun``, answers, keeps its state, and
tries what a tenant's code might: the host's files, its environment, its network, a process.
Each attempt fails; what it was given (its env, the host services) is there.

One node and one deploy for the module: the component's compile (about 4.5 s) is paid once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_asyncio

from helpers import running_node
from nex.api.errors import NexError
from nex.api.models import Limits
from nex.client import NexClient
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBE = Path(__file__).parent / "functions" / "probe.py"
MEMORY_MIB = 128
TIMEOUT_MS = 3000
SUBJECT = "nex.default.probe"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("python-probe")
    server = NatsServer(store_dir=tmp / "jetstream", port=0)
    await server.start()
    try:
        async with running_node(server, tmp / "node", "python-probe") as node:
            nc = await connect(ConnectOptions(servers=[server.url]))
            client = NexClient(nc, timeout=30.0)  # the deploy itself waits up to 120 s (a loaded machine compiles slowly)
            try:
                summary = await client.devrun(PROBE, triggers=[SUBJECT], env={"GIVEN": "yes"},
                                              limits=Limits(memory_mib=MEMORY_MIB, timeout_ms=TIMEOUT_MS))
                yield SimpleNamespace(client=client, node=node, summary=summary, state_dir=tmp / "node", url=server.url)
            finally:
                await nc.close()
    finally:
        await server.stop()


async def call(deployed, payload: str) -> bytes:
    return await deployed.client.invoke(SUBJECT, payload.encode(), timeout=10)


async def test_a_python_function_answers_through_a_node_and_keeps_its_state(deployed):
    assert (deployed.summary.type.value, deployed.summary.lifecycle.value) == ("wasm", "function")
    assert await call(deployed, "echo hello") == b"echo hello"
    assert await call(deployed, "return json") == b'[1,{"a":null}]'
    first = int(await call(deployed, "calls"))
    assert int(await call(deployed, "calls")) == first + 1  # the instance is kept between calls
    with pytest.raises(NexError) as raised:
        await call(deployed, "raise 500")
    assert raised.value.code == 500
    assert "ValueError: too big: 500 (line 33)" in raised.value.message
    assert await call(deployed, "echo after") == b"echo after"


async def test_the_probe_sees_no_host_file_env_network_or_process(deployed):
    paths = ["/etc/passwd", "/proc/self/environ", str(PROBE), str(deployed.state_dir), str(deployed.state_dir / "node.lock")]
    files = json.loads(await call(deployed, f"files {','.join(paths)}"))
    assert {what: found.get("error") for what, found in files.items()} == {
        **{path: "FileNotFoundError" for path in paths}, "listdir /": "FileNotFoundError",
        "write /tmp": "FileNotFoundError"}
    # The deploy's env and nothing else: not the node's, not the agent's, not the build's.
    assert json.loads(await call(deployed, "env")) == {"GIVEN": "yes"}

    connected = asyncio.Event()
    listener = await asyncio.start_server(lambda reader, writer: connected.set(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        network = json.loads(await call(deployed, f"network 127.0.0.1:{port}"))
        nats_port = deployed.url.rsplit(":", 1)[1]
        to_nats = json.loads(await call(deployed, f"network 127.0.0.1:{nats_port}"))
    finally:
        listener.close()
    assert all("error" in found for found in [*network.values(), *to_nats.values()]), (network, to_nats)
    assert not connected.is_set()
    process = json.loads(await call(deployed, "process"))
    assert all("error" in found for found in process.values()), process


async def test_the_host_services_are_its_way_out_within_its_namespace(deployed):
    assert json.loads(await call(deployed, "host")) == {"kv": {"subject": SUBJECT}, "keys": ["seen"]}
    denied = json.loads(await call(deployed, "denied"))
    assert denied["code"] == "denied", denied

    nc = deployed.client.nc

    async def oracle(msg):
        answer = {"asked": json.loads(msg.data), "probe": (msg.headers or {}).get("x-probe")}
        await nc.publish(msg.reply, json.dumps(answer).encode(), headers={"x-oracle": "yes"})

    subscription = await nc.subscribe("nex.default.oracle", cb=oracle)
    await nc.flush()
    try:
        services = json.loads(await call(deployed, "services rain"))
    finally:
        await subscription.unsubscribe()
    assert services == {
        "objects": [[{"name": "a.txt", "size": 5}], "alpha", None],
        "reply": [{"asked": {"q": "rain"}, "probe": "1"}, "yes"],
        "http": "denied",  # the node allows no HTTP host by default
    }


async def test_a_memory_hog_is_stopped_at_its_limit_and_the_next_call_gets_a_new_instance(deployed):
    with pytest.raises(NexError) as raised:
        await call(deployed, "hog")
    assert raised.value.kind == "out_of_memory", raised.value
    assert "out of memory" in raised.value.message
    assert await call(deployed, "echo after") == b"echo after"
    assert int(await call(deployed, "calls")) == 2  # a new instance: its globals start again (echo, then this)


async def test_a_call_that_never_ends_is_stopped_at_its_timeout_and_the_next_call_is_answered(deployed):
    with pytest.raises(NexError) as raised:
        await call(deployed, "spin")
    assert raised.value.kind == "timeout", raised.value
    assert await call(deployed, "echo after") == b"echo after"
