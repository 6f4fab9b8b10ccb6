"""One image unpacked in a staging directory: umoci, bounded in disk, then sanitized.

``umoci unpack`` checks every layer against its digest and applies whiteouts. A
layer is compressed, so a few megabytes can expand to gigabytes: the tree is
measured while umoci writes it, and umoci is killed as soon as the tree passes
``limit`` bytes (by at most what it writes between two measures, 10 ms apart or
more for a tree of many files), and no single file may pass it (RLIMIT_FSIZE). The finished
tree is then stripped of what must not reach the host (:mod:`nex.images.sanitize`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tarfile
from pathlib import Path

from nex.api.errors import BadArtifact
from nex.images.layout import ImageManifest, blob_name, write_single_index
from nex.images.sanitize import TreeReport, sanitize_tree
from nex.images.tools import TooLarge, last_line, run_tool_within

__all__ = ["TooLarge", "make_dirs_inside", "unpack"]

UNPACK_TIMEOUT_S = 600.0
_TAG = "nex-unpack"


async def unpack(artifact: Path, manifest: ImageManifest, staging: Path, limit: int,
                 mount_points: tuple[str, ...]) -> tuple[Path, TreeReport]:
    """The rootfs of ``manifest``, unpacked under ``staging``, and what sanitizing it did.

    Raises TooLarge past ``limit`` bytes, BadArtifact when umoci refuses the image.
    """
    layout = staging / "layout"
    await asyncio.to_thread(_stage_layout, artifact, layout, manifest)
    bundle = staging / "bundle"
    rootfs = bundle / "rootfs"
    try:
        code, _, err = await run_tool_within(
            rootfs, limit, "umoci", "unpack", *_umoci_options(), "--image", f"{layout}:{_TAG}", str(bundle),
            timeout=UNPACK_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise BadArtifact(f"unpacking image {manifest.digest} took over {UNPACK_TIMEOUT_S:g}s") from None
    if code != 0:
        raise BadArtifact(f"cannot unpack image {manifest.digest}: {last_line(err)}")
    report = await asyncio.to_thread(sanitize_tree, str(rootfs))
    if report.bytes > limit:
        raise TooLarge(report.bytes)
    # The rootfs is shared read-only: what a container needs to exist is made now.
    for directory in (*mount_points, manifest.config.working_dir):
        await asyncio.to_thread(make_dirs_inside, rootfs, directory)
    return rootfs, report


def _umoci_options() -> list[str]:
    # As root, the ids the layers give (the tree is root-only; containers see it through an
    # idmapped mount). Without root, umoci's rootless mode: files belong to the node's user.
    return [] if os.geteuid() == 0 else ["--rootless"]


def make_dirs_inside(rootfs: Path, path: str) -> None:
    """mkdir -p ``path`` within ``rootfs``, never through a symlink (which could point out of it).

    A symlinked component ends the walk: the container resolves it inside its own root.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        return
    owner = os.stat(rootfs)
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                os.chown(part, owner.st_uid, owner.st_gid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                return  # a symlink or a file
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def _stage_layout(artifact: Path, layout: Path, manifest: ImageManifest) -> None:
    """A layout at ``layout`` that umoci can unpack: the image's blobs, one tagged manifest."""
    layout.mkdir()
    if artifact.is_dir():
        (layout / "blobs").symlink_to(artifact / "blobs")
        shutil.copyfile(artifact / "oci-layout", layout / "oci-layout")
    else:
        _extract_blobs(artifact, layout, tuple(dict.fromkeys(["oci-layout", *map(blob_name, manifest.blobs)])))
    write_single_index(layout, manifest, _TAG)


def _extract_blobs(tarball: Path, layout: Path, names: tuple[str, ...]) -> None:
    """Only the members the image needs, as plain files: no sparse file expands on the disk."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = {}
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                if name in names and member.isfile():
                    members[name] = member
            for name in names:
                member = members.get(name)
                if member is None:
                    raise BadArtifact(f"the image layout tarball has no {name}")
                if member.issparse():
                    raise BadArtifact(f"{name} in the image layout tarball is a sparse file")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(layout / name, "xb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadArtifact(f"cannot unpack the image layout tarball: {exc}") from None
