"""RSS of the JavaScript agent with 0, 100 and 1,000 idle functions loaded.

    .venv/bin/python bench/js_memory.py [--counts 0,100,1000]

Starts its own nats-server and one agent, loads trivial functions through the
agent protocol, and reads the agent's VmRSS from /proc after each step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from nex.agent import protocol
from nex.agent.protocol import ENV_CONNECT, ENV_NODE_ID
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.runtimes.agent_process import AgentProcess

SOURCE = "(subject, payload) => 'hello ' + subject"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def load_request(i: int) -> protocol.Load:
    return protocol.Load(workload_id=f"w{i}", name=f"fn{i}", namespace="bench", source=SOURCE,
                         triggers=[protocol.TriggerSubscription(subject=f"bench.fn{i}", queue=f"nex.bench.fn{i}")],
                         timeout_ms=5000, memory_bytes=64 * 1024 * 1024)


async def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0, jetstream=False)
        await server.start()
        options = ConnectOptions(servers=[server.url])
        env = {**os.environ, ENV_CONNECT: options.to_json(), ENV_NODE_ID: "BENCH"}
        agent = await AgentProcess.start([sys.executable, "-m", "nex.agent.js"], env,
                                         name="javascript agent", ready_timeout=15)
        nc = await connect(options)
        try:
            loaded = 0
            base = rss_mib(agent.pid)
            print(f"{'functions':>9}  {'RSS MiB':>8}  {'per function KiB':>16}  {'threads':>7}")
            for count in counts:
                while loaded < count:
                    batch = range(loaded, min(count, loaded + 50))
                    replies = await asyncio.gather(*(agent.request(load_request(i)) for i in batch))
                    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
                    loaded = batch.stop
                if loaded:  # each function has built its context and answered once
                    answers = await asyncio.gather(
                        *(nc.request(f"bench.fn{i}", b"", timeout=30) for i in range(loaded)))
                    assert all(a.data.startswith(b"hello") for a in answers)
                await asyncio.sleep(0.5)
                rss = rss_mib(agent.pid)
                per = (rss - base) * 1024 / loaded if loaded else 0.0
                print(f"{loaded:>9}  {rss:>8.1f}  {per:>16.0f}  {threads(agent.pid):>7}")
        finally:
            await nc.close()
            await agent.stop(3)
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,100,1000")
    asyncio.run(main([int(c) for c in parser.parse_args().counts.split(",")]))
