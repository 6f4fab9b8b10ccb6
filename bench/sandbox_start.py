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
import time
from pathlib import Path

from common import build_static, nats_and_node, report
from deploy_latency import native_deploys

from nex.sandbox.bundle import HOST_ID_BASE, ContainerSpec, write_bundle
from nex.sandbox.runner import OciRunner, make_bundle_dir


async def bare_runc(binary: Path, tmp: Path, count: int) -> list[float]:
    runc = shutil.which("runc") or shutil.which("crun")
    runner = OciRunner.for_state_dir(runc, tmp / "bare")
    runner.root.mkdir(parents=True)
    bundle = make_bundle_dir(runner.bundles_dir / "ticker", HOST_ID_BASE)
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copyfile(binary, rootfs / "bin" / "ticker")
    (rootfs / "bin" / "ticker").chmod(0o555)
    write_bundle(ContainerSpec(id="nex-bench", rootfs=rootfs, args=["/bin/ticker"]), bundle)
    samples = []
    for i in range(count):
        cid, pid_file = f"nex-bench-{i}", bundle / "pid"
        pid_file.unlink(missing_ok=True)
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            runc, "--root", str(runner.root), "run", "--bundle", str(bundle), "--pid-file", str(pid_file), cid,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        while not (pid_file.exists() and pid_file.read_text().strip()):
            await asyncio.sleep(0.001)
        samples.append(time.perf_counter() - start)
        kill = await asyncio.create_subprocess_exec(runc, "--root", str(runner.root), "kill", cid, "KILL")
        await kill.wait()
        await process.wait()
    shutil.rmtree(bundle, ignore_errors=True)
    return samples


async def deploys(binary: Path, sandbox: str, count: int) -> list[float]:
    async with nats_and_node(["--sandbox", sandbox], artifact_root=binary.parent) as (_, nc, node_id, _pid):
        return await native_deploys(nc, node_id, binary, count)


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ticker = build_static("tests/programs/ticker.c", Path(tmp))
        bare = await bare_runc(ticker, Path(tmp), count)
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
