"""Sandbox start: deploy-to-running of a sandboxed native service vs a bare `runc run` of the same bundle.

Measured in the same run: a bare runc start (spawn `runc run --pid-file` of a bundle
written by nex.sandbox.bundle until the pid file appears, the point at which the
node's deploy replies), a sandboxed DEPLOY to reply (`--sandbox oci`), and a plain
process DEPLOY to reply (`--sandbox none`) for reference.
Run: .venv/bin/python bench/sandbox_start.py [N]
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import bare_runs, build_static, nats_and_node, report
from deploy_latency import native_deploys



async def deploys(binary: Path, sandbox: str, count: int) -> list[float]:
    async with nats_and_node(["--sandbox", sandbox], artifact_root=binary.parent) as (_, nc, node_id, _pid):
        return await native_deploys(nc, node_id, binary, count)


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o711)  # the bundles below it are entered by the container's uids
        ticker = build_static("tests/programs/ticker.c", Path(tmp))
        bare = await bare_runs(shutil.which("runc") or shutil.which("crun"), [], ticker, Path(tmp), count)
        sandboxed = await deploys(ticker, "oci", count)
        plain = await deploys(ticker, "none", count)
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    report("sandbox start (median of %d)" % count, {
        "baseline: bare runc run to pid file ms": ms(bare),
        "sandboxed native deploy to running ms": ms(sandboxed),
        "sandboxed deploy / bare runc run": ms(sandboxed) / ms(bare),
        "plain native deploy to running ms": ms(plain),
        "sandboxed deploy / plain deploy": ms(sandboxed) / ms(plain),
    })


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
