"""Registry images through skopeo: the manifest digest of a reference, and pulling it.

Registries on a loopback address are spoken to without TLS verification (a local
registry usually serves plain HTTP); every other registry needs valid TLS.
Credentials, if any, come from skopeo's usual auth files on the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from nex.api.errors import ArtifactTooLarge, HashMismatch, NotFound
from nex.images.reference import Reference, parse_reference
from nex.images.tools import TooLarge, last_line, run_tool, run_tool_within

SKOPEO_TIMEOUT_S = 300.0
PULLED_TAG = "nex"
_POLICY = Path("/etc/containers/policy.json")
_MISSING = ("manifest unknown", "name unknown", "not found", "no such host")


class RegistryError(NotFound):
    """The registry does not have the image, or cannot be reached."""

    def __init__(self, reference: Reference, reason: str) -> None:
        super().__init__(f"artifact not found: {reference}: {reason}")
        self.reference = reference


async def _skopeo(reference: Reference, *args: str, timeout: float = SKOPEO_TIMEOUT_S,
                  within: tuple[Path, int] | None = None) -> bytes:
    """skopeo's output; ``within``: (a directory, bytes) that what skopeo writes there may take."""
    policy = [] if _POLICY.exists() else ["--insecure-policy"]
    try:
        if within is None:
            code, out, err = await run_tool("skopeo", *policy, *args, timeout=timeout)
        else:
            code, out, err = await run_tool_within(*within, "skopeo", *policy, *args, timeout=timeout)
    except asyncio.TimeoutError:
        raise RegistryError(reference, f"no answer within {timeout:g}s") from None
    if code != 0:
        raise RegistryError(reference, _reason(err))
    return out


def _reason(stderr: bytes) -> str:
    """The cause in skopeo's last line: 'manifest unknown', 'connection refused'..."""
    text = last_line(stderr)
    for marker in _MISSING:
        if marker in text:
            return marker
    return text.rsplit(": ", 1)[-1]


def _tls(reference: Reference, flag: str) -> list[str]:
    return [f"{flag}=false"] if reference.loopback else []


async def manifest_digest(reference: Reference) -> str:
    """``sha256:<hex>`` of the manifest (or index) that ``reference`` names in its registry."""
    raw = await _skopeo(reference, "inspect", "--raw", *_tls(reference, "--tls-verify"), reference.docker())
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def pull(uri: str, sha256: str, target: Path, max_bytes: int) -> Path:
    """Pull the image ``uri`` names into an OCI layout directory at ``target``.

    ``sha256`` must be the digest of the manifest the reference names (HashMismatch
    otherwise); the copy is then made by that digest, so what lands is what was checked.
    The pull is stopped, and leaves nothing, once it has written more than ``max_bytes``
    (ArtifactTooLarge).
    """
    reference = parse_reference(uri)
    expected = f"sha256:{sha256}"
    if reference.digest and reference.digest != expected:
        raise HashMismatch(uri, sha256)
    actual = await manifest_digest(reference)
    if actual != expected:
        raise HashMismatch(uri, sha256)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".pull-"))
    try:
        try:
            await _skopeo(reference, "copy", "--quiet", *_tls(reference, "--src-tls-verify"),
                          reference.docker(expected), f"oci:{staging}:{PULLED_TAG}", within=(staging, max_bytes))
        except TooLarge:
            raise ArtifactTooLarge(uri, max_bytes) from None
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # else: a concurrent pull of the same digest won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
