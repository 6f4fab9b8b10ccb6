"""One state dir, one node: a second node on a held state dir goes, and leaves the first alone."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

import helpers
from helpers import alive, control, eventually, file_artifact, running_node, wait_for_node
from nex.connection import ConnectOptions, connect
from nex.natsserver import free_port
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.node.statelock import LOCK_FILE, StateDirInUse, StateDirLock


@pytest.fixture
async def start_node():
    """helpers.start_node, with every process it started SIGKILLed at the end (a test that fails
    midway leaves no node running; a node's nats-server and workloads die with it)."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict | None = None) -> asyncio.subprocess.Process:
        started.append(await helpers.start_node(*args, env=env))
        return started[-1]
    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_node_on_a_held_state_dir_exits_and_leaves_the_first_alone(tmp_path, programs, start_node):
    state = tmp_path / "state"
    first_port, second_port = free_port(), free_port()
    first = await start_node("--port", str(first_port), "--state-dir", str(state), "--name", "first",
                             "--sandbox", "none", env={"NATS_URL": ""})
    nc = await eventually(lambda: _try_connect(first_port), 15, 0.1)
    ping = await wait_for_node(nc, "first")
    code, ticker = await control(nc, "DEPLOY", ping["node_id"], {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None

    second = await start_node("--port", str(second_port), "--state-dir", str(state), "--name", "second",
                              "--sandbox", "none", env={"NATS_URL": ""})
    output = await _exit_output(second)

    assert second.returncode == 1, output
    assert f"in use by another node (pid {first.pid})" in output
    assert "--state-dir DIR --port PORT" in output and 'make run ARGS="--state-dir DIR --port PORT"' in output
    assert "Traceback" not in output
    assert alive(ticker["pid"]), "the first node's service still runs"
    code, still = await control(nc, "PING", ping["node_id"])
    assert code is None and still["name"] == "first"
    assert not await _listening(second_port), "the second node started no nats-server"
    assert _nats_servers_on(state / "jetstream") == 1

    # Killed, the first node lets the state dir go: the next one takes it, with its identity,
    # and cleans up what the dead one left.
    await nc.close()
    first.kill()
    await first.wait()
    third_port = free_port()
    third = await start_node("--port", str(third_port), "--state-dir", str(state), "--name", "third",
                             "--sandbox", "none", env={"NATS_URL": ""})
    nc = await eventually(lambda: _try_connect(third_port), 15, 0.1)
    again = await wait_for_node(nc, "third")
    assert again["node_id"] == ping["node_id"]
    assert not list((state / "handles").glob("*.json"))
    assert not alive(ticker["pid"])
    await nc.close()
    third.send_signal(signal.SIGTERM)
    output = (await asyncio.wait_for(third.communicate(), 15))[0].decode()
    assert third.returncode == 0, output
    assert "cleaned up 1 workload(s) left by a previous node" in " ".join(output.split())


async def test_a_second_node_on_a_held_state_dir_says_only_state_dir_with_a_server(nats_server, nc, tmp_path,
                                                                                    start_node):
    state = tmp_path / "state"
    args = ["--server", nats_server.url, "--state-dir", str(state), "--sandbox", "none"]
    first = await start_node(*args, "--name", "first")
    await wait_for_node(nc, "first")
    second = await start_node(*args, "--name", "second")
    output = await _exit_output(second)
    assert second.returncode == 1, output
    assert f"(pid {first.pid})" in output and "--state-dir DIR" in output and "--port" not in output
    first.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.wait(), 15) == 0


async def test_a_refused_node_writes_nothing_in_the_state_dir(nats_server, tmp_path):
    state = tmp_path / "state"
    holder = StateDirLock.acquire(state)
    try:
        with pytest.raises(StateDirInUse) as refused:
            Node(NodeConfig(server=nats_server.url, state_dir=state, name="late", sandbox="none"))
    finally:
        holder.release()
    assert refused.value.pid == os.getpid()
    assert sorted(entry.name for entry in state.iterdir()) == [LOCK_FILE], "no keys, no identity"


async def test_a_node_in_process_lets_its_state_dir_go_when_it_shuts_down(nats_server, tmp_path):
    async with running_node(nats_server, tmp_path / "n", "n") as node:
        with pytest.raises(StateDirInUse) as refused:
            Node(NodeConfig(server=nats_server.url, state_dir=tmp_path / "n", name="twin", sandbox="none"))
        node_id = node.node_id
    assert refused.value.pid == os.getpid()
    async with running_node(nats_server, tmp_path / "n", "n") as again:
        assert again.node_id == node_id


async def _exit_output(process: asyncio.subprocess.Process) -> str:
    """What the process said before it exited (it must exit on its own)."""
    try:
        return (await asyncio.wait_for(process.communicate(), 15))[0].decode()
    except asyncio.TimeoutError:
        pytest.fail("the second node did not exit: it runs on the first node's state dir")


async def _try_connect(port: int):
    try:
        return await connect(ConnectOptions(servers=[f"nats://127.0.0.1:{port}"]),
                             max_reconnect_attempts=0, allow_reconnect=False)
    except Exception:  # not listening yet
        return None


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def _nats_servers_on(store: Path) -> int:
    """How many live processes have ``store`` on their command line (nats-server's -sd)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            count += str(store).encode() in argv
    return count
