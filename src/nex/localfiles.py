"""Local files a client deploys: what type of workload a file is, a name for it, reading it with progress."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from nex.api.errors import BadRequest
from nex.api.models import WorkloadType

_ELF_MAGIC = b"\x7fELF"
_WASM_MAGIC = b"\0asm"
_EXTENSIONS = {
    ".js": WorkloadType.JAVASCRIPT, ".mjs": WorkloadType.JAVASCRIPT, ".cjs": WorkloadType.JAVASCRIPT,
    ".wasm": WorkloadType.WASM,
}


def guess_type(path: str | Path) -> WorkloadType:
    """The workload type of a file: by its first bytes (ELF, Wasm), an OCI layout tarball, then by extension."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(4)
    if head == _ELF_MAGIC:
        return WorkloadType.NATIVE
    if head == _WASM_MAGIC:
        return WorkloadType.WASM
    if is_image_layout_tarball(path):
        return WorkloadType.OCI
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise BadRequest(f"cannot tell the workload type of {path}; pass --type")
    return found


def is_image_layout_tarball(path: Path) -> bool:
    """A tar file with an ``oci-layout`` file at its top: an OCI image layout."""
    try:
        with tarfile.open(path, "r:*") as tar:
            # Iterating reads headers only, and stops at the marker.
            return any(m.name.removeprefix("./") == "oci-layout" for m in tar)
    except (tarfile.TarError, EOFError, OSError):
        return False


def workload_name_for(path: str | Path) -> str:
    """A valid workload name from a file name: ``hello world.js`` -> ``hello-world``."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).stem).strip("-")[:64]
    return name or "workload"


class CountingReader(io.RawIOBase):
    """A read-only file wrapper that reports the size of each read."""

    def __init__(self, file: BinaryIO, on_read: Callable[[int], None]) -> None:
        super().__init__()
        self._file = file
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        if n:
            self._on_read(n)
        return n
