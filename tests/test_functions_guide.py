"""docs/functions.md says what its examples do: this runs them and checks.

Every example of the guide is a file under docs/examples/functions/, included in
the guide verbatim after an ``<!-- example: FILE -->`` marker; every block of
commands after a ``<!-- run: NAME -->`` marker is run as written, on a real node,
in a copy of that directory: ``nex ...`` lines through the CLI (in this process,
against the test's nats-server), any other line (clang, cargo, go) with bash. The
``# comment`` of a ``nex invoke``, ``nex logs`` or ``nex workload`` line, or one that
starts with ``nex: error:``, is what the command must print. So the guide cannot drift
from its files, and a file cannot stop doing what the guide says.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import eventually, running_node
from nex.cli import cli
from nex.fleet.store import AppStore

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "functions.md"
EXAMPLES = ROOT / "docs" / "examples" / "functions"
# Files of the examples that are not code the guide shows (build manifests).
NOT_SHOWN = {"rust/Cargo.toml", "go/go.mod"}

_EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```\n", re.S)
_RUN = re.compile(r"<!-- run: (\S+) -->\n```sh\n(.*?)```\n", re.S)
_COMMENT = re.compile(r"^(.*?)\s+#\s(.*)$")
NOT_YET_THERE = "no function is triggered by"  # an app's replicas are still being placed
# The guide's blocks of commands; "app" needs a node that stands for the reconciler (its own test).
RUNS = ("hello", "double", "broken", "visits", "ask", "spin", "hog", "cart", "upper", "counter", "rust", "go", "greet",
        "visitors", "broken-py")


def examples() -> dict[str, str]:
    return dict(_EXAMPLE.findall(GUIDE.read_text()))


def runs() -> dict[str, list[str]]:
    return {name: [line for line in body.splitlines() if line.strip()]
            for name, body in _RUN.findall(GUIDE.read_text())}


def test_the_guide_shows_every_example_file_verbatim():
    shown = examples()
    files = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file()} - NOT_SHOWN
    assert set(shown) == files, "every example file is in the guide, and only those"
    for name, text in shown.items():
        assert text == (EXAMPLES / name).read_text(), f"docs/functions.md shows {name} differently"
    assert set(runs()) == {*RUNS, "app"}, "a block of commands no test runs, or a test of a block not there"


def _missing_toolchain(run: str) -> str | None:
    """Why this machine cannot build a run's example, or None."""
    if run == "rust":
        if shutil.which("cargo") is None or shutil.which("rustc") is None:
            return "cargo is not installed"
        libdir = subprocess.run(["rustc", "--print", "target-libdir", "--target", "wasm32-wasip1"],
                                capture_output=True, text=True)
        if libdir.returncode != 0 or not Path(libdir.stdout.strip()).is_dir():
            return "the Rust target wasm32-wasip1 is not installed (rustup target add wasm32-wasip1)"
    if run == "go" and shutil.which("go") is None:
        return "go is not installed"
    return None


async def run_line(line: str, work: Path, url: str, retry_s: float) -> None:
    match = _COMMENT.match(line)
    command, comment = (match.group(1), match.group(2)) if match else (line, None)
    if not command.startswith("nex "):
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        process = await asyncio.create_subprocess_exec("bash", "-c", command, cwd=work, env=env,
                                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = await process.communicate()
        assert process.returncode == 0, f"{command}:\n{output.decode(errors='replace')}"
        return
    args = shlex.split(command)[1:]
    # A comment is what the command prints for invoke and workload, and for any that fails;
    # on another command (devrun, apply) that succeeds, it is a remark.
    shows_output = args[0] in ("invoke", "workload", "logs") or (comment or "").startswith("nex: error:")
    expected = comment if shows_output else None
    if args[0] == "logs":
        retry_s = retry_s or 10  # log lines reach their stream just after the reply

    async def attempt() -> Result | None:
        # The CLI runs its own event loop (asyncio.run): on a thread, while the node runs in this one.
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: CliRunner().invoke(cli, args, env={"NATS_URL": url, "NEX_NAMESPACE": None}))
        if retry_s and (NOT_YET_THERE in result.output or (args[0] == "logs" and result.output.strip() != expected)):
            return None
        return result
    result = await eventually(attempt, timeout=retry_s, interval=0.2) if retry_s else await attempt()
    assert result is not None
    if expected is None:
        assert result.exit_code == 0, f"{command}:\n{result.output}"
    else:
        assert result.output.strip() == expected, f"{command}: the guide says {expected!r}"


async def run_block(name: str, nats_server, tmp_path: Path, monkeypatch, retry_s: float = 0) -> None:
    if name in ("upper", "counter"):
        assert shutil.which("clang"), "clang is missing: `make test` installs the Debian packages in WASM_DEBS"
    reason = _missing_toolchain(name)
    if reason is not None:
        pytest.skip(f"the guide's {name} example is not run here: {reason}")
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work)
    monkeypatch.chdir(work)  # the commands name the files relative to the examples' directory
    for line in runs()[name]:
        await run_line(line, work, nats_server.url, retry_s)


@pytest.mark.parametrize("name", RUNS)
async def test_a_guide_example_does_what_the_guide_says(name, node, nats_server, tmp_path, monkeypatch):
    await run_block(name, nats_server, tmp_path, monkeypatch)


async def test_the_guide_app_file_runs_its_functions(nats_server, tmp_path, monkeypatch):
    # nex apply stores the app; a node that stands for the fleet's reconciler places it.
    async with running_node(nats_server, tmp_path / "node", "guide", reconciler=True) as node:
        # The app seals env to the fleet key the lease publishes: applied once the node holds it,
        # as a user who started the node a moment before would.
        await eventually(AppStore(node.nc).lease, timeout=15, interval=0.2)
        await run_block("app", nats_server, tmp_path, monkeypatch, retry_s=30)


def test_the_rust_example_keeps_the_wasi_contract_built_natively(tmp_path):
    # Where the wasm32-wasip1 target is missing (so the rust run above skips), the same source
    # built for this machine still shows that it compiles and keeps the contract: argv, stdin,
    # stdout, stderr.
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc is not installed")
    binary = tmp_path / "upper"
    subprocess.run([rustc, "--edition", "2021", "-O", "-o", str(binary), str(EXAMPLES / "rust/src/main.rs")],
                   check=True, capture_output=True)
    done = subprocess.run([str(binary), "demo.upper-rs"], input=b"some text", capture_output=True, timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"SOME TEXT", b"called on demo.upper-rs\n")
