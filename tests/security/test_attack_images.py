"""Attacks through OCI images: what an image carries must never reach into the host.

A keyless client deploys images to a real node that sandboxes with runc (dev mode: it
runs unsigned deploys). Each image is built here: device nodes, setuid files, a FIFO,
file capabilities, a layer that expands far past its size. The host user ``nobody``
then tries what the issue found it could: open the image's device, enter its tree,
run its setuid binary.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from nex.client import NexClient
from nex.sandbox.bundle import HOST_ID_BASE, ID_RANGE

from conftest import sandbox_verdict
from helpers import alive, control, eventually, running_node, start_node, wait_for_node
from oci_helpers import build_image

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# struct vfs_cap_data, revision 2: cap_net_raw (13) permitted and effective
FILE_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
MIB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the OCI sandbox needs root")


@asynccontextmanager
async def oci_node(nats_server, **config):
    """A node sandboxing with runc, in a state dir other users may search (as /var/lib is)."""
    state = Path(tempfile.mkdtemp(prefix="nex-attack-images-"))
    state.chmod(0o711)
    try:
        reason = await sandbox_verdict(state / "probe")
        if reason is not None:
            pytest.skip(f"this host cannot sandbox: {reason}")
        async with running_node(nats_server, state / "node", "images-node", sandbox="oci", **config) as node:
            yield node
    finally:
        shutil.rmtree(state, ignore_errors=True)


def hostile_tree(tree: Path) -> None:
    """What a hostile layer holds: a /dev/zero twin, a setuid and a setgid `id`, a FIFO,
    a binary with file capabilities."""
    os.mknod(tree / "bin" / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    for name, bits in (("suid-id", stat.S_ISUID), ("sgid-id", stat.S_ISGID)):
        shutil.copyfile(shutil.which("id"), tree / "bin" / name)
        (tree / "bin" / name).chmod(0o755 | bits)
    os.mkfifo(tree / "bin" / "pipe", 0o666)
    shutil.copyfile(shutil.which("id"), tree / "bin" / "cap-id")
    (tree / "bin" / "cap-id").chmod(0o755)
    os.setxattr(tree / "bin" / "cap-id", "security.capability", FILE_CAPABILITY)


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AS_NOBODY, *args], capture_output=True, text=True, timeout=10)


def oci_body(artifact, **extra) -> dict:
    return {"name": "web", "type": "oci", "artifact": artifact.model_dump(), **extra}


async def upload(nc, image, path: Path):
    return await NexClient(nc).upload_artifact(image.tarball(path))


def host_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def leftovers(node) -> list[str]:
    """What a deploy left on disk: images (staged or unpacked), bundles, mounts."""
    state = node.state_dir
    found = [str(p.relative_to(state)) for d in ("images", "bundles") if (state / d).is_dir()
             for p in (state / d).iterdir()]
    return found + mounts_under(state)


async def test_an_images_devices_and_setuid_files_never_reach_the_host(nats_server, nc, programs, tmp_path):
    image = build_image(tmp_path, programs["imagemain"], entrypoint=["/bin/imagemain"], cmd=["serve"],
                        prepare_tree=hostile_tree)
    artifact = await upload(nc, image, tmp_path / "hostile.tar")
    async with oci_node(nats_server) as node:
        code, workload = await control(nc, "DEPLOY", node.node_id, oci_body(artifact), timeout=30)
        assert code is None, workload
        unpacked = node.state_dir / "images" / image.manifest_digest.removeprefix("sha256:") / "rootfs"
        mounted = node.state_dir / "bundles" / workload["id"] / "rootfs"
        for rootfs in (unpacked, mounted):
            reading = as_nobody("head", "-c", "4", str(rootfs / "bin" / "zero"))
            listing = as_nobody("ls", str(rootfs / "bin"))
            setuid = as_nobody(str(rootfs / "bin" / "suid-id"), "-u")
            setgid = as_nobody(str(rootfs / "bin" / "sgid-id"), "-g")
            assert reading.returncode != 0, f"nobody read the image's device at {rootfs}"
            assert listing.returncode != 0, f"nobody entered the image's tree at {rootfs}"
            assert setuid.returncode != 0 or setuid.stdout.strip() == str(65534), \
                f"the image's setuid binary gave nobody euid {setuid.stdout.strip()}"
            assert setgid.returncode != 0 or setgid.stdout.strip() == str(65534), \
                f"the image's setgid binary gave nobody egid {setgid.stdout.strip()}"

        kept = {p.name: os.lstat(p) for p in (unpacked / "bin").iterdir()}
        assert "zero" not in kept and "pipe" not in kept, "device nodes and FIFOs are dropped"
        assert not kept["suid-id"].st_mode & (stat.S_ISUID | stat.S_ISGID)
        assert not kept["sgid-id"].st_mode & (stat.S_ISUID | stat.S_ISGID)
        assert "security.capability" not in os.listxattr(unpacked / "bin" / "cap-id")
        assert os.access(unpacked / "bin" / "imagemain", os.X_OK), "the rest of the image is whole"

        code, stopped = await control(nc, "UNDEPLOY", workload["id"])
        assert code is None and stopped["state"] == "stopped"
        assert not mounts_under(node.state_dir), "the container's rootfs mount is gone with it"


async def test_no_two_containers_share_a_host_uid(nats_server, nc, programs, tmp_path):
    image = build_image(tmp_path, programs["imagemain"], entrypoint=["/bin/imagemain"], cmd=["serve"])
    artifact = await upload(nc, image, tmp_path / "image.tar")
    native = await NexClient(nc).upload_artifact(programs["ticker"])
    async with oci_node(nats_server) as node:
        pids = []
        for namespace, name in (("tenant-a", "web"), ("tenant-a", "web-2"), ("tenant-b", "web")):
            code, workload = await control(nc, "DEPLOY", node.node_id, oci_body(artifact, name=name),
                                           namespace=namespace, timeout=30)
            assert code is None, workload
            pids.append(workload["pid"])
        code, workload = await control(nc, "DEPLOY", node.node_id, {
            "name": "ticker", "type": "native", "artifact": native.model_dump()}, namespace="tenant-b")
        assert code is None, workload
        pids.append(workload["pid"])

        uids = [host_uid(pid) for pid in pids]
        bases = {(uid - HOST_ID_BASE) // ID_RANGE for uid in uids}
        assert len(set(uids)) == 4 and len(bases) == 4, \
            f"each container, of one tenant or two, runs in a uid range of its own: {uids}"
        for pid in pids:
            assert not as_nobody("kill", "-0", str(pid)).returncode == 0, "nobody signals no container"


async def test_an_image_that_expands_past_the_budget_is_refused_and_leaves_nothing(nats_server, nc, programs,
                                                                                    tmp_path):
    def zeros(tree: Path) -> None:
        with open(tree / "zeros", "wb") as f:
            f.truncate(256 * MIB)  # a few hundred KiB once compressed

    bomb = build_image(tmp_path / "bomb", programs["imagemain"], entrypoint=["/bin/imagemain"], prepare_tree=zeros)
    nobody_there = build_image(tmp_path / "ghost", programs["imagemain"], entrypoint=["/bin/imagemain"],
                               user="ghost")
    bomb_artifact = await upload(nc, bomb, tmp_path / "bomb.tar")
    ghost_artifact = await upload(nc, nobody_there, tmp_path / "ghost.tar")
    assert (tmp_path / "bomb.tar").stat().st_size < 2 * MIB
    async with oci_node(nats_server, image_disk_budget_bytes=16 * MIB) as node:
        code, refused = await control(nc, "DEPLOY", node.node_id, oci_body(bomb_artifact), timeout=30)
        assert code == 400 and "budget" in refused["error"]["message"], refused
        assert leftovers(node) == [], "a refused image leaves nothing on disk"

        code, refused = await control(nc, "DEPLOY", node.node_id, oci_body(ghost_artifact), timeout=30)
        assert code == 400 and "ghost" in refused["error"]["message"], refused
        assert leftovers(node) == [], "an image that cannot run is not kept either"
        _, info = await control(nc, "INFO", node.node_id)
        assert info["workloads"] == []


async def test_unused_images_are_evicted_and_images_in_use_are_not(nats_server, nc, programs, tmp_path):
    def filler(tree: Path) -> None:
        (tree / "filler").write_bytes(os.urandom(3 * MIB))

    first, second = (build_image(tmp_path / name, programs["imagemain"], entrypoint=["/bin/imagemain"],
                                 prepare_tree=filler) for name in ("first", "second"))
    first_artifact = await upload(nc, first, tmp_path / "first.tar")
    second_artifact = await upload(nc, second, tmp_path / "second.tar")
    async with oci_node(nats_server, image_disk_budget_bytes=7 * MIB) as node:
        images = node.state_dir / "images"
        first_hex, second_hex = (i.manifest_digest.removeprefix("sha256:") for i in (first, second))

        code, running = await control(nc, "DEPLOY", node.node_id, oci_body(first_artifact, argv=["serve"]),
                                      timeout=30)
        assert code is None, running
        code, refused = await control(nc, "DEPLOY", node.node_id,
                                      oci_body(second_artifact, name="other"), timeout=30)
        assert code == 409 and "in use" in refused["error"]["message"], refused
        assert sorted(p.name for p in images.iterdir()) == [first_hex], \
            "the image in use stays; the refused one is not kept"

        await control(nc, "UNDEPLOY", running["id"])
        code, job = await control(nc, "DEPLOY", node.node_id,
                                  oci_body(second_artifact, name="other", lifecycle="job"), timeout=30)
        assert code is None, job
        assert sorted(p.name for p in images.iterdir()) == [second_hex], \
            "the unused image made room for the new one"
        await eventually(lambda: not mounts_under(node.state_dir), timeout=10)


def image_mounts(digest: str) -> list[str]:
    """Mount points of the host whose source is the unpacked image of ``digest``."""
    hex_digest = digest.removeprefix("sha256:")
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if hex_digest in line.split()[3]]


async def test_a_killed_node_leaves_no_image_mount_after_the_next_start(nats_server, nc, programs, tmp_path):
    image = build_image(tmp_path, programs["imagemain"], entrypoint=["/bin/imagemain"], cmd=["serve"])
    artifact = await upload(nc, image, tmp_path / "image.tar")
    state = Path(tempfile.mkdtemp(prefix="nex-attack-images-"))
    state.chmod(0o711)
    args = ["--server", nats_server.url, "--state-dir", str(state / "node"), "--name", "doomed-images",
            "--sandbox", "oci"]
    try:
        reason = await sandbox_verdict(state / "probe")
        if reason is not None:
            pytest.skip(f"this host cannot sandbox: {reason}")
        process = await start_node(*args)
        ping = await wait_for_node(nc, "doomed-images")
        code, workload = await control(nc, "DEPLOY", ping["node_id"], oci_body(artifact), timeout=30)
        assert code is None, workload
        assert len(image_mounts(image.manifest_digest)) == 1, "the container's rootfs is a mount of the image"
        process.kill()
        await process.wait()

        process = await start_node(*args)
        await wait_for_node(nc, "doomed-images")
        await eventually(lambda: not alive(workload["pid"]), timeout=10)
        assert image_mounts(image.manifest_digest) == [], "the next start unmounts what the dead node left"
        assert (state / "node" / "images" / image.manifest_digest.removeprefix("sha256:")).is_dir(), \
            "the unpacked image stays cached"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)
