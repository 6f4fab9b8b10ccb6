"""The `nex` command driven as a user would: a node process, then devrun, invoke, logs, stop."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from helpers import eventually, nex, wait_for_node


@pytest.fixture
async def node_process(nats_server, nc, tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "--server", nats_server.url, "node", "up",
        "--state-dir", str(tmp_path / "node"), "--name", "e2e", "--tags", "zone=a",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )

    async def listed():
        code, out, _ = await nex("node", "ls", "--json", "--server", nats_server.url)
        return code == 0 and json.loads(out)
    # Each `nex node ls` costs a CLI start and a gather window: ask it once the node answers.
    await wait_for_node(nc, "e2e", timeout=20)
    nodes = await eventually(listed, timeout=20, interval=0.2)
    yield nodes[0]
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_a_user_runs_a_function_and_a_service(nats_server, node_process, tmp_path, programs):
    url = nats_server.url
    assert node_process["name"] == "e2e" and node_process["tags"]["zone"] == "a"

    hello = tmp_path / "hello.js"
    hello.write_text("(subject, payload) => ({hello: new TextDecoder().decode(payload), on: subject})\n")
    # Global options before the command ...
    code, out, err = await nex("--server", url, "devrun", str(hello), "--trigger", "demo.hello", "--json")
    assert code == 0, err
    function = json.loads(out)
    assert function["node_id"] == node_process["node_id"] and function["type"] == "javascript"

    code, out, err = await nex("invoke", "demo.hello", "world", "--server", url)
    assert code == 0, err
    assert json.loads(out) == {"hello": "world", "on": "demo.hello"}

    # ... or after it.
    code, out, err = await nex("devrun", str(programs["ticker"]), "--argv", "alpha 'b c'",
                               "--env", "GREETING=hi", "--name", "ticker", "--json", "--server", url)
    assert code == 0, err
    service = json.loads(out)
    assert service["type"] == "native" and service["state"] == "running"

    code, out, err = await nex("workload", "ls", "--json", "--server", url)
    assert code == 0, err
    listed = {w["id"]: w for w in json.loads(out)}
    assert {function["id"], service["id"]} <= set(listed)

    async def ticking():
        code, out, _ = await nex("logs", service["id"], "--server", url)
        return code == 0 and "tick 1" in out and out
    out = await eventually(ticking, timeout=15, interval=0.2)
    assert out.splitlines()[:3] == ["started hi with 2 args", "arg alpha", "arg b c"]

    code, out, err = await nex("workload", "info", service["id"][:8], "--json", "--server", url)
    assert code == 0, err
    assert json.loads(out)["env_keys"] == ["GREETING"]

    code, out, err = await nex("workload", "stop", service["id"], "--server", url)
    assert code == 0, err
    code, out, err = await nex("workload", "info", service["id"], "--json", "--server", url)
    assert json.loads(out)["state"] == "stopped"

    code, out, err = await nex("events", "--json", "--server", url)
    assert code == 0, err
    types = [json.loads(line)["type"].rsplit(".", 1)[1] for line in out.splitlines()]
    assert types.count("workload_started") == 2 and "workload_stopped" in types
    # The call is in the function's aggregated stats; no event of its own is kept.
    assert "function_stats" in types and "function_invoked" not in types

    code, out, err = await nex("node", "info", node_process["node_id"][:6], "--server", url)
    assert code == 0, err
    assert "e2e" in out and "javascript" in out


async def test_errors_are_one_line_without_traceback(nats_server, node_process, tmp_path):
    url = nats_server.url
    code, out, err = await nex("workload", "stop", "nosuchworkload", "--server", url)
    assert code == 1 and err.startswith("nex: error: ") and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.js"
    broken.write_text("(subject, payload) => {{{")
    code, out, err = await nex("devrun", str(broken), "--trigger", "x.y", "--server", url)
    assert code == 1 and "SyntaxError" in err and "Traceback" not in err
    code, out, err = await nex("invoke", "nobody.listens", "--server", url, "--timeout", "1")
    assert code == 1 and err.startswith("nex: error: ")
    code, out, err = await nex("node", "ls", "--server", "nats://127.0.0.1:1")
    assert code == 1 and "cannot connect" in err and "Traceback" not in err
