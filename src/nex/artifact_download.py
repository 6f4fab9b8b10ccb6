"""Artifact bytes on their way into the node's cache: through a sha256 to a temp file, bounded in size.

Nothing holds an artifact whole in memory: a ``file://`` artifact is read in chunks
from the file descriptor that :mod:`nex.artifact_roots` opened, an Object Store
object chunk by chunk as JetStream delivers it. Every chunk goes through the hash to
a temp file in the cache directory, which is renamed to its sha256 only when that
matches; a mismatch, an oversize or any failure leaves nothing behind.

Objects are streamed here rather than with nats-py's ``ObjectStore.get(writeinto=...)``:
that follows a link by reading the target whole into memory, has no timeout, and a
writer that refuses an oversize would leave its ordered consumer subscribed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE

from nex.api.errors import ArtifactTooLarge, HashMismatch, Unavailable

CHUNK = 1 << 20
# How long a chunk of an object may take to arrive before the fetch fails.
CHUNK_TIMEOUT_S = 10.0
# Chunks JetStream may push ahead of the writer (flow control keeps it far below).
PENDING_BYTES = 16 * CHUNK
PARTIAL_PREFIX = ".partial-"
CACHED_MODE = 0o500  # the node reads it and runs it (plain processes); nobody else may do either


class Download:
    """A temp file in ``directory`` that takes at most ``limit`` bytes, hashed as they are written.

    ``write`` may run on any one thread at a time. Use it as a context manager:
    leaving the block without :meth:`commit` removes the temp file.
    """

    def __init__(self, directory: Path, uri: str, limit: int) -> None:
        self.uri = uri
        self.limit = limit
        self.size = 0
        self._digest = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX)  # mode 0600
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ArtifactTooLarge(self.uri, self.limit)
        self._digest.update(chunk)
        self._file.write(chunk)

    def commit(self, sha256: str, target: Path) -> Path:
        """Rename the file to ``target`` if its bytes have ``sha256``; raises HashMismatch otherwise."""
        if self._digest.hexdigest() != sha256:
            raise HashMismatch(self.uri, sha256)
        self._file.flush()
        os.fchmod(self._file.fileno(), CACHED_MODE)
        self._file.close()
        os.replace(self._path, target)
        return target

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._path.unlink(missing_ok=True)


def copy_from_fd(fd: int, download: Download) -> None:
    """Every byte of the open file ``fd`` into ``download``, a chunk at a time (blocking)."""
    size = os.fstat(fd).st_size
    if size > download.limit:  # before reading a byte; a file that grows meanwhile stops at the limit
        raise ArtifactTooLarge(download.uri, download.limit)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while read := os.readv(fd, [buffer]):
        download.write(view[:read])


async def copy_object(js: JetStreamContext, bucket: str, info: ObjectInfo, download: Download) -> None:
    """The chunks of the object ``info`` describes into ``download``, as JetStream delivers them."""
    if info.size and info.size > download.limit:  # before fetching anything; the writer checks again
        raise ArtifactTooLarge(download.uri, download.limit)
    if not info.size:
        return
    subscription = await js.subscribe(
        OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid),
        stream=OBJ_STREAM_TEMPLATE.format(bucket=bucket), ordered_consumer=True,
        pending_bytes_limit=PENDING_BYTES)
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=CHUNK_TIMEOUT_S)
            except nats.errors.TimeoutError:
                raise Unavailable(f"artifact {download.uri}: JetStream stopped sending its chunks") from None
            await asyncio.to_thread(download.write, msg.data)
            if msg.metadata.num_pending == 0:
                return
    finally:
        await subscription.unsubscribe()
