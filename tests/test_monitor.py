"""`nex monitor`: a snapshot of a real node with a real function, and the live view in a terminal."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import struct
import sys
import termios

import pytest

from helpers import cli_environment, eventually, nex
from nex.client import NexClient
from nex.connection import ConnectOptions

STYLE = re.compile(rb"\x1b\[[0-9;]*m")
CURSOR = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")  # the moves and erasures of a redraw: line breaks here


@pytest.fixture
async def hello(nats_server, node, tmp_path):
    """A JavaScript function deployed on the test's node, invoked once."""
    source = tmp_path / "hello.js"
    source.write_text("(subject, payload) => ({hello: new TextDecoder().decode(payload)})\n")
    async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
        workload = await client.devrun(source, name="hello", triggers=["monitor.hello"])
        assert await client.invoke("monitor.hello", b"you") == b'{"hello":"you"}'

        async def counted():
            return (await client.workload_info(workload.id)).invocations == 1
        await eventually(counted, timeout=15, interval=0.1)  # the agent reports its counts now and then
    return workload


async def test_once_prints_the_node_the_workload_and_the_events(nats_server, node, hello):
    code, out, err = await nex("monitor", "--once", "--server", nats_server.url)
    assert code == 0, err
    lines = out.splitlines()
    node_row = next(line for line in lines if line.startswith("test-node "))
    assert node.node_id[:8] in node_row and "running" in node_row and "zone=a" in node_row
    workload_row = next(line for line in lines if " hello " in line and hello.id[:8] in line)
    assert workload_row.split()[:6] == ["default", "hello", hello.id[:8], "js", "running", "test-node"]
    assert workload_row.split()[7] == "1/0"  # one call, no error
    events = lines[lines.index(next(line for line in lines if line.startswith("EVENTS"))):]
    assert any("workload_started" in line and "hello" in line for line in events)


async def test_once_as_json(nats_server, node, hello):
    code, out, err = await nex("--json", "monitor", "--once", "--events", "50", "--server", nats_server.url)
    assert code == 0, err
    view = json.loads(out)
    assert [n["name"] for n in view["nodes"]] == ["test-node"]
    (workload,) = view["workloads"]
    assert (workload["id"], workload["state"], workload["invocations"]) == (hello.id, "running", 1)
    types = [e["type"].rsplit(".", 1)[-1] for e in view["events"]]
    assert "workload_started" in types and "heartbeat" not in types


async def test_the_rate_of_a_busy_function_comes_from_its_function_stats(nats_server, node, hello):
    async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
        async def calls() -> None:
            while True:
                await client.invoke("monitor.hello", b"again")
                await asyncio.sleep(0.02)
        calling = asyncio.create_task(calls())
        try:
            code, out, err = await nex("--json", "monitor", "--once", "--events", "50", "--server", nats_server.url)
        finally:
            calling.cancel()
    assert code == 0, err
    view = json.loads(out)
    assert view["call_rates"][hello.id]["calls_per_s"] > 0, view["call_rates"]
    assert view["call_rates"][hello.id]["p50_ms"] >= 0
    listed = {e["type"].rsplit(".", 1)[-1] for e in view["events"]}
    assert not listed & {"function_stats", "function_invoked"}  # counted, not listed


async def test_once_without_a_node_says_so(nats_server):
    code, out, err = await nex("monitor", "--once", "--server", nats_server.url)
    assert code == 0, err
    assert "no node answered" in out and "no workload" in out


@pytest.mark.parametrize("args, message", [
    (["--interval", "0"], "0 is not above zero"),
    (["--events", "-1"], "-1 is not in the range"),
    (["--json"], "--json goes with --once"),
])
async def test_bad_options_are_refused(nats_server, args, message):
    code, _, err = await nex("monitor", *args, "--server", nats_server.url)
    assert code == 2 and message in err


async def test_an_unreachable_server_is_one_clear_line(nats_server):
    code, out, err = await nex("monitor", "--once", "--server", "nats://127.0.0.1:1", "--timeout", "1")
    assert code == 1 and out == ""
    assert err.startswith("nex: error: cannot connect to NATS at nats://127.0.0.1:1")


async def test_piped_the_live_view_prints_frame_after_frame(nats_server, node, hello):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "monitor", "--interval", "0.2", "--server", nats_server.url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_environment())
    frames = 0
    try:
        while frames < 2:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, (await process.stderr.read()).decode()
            frames += line.startswith(b"nex monitor ")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class Terminal:
    """A pseudo-terminal of 80 columns running one command; collects what it prints."""

    def __init__(self, columns: int = 80, rows: int = 40) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.output = bytearray()
        os.set_blocking(self.master, False)

    async def spawn(self, *argv: str) -> asyncio.subprocess.Process:
        asyncio.get_running_loop().add_reader(self.master, self._read)
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env={**cli_environment(), "TERM": "xterm"},
            start_new_session=True)
        os.close(self.slave)
        return process

    def _read(self) -> None:
        try:
            self.output += os.read(self.master, 65536)
        except OSError:  # EIO: the last process of the terminal exited
            asyncio.get_running_loop().remove_reader(self.master)

    def text(self) -> str:
        return CURSOR.sub(b"\n", STYLE.sub(b"", bytes(self.output))).decode(errors="replace")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


@pytest.mark.parametrize("quit_with", ["SIGINT", "SIGTERM", "q"])
async def test_the_live_view_refreshes_in_a_terminal_and_quits(nats_server, node, hello, quit_with):
    terminal = Terminal(columns=80)
    process = await terminal.spawn(sys.executable, "-m", "nex", "monitor", "--interval", "0.3",
                                   "--server", nats_server.url)
    try:
        await eventually(lambda: "hello" in terminal.text() and "running" in terminal.text(), timeout=30)
        frames = terminal.text().count("nex monitor")
        # It refreshes: another call shows up in a later frame without restarting anything.
        async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
            await client.invoke("monitor.hello", b"again")
        await eventually(lambda: " 2/0 " in terminal.text(), timeout=15)
        assert terminal.text().count("nex monitor") > frames
        if quit_with == "q":
            os.write(terminal.master, b"q")
        else:
            process.send_signal(getattr(signal, quit_with))
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        terminal.close()
    text = terminal.text()
    assert "Traceback" not in text
    assert any(line.startswith("nex monitor · ns default · 1 node, 1 workload · ") and line.endswith(" · q quits")
               for line in text.splitlines())  # the header, whole on one line
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, "rows wider than the terminal"
