"""The isolation tiers side by side: start, request latency and idle memory of process, container and gVisor.

All in one run, so that the ratios hold on a loaded machine:

- **start**: a bare `runc run` and a bare `runsc run` (`--platform=ptrace --network=none
  --oci-seccomp`) of the same bundle until the pid file appears; then deploy to running
  (the DEPLOY's reply) on a node of each tier (`--sandbox none`, `oci`, `gvisor`);
- **request latency**: a static TCP echo service (bench/programs/echo.c) deployed with
  `network: host` on each tier, 64-byte round trips over loopback, p50 and p99;
- **idle memory**: N idle services on each tier, the memory their cgroups hold (plain
  processes: their RSS), per service.

Run: .venv/bin/python bench/gvisor_tier.py [N]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bare_runs, build_static, nats_and_node, report
from deploy_latency import artifact, deploy, native_deploys, undeploy

from nex.sandbox.gvisor import GvisorSettings
from nex.sandbox.runner import OciRunner

TIERS = {"process": "none", "container": "oci", "gvisor": "gvisor"}
IDLE = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_latency(port: int, count: int) -> list[float]:
    payload = b"x" * 64
    for _ in range(500):  # the service may take a moment to listen: a few round trips say it does
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(payload)
                await asyncio.wait_for(reader.readexactly(len(payload)), 2)
            break
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            if writer is not None:
                writer.close()
            await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the echo service did not answer")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        writer.write(payload)
        await reader.readexactly(len(payload))
        samples.append(time.perf_counter() - start)
    writer.close()
    return samples


async def tier(mode: str, ticker: Path, echo: Path, count: int) -> dict[str, float]:
    async with nats_and_node(["--sandbox", mode], artifact_root=ticker.parent) as (_, nc, node_id, _pid):
        starts = await native_deploys(nc, node_id, ticker, count)
        port = free_port()
        service = await deploy(nc, node_id, {"name": "echo", "type": "native", "artifact": artifact(echo),
                                             "argv": [str(port)], "network": "host"})
        try:
            latency = sorted(await echo_latency(port, count * 20))
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
            # Under gVisor with the host's network this runsc drops the connection after a few round trips.
            latency = []
            print(f"{mode}: echo failed: {exc!r}", file=sys.stderr)
        await undeploy(nc, service["id"])
        idle = [await deploy(nc, node_id, {"name": f"idle{i}", "type": "native", "artifact": artifact(ticker)})
                for i in range(IDLE)]
        await asyncio.sleep(1.0)  # past their start: what they hold while idle
        memory = []
        for workload in idle:
            msg = await nc.request(f"$NEX.SVC.default.control.WPING.{workload['id']}", b"", timeout=5)
            usage = json.loads(msg.data)["workloads"][0].get("usage") or {}
            memory.append(usage.get("memory_bytes") or 0)
        for workload in idle:
            await undeploy(nc, workload["id"])
    return {"start": statistics.median(starts), "p50": statistics.median(latency) if latency else float("nan"),
            "p99": latency[int(len(latency) * 0.99) - 1] if latency else float("nan"),
            "memory": statistics.median(memory)}


async def main(count: int) -> None:
    runsc = shutil.which("runsc")
    runc = shutil.which("runc") or shutil.which("crun")
    if runsc is None or runc is None:
        raise SystemExit("runsc and runc are needed (apt-get install runsc runc)")
    probe_dir = Path(tempfile.mkdtemp(prefix="nex-bench-probe-"))
    probe_dir.chmod(0o711)
    runner, why = await OciRunner.probe_gvisor(probe_dir)
    shutil.rmtree(probe_dir, ignore_errors=True)
    if runner is None or runner.gvisor is None:
        raise SystemExit(f"gVisor does not run here: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o711)
        ticker = build_static("tests/programs/ticker.c", Path(tmp))
        echo = build_static("bench/programs/echo.c", Path(tmp))
        bare_runc = await bare_runs(runc, [], ticker, Path(tmp), count)
        bare_runsc = await bare_runs(runsc, GvisorSettings(runner.gvisor.platform).flags(), ticker, Path(tmp), count)
        results = {name: await tier(mode, ticker, echo, count) for name, mode in TIERS.items()}
    ms = lambda s: s * 1e3  # noqa: E731
    rows: dict[str, object] = {
        "baseline: bare runc run to pid file ms": ms(statistics.median(bare_runc)),
        "bare runsc run to pid file ms": ms(statistics.median(bare_runsc)),
        "bare runsc / bare runc": statistics.median(bare_runsc) / statistics.median(bare_runc),
    }
    for name, r in results.items():
        rows[f"{name}: deploy to running ms"] = ms(r["start"])
    rows["gvisor deploy / bare runsc run"] = results["gvisor"]["start"] / statistics.median(bare_runsc)
    rows["gvisor deploy / bare runc run"] = results["gvisor"]["start"] / statistics.median(bare_runc)
    for name, r in results.items():
        rows[f"{name}: echo p50 / p99 us"] = f"{r['p50'] * 1e6:.0f} / {r['p99'] * 1e6:.0f}"
    rows["gvisor echo p50 / container echo p50"] = results["gvisor"]["p50"] / results["container"]["p50"]
    for name, r in results.items():
        rows[f"{name}: idle memory per service MiB"] = r["memory"] / (1 << 20)
    report(f"isolation tiers (medians of {count}; idle memory: {IDLE} services each)", rows)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
