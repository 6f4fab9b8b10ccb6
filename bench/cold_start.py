"""Cold start per language: from DEPLOY sent to the first answered call, through a node.

    .venv/bin/python bench/cold_start.py [--starts 20]

A `nex node up` process on a nats-server started here, its agents already running
(one function of each type is deployed first). Each start is a DEPLOY request of a
new function on its own subject, then a request to it, timed together, then an
UNDEPLOY. Medians of ``--starts`` runs:

- JavaScript: a one-line function (QuickJS compiles the script at load);
- Wasm compiling: tests/wasm/fn.c built with clang, made unique for every start (a
  custom section with a counter changes its sha256), so the node's compiled-module
  cache (nex.agent.wasm.module_cache) never has it and Cranelift compiles it;
- Wasm from the cache: the same module every time, compiled once before.

The baseline is the bare nats-py echo round trip in the same run. Native processes
and OCI containers have their own: bench/deploy_latency.py (native deploy to
running) and bench/oci_start.py (OCI deploy to running against `runc run`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import build_wasm, nats_and_node, report
from function_scale import echo_ready
from roundtrip import ECHO_SUBJECT, echo_process

JS_SOURCE = b"(subject, payload) => 'ready'\n"


def unique(module: bytes, n: int) -> bytes:
    """The module with a custom section named after ``n``: the same code, another sha256."""
    name = f"nex-bench-{n}".encode()
    body = bytes([len(name)]) + name
    return module + b"\x00" + bytes([len(body)]) + body


def artifact(path: Path) -> dict:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


async def start_once(nc, node_id: str, kind: str, path: Path, subject: str, payload: bytes) -> float:
    """Seconds from DEPLOY sent to the first reply of the function; it is undeployed after."""
    started = time.perf_counter()
    msg = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}", json.dumps({
        "name": subject.replace(".", "-"), "type": kind, "artifact": artifact(path),
        "triggers": [{"subject": subject}]}).encode(), timeout=30)
    workload = json.loads(msg.data)
    if "error" in workload:
        raise RuntimeError(workload["error"]["message"])
    await nc.request(subject, payload, timeout=10)
    elapsed = time.perf_counter() - started
    await nc.request(f"$NEX.SVC.default.control.UNDEPLOY.{workload['id']}", b'{"grace_ms": 1000}', timeout=10)
    return elapsed


async def main(starts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        js = work / "ready.js"
        js.write_bytes(JS_SOURCE)
        module = build_wasm("tests/wasm/fn.c", work).read_bytes()
        cached = work / "cached.wasm"
        cached.write_bytes(module)
        async with nats_and_node(["--sandbox", "none"], artifact_root=work) as (server, nc, node_id, _):
            async with echo_process(server.url):
                await echo_ready(nc)
                # Warm: both agents started, and the cached module compiled once.
                await start_once(nc, node_id, "javascript", js, "bench.warm.js", b"")
                await start_once(nc, node_id, "wasm", cached, "bench.warm.wasm", b"x")
                samples: dict[str, list[float]] = {"echo": [], "javascript": [], "wasm compiling": [],
                                                   "wasm cached": []}
                for i in range(starts):
                    fresh = work / f"fresh{i}.wasm"
                    fresh.write_bytes(unique(module, i))
                    for _ in range(20):
                        began = time.perf_counter()
                        await nc.request(ECHO_SUBJECT, b"x", timeout=5)
                        samples["echo"].append(time.perf_counter() - began)
                    samples["javascript"].append(await start_once(nc, node_id, "javascript", js, f"bench.js.{i}", b""))
                    samples["wasm compiling"].append(
                        await start_once(nc, node_id, "wasm", fresh, f"bench.fresh.{i}", b"x"))
                    samples["wasm cached"].append(
                        await start_once(nc, node_id, "wasm", cached, f"bench.cached.{i}", b"x"))

    ms = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    report(f"cold start: DEPLOY to first reply (median of {starts}; module {len(module)} bytes)", {
        "baseline: nats-py echo round trip ms": ms["echo"],
        "javascript ms": ms["javascript"],
        "wasm, compiling the module ms": ms["wasm compiling"],
        "wasm, compiled module from the cache ms": ms["wasm cached"],
        "javascript / echo": ms["javascript"] / ms["echo"],
        "wasm compiling / echo": ms["wasm compiling"] / ms["echo"],
        "wasm cached / echo": ms["wasm cached"] / ms["echo"],
        "native, OCI": "bench/deploy_latency.py, bench/oci_start.py",
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20)
    asyncio.run(main(parser.parse_args().starts))
