"""Fetching artifacts and checking their sha256 before anything runs them.

Artifacts are kept content-addressed in the node's cache: the file name is the
verified sha256, so a second deploy of the same bytes costs no fetch. An
``oci://`` registry reference is pulled as an OCI image layout directory, named by
the digest of its manifest (see :mod:`nex.images.registry`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from nats.js import JetStreamContext
from nats.js.errors import (
    DigestMismatchError, InvalidBucketNameError, InvalidKeyError, InvalidObjectNameError, NotFoundError,
)

from nex.api.errors import ArtifactNotFound, BadArtifact, BadRequest, HashMismatch
from nex.api.models import Artifact
from nex.api.subjects import is_token
from nex.images.registry import pull as pull_image

CHUNK = 1 << 20
PSEUDO_FILESYSTEMS = {("proc",), ("sys",), ("dev",)}


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


class ArtifactCache:
    def __init__(self, directory: Path, js: JetStreamContext) -> None:
        self.directory = directory
        self._js = js
        self._pulls: dict[str, asyncio.Lock] = {}
        directory.mkdir(parents=True, exist_ok=True)

    async def fetch(self, artifact: Artifact) -> Path:
        """The verified local copy of ``artifact``; raises ArtifactNotFound or HashMismatch."""
        cached = self.directory / artifact.sha256
        if cached.exists():
            return cached
        if artifact.uri.startswith("oci://"):
            # Overlapping deploys of one image pull it once.
            async with self._pulls.setdefault(artifact.sha256, asyncio.Lock()):
                return cached if cached.exists() else await pull_image(artifact.uri, artifact.sha256, cached)
        if artifact.uri.startswith("file://"):
            data = await asyncio.to_thread(self._read_file, artifact.uri)
        else:
            data = await self._read_object(artifact.uri)
        actual = hashlib.sha256(data).hexdigest()
        if actual != artifact.sha256:
            raise HashMismatch(artifact.uri, artifact.sha256, actual)
        await asyncio.to_thread(self._store, cached, data)
        return cached

    @staticmethod
    def _read_file(uri: str) -> bytes:
        path = Path(unquote(urlparse(uri).path))
        if not path.is_absolute():
            raise BadRequest(f"artifact uri {uri!r} must name an absolute path")
        try:
            if not stat.S_ISREG(path.stat().st_mode) or path.resolve().parts[1:2] in PSEUDO_FILESYSTEMS:
                # /dev/zero or a FIFO would never end or never answer; /proc files are not artifacts.
                raise BadRequest(f"artifact {uri} is not a regular file")
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(uri) from None
        except PermissionError:
            raise BadRequest(f"artifact {uri} is not readable by the node") from None
        except (OSError, ValueError) as exc:  # EIO, ELOOP, ENAMETOOLONG, an embedded NUL ...
            raise BadRequest(f"artifact {uri} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None

    async def _read_object(self, uri: str) -> bytes:
        bucket, key = parse_nats_uri(uri)
        try:
            store = await self._js.object_store(bucket)
            result = await store.get(key)
        except NotFoundError:
            raise ArtifactNotFound(uri) from None
        except DigestMismatchError:
            raise BadArtifact(f"artifact {uri} is corrupt: its chunks do not match the stored digest") from None
        except (InvalidBucketNameError, InvalidObjectNameError, InvalidKeyError) as exc:
            raise BadRequest(f"artifact uri {uri!r} is not a valid object name: {exc}") from None
        return result.data or b""

    def _store(self, target: Path, data: bytes) -> None:
        # Write then rename, so a crash never leaves a half file under a verified name.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o555)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
