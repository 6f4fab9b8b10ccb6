"""Node and JavaScript agent memory with 0, 100 and 1,000 idle functions deployed.

Deploys through the control API to a `nex node up` process, then reads VmRSS of
the node and of its agent. Baseline in the same run: the node with no function.
Run: .venv/bin/python bench/node_memory.py [--counts 0,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path

from common import children_of, nats_and_node, rss_bytes

SOURCE = b"(subject, payload) => 'hello ' + subject"
MIB = 1 << 20


def agent_pid(node_pid: int) -> int | None:
    for pid in children_of(node_pid):
        try:
            if b"nex.agent.js" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    return None


async def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "idle.js"
        script.write_bytes(SOURCE)
        artifact = {"uri": f"file://{script}", "sha256": hashlib.sha256(SOURCE).hexdigest()}
        async with nats_and_node(artifact_root=Path(tmp)) as (_, nc, node_id, node_pid):
            deployed = 0
            rows = []
            base_total = None
            for target in counts:
                start = time.perf_counter()
                while deployed < target:
                    body = {"name": f"f{deployed}", "type": "javascript", "artifact": artifact,
                            "triggers": [{"subject": f"idle.{deployed}"}]}
                    msg = await nc.request(f"$NEX.SVC.default.control.DEPLOY.{node_id}",
                                           json.dumps(body).encode(), timeout=10)
                    if b'"error"' in msg.data[:20]:
                        raise RuntimeError(msg.data.decode())
                    deployed += 1
                elapsed = time.perf_counter() - start
                await asyncio.sleep(1.0)  # let the heaps settle
                if target:
                    reply = await nc.request(f"idle.{target - 1}", b"", timeout=5)
                    assert reply.data == f"hello idle.{target - 1}".encode()
                agent = agent_pid(node_pid)
                node_rss = rss_bytes(node_pid)
                agent_rss = rss_bytes(agent) if agent else 0
                total = node_rss + agent_rss
                base_total = total if base_total is None else base_total
                per_function = (total - base_total) / target / 1024 if target else 0.0
                rows.append((target, node_rss / MIB, agent_rss / MIB, per_function, elapsed))
    print("\n## node and agent memory with idle JavaScript functions")
    print(f"{'functions':>9} {'node MiB':>9} {'agent MiB':>10} {'KiB/function':>13} {'deploy s':>9}")
    for target, node_mib, agent_mib, per_function, elapsed in rows:
        print(f"{target:>9} {node_mib:>9.1f} {agent_mib:>10.1f} {per_function:>13.0f} {elapsed:>9.2f}")
    print("target: at most 2048 KiB per idle function (node + agent, against the first row)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,100,1000")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.counts.split(",")]))
