"""OCI start latency: DEPLOY of an image to running, against a bare `runc run --detach`.

The image (one static binary that ticks until SIGTERM) is built here with umoci.
The first deploy pulls nothing but unpacks the image; the next ones reuse it. The
baseline runs the same unpacked rootfs, with a bundle of the same config.json the
node writes, through runc directly, in the same run.
Run: .venv/bin/python bench/oci_start.py [N]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import build_static, nats_and_node, report
from deploy_latency import deploy, undeploy

from nex.sandbox.bundle import ContainerSpec, write_bundle
from nex.sandbox.idmap import mount_idmapped, unmount
from nex.sandbox.idranges import host_ranges
from nex.sandbox.runner import make_bundle_dir


def build_image_tarball(binary: Path, work: Path) -> Path:
    layout, image = work / "layout", f"{work / 'layout'}:bench"
    tree = work / "tree" / "bin"
    tree.mkdir(parents=True)
    shutil.copy(binary, tree / "imagemain")
    for command in (["umoci", "init", "--layout", str(layout)], ["umoci", "new", "--image", image],
                    ["umoci", "insert", "--image", image, str(work / "tree"), "/"],
                    ["umoci", "config", "--image", image, "--config.entrypoint", "/bin/imagemain",
                     "--config.cmd", "serve"]):
        subprocess.run(command, check=True, capture_output=True)
    tarball = work / "image.tar"
    with tarfile.open(tarball, "w") as tar:
        for child in sorted(layout.iterdir()):
            tar.add(child, arcname=child.name)
    return tarball


def runc(root: Path, *args: str) -> None:
    subprocess.run(["runc", "--root", str(root), *args], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bare_runc(rootfs: Path, work: Path, count: int) -> list[float]:
    """`runc run --detach` of the unpacked rootfs: returns once the container's process runs.

    The rootfs is mounted as the node mounts it (idmapped, read-only) once, outside the
    timing: what the node adds per deploy, that mount included, shows in the ratio."""
    root = work / "runc-root"
    samples = []
    ids = host_ranges().allocate("bench")
    bundle = make_bundle_dir(work / "bundles" / "bench", ids.base)
    (bundle / "rootfs").mkdir()
    mount_idmapped(rootfs, bundle / "rootfs", ids.base, ids.size)
    try:
        for i in range(count):
            container_id = f"nex-bench-{i}"
            write_bundle(ContainerSpec(id=container_id, rootfs=bundle / "rootfs", args=["/bin/imagemain", "serve"],
                                       user=(0, 0), id_base=ids.base), bundle)
            start = time.perf_counter()
            runc(root, "run", "--detach", "--bundle", str(bundle), container_id)
            samples.append(time.perf_counter() - start)
            runc(root, "delete", "--force", container_id)
    finally:
        unmount(bundle / "rootfs")
        host_ranges().release(ids.slot)
    return samples


async def main(count: int) -> None:
    # Every directory above a rootfs must be searchable by the container's unprivileged root.
    work = Path(tempfile.mkdtemp(prefix="nex-bench-oci-"))
    work.chmod(0o711)
    try:
        tarball = build_image_tarball(build_static("tests/programs/imagemain.c", work), work)
        artifact = {"uri": f"file://{tarball}", "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()}
        state = work / "node"
        async with nats_and_node(["--sandbox", "oci"], state_dir=state, artifact_root=work) as (server, nc, node_id, _):
            start = time.perf_counter()
            first = await deploy(nc, node_id, {"name": "first", "type": "oci", "artifact": artifact})
            first_ms = (time.perf_counter() - start) * 1e3
            await undeploy(nc, first["id"])
            samples = []
            for i in range(count):
                start = time.perf_counter()
                workload = await deploy(nc, node_id, {"name": f"o{i}", "type": "oci", "artifact": artifact})
                samples.append(time.perf_counter() - start)
                assert workload["state"] == "running"
                await undeploy(nc, workload["id"])
            rootfs = next((state / "images").iterdir()) / "rootfs"
            baseline = bare_runc(rootfs, work, count)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    report("OCI start (median of %d)" % count, {
        "baseline: bare runc run --detach ms": ms(baseline),
        "oci deploy to running, image cached ms": ms(samples),
        "oci deploy / bare runc run": ms(samples) / ms(baseline),
        "first deploy (unpack included) ms": first_ms,
    })
    print(json.dumps({"runc_ms": ms(baseline), "oci_ms": ms(samples), "first_ms": first_ms}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
