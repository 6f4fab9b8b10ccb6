"""The warm Wasm pool: request round trips to a function with the pool and without it, and the echo.

    .venv/bin/python bench/wasm_pool.py [--sequential 3000]

One nats-server, three responders measured one after the other with sequential
requests (p50): a bare nats-py echo in a process of its own, tests/wasm/fn.c in
the wasm agent (through WasmRuntime) with no pool (``NEX_WASM_WARM_INSTANCES=0``
in the agent's environment: every call instantiates the module, as before the
pool), and the same with the pool (the default, ``WARM_INSTANCES`` per function).
Between two sequential requests the agent is idle: that is when its warmer makes
the next instance and frees the last call's store, so neither is on a call's path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from common import build_wasm
from roundtrip import ECHO_SUBJECT, echo_process, measure
from wasm_roundtrip import SOURCE, spec_for

from nex.agent.wasm.wasmtime_engine import ENV_WARM_INSTANCES, WARM_INSTANCES
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.base import RuntimeContext
from nex.runtimes.wasm import WasmRuntime


async def round_trips(module: Path, tmp: Path, sequential: int) -> dict[str, float]:
    """p50 µs over NATS of the bare echo and of the function with and without the pool."""
    server = NatsServer(store_dir=tmp / "js", port=0, jetstream=False)
    await server.start()
    options = ConnectOptions(servers=[server.url])
    nc = await connect(options)
    figures = {}
    try:
        async with echo_process(server.url):
            figures["echo"] = (await measure(nc, ECHO_SUBJECT, sequential, 0, 1)).p50_us
            for warm in (0, WARM_INSTANCES):
                os.environ[ENV_WARM_INSTANCES] = str(warm)  # the agent inherits it
                runtime = WasmRuntime(RuntimeContext(node_id="BENCH", state_dir=tmp / f"state{warm}",
                                                     connect_options=options))
                try:
                    subject = f"bench.upper{warm}"
                    await runtime.start(spec_for(module, subject), lambda stream, line: None)
                    figures[f"warm{warm}"] = (await measure(nc, subject, sequential, 0, 1)).p50_us
                finally:
                    await runtime.close()
    finally:
        os.environ.pop(ENV_WARM_INSTANCES, None)
        await nc.close()
        await server.stop()
    return figures


def main(sequential: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        module = build_wasm(SOURCE, tmp)
        trips = asyncio.run(round_trips(module, tmp, sequential))
    echo, cold, warm = trips["echo"], trips["warm0"], trips[f"warm{WARM_INSTANCES}"]
    print(f"request round trip over NATS, {sequential} sequential, p50 (ratio to the echo):")
    print(f"  bare nats-py echo                {echo:8.1f} us")
    print(f"  wasm, instantiating on every call{cold:8.1f} us   {cold / echo:.2f}")
    print(f"  wasm, warm pool                  {warm:8.1f} us   {warm / echo:.2f}   (pool/no pool {warm / cold:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=3000)
    args = parser.parse_args()
    main(args.sequential)
