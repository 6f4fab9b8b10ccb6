"""docs/getting-started.md, followed by the letter: its shell blocks run against a real node.

The guide marks each ``sh`` block for this test with an HTML comment just above it:
``run`` (every command runs, and must print what its ``# →`` comment promises),
``node`` (``make run``: replaced by the command it runs, ``nex node up``, on a free
port), or ``skip`` (install steps CI has done, interactive commands), with the
reason. So the guide and the test cannot drift apart.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import eventually
from nex.connection import ConnectOptions, connect
from nex.natsserver import free_port

GUIDE = Path(__file__).parent.parent / "docs" / "getting-started.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"(?:<!-- guide-test: (\w+)[^\n]*-->\n)?```sh\n(.*?)```", re.S)
HEREDOC = re.compile(r"<<-?'?(\w+)'?")
# Commands that only read: a user runs them again when the node has not caught up
# yet (a log line on its way to the stream, a call count the agent reports soon).
READ_ONLY = ("nex logs", "nex events", "nex workload ls", "nex monitor", "nex node ls")
WALL_LIMIT_S = 300


@dataclass
class Command:
    text: str
    expect: list[str]  # fragments of the output, in order

    @property
    def read_only(self) -> bool:
        return self.text.startswith(READ_ONLY)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(GUIDE.read_text())]


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


def test_every_block_of_the_guide_is_marked_for_this_test():
    marks = [mark for mark, _ in blocks()]
    assert marks and None not in marks, "an sh block without a guide-test marker"
    assert set(marks) <= {"run", "node", "skip"}
    assert marks.count("node") == 1
    node_block = next(text for mark, text in blocks() if mark == "node")
    assert node_block.strip() == "make run"


async def run_command(command: Command, cwd: Path, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command.text, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    output = out.decode(errors="replace")
    assert process.returncode == 0, f"{command.text!r} exited with {process.returncode}:\n{output}"
    return output


async def test_a_new_user_follows_the_guide(tmp_path):
    started = time.monotonic()
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NEX_NAMESPACE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `. .venv/bin/activate`
    node_log = (tmp_path / "node.log").open("wb")
    # What `make run` runs, on a free port and a state dir of the test's own.
    node = await asyncio.create_subprocess_exec(
        str(BIN / "nex"), "node", "up", "--port", str(port), "--state-dir", str(tmp_path / "state"),
        env=env, stdout=node_log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    env["NATS_URL"] = url
    try:
        await _wait_for_a_node(url)
        workdir = tmp_path / "work"
        workdir.mkdir()
        for mark, block in blocks():
            if mark != "run":
                continue
            for command in commands(block):
                if command.read_only and command.expect:
                    async def shows() -> str | None:
                        output = await run_command(command, workdir, env)
                        return output if in_order(output, command.expect) else None
                    await eventually(shows, timeout=20, interval=0.5)
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
    assert "DEV MODE" in (tmp_path / "node.log").read_text()
    elapsed = time.monotonic() - started
    print(f"the guide took {elapsed:.1f}s")
    assert elapsed < WALL_LIMIT_S


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


def test_commands_split_as_a_shell_would_read_them():
    parsed = commands("cat > a.js <<'JS'\nx => x  # → not a promise\nJS\n"
                      "# a comment\nnex invoke a b   # → {\"a\" … 1}\n")
    assert [c.text for c in parsed] == ["cat > a.js <<'JS'\nx => x  # → not a promise\nJS", "nex invoke a b"]
    assert parsed[0].expect == [] and parsed[1].expect == ['{"a"', "1}"]
    assert in_order("a then b", ["a", "b"]) and not in_order("b then a", ["a", "then", "a", "b", "x"])
