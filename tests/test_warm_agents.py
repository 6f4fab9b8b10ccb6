"""Function agents start with the node (NodeConfig.warm_agents), so that no deploy waits for one;
and an agent process leaves out what it never uses (nex.agent.startup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import agent_pids, eventually, running_node
from nex.agent.protocol import ENV_CONNECT
from nex.api.models import DeployRequest, Trigger
from nex.client import NexClient
from nex.connection import ConnectOptions


async def deploy_function(nats_server, node_id: str, tmp_path: Path) -> None:
    source = tmp_path / "hello.js"
    source.write_bytes(b"(subject, payload) => 'warm'")
    async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
        artifact = await client.upload_artifact(source)
        await client.deploy(node_id, DeployRequest(name="hello", type="javascript", artifact=artifact,
                                                   triggers=[Trigger(subject="warm.hello")]))
        reply = await client.nc.request("warm.hello", b"", timeout=5)
        assert reply.data == b"warm"


async def test_a_node_starts_its_function_agents_with_it_and_its_first_function_uses_them(nats_server, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "warm") as node:
        up = await eventually(lambda: all(node.supervisor.agents_up().values()) and node.supervisor.agents_up(),
                              timeout=20, interval=0.05)
        assert up == {"javascript": True, "wasm": True}
        warmed = agent_pids("nex.agent.js")
        assert len(warmed) == 1 and len(agent_pids("nex.agent.wasm")) == 1

        await deploy_function(nats_server, node.node_id, tmp_path)
        assert agent_pids("nex.agent.js") == warmed, "the deploy started no agent of its own"
    assert agent_pids("nex.agent.js") == set() and agent_pids("nex.agent.wasm") == set()


async def test_cold_agents_start_with_their_first_function_only(nats_server, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "cold", warm_agents=False) as node:
        assert node.supervisor.agents_up() == {"javascript": False, "wasm": False}
        await deploy_function(nats_server, node.node_id, tmp_path)
        assert node.supervisor.agents_up() == {"javascript": True, "wasm": False}
        assert len(agent_pids("nex.agent.js")) == 1 and agent_pids("nex.agent.wasm") == set()


def loads_websockets(servers: list[str]) -> bool:
    """Whether nats-py, imported by an agent's entry given ``servers``, has its websocket transport."""
    script = ("from nex.agent.startup import leave_out_websockets\n"
              "leave_out_websockets()\n"
              "import nats.aio.transport as transport\n"
              "print(transport.aiohttp is not None)\n")
    env = {**os.environ, ENV_CONNECT: json.dumps({"servers": servers})}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_an_agent_on_tcp_or_tls_leaves_the_websocket_transport_out():
    assert not loads_websockets(["nats://127.0.0.1:4222"])
    assert not loads_websockets(["tls://nats.example:4222", "nats://127.0.0.1:4222"])


def test_an_agent_given_a_websocket_server_keeps_the_websocket_transport():
    assert loads_websockets(["nats://127.0.0.1:4222", "wss://nats.example:443"])
    assert loads_websockets(["ws://127.0.0.1:8080"])
