"""`nex node up` as a real process: identity, config, signals, and no orphans after SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from helpers import alive, control, eventually, file_artifact, process_group, start_node, wait_for_node


async def test_node_keeps_its_identity_and_tags(nats_server, nc, tmp_path):
    state = tmp_path / "state"
    args = ["--server", nats_server.url, "--state-dir", str(state), "--name", "alpha", "--tags", "zone=a,tier=gold"]
    process = await start_node(*args)
    first = await wait_for_node(nc, "alpha")
    assert first["node_id"].startswith("N") and len(first["node_id"]) == 56
    assert first["tags"]["zone"] == "a" and first["tags"]["tier"] == "gold"
    assert {"nex.os", "nex.arch", "nex.cpus", "nex.memory_mib"} <= set(first["tags"])
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0
    assert oct((state / "node.nk").stat().st_mode & 0o777) == "0o600"

    process = await start_node(*args)
    second = await wait_for_node(nc, "alpha")
    assert second["node_id"] == first["node_id"], "the node id survives a restart"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 15) == 0


@pytest.mark.parametrize("sandbox", ["none", "auto"])
async def test_sigkilled_node_leaves_no_process_behind(nats_server, nc, tmp_path, programs, sandbox):
    state = tmp_path / "state"
    args = ["--server", nats_server.url, "--state-dir", str(state), "--name", "doomed", "--sandbox", sandbox]
    process = await start_node(*args)
    ping = await wait_for_node(nc, "doomed")
    code, ticker = await control(nc, "DEPLOY", ping["node_id"], {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None
    code, stubborn = await control(nc, "DEPLOY", ping["node_id"], {
        "name": "stubborn", "type": "native", "artifact": file_artifact(programs["stubborn"])})
    assert code is None
    pgid = stubborn["pid"]
    # The stubborn program forks a child that PR_SET_PDEATHSIG does not cover.
    child = await eventually(lambda: [p for p in process_group(pgid) if p != pgid])

    process.kill()
    await process.wait()
    await eventually(lambda: not alive(ticker["pid"]) and not alive(pgid) and not any(alive(c) for c in child))

    # The next start finds the dead node's handles and cleans up after it.
    assert list((state / "handles").glob("*.json")), "the killed node left its handles"
    process = await start_node(*args)
    await wait_for_node(nc, "doomed")
    assert not list((state / "handles").glob("*.json"))
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0



@pytest.mark.parametrize("name, content, words", [
    ("bad.toml", "name = [", "not valid toml"),
    ("bad.json", "{", "not valid json"),
    ("typo.toml", 'nmae = "x"\n', "nmae: Extra inputs are not permitted"),
    ("wrongtype.json", '{"stop_grace_s": "soon"}', "stop_grace_s"),
])
async def test_bad_config_file_is_one_clear_line(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    process = await start_node("--config", str(path), "--state-dir", str(tmp_path / "s"))
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    text = output.decode()
    assert text.startswith("nex: error: ") and words in text and "Traceback" not in text


async def test_config_file_sets_name_and_tags(nats_server, nc, tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(f'name = "fromfile"\nserver = "{nats_server.url}"\n[tags]\nrack = "r7"\n')
    process = await start_node("--config", str(path), "--state-dir", str(tmp_path / "s"))
    ping = await wait_for_node(nc, "fromfile")
    assert ping["tags"]["rack"] == "r7"
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_embedded_server_starts_when_no_server_is_given(tmp_path):
    from nex.connection import ConnectOptions
    from nex.natsserver import free_port

    port = free_port()
    process = await start_node("--port", str(port), "--state-dir", str(tmp_path / "s"), "--name", "solo",
                               env={"NATS_URL": ""})
    nc = await eventually(lambda: _try_connect(ConnectOptions(servers=[f"nats://127.0.0.1:{port}"])), 15, 0.1)
    await wait_for_node(nc, "solo")
    assert (await nc.jetstream().account_info()).streams >= 2, "the node made its feed streams"
    stopped = await nc.subscribe("$NEX.FEED.system.events.node_stopped")
    await nc.flush()
    # Ctrl-C in a terminal signals the whole process group: the embedded server must
    # outlive the node's own shutdown, so that the node can still say goodbye.
    os.killpg(process.pid, signal.SIGINT)
    goodbye = await stopped.next_msg(timeout=15)
    assert json.loads(goodbye.data)["data"]["name"] == "solo"
    output = (await asyncio.wait_for(process.communicate(), 15))[0].decode()
    assert process.returncode == 0, output
    assert f"127.0.0.1:{port}" in output, "the node says where the embedded server listens"
    assert (tmp_path / "s" / "jetstream").is_dir()
    await nc.close()


async def _try_connect(options):
    from nex.connection import connect
    try:
        return await connect(options, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception:  # not listening yet
        return None
