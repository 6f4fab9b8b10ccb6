"""Host KV get from a function against a direct nats-py KV get, and the bare nats-py echo.

    .venv/bin/python bench/host_kv.py [--calls 2000]

A `nex node up` process on a nats-server started here; in namespace ``bench``, the
KV bucket ``b`` (JetStream bucket ``NEXKV_bench_b``) holds one key. Timed, in
alternating blocks so that noise hits them alike, sequential requests of:

- the bare nats-py echo (its own process): one NATS round trip;
- a direct ``kv.get(key)`` with nats-py from the bench process: what a client
  without Nex pays for the value;
- a JavaScript function ``await nex.kv("b").get(key)``: a request to the function,
  whose agent makes the KV get and replies with the value;
- a Wasm function (tests/wasm/hostcalls.c, built with clang) calling the
  ``kv_get`` import from ``nex.h``.

A function's call costs at least an echo plus a KV get: the ratios function/echo
and function/(echo + get) say what Nex adds on top.
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

NAMESPACE = "bench"
BUCKET = "b"
KEY = "greeting"
VALUE = b"hello from the bucket"
BLOCKS = 10
JS_SOURCE = """async (subject, payload) => await nex.kv("b").get(new TextDecoder().decode(payload))
"""


def artifact(path: Path) -> dict:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


async def deploy(nc, node_id: str, body: dict) -> None:
    msg = await nc.request(f"$NEX.SVC.{NAMESPACE}.control.DEPLOY.{node_id}", json.dumps(body).encode(), timeout=30)
    reply = json.loads(msg.data)
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        module = build_wasm("tests/wasm/hostcalls.c", Path(tmp))
        script = Path(tmp) / "kvget.js"
        script.write_text(JS_SOURCE)
        async with nats_and_node(["--sandbox", "none"], artifact_root=Path(tmp)) as (server, nc, node_id, _):
            kv = await nc.jetstream().create_key_value(bucket=f"NEXKV_{NAMESPACE}_{BUCKET}")
            await kv.put(KEY, VALUE)
            await deploy(nc, node_id, {"name": "kvget-js", "type": "javascript", "artifact": artifact(script),
                                       "triggers": [{"subject": "bench.kv.js"}]})
            await deploy(nc, node_id, {"name": "kvget-wasm", "type": "wasm", "artifact": artifact(module),
                                       "triggers": [{"subject": "bench.kv.wasm"}]})

            async def echo() -> bytes:
                return (await nc.request(ECHO_SUBJECT, KEY.encode(), timeout=5)).data

            async def direct() -> bytes:
                return (await kv.get(KEY)).value

            async def js() -> bytes:
                return (await nc.request("bench.kv.js", KEY.encode(), timeout=5)).data

            async def wasm() -> bytes:
                return (await nc.request("bench.kv.wasm", f"get {BUCKET} {KEY}".encode(), timeout=5)).data

            cases = {"echo": echo, "direct": direct, "js": js, "wasm": wasm}
            async with echo_process(server.url):
                await echo_ready(nc)
                for name, call in cases.items():
                    got = await call()
                    assert got == (KEY.encode() if name == "echo" else VALUE), (name, got)
                    for _ in range(200):  # warm up
                        await call()
                samples: dict[str, list[float]] = {name: [] for name in cases}
                for _ in range(BLOCKS):
                    for name, call in cases.items():
                        for _ in range(max(1, calls // BLOCKS)):
                            start = time.perf_counter()
                            await call()
                            samples[name].append((time.perf_counter() - start) * 1e6)

    p50 = {name: statistics.median(values) for name, values in samples.items()}
    p99 = {name: statistics.quantiles(values, n=100)[98] for name, values in samples.items()}
    report(f"host KV get ({calls} sequential calls each, p50 / p99 us)", {
        "baseline: nats-py echo": f"{p50['echo']:.0f} / {p99['echo']:.0f}",
        "direct nats-py kv.get": f"{p50['direct']:.0f} / {p99['direct']:.0f}",
        "javascript nex.kv(b).get": f"{p50['js']:.0f} / {p99['js']:.0f}",
        "wasm nex_kv_get": f"{p50['wasm']:.0f} / {p99['wasm']:.0f}",
        "direct get / echo": p50["direct"] / p50["echo"],
        "javascript / echo": p50["js"] / p50["echo"],
        "wasm / echo": p50["wasm"] / p50["echo"],
        "javascript / (echo + direct get)": p50["js"] / (p50["echo"] + p50["direct"]),
        "wasm / (echo + direct get)": p50["wasm"] / (p50["echo"] + p50["direct"]),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
