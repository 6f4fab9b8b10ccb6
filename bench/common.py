"""Shared bench plumbing: a nats-server, a node process, a bare echo baseline, statistics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_us(samples_s: list[float]) -> dict[str, float]:
    micro = [s * 1e6 for s in samples_s]
    return {"p50_us": statistics.median(micro), "p99_us": percentile(micro, 0.99), "n": len(micro)}


def build_static(source: str, out_dir: Path) -> Path:
    binary = out_dir / Path(source).stem
    subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(ROOT / source)], check=True)
    return binary


def build_wasm(source: str, out_dir: Path) -> Path:
    """A C file of the repository built for wasm32-wasi, with nex.h (the host services) on the include path."""
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang for wasm32-wasi is missing (Makefile: WASM_DEBS)")
    module = out_dir / f"{Path(source).stem}.wasm"
    subprocess.run([clang, "--target=wasm32-wasi", "-O2", "-s", f"-I{ROOT / 'src/nex/agent/include'}",
                    "-o", str(module), str(ROOT / source)], check=True)
    return module


@asynccontextmanager
async def nats_and_node(extra_node_args: list[str] | None = None, state_dir: Path | None = None,
                        artifact_root: Path | None = None):
    """A nats-server on a free port and a `nex node up` process on it; yields (server, nc, node_id, node_pid).

    The node's state dir is a temporary one unless ``state_dir`` is given; it serves file://
    artifacts from ``artifact_root`` (none: it refuses every file://).
    """
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js", port=0)
        await server.start()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nex", "node", "up", "--server", server.url,
            "--state-dir", str(state_dir or Path(tmp) / "node"), "--name", "bench", "--log-level", "warning",
            *(["--artifact-root", str(artifact_root)] if artifact_root else []), *(extra_node_args or []),
            stdout=subprocess.DEVNULL,
        )
        nc = await connect(ConnectOptions(servers=[server.url]))
        try:
            node_id = None
            for _ in range(200):
                try:
                    msg = await nc.request("$NEX.SVC.default.control.PING", b"", timeout=0.2)
                    node_id = json.loads(msg.data)["node_id"]
                    break
                except Exception:  # node not up yet
                    await asyncio.sleep(0.05)
            if node_id is None:
                raise RuntimeError("node did not come up")
            yield server, nc, node_id, process.pid
        finally:
            await nc.close()
            process.terminate()
            await process.wait()
            await server.stop()


async def echo_responder(nc, subject: str):
    """The baseline: the smallest nats-py responder there is."""
    async def echo(msg):
        await msg.respond(msg.data)
    return await nc.subscribe(subject, cb=echo)


async def timed_requests(nc, subject: str, payload: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await nc.request(subject, payload, timeout=5)
        samples.append(time.perf_counter() - start)
    return samples


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` itself, children excluded; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(title: str, rows: dict) -> None:
    print(f"\n## {title}")
    for key, value in rows.items():
        print(f"  {key:<40} {value:.2f}" if isinstance(value, float) else f"  {key:<40} {value}")


async def bare_runs(runtime: str, flags: list[str], binary: Path, tmp: Path, count: int) -> list[float]:
    """The baseline of a sandboxed start: `<runtime> run` (runc, runsc) of a bundle of ``binary``
    until its pid file appears, then KILL and delete; seconds each."""
    from nex.sandbox.bundle import HOST_ID_BASE, ContainerSpec, write_bundle
    from nex.sandbox.runner import make_bundle_dir

    root = tmp / f"root-{Path(runtime).name}"
    root.mkdir(parents=True)
    bundle = make_bundle_dir(tmp / "bundles" / Path(runtime).name, HOST_ID_BASE)
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
            runtime, "--root", str(root), *flags, "run", "--bundle", str(bundle), "--pid-file", str(pid_file), cid,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if process.returncode is not None:
                raise RuntimeError(f"{runtime} run exited with {process.returncode} before the container ran"
                                   f" (is {tmp} open to the container's uids? mode 0711)")
            await asyncio.sleep(0.001)
        samples.append(time.perf_counter() - start)
        kill = await asyncio.create_subprocess_exec(runtime, "--root", str(root), *flags, "kill", cid, "KILL")
        await kill.wait()
        await process.wait()
        delete = await asyncio.create_subprocess_exec(runtime, "--root", str(root), "delete", "--force", cid,
                                                      stderr=asyncio.subprocess.DEVNULL)
        await delete.wait()
    shutil.rmtree(bundle, ignore_errors=True)
    return samples
