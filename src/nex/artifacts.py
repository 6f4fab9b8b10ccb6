"""Fetching artifacts and checking their sha256 before anything runs them.

Artifacts are kept content-addressed in the node's cache: the file name is the
verified sha256, so a second deploy of the same bytes costs no fetch, as long as
the request names a source that still holds them (a ``file://`` inside the
artifact roots, an object whose digest is that sha256). An ``oci://`` registry
reference is pulled as an OCI image layout directory, named by the digest of its
manifest (see :mod:`nex.images.registry`). The cache directory is the node's
alone (0700): other users of the host read no artifact.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import InvalidBucketNameError, InvalidKeyError, InvalidObjectNameError, NotFoundError

from nex.api.errors import ArtifactNotFound, BadRequest, HashMismatch
from nex.api.models import Artifact
from nex.api.subjects import is_token
from nex.artifact_download import CHUNK, PARTIAL_PREFIX, Download, copy_from_fd, copy_object
from nex.artifact_roots import ArtifactRoots
from nex.images.registry import pull as pull_image

DEFAULT_MAX_ARTIFACT_BYTES = 1 << 30

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_nats_uri(uri: str) -> tuple[str, str]:
    """``nats://BUCKET/KEY`` → (bucket, key)."""
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
    if not bucket or not key:
        raise BadRequest(f"artifact uri {uri!r} is not of the form nats://BUCKET/KEY")
    if not is_token(bucket):
        raise BadRequest(f"artifact uri {uri!r}: a bucket name is letters, digits, '_' and '-'")
    return bucket, key


@dataclass
class _Fetch:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ArtifactCache:
    def __init__(self, directory: Path, js: JetStreamContext, roots: ArtifactRoots | None = None,
                 max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> None:
        self.directory = directory
        self.roots = roots or ArtifactRoots([])
        self.max_bytes = max_bytes
        self._js = js
        self._fetches: dict[str, _Fetch] = {}
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # made by an older node with 0755, perhaps
        for partial in directory.glob(f"{PARTIAL_PREFIX}*"):  # left by a node killed mid-download
            partial.unlink(missing_ok=True)
        if self.roots.roots:
            log.info("file:// artifacts are served from %s", ", ".join(map(str, self.roots.roots)))

    async def fetch(self, artifact: Artifact) -> Path:
        """The verified local copy of ``artifact``; raises ArtifactNotFound, HashMismatch,
        ArtifactTooLarge, or ArtifactNotAllowed for a ``file://`` outside the artifact roots."""
        cached = self.directory / artifact.sha256
        async with self._one_fetch(artifact.sha256):
            if artifact.uri.startswith("oci://"):
                return cached if cached.exists() else await pull_image(
                    artifact.uri, artifact.sha256, cached, self.max_bytes)
            if artifact.uri.startswith("file://"):
                return await asyncio.to_thread(self._fetch_file, artifact, cached)
            return await self._fetch_object(artifact, cached)

    @asynccontextmanager
    async def _one_fetch(self, sha256: str) -> AsyncIterator[None]:
        """Overlapping deploys of the same bytes fetch them once; a lock lives only while used."""
        fetch = self._fetches.setdefault(sha256, _Fetch())
        fetch.users += 1
        try:
            async with fetch.lock:
                yield
        finally:
            fetch.users -= 1
            if not fetch.users:
                del self._fetches[sha256]

    def _fetch_file(self, artifact: Artifact, cached: Path) -> Path:
        fd = self.roots.open(artifact.uri)  # first: the cache serves no path outside the roots either
        try:
            if cached.exists() and os.fstat(fd).st_size == cached.stat().st_size:
                return cached
            with Download(self.directory, artifact.uri, self.max_bytes) as download:
                copy_from_fd(fd, download)
                return download.commit(artifact.sha256, cached)
        finally:
            os.close(fd)

    async def _fetch_object(self, artifact: Artifact, cached: Path) -> Path:
        bucket, key = parse_nats_uri(artifact.uri)
        info = await self._object_info(artifact.uri, bucket, key)
        recorded = object_sha256(info)
        if recorded is not None and recorded != artifact.sha256:
            raise HashMismatch(artifact.uri, artifact.sha256)  # known without fetching a byte
        if cached.exists() and recorded == artifact.sha256:
            return cached  # the object holds these bytes: no need to fetch them again
        with Download(self.directory, artifact.uri, self.max_bytes) as download:
            await copy_object(self._js, bucket, info, download)
            return await asyncio.to_thread(download.commit, artifact.sha256, cached)

    async def _object_info(self, uri: str, bucket: str, key: str) -> ObjectInfo:
        try:
            store = await self._js.object_store(bucket)
            info = await store.get_info(key)
        except NotFoundError:
            raise ArtifactNotFound(uri) from None
        except (InvalidBucketNameError, InvalidObjectNameError, InvalidKeyError) as exc:
            raise BadRequest(f"artifact uri {uri!r} is not a valid object name: {exc}") from None
        if info.is_link():
            raise BadRequest(f"artifact {uri} is an Object Store link: name the object it links to")
        if not info.nuid:
            raise BadRequest(f"artifact {uri} has no chunks to read (its metadata has no nuid)")
        return info


def object_sha256(info: ObjectInfo) -> str | None:
    """The sha256 (hex) the Object Store recorded for an object, None when it recorded none."""
    kind, _, digest = (info.digest or "").partition("=")
    if kind.upper() != "SHA-256" or not digest:
        return None
    try:
        return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    except ValueError:
        return None
