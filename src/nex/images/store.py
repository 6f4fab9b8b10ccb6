"""Unpacked images, one root filesystem per image manifest digest.

``<dir>/<manifest hex>/rootfs`` is made once by ``umoci unpack`` (which checks
every layer against its digest and applies whiteouts) and then shared, read-only,
by every container of that image. An image is unpacked in a staging directory and
renamed into place, so a crash never leaves a half rootfs under a digest, and
deploys of the same image that overlap wait for one unpack instead of racing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nex.api.errors import BadArtifact
from nex.images.config import ImageConfig
from nex.images.layout import DirectoryLayout, ImageManifest, TarballLayout, read_image, write_single_index
from nex.images.tools import last_line, run_tool

log = logging.getLogger(__name__)

UNPACK_TIMEOUT_S = 600.0
_TAG = "nex-unpack"


@dataclass(frozen=True)
class Image:
    digest: str
    rootfs: Path
    config: ImageConfig


def read_manifest(artifact: Path) -> ImageManifest:
    """The image in an artifact: an image layout directory (pulled) or a layout tarball."""
    if artifact.is_dir():
        return read_image(DirectoryLayout(artifact))
    with TarballLayout(artifact) as layout:
        return read_image(layout)


class ImageStore:
    """Root filesystems by manifest digest under ``directory``.

    With ``id_shift=(host_base, size)`` (a root node), a file of uid N in the image
    belongs to host uid host_base+N, as the containers' user namespace maps it.
    ``mount_points`` are directories made in every rootfs for the runtime to mount on.
    """

    def __init__(self, directory: Path, id_shift: tuple[int, int] | None = None,
                 mount_points: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self._id_shift = id_shift
        self._mount_points = mount_points
        self._locks: dict[str, asyncio.Lock] = {}
        self._manifests: dict[tuple[Path, int, int], ImageManifest] = {}
        # What a node killed during an unpack left; the directory is this node's alone.
        for leftover in directory.glob(".unpack-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def path(self, digest: str) -> Path:
        return self.directory / digest.removeprefix("sha256:")

    async def get(self, artifact: Path) -> Image:
        """The unpacked image of ``artifact``, unpacking it unless this digest already is."""
        manifest = await self._manifest(artifact)
        target = self.path(manifest.digest)
        image = Image(digest=manifest.digest, rootfs=target / "rootfs", config=manifest.config)
        if image.rootfs.is_dir():
            return image
        lock = self._locks.setdefault(manifest.digest, asyncio.Lock())
        async with lock:
            if not image.rootfs.is_dir():
                await self._unpack(artifact, manifest, target)
        return image

    async def _manifest(self, artifact: Path) -> ImageManifest:
        # Reading a (compressed) tarball's index means scanning it: once per file version.
        info = artifact.stat()
        key = (artifact, info.st_mtime_ns, info.st_size)
        if key not in self._manifests:
            self._manifests[key] = await asyncio.to_thread(read_manifest, artifact)
        return self._manifests[key]

    async def _unpack(self, artifact: Path, manifest: ImageManifest, target: Path) -> None:
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)  # on first use: most nodes never run an image
        staging = Path(tempfile.mkdtemp(dir=self.directory, prefix=".unpack-"))
        try:
            layout = staging / "layout"
            await asyncio.to_thread(_stage_layout, artifact, layout, manifest)
            try:
                code, _, err = await run_tool(
                    "umoci", "unpack", *self._umoci_options(), "--image", f"{layout}:{_TAG}",
                    str(staging / "bundle"), timeout=UNPACK_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise BadArtifact(f"unpacking image {manifest.digest} took over {UNPACK_TIMEOUT_S:g}s") from None
            if code != 0:
                raise BadArtifact(f"cannot unpack image {manifest.digest}: {last_line(err)}")
            rootfs = staging / "bundle" / "rootfs"
            # The rootfs is shared read-only: what a container needs to exist is made now.
            for directory in (*self._mount_points, manifest.config.working_dir):
                await asyncio.to_thread(make_dirs_inside, rootfs, directory)
            (staging / "image").mkdir()
            os.rename(rootfs, staging / "image" / "rootfs")
            if target.exists():  # without a rootfs (checked under the lock): a wreck, e.g. emptied by hand
                await asyncio.to_thread(shutil.rmtree, target)
            os.rename(staging / "image", target)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("unpacked image %s (%d layers) in %.2fs", manifest.digest, manifest.layers,
                 time.monotonic() - started)

    def _umoci_options(self) -> list[str]:
        if os.geteuid() != 0:
            return ["--rootless"]
        if self._id_shift is None:
            return []
        base, size = self._id_shift
        return [f"--uid-map=0:{base}:{size}", f"--gid-map=0:{base}:{size}"]


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
    """A layout at ``layout`` that umoci can unpack: the artifact's blobs, one tagged manifest."""
    if artifact.is_dir():
        layout.mkdir()
        (layout / "blobs").symlink_to(artifact / "blobs")
        shutil.copyfile(artifact / "oci-layout", layout / "oci-layout")
    else:
        try:
            with tarfile.open(artifact, "r:*") as tar:
                tar.extractall(layout, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BadArtifact(f"cannot unpack the image layout tarball: {exc}") from None
    write_single_index(layout, manifest, _TAG)
