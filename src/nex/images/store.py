"""Unpacked images, one root filesystem per image manifest digest, within a disk budget.

``<dir>/<manifest hex>/rootfs`` is unpacked once (:mod:`nex.images.unpack`), with
the ids its layers give, and shared by every container of that image through an
idmapped read-only mount (:mod:`nex.sandbox.idmap`); ``<dir>`` is root's alone, so
no other host user reaches an image. ``<dir>/<hex>/image.json`` records its size.

Unpacked images count against ``budget`` bytes. An unpack may use what images in
use leave of it; an image larger than that is refused, and once one is unpacked,
images no workload uses are evicted, least recently used first, until all fit.
Unpacks run one at a time, in a staging directory renamed into place, so a crash
never leaves a half rootfs under a digest, and deploys of the same image that
overlap wait for one unpack instead of racing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nex.api.errors import BadArtifact, Conflict
from nex.images.config import ImageConfig
from nex.images.layout import DirectoryLayout, ImageManifest, TarballLayout, read_image
from nex.images.unpack import TooLarge, unpack

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 10 << 30
_RECORD = "image.json"
_TRANSIENT = (".unpack-", ".evict-")


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


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


class ImageStore:
    """Root filesystems by manifest digest under ``directory``, ``budget`` bytes in all.

    ``acquire`` hands out an image and counts its user; ``release`` gives it back.
    ``mount_points`` are directories made in every rootfs for the runtime to mount on.
    """

    def __init__(self, directory: Path, budget: int = DEFAULT_BUDGET_BYTES,
                 mount_points: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.budget = budget
        self._mount_points = mount_points
        self._unpacking = asyncio.Lock()
        self._manifests: dict[tuple[Path, int, int], ImageManifest] = {}
        self._sizes: dict[str, int] = {}  # digest -> bytes on disk, of every image in place
        self._users: dict[str, int] = {}  # digest -> workloads using it
        self._used_at: dict[str, float] = {}
        if directory.is_dir():
            directory.chmod(0o700)  # older nodes left it searchable
            self._load()

    def _load(self) -> None:
        """Take stock of what a previous node left: images with a record stay, the rest goes."""
        for entry in self.directory.iterdir():
            digest = f"sha256:{entry.name}"
            try:
                record = json.loads((entry / _RECORD).read_text())
                if entry.name.startswith(_TRANSIENT) or not (entry / "rootfs").is_dir():
                    raise ValueError("not an image")
                self._sizes[digest] = int(record["bytes"])
                self._used_at[digest] = (entry / _RECORD).stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                # Staging dirs, half-evicted trees, and trees unpacked before images had a record
                # (owned by the old shared uid range): none can be used.
                shutil.rmtree(entry, ignore_errors=True)

    def path(self, digest: str) -> Path:
        return self.directory / digest.removeprefix("sha256:")

    @property
    def used_bytes(self) -> int:
        return sum(self._sizes.values())

    def in_use(self, digest: str) -> int:
        return self._users.get(digest, 0)

    async def acquire(self, artifact: Path) -> Image:
        """The unpacked image of ``artifact``, counted as used until :meth:`release`.

        Unpacks it unless this digest already is; raises BadArtifact for an image larger
        than the budget, Conflict for one larger than what images in use leave of it.
        """
        manifest = await self._manifest(artifact)
        digest = manifest.digest
        image = Image(digest=digest, rootfs=self.path(digest) / "rootfs", config=manifest.config)
        if digest not in self._sizes:
            async with self._unpacking:
                if digest not in self._sizes:
                    await self._unpack(artifact, manifest)
        # No await between the check above and this count: eviction never takes it from here.
        self._users[digest] = self._users.get(digest, 0) + 1
        self._touch(digest)
        return image

    async def release(self, digest: str, discard: bool = False) -> None:
        """One user fewer. ``discard``: remove the image now if no workload uses it (a deploy
        that failed leaves nothing behind)."""
        users = self._users.get(digest, 0) - 1
        if users > 0:
            self._users[digest] = users
            return
        self._users.pop(digest, None)
        if discard and digest in self._sizes:
            await self._remove(digest)

    def _touch(self, digest: str) -> None:
        self._used_at[digest] = time.time()
        try:
            os.utime(self.path(digest) / _RECORD)
        except OSError:
            pass  # the order of eviction after a restart is a hint; the image is fine

    async def _manifest(self, artifact: Path) -> ImageManifest:
        # Reading a (compressed) tarball's index means scanning it: once per file version.
        info = artifact.stat()
        key = (artifact, info.st_mtime_ns, info.st_size)
        if key not in self._manifests:
            self._manifests[key] = await asyncio.to_thread(read_manifest, artifact)
        return self._manifests[key]

    async def _unpack(self, artifact: Path, manifest: ImageManifest) -> None:
        started = time.monotonic()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # on first use
        held = sum(size for digest, size in self._sizes.items() if self._users.get(digest))
        room = self.budget - held
        staging = Path(tempfile.mkdtemp(dir=self.directory, prefix=".unpack-"))
        try:
            try:
                rootfs, report = await unpack(artifact, manifest, staging, room, self._mount_points)
            except TooLarge:
                if room >= self.budget:
                    raise BadArtifact(
                        f"image {manifest.digest} unpacks to more than this node's image disk budget "
                        f"({_mib(self.budget)}, image_disk_budget_bytes)") from None
                raise Conflict(
                    f"image {manifest.digest} needs more than the {_mib(max(room, 0))} that images in use "
                    f"leave of this node's image disk budget ({_mib(self.budget)})") from None
            await self._make_room(report.bytes)
            target = self.path(manifest.digest)
            (staging / "image").mkdir(mode=0o700)
            os.rename(rootfs, staging / "image" / "rootfs")
            (staging / "image" / _RECORD).write_text(json.dumps({"bytes": report.bytes, "digest": manifest.digest}))
            if target.exists():  # without a record: a wreck, e.g. emptied by hand
                await asyncio.to_thread(shutil.rmtree, target)
            os.rename(staging / "image", target)
            self._sizes[manifest.digest] = report.bytes
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        dropped = ", ".join(f"{n} {what}" for what, n in sorted(report.dropped.items()))
        log.info("unpacked image %s (%d layers, %s) in %.2fs%s", manifest.digest, manifest.layers,
                 _mib(report.bytes), time.monotonic() - started, f"; removed: {dropped}" if dropped else "")

    async def _make_room(self, needed: int) -> None:
        """Evict images no workload uses, least recently used first, until ``needed`` more fit."""
        while self.used_bytes + needed > self.budget:
            unused = [d for d in self._sizes if not self._users.get(d)]
            if not unused:
                return  # cannot happen: the unpack was bounded by what images in use leave
            victim = min(unused, key=lambda d: self._used_at.get(d, 0.0))
            log.info("evicting image %s (%s, unused) to stay within the image disk budget",
                     victim, _mib(self._sizes[victim]))
            await self._remove(victim)

    async def _remove(self, digest: str) -> None:
        self._sizes.pop(digest, None)
        self._used_at.pop(digest, None)
        path = self.path(digest)
        doomed = path.with_name(f".evict-{path.name}-{os.urandom(4).hex()}")
        try:
            os.rename(path, doomed)  # at once: a crash midway leaves no half image under the digest
        except FileNotFoundError:
            return
        await asyncio.to_thread(shutil.rmtree, doomed, True)
