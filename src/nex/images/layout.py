"""OCI image layouts, as a directory or as a tarball: finding the image and its configuration.

Every blob read here is checked against its digest, so the manifest digest that
names an unpacked image in the cache is one the bytes really have.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nex.api.errors import BadArtifact
from nex.images.config import ImageConfig, node_architecture

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_METADATA = 4 << 20  # an index, manifest or config larger than this is not one


class Layout(Protocol):
    def read(self, name: str) -> bytes: ...


@dataclass(frozen=True)
class ImageManifest:
    digest: str
    size: int
    media_type: str
    config: ImageConfig
    layers: int
    blobs: tuple[str, ...] = ()  # the digests of the manifest, its config and its layers


class DirectoryLayout:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            if path.stat().st_size > MAX_METADATA:
                raise BadArtifact(f"{name} in the image layout is too large")
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise BadArtifact(f"the image layout has no {name}") from None


class TarballLayout:
    """An image layout packed in a tar file (``tar cf image.tar -C layout .``)."""

    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path, "r:*")
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BadArtifact(f"the artifact is not an OCI image layout tarball: {exc}") from None
        self._members = {_normal(m.name): m for m in members if m.isfile()}
        if "oci-layout" not in self._members:
            self._tar.close()
            raise BadArtifact("the tarball is not an OCI image layout: it has no oci-layout file")

    def read(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise BadArtifact(f"the image layout tarball has no {name}")
        if member.size > MAX_METADATA:
            raise BadArtifact(f"{name} in the image layout is too large")
        f = self._tar.extractfile(member)
        assert f is not None  # a regular file
        return f.read()

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> TarballLayout:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _hex(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or not _HEX64.fullmatch(hex_digest):
        raise BadArtifact(f"unsupported digest {digest!r} in the image layout")
    return hex_digest


def blob_name(digest: str) -> str:
    """``blobs/sha256/<hex>``: where a layout keeps the blob of ``digest``."""
    return f"blobs/sha256/{_hex(digest)}"


def read_blob(layout: Layout, digest: str) -> bytes:
    hex_digest = _hex(digest)
    data = layout.read(f"blobs/sha256/{hex_digest}")
    if hashlib.sha256(data).hexdigest() != hex_digest:
        raise BadArtifact(f"blob {digest} of the image layout does not match its digest")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BadArtifact(f"the image's {what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadArtifact(f"the image's {what} is not a JSON object")
    return value


def _fits(descriptor: dict[str, Any]) -> bool:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return True
    return platform.get("os") in (None, "linux") and platform.get("architecture") in (None, node_architecture())


def select_manifest(layout: Layout) -> str:
    """The digest of the one image manifest in the layout that runs on this node."""
    descriptors = _json(layout.read("index.json"), "index.json").get("manifests") or []
    for _ in range(4):  # nested indexes, bounded
        candidates = [d for d in descriptors if isinstance(d, dict) and _fits(d)]
        if not candidates:
            raise BadArtifact(f"the image layout holds no image for linux/{node_architecture()}")
        if len(candidates) > 1:
            raise BadArtifact(f"the image layout holds {len(candidates)} images; it must hold one per platform")
        chosen = candidates[0]
        digest = str(chosen.get("digest", ""))
        if chosen.get("mediaType") not in INDEX_TYPES:
            return digest
        descriptors = _json(read_blob(layout, digest), "index").get("manifests") or []
    raise BadArtifact("the image layout nests indexes too deeply")


def read_image(layout: Layout) -> ImageManifest:
    """The image of this node's platform in ``layout``: manifest digest, configuration, layer count."""
    digest = select_manifest(layout)
    raw = read_blob(layout, digest)
    manifest = _json(raw, "manifest")
    config_descriptor = manifest.get("config")
    if not isinstance(config_descriptor, dict) or "digest" not in config_descriptor:
        raise BadArtifact("the image manifest has no config")
    config = ImageConfig.from_json(read_blob(layout, str(config_descriptor["digest"])))
    config.check_platform()
    media_type = str(manifest.get("mediaType") or OCI_MANIFEST)
    layers = manifest.get("layers") or []
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise BadArtifact("the image manifest's layers are not a list of descriptors")
    blobs = (digest, str(config_descriptor["digest"]), *(str(layer.get("digest", "")) for layer in layers))
    for blob in blobs:
        _hex(blob)
    return ImageManifest(digest=digest, size=len(raw), media_type=media_type, config=config,
                         layers=len(layers), blobs=blobs)


def write_single_index(root: Path, manifest: ImageManifest, tag: str) -> None:
    """Point a layout's index.json at one manifest under ``tag`` (what umoci unpacks by)."""
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]}
    (root / "index.json").write_text(json.dumps(index))
