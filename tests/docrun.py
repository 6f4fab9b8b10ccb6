"""Runs a document's shell blocks against a real node, as a new user would type them: the
runner of tests/test_getting_started.py (docs/getting-started.md) and tests/test_readme.py
(the README's quick start).

A document marks each ``sh`` block for the runner with an HTML comment just above it:
``run`` (every command runs, and must print what its ``# →`` comment promises, fragments
separated by ``…`` in order), ``node`` (``make run``: replaced by the command it runs,
``nex node up``, on a free port), ``examples`` (``make examples``: the quick start's
programs built in the runner's copy of examples/quickstart), or ``skip`` (install steps
CI has done, commands that never end on their own), with the reason. So a document and
its test cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import eventually
from nex.connection import ConnectOptions, connect
from nex.natsserver import free_port

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"(?:<!-- guide-test: (\w+)[^\n]*-->\n)?```sh\n(.*?)```", re.S)
HEREDOC = re.compile(r"<<-?'?(\w+)'?")
MARKS = {"run", "node", "examples", "skip"}
# Commands that only read: a user runs them again when the node has not caught up
# yet (a log line on its way to the stream, a call count the agent reports soon).
READ_ONLY = ("nex logs", "nex events", "nex workload ls", "nex monitor", "nex node ls")
QUICKSTART = ROOT / "examples" / "quickstart"


@dataclass
class Command:
    text: str
    expect: list[str]  # fragments of the output, in order

    @property
    def read_only(self) -> bool:
        return self.text.startswith(READ_ONLY)


def blocks(text: str) -> list[tuple[str | None, str]]:
    """(mark, body) of every sh block of ``text``."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def commands(block: str) -> list[Command]:
    """One command a line, except a here-document, which runs with its body."""
    found: list[Command] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text, _, promise = line.partition("# →")
        expect = [f.strip() for f in promise.split("…") if f.strip()]
        if heredoc := HEREDOC.search(text):
            body = []
            for body_line in lines:
                body.append(body_line)
                if body_line == heredoc.group(1):
                    break
            text = "\n".join([text.rstrip(), *body])
        found.append(Command(text.strip(), expect))
    return found


def in_order(output: str, fragments: list[str]) -> bool:
    position = 0
    for fragment in fragments:
        position = output.find(fragment, position)
        if position < 0:
            return False
        position += len(fragment)
    return True


async def run_command(command: Command, cwd: Path, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command.text, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    output = out.decode(errors="replace")
    assert process.returncode == 0, f"{command.text!r} exited with {process.returncode}:\n{output}"
    return output


async def follow(text: str, tmp_path: Path, wall_limit_s: float) -> Path:
    """Run every block of ``text`` as its mark says, against a node started as ``make run`` starts
    one; returns the node's log. Commands run in a work dir of their own (with a copy of
    examples/quickstart, for the ``examples`` mark)."""
    started = time.monotonic()
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NEX_NAMESPACE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `. .venv/bin/activate`
    log_path = tmp_path / "node.log"
    node_log = log_path.open("wb")
    # What `make run` runs, on a free port and a state dir of the test's own.
    node = await asyncio.create_subprocess_exec(
        str(BIN / "nex"), "node", "up", "--port", str(port), "--state-dir", str(tmp_path / "state"),
        env=env, stdout=node_log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    env["NATS_URL"] = url
    try:
        await _wait_for_a_node(url)
        workdir = tmp_path / "work"
        shutil.copytree(QUICKSTART, workdir / "examples" / "quickstart",
                        ignore=shutil.ignore_patterns("upper.wasm", "ticker", "job"))
        for mark, block in blocks(text):
            if mark == "examples":  # what `make examples` runs, once the compilers are there
                block = "make -C examples/quickstart" + block[block.index("#"):] if "#" in block else block
                mark = "run"
            if mark != "run":
                continue
            for command in commands(block):
                if command.read_only and command.expect:
                    last: list[str] = []

                    async def shows() -> str | None:
                        output = await run_command(command, workdir, env)
                        last[:] = [output]
                        return output if in_order(output, command.expect) else None
                    try:
                        await eventually(shows, timeout=20, interval=0.5)
                    except AssertionError:
                        raise AssertionError(f"{command.text!r} never printed {command.expect}; "
                                             f"last:\n{last[0] if last else ''}") from None
                else:
                    output = await run_command(command, workdir, env)
                    assert in_order(output, command.expect), f"{command.text!r} printed:\n{output}"
        # Ctrl-C in terminal 1.
        os.killpg(node.pid, signal.SIGINT)
        assert await asyncio.wait_for(node.wait(), 30) == 0
    finally:
        if node.returncode is None:
            os.killpg(node.pid, signal.SIGKILL)
            await node.wait()
        node_log.close()
    elapsed = time.monotonic() - started
    print(f"the document took {elapsed:.1f}s")
    assert elapsed < wall_limit_s
    return log_path


async def _wait_for_a_node(url: str) -> None:
    async def answers() -> bool:
        try:
            nc = await connect(ConnectOptions(servers=[url]), max_reconnect_attempts=0, connect_timeout=1)
        except Exception:  # the embedded server is not listening yet
            return False
        try:
            await nc.request("$NEX.SVC.default.control.PING", b"", timeout=0.5)
            return True
        except Exception:  # no node answers yet
            return False
        finally:
            await nc.close()
    await eventually(answers, timeout=60, interval=0.3)
